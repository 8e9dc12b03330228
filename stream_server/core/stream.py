"""One analysed video stream: newest-frame-wins intake, sampling at the analysis rate, analysis
off the event loop, score and status messages out. Sources (WebRTC, RTSP, files) feed it frames."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from stream_server.core.engine import EngineBusy
from stream_server.core.frames import MAX_FRAME_SIDE, FrameSampler, StreamClock, to_rgb
from stream_server.core.messages import ScoreMessage, StatusMessage
from stream_server.core.metrics import Metrics
from stream_server.core.pipeline import FramePipeline, FrameResult

log = logging.getLogger(__name__)

Emit = Callable[[ScoreMessage | StatusMessage], None]
# Called after each analysed frame with the exact RGB array analysed (for recording and checks).
Tap = Callable[[np.ndarray, FrameResult, ScoreMessage], None]


# Decode-side conversion to RGB with the downscale rule: the one frame source's (kept under the
# name this module used to define).
frame_to_rgb = to_rgb


@dataclass
class _Due:
    frame: av.VideoFrame | np.ndarray
    t: float
    received: float


# A live stream's media time may run ahead of the wall clock by this much (bursts, jitter)
# before the stream clock counts a forward jump and re-bases (see `StreamClock`).
CLOCK_MAX_JUMP = 5.0
# A stream whose clock keeps jumping is told at most this often (every jump is counted).
CLOCK_NOTICE_SECONDS = 1.0


class StreamAnalyzer:
    def __init__(
        self,
        stream_id: str,
        pipeline: FramePipeline,
        *,
        fps: float,
        metrics: Metrics,
        executor: Executor,
        emit: Emit,
        max_frame_side: int = MAX_FRAME_SIDE,
    ) -> None:
        self.id = stream_id
        self.pipeline = pipeline
        self.sampler = FrameSampler(fps)
        self.metrics = metrics
        self.executor = executor
        self.emit = emit
        self.max_frame_side = max_frame_side
        self.taps: list[Tap] = []
        self.dropped = 0
        self.seq = 0
        self.clock = StreamClock(max_jump=CLOCK_MAX_JUMP)
        self.clock_noticed: float | None = None
        self._slot: _Due | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- intake (on the event loop; cheap) -------------------------------------------------
    def offer_frame(self, frame: av.VideoFrame | np.ndarray, t: float | None = None) -> bool:
        """Hand over a decoded frame; returns True if it was taken for analysis.

        `t` is stream time in seconds (default: the frame's own timestamp, else arrival time).
        A due frame replaces one the analyser has not started yet: newest wins, the other is
        counted as dropped. Stream time never goes back: when the source's clock jumps (a
        looping file, an encoder restart) it is re-based, counted in
        deepfake_stream_clock_jumps_total and the client gets a `reconnected` status message.
        """
        now = time.monotonic()
        self.metrics.frames_received.inc()
        if t is None:
            ft = getattr(frame, "time", None)
            t = float(ft) if ft is not None else now
        jumps = self.clock.jumps
        t = self.clock(t, now)
        if self.clock.jumps != jumps:
            self._clock_jumped(t, now)
        if not self.sampler.due(t):
            return False
        if self._slot is not None:
            self.dropped += 1
            self.metrics.frames_dropped.inc()
        self._slot = _Due(frame, t, now)
        self._wake.set()
        return True

    def _clock_jumped(self, t: float, now: float) -> None:
        self.metrics.clock_jumps.inc()
        if self.clock_noticed is not None and now - self.clock_noticed < CLOCK_NOTICE_SECONDS:
            return
        self.clock_noticed = now
        jump = self.clock.last_jump
        way = "back" if jump < 0 else "forward"
        log.info("stream %s: source clock jumped %s %.3f s; re-based", self.id, way, abs(jump))
        self.emit(
            StatusMessage(
                "reconnected",
                self.id,
                f"source clock jumped {way} {abs(jump):.3f} s (looping source or encoder "
                f"restart); stream clock re-based, continuing at t={t:.3f} s",
            )
        )

    # -- analysis loop -----------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"analyse-{self.id}"
            )

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._slot = None

    def _prepare(self, due: _Due) -> Any:
        rgb = (
            due.frame
            if isinstance(due.frame, np.ndarray)
            else to_rgb(due.frame, self.max_frame_side)
        )
        return rgb, self.pipeline.prepare(rgb)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            due, self._slot = self._slot, None
            if due is None:
                continue
            try:
                rgb, prepared = await loop.run_in_executor(self.executor, self._prepare, due)
                if prepared.tracks:
                    fut = self.pipeline.engine.submit(self.pipeline.job(prepared))
                    probs = await asyncio.wrap_future(fut)
                else:
                    probs = np.zeros(0, np.float32)
                result = self.pipeline.label(prepared, probs)
            except EngineBusy:
                self.dropped += 1
                self.metrics.frames_dropped.inc()
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reported, never replaced by a made-up score
                log.exception("analysis failed on stream %s", self.id)
                self.metrics.errors.inc()
                self.emit(StatusMessage("error", self.id, f"analysis failed: {type(exc).__name__}"))
                continue
            latency = time.monotonic() - due.received
            self.metrics.frames_analysed.inc()
            self.metrics.score_latency.observe(latency)
            msg = ScoreMessage(
                stream=self.id,
                seq=self.seq,
                t=due.t,
                p_fake=result.p_fake,
                label=result.label,
                faces=result.faces,
                latency_ms=latency * 1000.0,
                dropped=self.dropped,
                model=self.pipeline.bundle.model_id,
            )
            self.seq += 1
            for tap in self.taps:
                tap(rgb, result, msg)
            self.emit(msg)
