"""RTSP camera monitoring: a registry of cameras, each decoded once by a PyAV thread (TCP, low
probe delay, newest frame wins), scored through the shared engine, published to live feeds and
WebRTC viewers, reconnected with capped exponential backoff when it drops or stalls."""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
import time
import uuid
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import av

from stream_server.core.frames import FrameTooLarge, pixel_options
from stream_server.core.messages import ScoreMessage, StatusMessage
from stream_server.shell.alerts import AlertTracker, WebhookNotifier
from stream_server.shell.camera_url import (
    CameraAddressError,
    check_url,
    identity,
    redact,
    resolve_checked,
)
from stream_server.shell.rtsp_relay import RtspRelay
from stream_server.shell.service import Capacity, Service

log = logging.getLogger(__name__)

Message = ScoreMessage | StatusMessage

# FFmpeg talks only to the relay on loopback, over TCP: no UDP, TLS, HTTP tunnelling or files.
RTSP_OPTIONS = {
    "rtsp_transport": "tcp",
    "analyzeduration": "0",
    "probesize": "32",
    "protocol_whitelist": "rtsp,tcp",
    "max_delay": "500000",  # reorder at most 0.5 s of packets
    "reorder_queue_size": "64",
}


class DuplicateCamera(Exception):
    """The same camera (same URL once normalised, credentials aside) is already registered."""

    def __init__(self, camera_id: str) -> None:
        super().__init__(f"this camera is already registered (id {camera_id})")
        self.camera_id = camera_id


UNREACHABLE = "camera unreachable: no RTSP video source answered"


def relay_url(url: str, port: int) -> str:
    """The camera URL as FFmpeg opens it: the same credentials, path and query, but the host
    is the relay's loopback listener (which speaks TLS to an rtsps:// camera itself)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    cred = userinfo + "@" if userinfo else ""
    return f"rtsp://{cred}127.0.0.1:{port}{parts.path}" + (f"?{parts.query}" if parts.query else "")


class RtspReader:
    """A decode thread: on every attempt resolve and check the camera's address, open it through
    a fresh `RtspRelay`, decode, hand frames to the loop; on failure wait and reopen.

    Failures before a session is described share one message (`UNREACHABLE`), so the status
    never tells a closed port from an open one that speaks something else."""

    def __init__(self, camera: Camera, loop: asyncio.AbstractEventLoop) -> None:
        self.camera = camera
        self.loop = loop
        self.stop_event = threading.Event()
        s = camera.registry.service.settings
        self.allow = s.camera_allow
        self.stall = s.camera_stall_seconds
        self.backoff_cap = s.camera_backoff_max
        self.max_pixels = s.max_frame_pixels
        self.relay: RtspRelay | None = None
        self.attempts = 0  # connection attempts that reached the relay (a checked address)
        self.thread = threading.Thread(target=self._run, name=f"rtsp-{camera.id}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop now, also mid-connect: cutting the relay ends FFmpeg's blocking read."""
        self.stop_event.set()
        relay = self.relay
        if relay is not None:
            relay.close()

    def _call(self, fn: Any, *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed during shutdown
            self.stop_event.set()

    def _connect(self) -> tuple[Any, RtspRelay] | str:
        """An open container, or why there is none (a message safe to show)."""
        url = self.camera.url
        try:
            address, port = resolve_checked(url, self.allow)
        except CameraAddressError as exc:
            return str(exc)
        except (OSError, UnicodeError):
            return "camera host name does not resolve"
        parts = urlsplit(url)
        tls_host = (parts.hostname or "") if parts.scheme.lower() == "rtsps" else None
        started = time.monotonic()
        relay = RtspRelay(address, port, tls_host=tls_host, timeout=self.stall).start()
        self.relay = relay
        self.attempts += 1
        if self.stop_event.is_set():
            relay.close()
            return "stopped"
        try:
            container = av.open(
                relay_url(url, relay.port),
                format="rtsp",
                timeout=(self.stall, self.stall),
                options={**RTSP_OPTIONS, **pixel_options(self.max_pixels)},
            )
        except Exception as exc:
            relay.close()
            relay.thread.join(2)
            log.debug("camera %s open failed: %s", self.camera.id, type(exc).__name__)
            if relay.failure:
                return f"camera refused: {relay.failure}"
            if relay.described:
                return f"camera sent no video within {self.stall:g} s"
            # Not even the time it took may tell a closed port from a silent one.
            self.stop_event.wait(max(0.0, started + self.stall - time.monotonic()))
            return UNREACHABLE
        if not container.streams.video:
            container.close()
            relay.close()
            return "camera offers no video stream"
        cc = container.streams.video[0].codec_context
        if cc.width * cc.height > self.max_pixels:  # from the session's header, before decoding
            container.close()
            relay.close()
            return f"camera {FrameTooLarge(cc.width, cc.height, self.max_pixels)}"
        cc.options = {**cc.options, **pixel_options(self.max_pixels)}  # also if it grows later
        return container, relay

    def _run(self) -> None:
        delay = 0.5
        ever_connected = False
        while not self.stop_event.is_set():
            opened = self._connect()
            if isinstance(opened, str):
                if self.stop_event.is_set():
                    return
                self._call(self.camera.on_error, opened)
                if self.stop_event.wait(delay):
                    return
                delay = min(self.backoff_cap, delay * 2)
                continue
            container, relay = opened
            self._call(self.camera.on_connected, ever_connected)
            ever_connected = True
            delay = 0.5
            reason = "stream ended"
            try:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    if self.stop_event.is_set():
                        break
                    self._call(self.camera.on_frame, frame)
            except Exception as exc:
                relay.close()
                relay.thread.join(2)
                reason = self._decode_failure(exc, relay)
            finally:
                container.close()
                relay.close()
            if self.stop_event.is_set():
                return
            self._call(self.camera.on_lost, reason)
            if self.stop_event.wait(delay):
                return
            delay = min(self.backoff_cap, delay * 2)

    def _decode_failure(self, exc: Exception, relay: RtspRelay) -> str:
        log.debug("camera %s stream failed: %s", self.camera.id, type(exc).__name__)
        if relay.failure:
            return f"camera refused: {relay.failure}"
        # av.TimeoutError is a TimeoutError; any other OSError that timed out carries ETIMEDOUT.
        timed_out = isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT
        if isinstance(exc, av.ExitError | TimeoutError) or timed_out:
            return f"no frames for {self.stall:g} s"
        if isinstance(exc, av.InvalidDataError):
            return "camera sent video that could not be decoded"
        return "connection to the camera was lost"


class Camera:
    def __init__(self, registry: CameraRegistry, url: str, name: str) -> None:
        self.registry = registry
        self.id = uuid.uuid4().hex[:10]
        self.url = url
        self.key = identity(url)
        self.name = name
        self.status = "connecting"
        self.error: str | None = None
        self.reconnects = 0
        self.last_score: dict[str, Any] | None = None
        self.frames = 0
        self._frame_times: deque[float] = deque(maxlen=60)
        self.subscribers: set[asyncio.Queue[Message]] = set()
        self.latest: av.VideoFrame | None = None
        self.frame_seq = 0
        self.new_frame = asyncio.Event()
        svc = registry.service
        self.alerts = AlertTracker(svc.bundle.threshold, svc.settings.alert_seconds)
        self.stream = svc.new_stream(self.id, self.publish, self)
        self.reader = RtspReader(self, asyncio.get_running_loop())
        self.reader.start()

    # -- from the decode thread (via the loop) ---------------------------------------------------
    def on_frame(self, frame: av.VideoFrame) -> None:
        now = time.monotonic()
        self.frames += 1
        self._frame_times.append(now)
        self.latest = frame
        self.frame_seq += 1
        self.new_frame.set()
        self.new_frame = asyncio.Event()
        self.stream.offer_frame(frame, t=now)

    def on_connected(self, reconnect: bool) -> None:
        self.status, self.error = "live", None
        if reconnect:
            self.reconnects += 1
            self.publish(StatusMessage("reconnected", self.id, f"reconnect {self.reconnects}"))
        else:
            self.publish(StatusMessage("connected", self.id, self.name))

    def on_lost(self, reason: str) -> None:
        self.status, self.error = "lost", reason
        log.info("camera %s lost: %s", self.id, reason)
        self.publish(StatusMessage("source_lost", self.id, reason))

    def on_error(self, reason: str) -> None:
        first = self.error != reason
        self.status, self.error = ("error" if self.status != "lost" else "lost"), reason
        if first:
            log.info("camera %s: %s", self.id, reason)
            self.publish(StatusMessage("error", self.id, reason))

    # -- out ---------------------------------------------------------------------------------
    def publish(self, msg: Message) -> None:
        if isinstance(msg, ScoreMessage):
            self.last_score = {
                "seq": msg.seq,
                "p_fake": msg.p_fake,
                "label": msg.label,
                "faces": len(msg.faces),
            }
            for alert in self.alerts.update(msg):
                self.registry.notifier.notify(
                    {
                        "type": "alert",
                        "camera": self.id,
                        "name": self.name,
                        **alert,
                        "model": msg.model,
                        "t": msg.t,
                    }
                )
        for q in list(self.subscribers):
            if q.full():  # a slow reader loses the oldest message, never blocks scoring
                q.get_nowait()
            q.put_nowait(msg)

    def subscribe(self) -> asyncio.Queue[Message]:
        q: asyncio.Queue[Message] = asyncio.Queue(maxsize=64)
        self.subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[Message]) -> None:
        self.subscribers.discard(q)

    @property
    def fps(self) -> float:
        ts = [t for t in self._frame_times if t > time.monotonic() - 5]
        return round((len(ts) - 1) / (ts[-1] - ts[0]), 2) if len(ts) > 2 and ts[-1] > ts[0] else 0.0

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "url": redact(self.url),
            "status": self.status,
            "error": self.error,
            "fps": self.fps,
            "frames": self.frames,
            "reconnects": self.reconnects,
            "dropped": self.stream.dropped,
            "last_score": self.last_score,
            "viewers": len(self.subscribers),
        }

    async def close(self) -> None:
        self.reader.stop()
        await self.registry.service.end_stream(self.id)
        self.registry.cameras.pop(self.id, None)
        # The relay is cut, so FFmpeg returns at once; a thread stuck in a name lookup is a
        # daemon and is not waited for longer than this.
        await asyncio.get_running_loop().run_in_executor(None, self.reader.thread.join, 3)


class CameraRegistry:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.cameras: dict[str, Camera] = {}
        self.notifier = WebhookNotifier(service.settings.webhooks)

    def start(self) -> None:
        self.notifier.start()

    def add(self, url: object, name: object = None) -> Camera:
        s = self.service.settings
        if name is not None and (not isinstance(name, str) or not 0 < len(name) <= 100):
            raise ValueError("name must be a string of 1 to 100 characters")
        checked = check_url(url, s.camera_allow)
        if name is None:
            name = redact(checked)
        key = identity(checked)
        same = next((c for c in self.cameras.values() if c.key == key), None)
        if same is not None:
            raise DuplicateCamera(same.id)
        if len(self.cameras) >= s.max_cameras:
            raise Capacity(f"camera limit reached ({s.max_cameras} cameras)")
        cam = Camera(self, checked, name)
        self.cameras[cam.id] = cam
        log.info("camera %s registered: %s (%s)", cam.id, name, redact(checked))
        return cam

    async def remove(self, camera_id: str) -> bool:
        cam = self.cameras.get(camera_id)
        if cam is None:
            return False
        await cam.close()
        return True

    async def close(self) -> None:
        cams = list(self.cameras.values())
        for cam in cams:  # cut every camera first, then wait for them together
            cam.reader.stop()
        await asyncio.gather(*(cam.close() for cam in cams), return_exceptions=True)
        await self.notifier.close()
