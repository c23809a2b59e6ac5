"""The edge side of the retraining loop: the deployed model in a hot-swappable slot, and a
drift monitor that audits it against the conventional labeller and asks for a retrain.

A running edge callback reads its model from a :class:`ModelSlot` once per frame
(:meth:`ModelSlot.current` gives model and version together); the loop swaps in a new model
between two reads. A frame that already holds the old model finishes with it, the next frame
gets the new one: no frame waits for training or is dropped. A model in a slot is never
trained in place: the loop trains a copy and swaps it in.

:class:`DriftMonitor` is fed each frame's samples (``observe``, cheap: it only keeps them);
every ``every`` frames it audits a few of them in a background thread (label them with the
labeller, score the deployed model against those labels with the validator). An audit above
``threshold`` starts collecting the samples seen since the last clean audit; once there are
``min_samples`` of them it calls ``on_drift(samples, sources)`` in the background (the retrain;
``sources`` names where the samples came from, e.g. scan uids, for the new version's lineage),
and audits no longer trigger until that returns. :meth:`DriftMonitor.retrain_now` starts the
same retrain on request, from the newest samples seen.

Examples
--------
::

    slot = ModelSlot(model, version=3)
    monitor = DriftMonitor(slot, labeller, validator, threshold=0.3,
                           on_drift=lambda samples, uids: retrain(samples, scan_uids=uids, ...))
    for index, frame in enumerate(frames):   # the edge callback
        model, version = slot.current()
        patches = ...
        monitor.observe(index, patches, source=scan_uid)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

import numpy as np

from ..errors import BadInputError, MissingDataError

if TYPE_CHECKING:
    from .loop import Labeller, Validator

log = logging.getLogger(__name__)
M = TypeVar("M")


def drop_unlabelled(samples: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(samples, labels)`` without the samples whose label holds a NaN: the labeller could not label them."""
    labels = np.asarray(labels)
    if len(labels) != len(samples):
        raise BadInputError(f"labeller: expected {len(samples)} labels, one per sample, got {len(labels)}")
    kept = np.isfinite(labels.reshape(len(labels), -1)).all(axis=1)
    return samples[kept], labels[kept]


class Deployed(NamedTuple, Generic[M]):
    """A model and the registry version it came from (None: not from the registry)."""

    model: M
    version: int | None


class ModelSlot(Generic[M]):
    """The deployed model, swapped atomically while readers keep running.

    ``get()`` returns the model, ``current()`` the model with its version (read together, so a
    table row never names the wrong version), ``swap(model, version)`` replaces both.
    """

    def __init__(self, model: M | None = None, version: int | None = None) -> None:
        self._lock = threading.Lock()
        self._deployed: Deployed[M] | None = None if model is None else Deployed(model, version)
        self.swaps = 0

    def current(self) -> Deployed[M]:
        """The deployed (model, version); MissingDataError when the slot is empty."""
        deployed = self._deployed  # one reference read: model and version always match
        if deployed is None:
            raise MissingDataError("model slot: no model deployed yet; swap(model, version) one in first")
        return deployed

    def peek(self) -> Deployed[M] | None:
        """The deployed (model, version), or None when the slot is empty."""
        return self._deployed

    def get(self) -> M:
        """The deployed model."""
        return self.current().model

    @property
    def version(self) -> int | None:
        """The deployed model's registry version (None when empty or not from the registry)."""
        deployed = self._deployed
        return None if deployed is None else deployed.version

    def swap(self, model: M, version: int | None) -> Deployed[M] | None:
        """Deploy ``model`` (registry ``version``); return what was deployed before."""
        if model is None:
            raise BadInputError("model slot: expected a model to deploy, got None")
        with self._lock:
            previous, self._deployed = self._deployed, Deployed(model, version)
            self.swaps += 1
        log.info("model slot: deployed version %s (was %s)", version, previous and previous.version)
        return previous


@dataclass(frozen=True)
class Audit:
    """One audit of the deployed model: its disagreement with the labeller on ``n`` samples."""

    frame: int
    version: int | None
    disagreement: float
    n: int
    drifted: bool
    at: float  # time.monotonic() when the audit finished


class DriftMonitor:
    """Audits the deployed model every ``every`` frames and calls ``on_drift`` when it drifts.

    Parameters
    ----------
    slot : ModelSlot
        Where the deployed model is read from.
    labeller, validator
        The conventional labeller (e.g. a least-squares fit) and the metric (lower is better)
        of the model against its labels; the audit's disagreement is that metric.
    threshold : float
        An audit whose disagreement exceeds this counts as drift.
    on_drift : callable
        ``on_drift(samples, sources)``: the samples collected since the last clean audit (an
        array, stacked along axis 0) and the distinct ``source`` tags they were observed with,
        in order; called in a background thread, typically runs :func:`tomolive.ml.loop.retrain`.
    every : int
        Frames between audits.
    audit_size : int
        Samples labelled per audit (drawn from the frames since the previous audit).
    min_samples : int
        Samples to collect after drift before ``on_drift`` is called.
    max_samples : int
        At most this many samples are kept (the newest).
    """

    def __init__(
        self,
        slot: ModelSlot[Any],
        labeller: Labeller,
        validator: Validator,
        *,
        threshold: float,
        on_drift: Callable[[np.ndarray, tuple[str, ...]], Any],
        every: int = 10,
        audit_size: int = 16,
        min_samples: int = 256,
        max_samples: int = 4096,
        seed: int = 0,
    ) -> None:
        if every < 1 or audit_size < 1 or min_samples < 1 or max_samples < min_samples:
            raise BadInputError(
                f"DriftMonitor: expected every, audit_size, min_samples >= 1 and max_samples >= min_samples, got "
                f"every={every}, audit_size={audit_size}, min_samples={min_samples}, max_samples={max_samples}"
            )
        self.slot, self.labeller, self.validator = slot, labeller, validator
        self.threshold, self.on_drift = float(threshold), on_drift
        self.every, self.audit_size, self.min_samples, self.max_samples = every, audit_size, min_samples, max_samples
        self.audits: list[Audit] = []
        self.frames_seen = 0
        self.audits_skipped = 0  # an audit was due while the previous one still ran
        self.retrains: list[Future[Any]] = []
        self.retrain_sources: list[tuple[str, ...]] = []  # the sources of each retrain's samples
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._recent: list[np.ndarray] = []  # samples since the previous audit
        self._collected: list[tuple[np.ndarray, str | None]] = []  # (samples, source) since the last clean audit
        self._newest: list[tuple[np.ndarray, str | None]] = []  # the newest max_samples, for retrain_now
        self._drifting = False
        self._audit_pool = ThreadPoolExecutor(1, thread_name_prefix="drift-audit")
        self._retrain_pool = ThreadPoolExecutor(1, thread_name_prefix="drift-retrain")
        self._audit: Future[Any] | None = None

    @property
    def retraining(self) -> bool:
        """Whether a retrain started by this monitor is still running."""
        return any(not f.done() for f in self.retrains)

    def observe(self, frame: int, samples: np.ndarray, source: str | None = None) -> None:
        """Keep this frame's ``samples`` (shape (n, ...)) from ``source`` (e.g. the scan uid); start an
        audit when one is due. Never blocks on one."""
        samples = np.asarray(samples)
        with self._lock:
            self.frames_seen += 1
            if len(samples):
                self._recent.append(samples)
                self._collected.append((samples, source))
                self._newest.append((samples, source))
                _trim(self._collected, self.max_samples)
                _trim(self._newest, self.max_samples)
            due = self.frames_seen % self.every == 0
            ready = self._drifting and sum(len(s) for s, _ in self._collected) >= self.min_samples
            if ready and not self.retraining:
                self._drifting = False
                self._submit(self._collected)
                self._collected = []
            if not due or not self._recent:
                return
            if self._audit is not None and not self._audit.done():
                self.audits_skipped += 1
                return
            pool, self._recent = np.concatenate(self._recent), []
            pick = self._rng.choice(len(pool), size=min(self.audit_size, len(pool)), replace=False)
            self._audit = self._audit_pool.submit(self._run_audit, frame, pool[np.sort(pick)])

    def retrain_now(self, handler: Callable[[np.ndarray, tuple[str, ...]], Any] | None = None) -> Future[Any]:
        """Retrain on request from the newest samples seen (up to ``max_samples``), drift or not.

        ``handler(samples, sources)`` runs instead of ``on_drift`` when given. Returns the
        retrain's future (also on ``retrains``); it queues behind a running one. Raises
        MissingDataError when fewer than 2 samples have been seen.
        """
        with self._lock:
            held = sum(len(s) for s, _ in self._newest)
            if held < 2:
                raise MissingDataError(f"retrain_now: {held} samples observed; a retrain needs at least 2")
            return self._submit(self._newest, handler)

    def retrains_for(self, source: str) -> list[Future[Any]]:
        """The retrains whose samples include some observed with ``source``."""
        return [f for f, s in zip(self.retrains, self.retrain_sources, strict=True) if source in s]

    def _submit(
        self,
        held: Sequence[tuple[np.ndarray, str | None]],
        handler: Callable[[np.ndarray, tuple[str, ...]], Any] | None = None,
    ) -> Future[Any]:
        """Start ``handler`` (default ``on_drift``) on ``held`` in the retrain thread (lock held)."""
        batch = np.concatenate([s for s, _ in held])
        sources = tuple(dict.fromkeys(src for _, src in held if src is not None))
        future = self._retrain_pool.submit(self._run_retrain, handler or self.on_drift, batch, sources)
        self.retrains.append(future)
        self.retrain_sources.append(sources)
        return future

    def _run_audit(self, frame: int, samples: np.ndarray) -> Audit:
        model, version = self.slot.current()
        labelled = drop_unlabelled(samples, self.labeller.label(samples))
        disagreement = float(self.validator.score(model, labelled)) if len(labelled[0]) else float("nan")
        audit = Audit(frame, version, disagreement, len(samples), disagreement > self.threshold, time.monotonic())
        with self._lock:
            self.audits.append(audit)
            if not audit.drifted and not self._drifting:
                self._collected = []  # only samples after the last clean audit feed a retrain
            elif audit.drifted and not self.retraining and version == self.slot.version:
                self._drifting = True
        log.info(
            "drift audit at frame %d: version %s disagreement %.4g (%s)",
            frame,
            version,
            disagreement,
            "drift" if audit.drifted else "ok",
        )
        return audit

    @staticmethod
    def _run_retrain(
        handler: Callable[[np.ndarray, tuple[str, ...]], Any], samples: np.ndarray, sources: tuple[str, ...]
    ) -> Any:
        try:
            return handler(samples, sources)
        except Exception:
            log.exception("drift monitor: the retrain it started failed; the deployed model stays")
            raise

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the running audit and every retrain started so far (results or errors are on ``retrains``)."""
        if self._audit is not None:
            self._audit.exception(timeout)
        for future in list(self.retrains):
            future.exception(timeout)

    def close(self) -> None:
        """Wait for background work, then stop the threads."""
        self._audit_pool.shutdown(wait=True)
        self._retrain_pool.shutdown(wait=True)


def _trim(held: list[tuple[np.ndarray, str | None]], most: int) -> None:
    """Drop the oldest chunks while the rest still hold ``most`` samples."""
    while sum(len(s) for s, _ in held) - len(held[0][0]) >= most:
        held.pop(0)
