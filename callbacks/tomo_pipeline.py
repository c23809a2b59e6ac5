"""``TomoPipeline``: subscribe it to a RunEngine and every tomography scan is processed.

A thin document router: each run's start document goes to the first technique that claims
it (tomography by default), whose reader turns that run's documents into frames for an
:class:`~tomolive.engine.Run` of the pipeline's :class:`~tomolive.engine.Engine`. Nothing on
the RunEngine thread waits for Tiled or Dask. A malformed document (missing keys, wrong
shapes, out of order) fails the run it belongs to, naming the fault; one that belongs to
no open run (an unknown descriptor or run) is logged and dropped. A start document that
reuses the uid of an existing result is refused. The RunEngine never sees the error.

Users' own callbacks hear each processed result through :meth:`TomoPipeline.subscribe`
(see :mod:`tomolive.engine.events`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from event_model import DocumentRouter, RunRouter

from tomolive.engine import EVENT_KINDS, Engine, ProcessedRun, ResultCallback, Run, Technique
from tomolive.errors import BadInputError
from tomolive.store import connect
from tomolive.techniques import BraggTechnique, PtychoTechnique, TomoTechnique
from tomolive.techniques.tomo import PipelineParams

logger = logging.getLogger(__name__)


class TomoPipeline:
    """A Bluesky callback that processes the runs its techniques claim into Tiled.

    Parameters
    ----------
    client : tiled BaseClient
        Writable client at the Tiled server root (see :meth:`from_uri`).
    params : PipelineParams, optional
        Tomography's processing parameters (recorded in provenance).
    techniques : sequence of Technique, optional
        The techniques tried in order on each start document; default: tomography with ``params``,
        then ptychography (runs with a ``ptycho`` block) and Bragg-peak analysis (``bragg_scan``'s runs),
        whose retraining loop runs by itself on runs stored in Tiled (``models/braggnn``; see
        :mod:`tomolive.techniques.bragg.live_loop`; ``pipe.technique("bragg").retrain_now()`` on request).
    **engine_options
        ``dask``, ``scratch_dir``, ``outbox_dir``, ``patience_s``, ``progress``: see
        :class:`~tomolive.engine.Engine`.

    Examples
    --------
    >>> pipe = TomoPipeline.from_uri("http://127.0.0.1:8000", api_key="...")  # doctest: +SKIP
    >>> RE.subscribe(pipe)  # doctest: +SKIP
    >>> token = pipe.subscribe(lambda kind, payload: print(kind, payload["uri"]), kinds=("complete",))  # doctest: +SKIP
    >>> RE(tomo_scan(...)); pipe.wait()  # doctest: +SKIP
    """

    RECENT_RUNS = 8
    """Runs remembered after their stop, to recognise documents that come late."""

    def __init__(
        self,
        client: Any,
        *,
        params: PipelineParams | None = None,
        techniques: Sequence[Technique] | None = None,
        **engine_options: Any,
    ):
        self.engine = Engine(client, **engine_options)
        self.techniques: tuple[Technique, ...] = (
            tuple(techniques) if techniques else (TomoTechnique(params), PtychoTechnique(), BraggTechnique())
        )
        self._runs: dict[str, _RunDocuments] = {}  # open and recent runs by uid
        self._router = RunRouter([self._factory])
        self.engine.io.submit(_import_array_client)  # ~2 s once: off the path to the first preview

    @classmethod
    def from_uri(cls, uri: str, *, api_key: str | None = None, timeout_s: float = 30.0, **kwargs: Any) -> TomoPipeline:
        """A pipeline writing to the Tiled server at ``uri``."""
        return cls(connect(uri, api_key=api_key, timeout_s=timeout_s), **kwargs)

    def technique(self, name: str) -> Technique:
        """The pipeline's technique called ``name`` (e.g. ``"bragg"``), to reach its knobs or its loop."""
        for technique in self.techniques:
            if technique.name == name:
                return technique
        raise BadInputError(f"technique: expected one of {[t.name for t in self.techniques]}, got {name!r}")

    @property
    def client(self) -> Any:
        """The Tiled client results are written with."""
        return self.engine.client

    @property
    def params(self) -> Any:
        """The first technique's parameters (tomography's, by default)."""
        return self.techniques[0].params

    @params.setter
    def params(self, params: PipelineParams) -> None:
        """Process the next runs with tomography's ``params`` (they go into their provenance)."""
        self.techniques = (TomoTechnique(params), *(t for t in self.techniques if t.name != TomoTechnique.name))

    def __call__(self, name: str, doc: dict) -> None:
        """Route one document; a malformed one fails its run, never the RunEngine."""
        run = self._owner(name, doc)
        try:
            if run is not None and run.stopped:
                raise BadInputError(f"a {name!r} document arrived after the run's stop document")
            self._router(name, doc)
        except Exception as err:
            self._reject(name, doc, run, err)

    def _factory(self, name: str, start_doc: dict) -> tuple[list, list]:
        technique = next((t for t in self.techniques if t.claims(start_doc)), None)
        if technique is None:
            logger.debug("run %s is claimed by no technique; ignored", start_doc["uid"])
            return [], []
        run = self.engine.start_run(technique, start_doc["uid"], technique.run_metadata(start_doc))
        documents = _RunDocuments(run)
        try:
            documents.reader = technique.reader(start_doc, run)
        except Exception as err:
            run.end("failed", _describe(err) if not isinstance(err, BadInputError) else str(err))
        self._runs[start_doc["uid"]] = documents
        stopped = [uid for uid, r in self._runs.items() if r.stopped]
        for uid in stopped[: max(0, len(stopped) - self.RECENT_RUNS)]:
            del self._runs[uid]
        return [documents], []

    def _owner(self, name: str, doc: dict) -> _RunDocuments | None:
        """The run a document belongs to, when it says so (None for others)."""
        if not isinstance(doc, dict):
            return None
        if name in ("event", "event_page"):
            return next((run for run in self._runs.values() if doc.get("descriptor") in run.descriptors), None)
        run_start = doc.get("run_start")
        return self._runs.get(run_start) if isinstance(run_start, str) and name != "start" else None

    def _reject(self, name: str, doc: Any, run: _RunDocuments | None, err: Exception) -> None:
        """A document that could not be routed: fail its run; drop it when it names none."""
        descriptor = doc.get("descriptor") if isinstance(doc, dict) else None
        if name in ("event", "event_page") and run is None and isinstance(err, KeyError) and err.args == (descriptor,):
            reason = (
                f"an {name!r} document refers to descriptor uid {descriptor!r}, which no descriptor document announced"
            )
        else:
            reason = f"malformed {name!r} document: {_describe(err)}"
        if run is None:  # attributable to no run: failing others would let one stray document spoil them
            logger.error("tomolive: %s; it belongs to no open run and is dropped", reason)
        else:
            run.fail(reason)

    # -- the engine, for scripts -------------------------------------------------------------

    def subscribe(self, callback: ResultCallback, kinds: str | Iterable[str] = EVENT_KINDS) -> int:
        """Call ``callback(kind, payload)`` on processed-results events; return a token.

        Kinds and payload: :mod:`tomolive.engine.events`. Callbacks run on tomolive's threads,
        never the RunEngine's; their exceptions are logged and ignored.
        """
        return self.engine.subscribe(callback, kinds)

    def unsubscribe(self, token: int) -> None:
        """Stop the callback subscribed with ``token``."""
        self.engine.unsubscribe(token)

    def wait(self, uid: str | None = None, timeout: float | None = None) -> ProcessedRun:
        """Block until run ``uid`` (default: the run started last) is processed; return its outcome."""
        return self.engine.wait(uid, timeout)

    def close(self) -> None:
        """Finish queued work and release the Dask cluster this pipeline started."""
        self.engine.close()

    def __enter__(self) -> TomoPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _RunDocuments(DocumentRouter):
    """One run's documents: to its technique's reader while the run takes frames; errors end the run."""

    def __init__(self, run: Run):
        super().__init__()
        self.run = run
        self.reader: DocumentRouter | None = None
        self.descriptors: set[str] = set()
        self.stopped = False

    def __call__(self, name: str, doc: dict, validate: bool = False) -> Any:
        try:
            if name == "descriptor":
                self.descriptors.add(doc["uid"])
            if name == "stop" and doc.get("exit_status", "success") != "success":
                status = doc["exit_status"]
                reason = doc.get("reason") or f"run ended with exit_status {status!r}"
                self.run.end("aborted" if status == "abort" else "failed", reason)
            elif self.reader is not None and not self.run.ended:
                self.reader(name, doc, validate)
                if name == "stop":
                    self.run.finish()
        except Exception as err:
            self.run.end("failed", f"{name!r} document: {_describe(err)}")
        if name == "stop":  # the pipeline remembers the run a while: keep no reader (frames, asset maps)
            self.stopped = True
            self.reader = None

    def fail(self, reason: str) -> None:
        """A document of this run was rejected before reaching it."""
        if self.stopped:
            self.run.invalidate(reason)
        else:
            self.run.end("failed", reason)


def _import_array_client() -> None:
    """Import what the first array write needs (Tiled's array client and serialisers)."""
    import tiled.client.array
    import tiled.serialization.array  # noqa: F401


def _describe(err: Exception) -> str:
    """An error message for a log line; a bare KeyError says which key was missing."""
    if isinstance(err, KeyError):
        return f"required key {err.args[0]!r} is missing"
    return f"{type(err).__name__}: {err}"
