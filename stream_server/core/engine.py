"""The inference engine: ONE worker thread owns the encoder and head sessions and micro-batches
face crops from all streams (bounded batch size and wait), encodes each crop once, appends the
embedding to its track's window and reruns the head over the windows of the whole micro-batch.

By default it never waits for a batch to fill: it takes whatever is queued when it becomes free
(continuous batching). Under load, jobs queue while a batch runs, so batches grow by themselves;
a lone stream pays no batching delay. `max_wait_ms` > 0 adds a fixed wait for more jobs."""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from stream_server.core.bundle import Bundle
from stream_server.core.metrics import Metrics
from stream_server.core.runtime import Sessions
from stream_server.core.window import FrameWindow

log = logging.getLogger(__name__)


class EngineBusy(Exception):
    """The engine queue is full; the caller drops this frame (newest frame wins)."""


class EngineStopped(Exception):
    """The engine is not running."""


@dataclass
class FaceJob:
    """One analysed frame of one stream: its face crops and each crop's track window."""

    crops: np.ndarray  # (n, size, size, 3) uint8
    windows: list[FrameWindow]
    future: Future[np.ndarray] = field(default_factory=Future)


class InferenceEngine:
    def __init__(
        self,
        bundle: Bundle,
        sessions: Sessions,
        *,
        max_batch: int = 16,
        max_wait_ms: float = 0.0,
        queue_size: int = 256,
        metrics: Metrics | None = None,
    ) -> None:
        self.bundle = bundle
        self.sessions = sessions
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.metrics = metrics
        self._queue: queue.Queue[FaceJob | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="inference-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        t = self._thread
        if t is None:
            return
        self._thread = None
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:  # pragma: no cover - a wedged worker; it is a daemon thread
            pass
        t.join(timeout)
        # Anything still queued will never run.
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None and not job.future.done():
                job.future.set_exception(EngineStopped("engine stopped"))

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, job: FaceJob) -> Future[np.ndarray]:
        """Queue a frame's faces; the future resolves to p_fake per crop (n,) float32."""
        if not self.running:
            raise EngineStopped("engine is not running")
        if len(job.crops) != len(job.windows) or len(job.crops) == 0:
            raise ValueError("a job needs one window per crop and at least one crop")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise EngineBusy("inference queue full") from None
        return job.future

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            batch = [job]
            n = len(job.crops)
            deadline = time.monotonic() + self.max_wait
            stop = False
            while n < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    nxt = (
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
                n += len(nxt.crops)
            try:
                self._process(batch)
            except Exception as exc:  # reported to every waiting stream, never a made-up score
                log.exception("inference failed for a batch of %d crops", n)
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(exc)
            if stop:
                return

    def encode(self, crops: np.ndarray) -> np.ndarray:
        """Embeddings for crops, in encoder runs of at most `max_batch` crops."""
        enc = self.bundle.encoder
        outs = [
            self.sessions.encoder.run(
                [enc.output_name], {enc.input_name: crops[i : i + self.max_batch]}
            )[0]
            for i in range(0, len(crops), self.max_batch)
        ]
        return np.concatenate(outs, axis=0).astype(np.float32, copy=False)

    def _process(self, batch: list[FaceJob]) -> None:
        t0 = time.perf_counter()
        crops = np.concatenate([j.crops for j in batch], axis=0)
        emb = self.encode(crops)
        windows = [w for j in batch for w in j.windows]
        for w, e in zip(windows, emb, strict=True):
            w.push(e)
        h = self.bundle.head
        seq = np.stack([w.buf for w in windows])
        mask = np.stack([w.mask() for w in windows])
        p = self.sessions.head.run([h.output_name], {h.embeddings_name: seq, h.mask_name: mask})[0]
        p = p.reshape(-1).astype(np.float32)
        if self.metrics is not None:
            self.metrics.inference_seconds.observe(time.perf_counter() - t0)
            self.metrics.batch_size.observe(len(crops))
            self.metrics.faces.inc(len(crops))
        i = 0
        for j in batch:
            k = len(j.crops)
            # A stream that closed while its frame was queued or running has cancelled the
            # future: its score is not wanted, and the rest of the batch still gets theirs.
            if j.future.set_running_or_notify_cancel():
                j.future.set_result(p[i : i + k])
            i += k
