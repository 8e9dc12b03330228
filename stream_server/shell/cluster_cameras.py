"""`deepfake-serve --ray-address`: every RTSP camera runs in a Ray actor that Ray places on a node
with a free `streams` slot, and restarts on another such node when its node dies
(`max_restarts=-1`: the restart is Ray's, not a loop written here).

On the node, `CameraActor` runs what a camera runs in one process: `RtspReader` (the relay, the
address checks, reconnects with back-off) feeding a `StreamAnalyzer` on a `Service` of its own
(bundle, sessions, face stage and engine, loaded in the constructor, so a restarted actor loads
them again on its new node). It keeps a short numbered log of what happened (connected, lost,
error, score and status messages). The camera's viewers are `ViewerSession`s in the actor, as
in one process: the API forwards their offers (`cluster_webrtc.RemoteViewer`), they relay the
frames decoded here and get this camera's messages.

In the API's process `RemoteCamera` stands in for `Camera`: the registry, the state database,
the SSE feeds, alerts, webhooks and MQTT work on it unchanged. Its `ActorLink` long-polls the
actor for new log entries. A poll that fails because the node died marks the camera `lost`; when
the actor answers again from a new incarnation (restarted by Ray elsewhere), the camera reports
`reconnected` with the node it now runs on, and scores resume.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter, deque
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, cast

import av
from prometheus_client import CollectorRegistry, Gauge, Histogram

from stream_server.core.messages import ScoreMessage, StatusMessage
from stream_server.shell.camera_url import identity
from stream_server.shell.cameras import Camera, CameraRegistry, RtspReader, Watched
from stream_server.shell.cluster import STREAMS, ray_module
from stream_server.shell.service import EndedSessions
from stream_server.shell.settings import Settings
from stream_server.shell.store import CameraSpec

log = logging.getLogger(__name__)

Event = tuple[
    str, Any
]  # ("connected", reconnect) | ("lost", why) | ("error", why) | ("message", m)
LOG_SIZE = 512  # log entries an actor keeps for a poll that is late
POLL_WAIT = 1.0  # seconds a poll waits for something new
PENDING_NOTICE = 10.0  # seconds without an answer before a new camera says it waits for a slot
ENDED_KEPT = 256  # ended webcam sessions whose end GET /v1/sessions/{id} still tells


class NodeCamera(Watched):
    """The camera on its node: what `RtspReader` calls back into and viewers watch, as `Camera`
    in one process."""

    def __init__(self, actor: CameraActor, spec: CameraSpec) -> None:
        self.actor = actor
        self.spec = spec
        self.id = spec.id
        self.registry = SimpleNamespace(service=actor.service)  # RtspReader reads its settings
        self._init_watched()
        self.stream = actor.service.new_stream(spec.id, self._emit, self)
        # RtspReader needs only url, id, registry.service, viewers and the on_* calls below.
        self.reader = RtspReader(cast(Camera, self), asyncio.get_running_loop())
        self.reader.start()

    @property
    def url(self) -> str:
        return self.spec.url

    def _emit(self, msg: ScoreMessage | StatusMessage) -> None:
        self.actor.push(("message", msg))
        self.fan_out(msg)  # to this node's viewers

    def on_frame(self, frame: av.VideoFrame) -> None:
        now = time.monotonic()
        self.frame_arrived(frame, now)
        self.stream.offer_frame(frame, t=now)

    def on_connected(self, reconnect: bool) -> None:
        self.actor.push(("connected", reconnect))

    def on_lost(self, reason: str) -> None:
        self.actor.push(("lost", reason))
        self.fan_out(StatusMessage("source_lost", self.id, reason))

    def on_error(self, reason: str) -> None:
        self.actor.push(("error", reason))

    async def close(self) -> None:
        self.reader.stop()


class CameraActor:
    """One camera on the node Ray placed it on (made a Ray actor class by `ActorLink`)."""

    def __init__(self, settings: Settings, spec: CameraSpec) -> None:
        from stream_server.shell.service import Service
        from stream_server.shell.webrtc import configure_ice

        ctx = ray_module().get_runtime_context()
        self.node: str = ctx.get_node_id()
        self.restarts = 0 if not ctx.was_current_actor_reconstructed else 1
        self.incarnation = uuid.uuid4().hex
        self.spec = spec
        self.settings = replace(settings, ray_address=None)
        configure_ice(self.settings)  # the addresses this node's viewers are offered
        self.service = Service(self.settings)
        from stream_server.shell.cluster_engine import use_node_engine

        shared = settings.ray_shared_engine and use_node_engine(self.service, self.node)
        self.engine = "node" if shared else "own"
        self.log: deque[tuple[int, Event, float]] = deque(maxlen=LOG_SIZE)
        self.seq = 0
        self.changed: asyncio.Event | None = None
        self.camera: NodeCamera | None = None

    def push(self, event: Event) -> None:
        self.seq += 1
        self.log.append((self.seq, event, time.time()))  # when, to measure the relay
        if self.changed is not None:
            self.changed.set()

    def _started(self) -> NodeCamera:
        if self.camera is None:  # the first call starts it, on this actor's event loop
            self.changed = asyncio.Event()
            self.service.start()
            self.camera = NodeCamera(self, self.spec)
        return self.camera

    async def poll(self, cursor: int, wait: float = POLL_WAIT) -> dict[str, Any]:
        """The log entries after `cursor` (waiting up to `wait` s for one), and the counters."""
        camera = self._started()
        assert self.changed is not None
        if self.seq <= cursor:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), wait)
            except TimeoutError:
                pass
        return {
            "incarnation": self.incarnation,
            "node": self.node,
            "cursor": self.seq,
            "events": [(e, t) for s, e, t in self.log if s > cursor],
            "frames": camera.frames,
            "fps": camera.fps,
            "dropped": camera.stream.dropped,
            "engine": self.engine,
        }

    async def watch(self, sdp: str) -> dict[str, Any]:
        """A viewer's forwarded offer: a `ViewerSession` here relays this camera's video and
        messages (one `--max-streams` slot of this actor's, as in one process)."""
        from stream_server.shell.service import Capacity
        from stream_server.shell.webrtc import ViewerSession, answer_here

        try:
            viewer = ViewerSession(self.service, self.settings, self._started())
        except Capacity as exc:
            return {"error": str(exc), "status": 503}
        return await answer_here(viewer, sdp, node=self.node)

    async def stop(self) -> None:
        if self.camera is not None:
            self.camera.reader.stop()
        await self.service.close()


class ActorLink:
    """The API's side of one camera actor: creates it (one `streams` slot, restarted by Ray on
    another node when its node dies) and long-polls it, handing what happened to the camera."""

    def __init__(self, cam: RemoteCamera) -> None:
        self.cam = cam
        from stream_server.shell.cluster_engine import ensure_engines

        self.ray = ray_module()
        ensure_engines(cam.registry.service.settings)  # before the actor looks its node's up
        actor_class = self.ray.remote(CameraActor)
        self.actor = actor_class.options(
            num_cpus=0,
            resources={STREAMS: 1},
            max_restarts=-1,
            max_task_retries=0,
            scheduling_strategy="SPREAD",
        ).remote(cam.registry.service.settings, cam.spec)
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"actor-{cam.id}")

    def stop(self) -> None:
        self.task.cancel()
        try:
            self.ray.kill(self.actor, no_restart=True)
        except Exception:  # already gone with its node or the cluster
            log.debug("camera %s: actor already gone", self.cam.id)

    async def _run(self) -> None:
        cam = self.cam
        cursor = 0
        incarnation: str | None = None
        started = time.monotonic()
        while True:
            fut = asyncio.wrap_future(self.actor.poll.remote(cursor).future())
            while True:
                done, _ = await asyncio.wait({fut}, timeout=PENDING_NOTICE)
                if done:
                    break
                if cam.node is None and time.monotonic() - started > PENDING_NOTICE:
                    cam.on_error("waiting for a cluster node with a free 'streams' slot")
            try:
                r = fut.result()
            except self.ray.exceptions.RayActorError as exc:
                if exc.actor_init_failed:
                    text = str(exc).strip().splitlines()
                    cam.on_error(f"camera actor failed to start: {text[-1] if text else exc}")
                    return
                if cam.status != "lost":
                    cam.on_lost(f"node {(cam.node or '?')[:12]} lost; Ray restarts the camera")
                await asyncio.sleep(0.5)
                continue
            except self.ray.exceptions.RayError as exc:  # the actor raised: said, then retried
                text = str(exc).strip().splitlines()
                cam.on_error(f"camera actor failed: {text[-1] if text else type(exc).__name__}")
                await asyncio.sleep(2.0)
                continue
            if r["incarnation"] != incarnation:
                first = incarnation is None
                incarnation, cam.node = r["incarnation"], r["node"]
                if not first:  # restarted by Ray: its log starts again, so ask from 0
                    cam.restarted = True
                    cursor = 0
                    continue
            cursor = r["cursor"]
            cam.remote_frames, cam.remote_fps, cam.remote_dropped = (
                r["frames"],
                r["fps"],
                r["dropped"],
            )
            cam.engine = r["engine"]
            now = time.time()
            for (kind, payload), sent in r["events"]:
                if kind == "message" and isinstance(payload, ScoreMessage) and cam.relay:
                    cam.relay.observe(max(0.0, now - sent))
                if kind == "connected":
                    cam.on_connected(bool(payload))
                elif kind == "lost":
                    cam.on_lost(str(payload))
                elif kind == "error":
                    cam.on_error(str(payload))
                else:
                    cam.publish(payload)


class RemoteCamera(Camera):
    """A camera whose decoding and analysis run in a Ray actor on a cluster node."""

    reader: ActorLink  # type: ignore[assignment]  # in place of the local decode thread

    def __init__(
        self, registry: CameraRegistry, spec: CameraSpec, relay: Histogram | None = None
    ) -> None:
        # What Camera's methods use; none of its local decode thread or analysed stream.
        self.relay = relay  # seconds from a score on the node to the API (same-clock estimate)
        self._init_state(registry, spec)
        self.node: str | None = None
        self.restarted = False  # the actor was restarted by Ray since it last connected
        self.failovers = 0
        self.remote_frames = 0
        self.remote_fps = 0.0
        self.remote_dropped = 0
        self.engine: str | None = None  # "node": its node's shared engine; "own": its own
        self.reader = ActorLink(self)

    @property
    def fps(self) -> float:
        return self.remote_fps

    @property
    def dropped(self) -> int:
        return self.remote_dropped

    def apply(self, spec: CameraSpec) -> None:
        """A new name or alert_seconds is the API's alone (the node's actor never reads them:
        the feeds, history, alerts and `connected` message are made here); a new URL is a new
        camera actor."""
        old, self.spec = self.spec, spec
        self.alerts.hold_seconds = self.alert_seconds
        if spec.url != old.url:  # a new camera actor for the new URL
            self.key = identity(spec.url)
            self.reader.stop()
            self.status, self.error, self.node = "connecting", None, None
            self.reader = ActorLink(self)

    def on_connected(self, reconnect: bool) -> None:
        if not self.restarted:
            super().on_connected(reconnect)
            return
        self.restarted = False
        self.failovers += 1
        self.reconnects += 1
        self.status, self.error = "live", None
        self.publish(StatusMessage("reconnected", self.id, f"restarted by Ray on node {self.node}"))
        self.registry.status_changed(self)

    def view(self) -> dict[str, Any]:
        return {
            **super().view(),
            "frames": self.remote_frames,
            "node": self.node,
            "failovers": self.failovers,
            "engine": self.engine,
        }

    async def close(self) -> None:
        self.reader.stop()
        self.flush_minute()
        self.registry.cameras.pop(self.id, None)
        try:
            await self.reader.task
        except (asyncio.CancelledError, Exception):
            pass


class ClusterView:
    """Per-node streams and capacity for /healthz and /metrics: each live node's `streams`
    slots (from Ray) and the streams this API runs on it (its cameras and webcam sessions)."""

    def __init__(self, registry: CameraRegistry, prometheus: CollectorRegistry) -> None:
        self.registry = registry
        self.remote_streams: dict[str, str | None] = {}  # webcam session id -> its node
        self.ended = EndedSessions(ENDED_KEPT)  # webcam sessions that ended, and why
        self.nodes_alive = Gauge(
            "deepfake_cluster_nodes", "Live Ray nodes in the cluster", registry=prometheus
        )
        self.capacity = Gauge(
            "deepfake_cluster_node_capacity",
            "'streams' slots each live Ray node offers",
            ["node"],
            registry=prometheus,
        )
        self.relay = Histogram(
            "deepfake_cluster_relay_seconds",
            "A camera's score from its node's actor to the API (the node's and the API's wall "
            "clocks: meaningful where they agree)",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
            registry=prometheus,
        )
        self.streams = Gauge(
            "deepfake_cluster_node_streams",
            "Streams this API runs on each live Ray node (cameras and webcam sessions)",
            ["node"],
            registry=prometheus,
        )

    def session_ended(self, stream: str, message: StatusMessage | None) -> None:
        self.ended.add(stream, message)

    def session(self, stream: str) -> dict[str, Any] | None:
        """A webcam session's state for GET /v1/sessions/{id} (None: no such session)."""
        if stream in self.remote_streams:
            return {"stream": stream, "state": "live", "node": self.remote_streams[stream]}
        return self.ended.state(stream)

    def snapshot(self) -> dict[str, Any]:
        from stream_server.shell.cluster import nodes

        placed = [c.node for c in self.registry.cameras.values() if isinstance(c, RemoteCamera)]
        used = Counter(n for n in [*placed, *self.remote_streams.values()] if n is not None)
        live = nodes()
        self.nodes_alive.set(len(live))
        self.capacity.clear()
        self.streams.clear()
        out = []
        for n in live:
            self.capacity.labels(n["node"]).set(n["streams"])
            self.streams.labels(n["node"]).set(used.get(n["node"], 0))
            out.append({**n, "streams_used": used.get(n["node"], 0)})
        waiting = sum(1 for n in placed if n is None)
        return {
            "nodes": out,
            "streams_capacity": sum(n["streams"] for n in live),
            "streams_used": sum(used.values()),
            "streams_waiting": waiting,
        }
