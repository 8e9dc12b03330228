"""The service's lifecycle owner: bundle, sessions, engine, face detector, worker threads, metrics,
and the registry of live streams. Created once at start-up; closed at shutdown."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from stream_server.core.bundle import Bundle, load_bundle
from stream_server.core.engine import InferenceEngine
from stream_server.core.faces import Detectors
from stream_server.core.messages import StatusMessage
from stream_server.core.metrics import Metrics
from stream_server.core.pipeline import FramePipeline
from stream_server.core.runtime import Sessions, open_sessions, warm_up
from stream_server.core.stream import Emit, StreamAnalyzer
from stream_server.shell.settings import Settings

log = logging.getLogger(__name__)


class Capacity(Exception):
    """No room for another stream; the message says why."""


class Closable(Protocol):
    async def close(self) -> None: ...


class EndedSessions:
    """The last `keep` webcam sessions that ended away from this process (on a cluster node, in
    an ingest worker) and why each ended (None: closed by its client), so that
    GET /v1/sessions/{id} can tell a page the `error` its dead data channel could not carry."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._why: collections.OrderedDict[str, StatusMessage | None] = collections.OrderedDict()

    def add(self, stream: str, message: StatusMessage | None) -> None:
        self._why[stream] = message
        while len(self._why) > self.keep:
            self._why.popitem(last=False)

    def state(self, stream: str) -> dict[str, Any] | None:
        """`stream`'s `ended` state with its message, or None when it is not kept."""
        if stream not in self._why:
            return None
        msg = self._why[stream]
        return {
            "stream": stream,
            "state": "ended",
            **({"message": msg.to_dict()} if msg is not None else {}),
        }


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.started = time.monotonic()
        self.bundle: Bundle = load_bundle(settings.bundle, precision=settings.precision)
        self.sessions: Sessions = open_sessions(self.bundle, settings.providers, settings.threads)
        warm_up(self.bundle, self.sessions)
        self.detector = Detectors.for_bundle(self.bundle, self.sessions)
        self.engine = InferenceEngine(
            self.bundle,
            self.sessions,
            max_batch=settings.max_batch,
            max_wait_ms=settings.max_wait_ms,
            queue_size=max(8, settings.max_streams * 2),
            metrics=self.metrics,
        )
        # Bounded pool for decode-side conversion and the face stage of all streams.
        self.executor = ThreadPoolExecutor(
            max_workers=min(8, (os.cpu_count() or 2) + 2), thread_name_prefix="face-stage"
        )
        self.streams: dict[str, StreamAnalyzer] = {}
        # Camera viewers re-encode video without an analysed stream of their own: they take a
        # slot of the same --max-streams budget as WebRTC peers and cameras.
        self.viewers: dict[str, Closable] = {}
        self.owners: dict[str, Closable] = {}
        # Webcam sessions in ingest worker processes (--ingest-workers): they take slots of
        # the same budget; `workers` is their pool (shell.workers.WorkerPool), None without.
        self.remote_streams: dict[str, Closable] = {}
        self.workers: Any = None
        self._closing = False
        # Set when shutdown begins: uploads being received or analysed stop and answer 503.
        self.stopping = threading.Event()
        self.stopping_async = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def fps(self) -> float:
        return self.settings.analysis_fps or self.bundle.analysis_fps

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.engine.start()
        log.info(
            "model %s (%s, %s) on %s",
            self.bundle.model_id,
            self.bundle.backbone,
            self.bundle.encoder.precision,
            ",".join(self.sessions.providers),
        )
        if self.bundle.encoder.note:
            log.warning("encoder precision: %s", self.bundle.encoder.note)

    @property
    def load(self) -> int:
        """Slots taken in the --max-streams budget: analysed streams (WebRTC peers, cameras,
        webcam sessions in ingest workers) and camera viewers."""
        return len(self.streams) + len(self.remote_streams) + len(self.viewers)

    def _check_room(self) -> None:
        if self._closing:
            raise Capacity("server is shutting down")
        if self.load >= self.settings.max_streams:
            raise Capacity(
                f"stream limit reached ({self.settings.max_streams} streams, "
                "counting WebRTC peers, cameras and camera viewers)"
            )

    def add_viewer(self, viewer_id: str, owner: Closable) -> None:
        """Take a slot for a camera viewer (raises Capacity when there is none)."""
        self._check_room()
        self.viewers[viewer_id] = owner
        self.owners[f"viewer-{viewer_id}"] = owner

    def remove_viewer(self, viewer_id: str) -> None:
        self.viewers.pop(viewer_id, None)
        self.owners.pop(f"viewer-{viewer_id}", None)

    def new_stream(self, stream_id: str, emit: Emit, owner: Closable) -> StreamAnalyzer:
        self._check_room()
        pipeline = FramePipeline(self.bundle, self.detector, self.engine)
        stream = StreamAnalyzer(
            stream_id,
            pipeline,
            fps=self.fps,
            metrics=self.metrics,
            executor=self.executor,
            emit=emit,
            max_frame_side=self.settings.max_frame_side,
        )
        self.streams[stream_id] = stream
        self.owners[stream_id] = owner
        self.metrics.active_streams.set(len(self.streams))
        stream.start()
        return stream

    async def end_stream(self, stream_id: str) -> None:
        stream = self.streams.pop(stream_id, None)
        self.owners.pop(stream_id, None)
        self.metrics.active_streams.set(len(self.streams))
        if stream is not None:
            await stream.close()

    def not_ready(self) -> str | None:
        """Why the service should get no new work now, or None when it is ready."""
        if self._closing:
            return "shutting down"
        if not self.engine.running:
            return "inference engine not running (warming up, or stopped)"
        if self.workers is not None and not self.workers.any_ready():
            return "no ingest worker is ready (starting, or restarting after a crash)"
        return None

    def health(self) -> dict[str, Any]:
        out = {
            "status": "ok" if self.not_ready() is None else "degraded",
            "model": self.bundle.model_id,
            "backbone": self.bundle.backbone,
            "precision": self.bundle.encoder.precision,
            **({"precision_note": self.bundle.encoder.note} if self.bundle.encoder.note else {}),
            "providers": self.sessions.providers,
            "analysis_fps": self.fps,
            "window": self.bundle.window,
            "threshold": self.bundle.threshold,
            "streams": len(self.streams) + len(self.remote_streams),
            "viewers": len(self.viewers),
            "max_streams": self.settings.max_streams,
            "uptime_s": round(time.monotonic() - self.started, 1),
        }
        if self.workers is not None:
            out["ingest_workers"] = self.workers.snapshot()
        return out

    def begin_shutdown(self) -> None:
        """Refuse new streams and tell in-flight uploads to stop (on the event loop)."""
        self._closing = True
        self.stopping.set()
        self.stopping_async.set()

    async def close(self) -> None:
        self.begin_shutdown()
        owners = list(self.owners.values())
        if owners:
            await asyncio.gather(*(o.close() for o in owners), return_exceptions=True)
        for sid in list(self.streams):
            await self.end_stream(sid)
        if self.workers is not None:
            await self.workers.stop()
        self.engine.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        log.info("service stopped: %d stream(s) closed", len(owners))
