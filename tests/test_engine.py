"""stream_server/core/engine.py: the one inference worker, with stand-in sessions (each crop's
embedding is its mean pixel value; the head's p_fake is the mean of a window's valid steps), so
the batching and failure rules are checked exactly and fast."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from stream_server.core.engine import EngineBusy, EngineStopped, FaceJob, InferenceEngine
from stream_server.core.window import FrameWindow

WINDOW, DIM = 4, 2
BUNDLE: Any = SimpleNamespace(
    encoder=SimpleNamespace(input_name="crops", output_name="embeddings"),
    head=SimpleNamespace(output_name="p_fake", embeddings_name="embeddings", mask_name="mask"),
)


class Encoder:
    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[int] = []
        self.gate = gate
        self.entered = threading.Event()

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        crops = feeds["crops"]
        self.batches.append(len(crops))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        v = crops.reshape(len(crops), -1).mean(1, dtype=np.float32) / 255.0
        return [np.repeat(v[:, None], DIM, axis=1)]


class Head:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.fail:
            raise RuntimeError("head exploded")
        seq, mask = feeds["embeddings"], feeds["mask"]
        p = (seq[..., 0] * mask).sum(1) / mask.sum(1)
        return [p[:, None].astype(np.float32)]


def engine(encoder: Encoder, head: Head | None = None, **kw: Any) -> InferenceEngine:
    sessions: Any = SimpleNamespace(encoder=encoder, head=head or Head())
    e = InferenceEngine(BUNDLE, sessions, **kw)
    e.start()
    return e


def job(*values: int) -> FaceJob:
    crops = np.stack([np.full((8, 8, 3), v, np.uint8) for v in values])
    return FaceJob(crops, [FrameWindow(WINDOW, DIM) for _ in values])


def test_each_crop_is_encoded_once_into_its_window_and_scored_over_the_window() -> None:
    e = engine(Encoder())
    try:
        j = job(51, 102)
        assert e.submit(j).result(10) == pytest.approx([0.2, 0.4])
        assert [w.count for w in j.windows] == [1, 1]
        j2 = FaceJob(np.full((1, 8, 8, 3), 153, np.uint8), [j.windows[0]])  # same track, later
        assert e.submit(j2).result(10) == pytest.approx([0.4])  # mean of 0.2 and 0.6
        assert j.windows[0].count == 2
    finally:
        e.stop()


def test_jobs_queued_while_busy_form_one_micro_batch() -> None:
    gate = threading.Event()
    enc = Encoder(gate)
    e = engine(enc, max_batch=16)
    try:
        first = e.submit(job(10))
        assert enc.entered.wait(10)  # the worker is busy with the first job
        later = [e.submit(job(20, 30)), e.submit(job(40)), e.submit(job(50))]
        gate.set()
        first.result(10)
        for f in later:
            f.result(10)
        assert enc.batches == [1, 4]  # the three queued jobs (4 crops) in one encoder run
    finally:
        gate.set()
        e.stop()


def test_max_batch_bounds_each_encoder_run() -> None:
    enc = Encoder()
    e = engine(enc, max_batch=2)
    try:
        e.submit(job(1, 2, 3, 4, 5)).result(10)  # one job larger than max_batch
        assert enc.batches == [2, 2, 1]
    finally:
        e.stop()


def test_a_full_queue_refuses_the_frame() -> None:
    gate = threading.Event()
    enc = Encoder(gate)
    e = engine(enc, queue_size=2)
    try:
        e.submit(job(1))
        assert enc.entered.wait(10)
        e.submit(job(2))
        e.submit(job(3))
        with pytest.raises(EngineBusy):
            e.submit(job(4))
    finally:
        gate.set()
        e.stop()


def test_a_job_cancelled_while_queued_leaves_the_rest_of_its_batch_scored() -> None:
    """A stream that closes while its frame is in the engine cancels the frame's future; the
    other streams' jobs in the same micro-batch still get their scores (set_result on the
    cancelled future used to raise, failing them all)."""
    gate = threading.Event()
    enc = Encoder(gate)
    e = engine(enc, max_batch=16)
    try:
        first = e.submit(job(10))
        assert enc.entered.wait(10)
        gone, kept = e.submit(job(20)), e.submit(job(40))
        assert gone.cancel()
        gate.set()
        first.result(10)
        assert kept.result(10) == pytest.approx([40 / 255])
        assert gone.cancelled() and enc.batches == [1, 2]
    finally:
        gate.set()
        e.stop()


def test_a_failed_batch_is_reported_to_every_job_never_a_score() -> None:
    e = engine(Encoder(), Head(fail=True))
    try:
        with pytest.raises(RuntimeError, match="head exploded"):
            e.submit(job(1)).result(10)
        assert e.running  # the worker survives and takes the next job
    finally:
        e.stop()


def test_stop_runs_what_is_queued_then_refuses_new_jobs() -> None:
    gate = threading.Event()
    enc = Encoder(gate)
    e = engine(enc)
    first = e.submit(job(51))
    assert enc.entered.wait(10)
    queued = e.submit(job(102))
    threading.Timer(0.2, gate.set).start()
    e.stop()
    assert first.result(10) == pytest.approx([0.2]) and queued.result(10) == pytest.approx([0.4])
    assert not e.running
    with pytest.raises(EngineStopped):
        e.submit(job(3))


def test_jobs_behind_a_worker_that_does_not_stop_in_time_fail_with_engine_stopped() -> None:
    gate = threading.Event()
    enc = Encoder(gate)
    e = engine(enc)
    e.submit(job(1))
    assert enc.entered.wait(10)
    stuck = e.submit(job(2))
    e.stop(timeout=0.2)  # the worker is still inside the encoder
    with pytest.raises(EngineStopped):
        stuck.result(10)
    gate.set()
    e._queue.put(None)  # let the daemon worker end once it is free


def test_a_job_needs_one_window_per_crop() -> None:
    e = engine(Encoder())
    try:
        with pytest.raises(ValueError):
            e.submit(FaceJob(np.zeros((2, 8, 8, 3), np.uint8), [FrameWindow(WINDOW, DIM)]))
        with pytest.raises(ValueError):
            e.submit(FaceJob(np.zeros((0, 8, 8, 3), np.uint8), []))
    finally:
        e.stop()


def test_the_service_encoder_runs_one_intra_op_thread_that_never_spins(tiny_bundle: Any) -> None:
    """Issue #18: the serving default is one intra-op thread for the encoder, and a pool (with
    --threads 0 or more than 1) sleeps between runs instead of spin-waiting: measured on the
    2-core build machine, the spinning pool thread used more CPU than the encoder itself."""
    from stream_server.core.bundle import load_bundle
    from stream_server.core.runtime import open_sessions
    from stream_server.shell.settings import Settings

    bundle = load_bundle(tiny_bundle)
    for threads in (Settings().threads, 0):
        opts = open_sessions(bundle, "cpu", threads).encoder.get_session_options()
        assert opts.intra_op_num_threads == threads
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert Settings().threads == 1
