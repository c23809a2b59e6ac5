"""The run state machine, transition by transition, on a fake store: no RunEngine, no server, no Dask."""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest
from event_model import compose_run

from tomolive.callbacks import TomoPipeline
from tomolive.engine import Engine, RunState
from tomolive.engine.run import TRANSITIONS
from tomolive.errors import ResultExistsError

from .toy_technique import StageThatFails, SumStage, SumTechnique, memory_opener

FRAME = np.ones((4, 6), np.uint16)


@pytest.fixture
def stores():
    return {}


@pytest.fixture
def engine(tmp_path, stores):
    with Engine(
        open_store=memory_opener(stores), outbox_dir=tmp_path / "outbox", patience_s=0.2, progress=False
    ) as engine:
        events = []
        engine.subscribe(lambda kind, payload: events.append((kind, payload["uid"], payload["reason"])))
        engine.seen = events
        yield engine


def feed(engine, uid="r1", n=3, technique=None):
    run = engine.start_run(technique or SumTechnique(), uid, {"sample": "toy"})
    for _ in range(n):
        run.add("frame", FRAME)
    return run


def test_frames_then_finish_complete_the_run(engine, stores):
    run = feed(engine)
    assert run.state is RunState.INGESTING
    run.finish()
    outcome = engine.wait("r1", timeout=10)
    assert outcome.status == "complete" and run.state is RunState.COMPLETE
    store = stores["r1"]
    assert store.statuses == ["complete"] and store.metadata["stages"] == ["sum"]
    np.testing.assert_array_equal(store.arrays["sum"].data[0], 3 * FRAME)
    assert store.metadata["n_frames"] == 3 and store.metadata["provenance"]["parameters"]["technique"] == "sum"
    assert engine.seen == [("complete", "r1", None)]
    engine.io.submit(lambda: None).result()  # release runs on an I/O thread after the outcome
    assert run.acquisition.released


def test_stop_before_any_frame_fails_the_run(engine, stores):
    run = engine.start_run(SumTechnique(), "empty", {})
    run.finish()
    outcome = engine.wait("empty", timeout=10)
    assert outcome.status == "failed" and "no frame arrived" in outcome.reason
    assert run.state is RunState.FAILED and stores["empty"].statuses == ["failed"]
    assert run.acquisition.discarded


def test_abort_mid_ingest_drops_later_frames_and_the_finish(engine, stores):
    run = feed(engine, "aborted")
    run.end("aborted", "operator stopped it")
    run.add("frame", FRAME)  # dropped: the run has ended
    run.finish()  # ignored: ABORTED is final
    outcome = engine.wait("aborted", timeout=10)
    assert outcome.status == "aborted" and outcome.reason == "operator stopped it"
    assert run.state is RunState.ABORTED and stores["aborted"].statuses == ["aborted"]
    assert engine.seen == [("aborted", "aborted", "operator stopped it")]


def test_a_second_end_is_ignored(engine, stores):
    run = feed(engine, "twice")
    run.end("failed", "first reason")
    run.end("aborted", "second reason")
    assert engine.wait("twice", timeout=10).reason == "first reason"
    assert stores["twice"].statuses == ["failed"]


def test_a_bad_frame_fails_the_run_naming_it(engine, stores):
    run = feed(engine, "bad")
    run.add("dark", FRAME)  # the sum technique takes only 'frame's
    outcome = engine.wait("bad", timeout=10)
    assert outcome.status == "failed" and "'dark'" in outcome.reason and run.state is RunState.FAILED


@pytest.mark.parametrize("broken", [0, 1, 2])
def test_a_failure_in_any_stage_fails_the_run_and_runs_no_later_stage(engine, stores, broken):
    ran = []

    class Recorded:
        def __init__(self, name):
            self.name = name

        def run(self, ctx):
            ran.append(self.name)

    stages = [Recorded("a"), Recorded("b"), Recorded("c")]
    stages[broken] = StageThatFails(f"s{broken}")
    run = feed(engine, "staged", technique=SumTechnique(stages))
    run.finish()
    outcome = engine.wait("staged", timeout=10)
    assert outcome.status == "failed" and f"stage s{broken} broke" in outcome.reason
    assert ran == ["a", "b", "c"][:broken]
    assert run.state is RunState.FAILED and stores["staged"].statuses == ["failed"]
    assert run.acquisition.discarded


def test_a_complete_result_is_never_changed_by_a_late_document(engine, stores):
    run = feed(engine, "late")
    run.finish()
    assert engine.wait("late", timeout=10).status == "complete"
    run.invalidate("a stray event after the stop")
    assert engine.wait("late", timeout=10).status == "complete"
    assert run.state is RunState.COMPLETE and stores["late"].statuses == ["complete"]
    assert [kind for kind, *_ in engine.seen] == ["complete"]


def test_a_document_breaking_a_run_while_it_processes_marks_it_failed_not_complete(engine, stores):
    started, release = threading.Event(), threading.Event()

    class Slow:
        name = "slow"

        def run(self, ctx):
            started.set()
            release.wait(10)

    run = feed(engine, "broken-late", technique=SumTechnique([Slow()]))
    run.finish()
    assert started.wait(10)
    run.invalidate("an event after the stop")
    release.set()
    outcome = engine.wait("broken-late", timeout=10)
    assert outcome.status == "failed" and "an event after the stop" in outcome.reason
    assert stores["broken-late"].statuses == ["failed"] and run.state is RunState.FAILED


def test_invalidate_while_ingesting_ends_the_run(engine, stores):
    run = feed(engine, "broken")
    run.invalidate("malformed document")
    assert engine.wait("broken", timeout=10).status == "failed" and run.state is RunState.FAILED


def test_final_states_are_final():
    assert TRANSITIONS[RunState.FAILED] == TRANSITIONS[RunState.ABORTED] == TRANSITIONS[RunState.COMPLETE] == set()
    assert RunState.COMPLETE not in TRANSITIONS[RunState.INGESTING]


def test_a_run_whose_uid_has_a_result_is_refused_and_touches_nothing(tmp_path):
    def exists(uid, metadata, new_version):
        raise ResultExistsError(f"processed/{uid} already exists")

    with Engine(open_store=exists, outbox_dir=tmp_path, patience_s=0.1, progress=False) as engine:
        run = feed(engine, "reused")
        outcome = engine.wait("reused", timeout=10)
    assert outcome.status == "failed" and "already exists" in outcome.reason and outcome.uri is None
    assert run.state is RunState.FAILED and not list(tmp_path.iterdir())  # nothing in the outbox either


def test_an_unreachable_store_sends_the_result_to_the_outbox(tmp_path):
    def unreachable(uid, metadata, new_version):
        raise httpx.ConnectError("connection refused")

    with Engine(open_store=unreachable, outbox_dir=tmp_path, patience_s=0.1, progress=False) as engine:
        run = feed(engine, "offline", technique=SumTechnique([SumStage()]))
        run.finish()
        outcome = engine.wait("offline", timeout=10)
    assert outcome.status == "complete" and outcome.uri is None and "unreachable" in outcome.reason
    import zarr

    stored = zarr.open_array(str(tmp_path / "offline" / "sum.zarr"), mode="r")
    np.testing.assert_array_equal(stored[0], 3 * FRAME)


# -- the document router on the same fake engine -------------------------------------------


@pytest.fixture
def router(tmp_path, stores):
    pipe = TomoPipeline(
        None, techniques=[SumTechnique()], open_store=memory_opener(stores), outbox_dir=tmp_path, progress=False
    )
    yield pipe
    pipe.close()


def documents(n_frames=2, exit_status="success"):
    bundle = compose_run(metadata={"sum_image": "img", "sample": "toy"})
    yield "start", bundle.start_doc
    desc = bundle.compose_descriptor(
        name="primary", data_keys={"img": {"source": "sim", "dtype": "array", "shape": [4, 6]}}
    )
    yield "descriptor", desc.descriptor_doc
    for i in range(n_frames):
        yield "event", desc.compose_event(data={"img": FRAME}, timestamps={"img": float(i)})
    yield "stop", bundle.compose_stop(exit_status=exit_status)


def test_router_sums_a_run(router, stores):
    docs = list(documents())
    for name, doc in docs:
        router(name, doc)
    uid = docs[0][1]["uid"]
    assert router.wait(uid, timeout=10).status == "complete"
    np.testing.assert_array_equal(stores[uid].arrays["sum"].data[0], 2 * FRAME)


def test_router_stop_before_descriptor_fails_the_run(router):
    start, *_, stop = list(documents())
    router(*start)
    router(*stop)
    outcome = router.wait(start[1]["uid"], timeout=10)
    assert outcome.status == "failed" and "no frame arrived" in outcome.reason


def test_router_abort_marks_the_run_aborted(router):
    docs = list(documents(exit_status="abort"))
    for name, doc in docs:
        router(name, doc)
    assert router.wait(docs[0][1]["uid"], timeout=10).status == "aborted"


def test_router_ignores_runs_no_technique_claims(router):
    bundle = compose_run(metadata={"sample": "plain count"})
    router("start", bundle.start_doc)
    router("stop", bundle.compose_stop())
    with pytest.raises(TimeoutError):
        router.wait(bundle.start_doc["uid"], timeout=0.3)


def test_router_fails_a_run_whose_start_the_technique_rejects(router):
    bundle = compose_run(metadata={"sum_image": 5})
    router("start", bundle.start_doc)
    outcome = router.wait(bundle.start_doc["uid"], timeout=10)
    assert outcome.status == "failed" and "sum_image must name the image field" in outcome.reason


def test_router_drops_a_stray_event_without_failing_the_open_run(router, stores):
    docs = list(documents())
    for name, doc in docs[:-1]:
        router(name, doc)
    stray = {**docs[2][1], "descriptor": "no-such-descriptor", "uid": "stray"}
    router("event", stray)  # names no descriptor any run announced: dropped
    router("bogusname", {"uid": "x"})  # an unknown document name: dropped
    router(*docs[-1])
    uid = docs[0][1]["uid"]
    assert router.wait(uid, timeout=10).status == "complete"
    np.testing.assert_array_equal(stores[uid].arrays["sum"].data[0], 2 * FRAME)


def test_router_keeps_a_complete_result_when_its_events_come_again(router, stores):
    docs = list(documents())
    for name, doc in docs:
        router(name, doc)
    uid = docs[0][1]["uid"]
    assert router.wait(uid, timeout=10).status == "complete"
    router(*docs[2])  # a replayed event of the finished run
    assert router.wait(uid, timeout=10).status == "complete" and stores[uid].statuses == ["complete"]
