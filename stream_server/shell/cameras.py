"""RTSP camera monitoring: a registry of cameras, each decoded once by a PyAV thread (TCP, low
probe delay, newest frame wins), scored through the shared engine, published to live feeds and
WebRTC viewers, reconnected with capped exponential backoff when it drops or stalls."""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import av

from stream_server.core.frames import FrameTooLarge, pixel_options
from stream_server.core.messages import ScoreMessage, StatusMessage
from stream_server.shell.alerts import AlertTracker, Notifiers, WebhookNotifier
from stream_server.shell.camera_url import (
    CameraAddressError,
    CameraUrlError,
    check_url,
    identity,
    redact,
    resolve_checked,
)
from stream_server.shell.rtsp_relay import RtspRelay
from stream_server.shell.service import Capacity, Service
from stream_server.shell.store import (
    CameraSpec,
    Minute,
    Source,
    Store,
    StoreError,
    check_alert_seconds,
    check_camera_id,
    check_name,
    load_cameras_file,
    slugify,
    unknown_keys,
)

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

# Non-reference frames (most B-frames) are not decoded while a camera sends at least
# SKIP_NONREF_RATIO times the analysis rate and no viewer watches its video; decoding goes back
# to every frame when fewer than SKIP_NONREF_FLOOR times the analysis rate would be left.
SKIP_NONREF_RATIO = 4.0
SKIP_NONREF_FLOOR = 1.5


class NonRefSkip:
    """Whether a camera's decoder skips non-reference frames (FFmpeg's skip_frame NONREF): they
    are half or more of a stream with B-frames and no other frame depends on them, so skipping
    them halves the decode for an analysis that takes 5 of 30 frames a second (measured in
    docs/performance.md); a stream without them (IPPP, as many cameras send) is unchanged.
    Judged once a second from the decoded rate; at once when a viewer starts watching (it gets
    every frame); for good on this connection when too few frames would be left."""

    def __init__(self, analysis_fps: float) -> None:
        self.fps = analysis_fps
        self.on = False
        self.too_sparse = False
        self.window_start: float | None = None
        self.count = 0

    def frame(self, codec_context: Any, now: float, watched: bool) -> None:
        if self.on and watched:
            self._set(codec_context, False)
        if self.window_start is None:
            self.window_start, self.count = now, 0
        self.count += 1
        if now - self.window_start < 1.0:
            return
        rate = (self.count - 1) / (now - self.window_start)
        self.window_start, self.count = now, 1
        if self.on and rate < SKIP_NONREF_FLOOR * self.fps:
            self._set(codec_context, False)
            self.too_sparse = True
        elif not self.on and not watched and not self.too_sparse:
            if rate >= SKIP_NONREF_RATIO * self.fps:
                self._set(codec_context, True)

    def _set(self, codec_context: Any, on: bool) -> None:
        codec_context.skip_frame = "NONREF" if on else "DEFAULT"
        self.on = on
        self.window_start = None  # the next window measures the new rate


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
                skip = NonRefSkip(self.camera.registry.service.fps)
                for frame in container.decode(stream):
                    if self.stop_event.is_set():
                        break
                    self._call(self.camera.on_frame, frame)
                    skip.frame(stream.codec_context, time.monotonic(), self.camera.viewers > 0)
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


class Watched:
    """What WebRTC viewers (`webrtc.ViewerSession`) and feeds watch of a camera, wherever it is
    decoded (`Camera` here, `cluster_cameras.NodeCamera` in a camera's actor on a cluster node):
    its newest decoded frame with a sequence number and an event set when the next arrives, its
    decoded frame count and rate, and its messages fanned out to subscribers."""

    def _init_watched(self) -> None:
        self.frames = 0
        self._frame_times: deque[float] = deque(maxlen=60)
        self.subscribers: set[asyncio.Queue[Message]] = set()
        self.latest: av.VideoFrame | None = None
        self.viewers = 0  # WebRTC viewers relaying its video: they need every frame decoded
        self.frame_seq = 0
        self.new_frame = asyncio.Event()

    def frame_arrived(self, frame: av.VideoFrame, now: float) -> None:
        self.frames += 1
        self._frame_times.append(now)
        self.latest = frame
        self.frame_seq += 1
        self.new_frame.set()
        self.new_frame = asyncio.Event()

    def fan_out(self, msg: Message) -> None:
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


class Camera(Watched):
    def __init__(self, registry: CameraRegistry, spec: CameraSpec) -> None:
        self._init_state(registry, spec)
        self.stream = registry.service.new_stream(self.id, self.publish, self)
        self.reader = RtspReader(self, asyncio.get_running_loop())
        self.reader.start()

    def _init_state(self, registry: CameraRegistry, spec: CameraSpec) -> None:
        """What the registry, feeds, history and alerts read of a camera, wherever it is decoded
        (here, or on a cluster node for `cluster_cameras.RemoteCamera`)."""
        self.registry = registry
        self.spec = spec
        self.id = spec.id
        self.key = identity(spec.url)
        self.status = "connecting"
        self.error: str | None = None
        self.reconnects = 0
        self.last_score: dict[str, Any] | None = None
        self._init_watched()
        self.minute: Minute | None = None  # this wall-clock minute's scores, not yet kept
        self.alerts = AlertTracker(registry.service.bundle.threshold, self.alert_seconds)

    @property
    def url(self) -> str:
        return self.spec.url

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def alert_seconds(self) -> float:
        own = self.spec.alert_seconds
        return self.registry.service.settings.alert_seconds if own is None else own

    def apply(self, spec: CameraSpec) -> None:
        """New settings for this camera: a new URL reconnects it."""
        old, self.spec = self.spec, spec
        self.alerts.hold_seconds = self.alert_seconds
        if spec.url != old.url:
            self.key = identity(spec.url)
            self.reader.stop()
            self.status, self.error = "connecting", None
            self.reader = RtspReader(self, asyncio.get_running_loop())
            self.reader.start()

    def flush_minute(self, now: float | None = None) -> None:
        """Keeps the minute being counted once it is over (or at once when `now` is None)."""
        m = self.minute
        if m is None or (now is not None and int(now // 60) == m.minute):
            return
        self.minute = None
        self.registry.minute_done(self, m)

    # -- from the decode thread (via the loop) ---------------------------------------------------
    def on_frame(self, frame: av.VideoFrame) -> None:
        now = time.monotonic()
        self.frame_arrived(frame, now)
        self.stream.offer_frame(frame, t=now)

    def on_connected(self, reconnect: bool) -> None:
        self.status, self.error = "live", None
        if reconnect:
            self.reconnects += 1
            self.publish(StatusMessage("reconnected", self.id, f"reconnect {self.reconnects}"))
        else:
            self.publish(StatusMessage("connected", self.id, self.name))
        self.registry.status_changed(self)

    def on_lost(self, reason: str) -> None:
        self.status, self.error = "lost", reason
        log.info("camera %s lost: %s", self.id, reason)
        self.publish(StatusMessage("source_lost", self.id, reason))
        self.registry.status_changed(self)

    def on_error(self, reason: str) -> None:
        first = self.error != reason
        self.status, self.error = ("error" if self.status != "lost" else "lost"), reason
        if first:
            log.info("camera %s: %s", self.id, reason)
            self.publish(StatusMessage("error", self.id, reason))
            self.registry.status_changed(self)

    # -- out ---------------------------------------------------------------------------------
    def publish(self, msg: Message) -> None:
        if isinstance(msg, ScoreMessage):
            self.last_score = {
                "seq": msg.seq,
                "p_fake": msg.p_fake,
                "label": msg.label,
                "faces": len(msg.faces),
            }
            now = time.time()
            self.flush_minute(now)
            if self.minute is None:
                self.minute = Minute(int(now // 60))
            self.minute.add(msg.p_fake, msg.label)
            for alert in self.alerts.update(msg):
                self.registry.alert(self, alert, msg, now)
        self.fan_out(msg)

    @property
    def dropped(self) -> int:
        return self.stream.dropped

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "url": redact(self.url),
            "alert_seconds": self.spec.alert_seconds,
            "source": self.spec.source,
            "status": self.status,
            "error": self.error,
            "fps": self.fps,
            "frames": self.frames,
            "reconnects": self.reconnects,
            "dropped": self.dropped,
            "last_score": self.last_score,
            "viewers": len(self.subscribers),
        }

    async def close(self) -> None:
        self.reader.stop()
        self.flush_minute()
        await self.registry.service.end_stream(self.id)
        self.registry.cameras.pop(self.id, None)
        # The relay is cut, so FFmpeg returns at once; a thread stuck in a name lookup is a
        # daemon and is not waited for longer than this.
        await asyncio.get_running_loop().run_in_executor(None, self.reader.thread.join, 3)


class ReadOnlyCamera(Exception):
    """A camera declared in --cameras-file: the file, not the API, changes it."""

    def __init__(self, camera_id: str) -> None:
        super().__init__(
            f"camera {camera_id} is declared in --cameras-file: change or remove it there"
        )


class CameraTaken(Exception):
    """The id asked for is another camera's."""

    def __init__(self, camera_id: str) -> None:
        super().__init__(f"camera id {camera_id!r} is taken")
        self.camera_id = camera_id


class CameraRegistry:
    """The cameras being monitored, kept in the state database (`store`): registered ones
    come back with the same id and settings after a restart."""

    def __init__(self, service: Service, store: Store, notifiers: Notifiers) -> None:
        self.service = service
        self.store = store
        self.cameras: dict[str, Camera] = {}
        self.notifiers = notifiers
        self._task: asyncio.Task[None] | None = None
        # What runs a camera: here (a decode thread), or with --ray-address a Ray actor on a
        # cluster node (stream_server.shell.cluster_cameras.RemoteCamera).
        self.camera_class: Callable[[CameraRegistry, CameraSpec], Camera] = Camera
        self.alerts_raised: Counter[str] = Counter()  # per camera id, for /metrics

    @property
    def notifier(self) -> WebhookNotifier:
        return self.notifiers.webhooks

    def start(self) -> None:
        """Starts the notifiers, prunes old history, brings back the kept cameras and applies
        --cameras-file."""
        self.notifiers.start()
        self.store.prune()
        kept = self.store.cameras()
        declared = self._declared()
        for spec in kept:
            if spec.source == "file" and declared is not None and spec.id not in declared:
                log.info("camera %s is no longer in --cameras-file: removed", spec.id)
                self.store.delete_camera(spec.id)
                continue
            if spec.source == "file" and declared is not None:
                continue  # started from the file below, with its current settings
            try:
                self._start(spec)
            except (CameraUrlError, Capacity) as exc:
                log.error("kept camera %s not started: %s", spec.id, exc)
        for entry in (declared or {}).values():
            try:
                spec = self.spec(entry, source="file")
                self._start(self.store.put_camera(spec))
            except (CameraUrlError, ValueError, Capacity, DuplicateCamera, CameraTaken) as exc:
                log.error("camera from %s refused: %s", self.service.settings.cameras_file, exc)
        self._task = asyncio.get_running_loop().create_task(self._tick(), name="camera-history")

    def _declared(self) -> dict[str, dict[str, Any]] | None:
        """--cameras-file's entries by the id each gets (None: no file, or an unusable one:
        then the kept file cameras stay as they are)."""
        path = self.service.settings.cameras_file
        if path is None:
            return None
        try:
            entries = load_cameras_file(path)
        except StoreError as exc:
            log.error("%s", exc)
            return None
        out: dict[str, dict[str, Any]] = {}
        for entry in entries:
            try:
                unknown_keys(entry)
                cid = entry.get("id")
                if cid is None:
                    name = entry.get("name")
                    url = check_url(entry.get("url"), self.service.settings.camera_allow)
                    cid = slugify(check_name(name) if name is not None else redact(url))
                cid = check_camera_id(cid)
            except (CameraUrlError, ValueError) as exc:
                log.error("camera from %s refused: %s", path, exc)
                continue
            if cid in out:
                log.error("camera from %s refused: id %r is declared twice", path, cid)
                continue
            out[cid] = {**entry, "id": cid}
        return out

    def spec(self, entry: dict[str, Any], source: Source = "api") -> CameraSpec:
        """A new camera from a POST body or a --cameras-file entry (the same keys): checks
        every value; the id is the given one or a slug of the name, made unique."""
        s = self.service.settings
        unknown_keys(entry)
        url = check_url(entry.get("url"), s.camera_allow)
        name = entry.get("name")
        name = check_name(name) if name is not None else redact(url)
        alert_seconds = check_alert_seconds(entry.get("alert_seconds"))
        key = identity(url)
        same = next((c for c in self.cameras.values() if c.key == key), None)
        if same is not None:
            raise DuplicateCamera(same.id)
        # A file camera replaces its own kept row; an API camera takes no kept id.
        taken = set(self.cameras)
        if source == "api":
            taken |= {c.id for c in self.store.cameras()}
        if entry.get("id") is not None:
            cid = check_camera_id(entry["id"])
            if cid in taken:
                raise CameraTaken(cid)
        else:
            base = cid = slugify(name)
            n = 2
            while cid in taken:
                cid = f"{base[:36].rstrip('-')}-{n}"
                n += 1
        return CameraSpec(id=cid, name=name, url=url, alert_seconds=alert_seconds, source=source)

    def _start(self, spec: CameraSpec) -> Camera:
        if len(self.cameras) >= self.service.settings.max_cameras:
            raise Capacity(f"camera limit reached ({self.service.settings.max_cameras} cameras)")
        check_url(spec.url, self.service.settings.camera_allow)
        cam = self.camera_class(self, spec)
        self.cameras[cam.id] = cam
        log.info("camera %s started: %s (%s)", cam.id, spec.name, redact(spec.url))
        return cam

    def add(self, entry: dict[str, Any]) -> Camera:
        """POST /v1/cameras: registers, keeps and starts a camera."""
        if len(self.cameras) >= self.service.settings.max_cameras:
            raise Capacity(f"camera limit reached ({self.service.settings.max_cameras} cameras)")
        spec = self.spec(entry)
        cam = self._start(spec)
        self.store.put_camera(spec)
        return cam

    def update(self, camera_id: str, changes: dict[str, Any]) -> Camera:
        """PATCH /v1/cameras/{id}: a new name, URL or alert_seconds (the id stays)."""
        cam = self.cameras[camera_id]
        if cam.spec.source == "file":
            raise ReadOnlyCamera(camera_id)
        unknown_keys(changes, ("name", "url", "alert_seconds"))
        spec = cam.spec
        if "name" in changes:
            spec = replace(spec, name=check_name(changes["name"]))
        if "alert_seconds" in changes:
            spec = replace(spec, alert_seconds=check_alert_seconds(changes["alert_seconds"]))
        if "url" in changes:
            url = check_url(changes["url"], self.service.settings.camera_allow)
            key = identity(url)
            same = next((c for c in self.cameras.values() if c.key == key), None)
            if same is not None and same is not cam:
                raise DuplicateCamera(same.id)
            spec = replace(spec, url=url)
        spec = self.store.put_camera(spec)
        cam.apply(spec)
        return cam

    async def remove(self, camera_id: str) -> bool:
        cam = self.cameras.get(camera_id)
        if cam is None:
            return False
        if cam.spec.source == "file":
            raise ReadOnlyCamera(camera_id)
        await cam.close()
        self.store.delete_camera(camera_id)
        self.alerts_raised.pop(camera_id, None)
        log.info("camera %s removed with its history", camera_id)
        return True

    # -- history and notifications -----------------------------------------------------------
    def status_changed(self, cam: Camera) -> None:
        now = time.time()
        detail = cam.error or ""
        self.store.add_status(cam.id, cam.status, detail, now)
        self.notifiers.publish(
            "status",
            cam.id,
            {"camera": cam.id, "name": cam.name, "status": cam.status, "detail": detail},
            now,
        )

    def minute_done(self, cam: Camera, m: Minute) -> None:
        self.store.add_minute(cam.id, m)
        self.notifiers.publish("summary", cam.id, {"camera": cam.id, **m.view()}, time.time())

    def alert(self, cam: Camera, alert: dict[str, Any], msg: ScoreMessage, now: float) -> None:
        alert_id = self.store.add_alert(cam.id, alert, msg.model, now)
        self.alerts_raised[cam.id] += 1
        self.notifiers.alert(
            {
                "type": "alert",
                "id": alert_id,
                "camera": cam.id,
                "name": cam.name,
                **alert,
                "model": msg.model,
                "t": msg.t,
            },
            now,
        )

    def history(self, camera_id: str, since: float, until: float) -> dict[str, Any]:
        out = self.store.history(camera_id, since, until)
        cam = self.cameras.get(camera_id)
        if cam is not None and cam.minute is not None and since // 60 <= cam.minute.minute:
            if cam.minute.minute * 60 < until:
                out["summaries"].append(cam.minute.view(partial=True))
        return {"camera": camera_id, "since": since, "until": until, **out}

    async def _tick(self) -> None:
        """Keeps each finished minute even when scores stop; prunes history hourly."""
        last_prune = time.monotonic()
        while True:
            await asyncio.sleep(5)
            now = time.time()
            for cam in list(self.cameras.values()):
                cam.flush_minute(now)
            if time.monotonic() - last_prune > 3600:
                last_prune = time.monotonic()
                self.store.prune()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        cams = list(self.cameras.values())
        for cam in cams:  # cut every camera first, then wait for them together
            cam.reader.stop()
        await asyncio.gather(*(cam.close() for cam in cams), return_exceptions=True)
        await self.notifiers.close()
