"""Webcam sessions on a Ray cluster (`deepfake-serve --ray-address`): the API forwards the
browser's offer to a `WebcamActor` that Ray places on a node with a free `streams` slot. That
actor's own aiortc peer (the same `PeerSession` as in one process) answers with candidates of
its node, so media goes from the browser straight to that node, and scores come back on the
data channel from there. The API keeps only the actor's handle (`RemoteWebcam`).

A camera's viewer (`/offer` with `camera`) is forwarded the same way, to the camera's own actor
(`cluster_cameras.CameraActor`): its `ViewerSession` on that node relays the frames the actor
decodes, with the camera's scores on the data channel (`RemoteViewer`). When the camera's node
dies its viewers' connections end with it; a new offer reaches the actor Ray restarted elsewhere.

A webcam actor is not restarted (`max_restarts=0`): a browser's session cannot move to
another node; when its node dies the browser's peer connection fails, and the data channel that
would carry an `error` message is gone with it. The API notices (the actor call it keeps pending
fails) and keeps the session's `error` message for `GET /v1/sessions/{id}`, which the page asks
when its connection drops.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

from aiortc import RTCSessionDescription

from stream_server.core.messages import StatusMessage
from stream_server.shell.cluster import STREAMS, ray_module
from stream_server.shell.cluster_cameras import ClusterView, RemoteCamera
from stream_server.shell.service import Capacity, Service
from stream_server.shell.settings import Settings
from stream_server.shell.webrtc import NoCandidate, OfferError, PeerSession, answer_here

log = logging.getLogger(__name__)

PLACE_SECONDS = 30.0  # the longest an offer waits for its actor to be placed and answer


async def forwarded(call: Any) -> dict[str, Any]:
    """In the API: the answer of a node's actor to a forwarded offer (`answer_here`, through
    the Ray call `call`); its errors raised as in one process (OfferError, NoCandidate,
    Capacity)."""
    ray = ray_module()
    try:
        r: dict[str, Any] = await asyncio.wait_for(
            asyncio.wrap_future(call.future()), PLACE_SECONDS
        )
    except TimeoutError:
        raise Capacity(f"no cluster node took the session within {PLACE_SECONDS:g} s") from None
    except ray.exceptions.RayActorError:
        raise Capacity(
            "the cluster actor stopped before it answered (its node went down)"
        ) from None
    if "error" in r:
        raise {400: OfferError, 500: NoCandidate}.get(r["status"], Capacity)(r["error"])
    return r


class WebcamActor:
    """One webcam session on a node: a Service of its own (bundle and engine, loaded in the
    constructor) and one PeerSession."""

    def __init__(self, settings: Settings) -> None:
        from stream_server.shell.webrtc import configure_ice

        self.node: str = ray_module().get_runtime_context().get_node_id()
        self.settings = replace(settings, ray_address=None)
        configure_ice(self.settings)
        self.service = Service(self.settings)
        from stream_server.shell.cluster_engine import use_node_engine

        shared = settings.ray_shared_engine and use_node_engine(self.service, self.node)
        self.engine = "node" if shared else "own"
        self.session: Any = None

    async def answer(self, sdp: str) -> dict[str, Any]:
        self.service.start()
        self.session = PeerSession(self.service, self.settings)
        return await answer_here(self.session, sdp, node=self.node, engine=self.engine)

    async def wait_closed(self) -> None:
        """Returns once the session has closed."""
        if self.session is not None:
            await self.session.ended.wait()

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        await self.service.close()


class RemoteWebcam:
    """The API's side of one webcam session: what `/offer` needs of a session (id, answer,
    close)."""

    def __init__(self, service: Service, view: ClusterView) -> None:
        snap = view.snapshot()
        if snap["streams_used"] + snap["streams_waiting"] >= snap["streams_capacity"]:
            raise Capacity(
                f"every cluster node's 'streams' slots are taken ({snap['streams_capacity']})"
            )
        from stream_server.shell.cluster_engine import ensure_engines

        self.ray = ray_module()
        ensure_engines(service.settings)  # before the actor looks its node's up
        self.service = service
        self.view = view
        self.id = ""
        self.node: str | None = None
        self.engine: str | None = None
        self.watch: asyncio.Task[None] | None = None
        self.closed = False
        self.message: StatusMessage | None = None  # why it ended, when not by its client
        self.actor = (
            self.ray.remote(WebcamActor)
            .options(
                num_cpus=0,
                resources={STREAMS: 1},
                max_restarts=0,
                scheduling_strategy="SPREAD",
            )
            .remote(service.settings)
        )

    async def answer(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        r = await forwarded(self.actor.answer.remote(offer.sdp))
        self.id, self.node, self.engine = r["stream"], r["node"], r["engine"]
        self.view.remote_streams[self.id] = self.node
        self.service.owners[f"remote-{self.id}"] = self  # closed at shutdown
        self.watch = asyncio.get_running_loop().create_task(self._watch())
        return RTCSessionDescription(sdp=r["sdp"], type=r["type"])

    async def _watch(self) -> None:
        """Until the session ends on its node (or the node dies), then let the actor go."""
        try:
            await asyncio.wrap_future(self.actor.wait_closed.remote().future())
        except self.ray.exceptions.RayActorError:
            log.info("webcam session %s: its actor on node %s is gone", self.id, self.node)
            self.message = StatusMessage(
                "error",
                self.id,
                f"this session's actor on cluster node {(self.node or '?')[:12]} stopped (the "
                "node or its process went down): the session has ended",
            )
        finally:
            self._release()

    def _release(self) -> None:
        if not self.closed and self.id:
            self.closed = True
            self.view.session_ended(self.id, self.message)
        self.view.remote_streams.pop(self.id, None)
        self.service.owners.pop(f"remote-{self.id}", None)
        try:
            self.ray.kill(self.actor)
        except Exception:
            log.debug("webcam session %s: actor already gone", self.id)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(asyncio.wrap_future(self.actor.close.remote().future()), 5)
        except (TimeoutError, self.ray.exceptions.RayError):
            pass
        if self.watch is not None:
            self.watch.cancel()
        self._release()


class RemoteViewer:
    """The API's side of one viewer of a cluster camera: the offer goes to the camera's actor,
    whose `ViewerSession` answers with its node's candidates and then lives on that node
    (closed there when its peer goes, or with the node)."""

    def __init__(self, camera: RemoteCamera) -> None:
        self.camera = camera
        self.id = ""
        self.node: str | None = None

    async def answer(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        r = await forwarded(self.camera.reader.actor.watch.remote(offer.sdp))
        self.id, self.node = r["stream"], r["node"]
        return RTCSessionDescription(sdp=r["sdp"], type=r["type"])

    async def close(self) -> None:
        """Nothing to close here: a session whose answer failed was closed on its node."""
