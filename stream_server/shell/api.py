"""HTTP side (starlette): the web client, POST /offer, /healthz, /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from stream_server.shell.alerts import Notifiers, Publisher, WebhookNotifier
from stream_server.shell.camera_api import camera_routes
from stream_server.shell.camera_metrics import CameraCollector
from stream_server.shell.cameras import CameraRegistry
from stream_server.shell.guard import Guard
from stream_server.shell.ice import parse_ice_server
from stream_server.shell.openapi import DocstringSchema
from stream_server.shell.service import Capacity, Service
from stream_server.shell.settings import Settings, default_data_dir
from stream_server.shell.slashes import relative_slash_redirects
from stream_server.shell.store import Store
from stream_server.shell.uploads import UploadAnalyzer
from stream_server.shell.webrtc import (
    NoCandidate,
    OfferError,
    PeerSession,
    ViewerSession,
    check_offer,
    configure_ice,
)
from stream_server.shell.workers import WorkerPool, WorkerSession

if TYPE_CHECKING:
    from stream_server.shell.cluster_webrtc import RemoteViewer, RemoteWebcam

log = logging.getLogger(__name__)


# What the page asks of its camera and of its sender (GET /v1/config "capture"). The camera is
# asked for a modest size at a smooth preview rate; the sender is capped at `max_fps`, the
# analysis rate times CAPTURE_FPS_FACTOR (so the face tracker still sees motion between
# analysed frames) and at most CAPTURE_MAX_FPS, at `max_kbps` (--sender-max-kbps; 0: no cap),
# and scaled down when the camera gives more than the capture size. Every frame the server
# receives is decrypted, depacketised and decoded, and the event loop's share of that follows
# the packet rate: frames and bits it would throw away cost ingest CPU for nothing
# (docs/performance.md).
CAPTURE_FPS_FACTOR = 2.0
CAPTURE_MAX_FPS = 30.0
CAPTURE_PREVIEW_FPS = 30
CAPTURE_SIZE = (640, 480)


def capture_hints(
    analysis_fps: float, max_frame_side: int, max_kbps: int
) -> dict[str, float | int]:
    """Capture size (no larger than the server analyses: `max_frame_side`), preview frame rate
    and the sender's frame-rate and bit-rate caps (`max_kbps`, 0 = none) for a stream analysed
    at `analysis_fps`."""
    scale = min(1.0, max_frame_side / max(CAPTURE_SIZE))
    return {
        "width": int(CAPTURE_SIZE[0] * scale),
        "height": int(CAPTURE_SIZE[1] * scale),
        "frame_rate": CAPTURE_PREVIEW_FPS,
        "max_fps": round(min(CAPTURE_MAX_FPS, analysis_fps * CAPTURE_FPS_FACTOR), 3),
        "max_kbps": max_kbps,
    }


def error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON, refusing wrong content types, oversized and non-UTF-8 bodies."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise HTTPException(415, "content type must be application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body is larger than {limit} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"body is larger than {limit} bytes")
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise HTTPException(400, "body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise HTTPException(400, f"body is not valid JSON ({exc.msg})") from None


def state_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) if settings.data_dir is not None else default_data_dir()


def notifiers(service: Service) -> Notifiers:
    """Webhooks (signed with --webhook-secret) and, with --mqtt, the MQTT publisher; their
    delivery counters go into the service's /metrics."""
    s = service.settings
    registry = service.metrics.registry
    webhooks = WebhookNotifier(s.webhooks, secret=s.webhook_secret, registry=registry)
    publishers: list[Publisher] = []
    if s.mqtt is not None:
        from stream_server.shell.mqtt import MqttPublisher, parse_mqtt_url, require_paho

        require_paho()
        publishers.append(
            MqttPublisher(parse_mqtt_url(s.mqtt), f"deepfake-live-{os.getpid()}", registry)
        )
    return Notifiers(webhooks, publishers)


def create_app(service: Service) -> Starlette:
    settings = service.settings
    configure_ice(settings)
    store = Store(state_dir(settings), settings.history_days)
    registry = CameraRegistry(service, store, notifiers(service))
    service.metrics.registry.register(CameraCollector(registry))  # per-camera series
    cluster = None
    if settings.ray_address is not None:  # cameras run in Ray actors on the cluster's nodes
        from stream_server.shell.cluster import connect
        from stream_server.shell.cluster_cameras import ClusterView, RemoteCamera

        connect(settings.ray_address)
        cluster = ClusterView(registry, service.metrics.registry)
        registry.camera_class = functools.partial(RemoteCamera, relay=cluster.relay)
    pool: WorkerPool | None = None
    if settings.ingest_workers > 1:  # webcam sessions in worker processes, started with the app
        pool = WorkerPool(service, settings.ingest_workers)

    async def index(request: Request) -> Response:
        """The web client (HTML)."""
        page = settings.static_dir / "index.html"
        if not page.is_file():
            return error(404, "web client not found")
        return FileResponse(page, headers={"Cache-Control": "no-cache"})

    async def healthz(request: Request) -> JSONResponse:
        """Service health: model, providers, streams and limits; 503 while degraded."""
        health = service.health()
        if cluster is not None:
            health["cluster"] = cluster.snapshot()
        return JSONResponse(health, status_code=200 if health["status"] == "ok" else 503)

    async def livez(request: Request) -> JSONResponse:
        """200 while the process serves requests at all."""
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> JSONResponse:
        """200 once the model is warm and the engine runs; 503 before, while degraded and
        while shutting down (a load balancer sends nothing new then)."""
        reason = service.not_ready()
        if reason is not None:
            return JSONResponse({"status": "not_ready", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ready"})

    ice_servers = [parse_ice_server(u) for u in settings.ice_servers]
    for srv in ice_servers:
        if not srv.for_browser:
            log.warning(
                "ICE server %s has no credentials: browsers refuse such a TURN URL, so the page "
                "is not given it (write it as turn:USER:CREDENTIAL@HOST:PORT)",
                srv.url,
            )
    page_ice_servers = [srv.to_json() for srv in ice_servers if srv.for_browser]

    async def config(request: Request) -> JSONResponse:
        """What the page needs before it connects: the ICE servers (with TURN credentials, so
        behind the token when one is set) and analysis hints."""
        return JSONResponse(
            {
                "ice_servers": page_ice_servers,
                "model": service.bundle.model_id,
                "analysis_fps": service.fps,
                "threshold": service.bundle.threshold,
                "window": service.bundle.window,
                "max_frame_side": settings.max_frame_side,
                "capture": capture_hints(
                    service.fps, settings.max_frame_side, settings.sender_max_kbps
                ),
            },
            headers={"Cache-Control": "no-store"},
        )

    async def favicon(request: Request) -> Response:
        """The page's icon (SVG)."""
        icon = settings.static_dir / "favicon.svg"
        if not icon.is_file():
            return error(404, "no favicon")
        return FileResponse(icon, media_type="image/svg+xml")

    async def metrics(request: Request) -> Response:
        """Prometheus metrics (text exposition format)."""
        if cluster is not None:
            cluster.snapshot()  # per-node streams and capacity, as of now
        others = await pool.metrics() if pool is not None else []  # summed with this process's
        return Response(service.metrics.render(others), media_type="text/plain; version=0.0.4")

    async def offer(request: Request) -> JSONResponse:
        """Start a WebRTC session: {"sdp", "type": "offer"} (and "camera": ID to watch a
        camera), answered with the SDP answer; scores arrive on the "scores" data channel.

        With --ray-address the offer is answered on a cluster node (a webcam actor; a camera's
        own actor for a viewer), with that node's candidates; the answer names the node. With
        --ingest-workers a webcam offer is answered by the least-loaded worker process, with
        its own candidates; the answer names the worker.

        400 bad offer, 404 no such camera, 500 no ICE candidate, 503 no room."""
        body = await read_json(request, settings.max_sdp_bytes + 4096)
        try:
            desc = check_offer(body, settings.max_sdp_bytes)
        except OfferError as exc:
            return error(400, str(exc))
        peer: PeerSession | ViewerSession | RemoteWebcam | RemoteViewer | WorkerSession
        if isinstance(body, dict) and body.get("camera") is not None:
            camera = registry.cameras.get(str(body["camera"]))
            if camera is None:
                return error(404, "no camera with that id")
            try:
                if cluster is None:
                    peer = ViewerSession(service, settings, camera)
                else:  # the camera's actor answers: its frames are decoded on its node
                    from stream_server.shell.cluster_cameras import RemoteCamera
                    from stream_server.shell.cluster_webrtc import RemoteViewer

                    assert isinstance(camera, RemoteCamera)
                    peer = RemoteViewer(camera)
            except Capacity as exc:
                return error(503, str(exc))
        else:
            try:
                if pool is not None:  # an ingest worker answers, with its own candidates
                    peer = WorkerSession(pool)
                elif cluster is None:
                    peer = PeerSession(service, settings)
                else:  # a webcam actor on a cluster node answers, with its node's candidates
                    from stream_server.shell.cluster_webrtc import RemoteWebcam

                    peer = RemoteWebcam(service, cluster)
            except Capacity as exc:
                return error(503, str(exc))
        try:
            answer = await peer.answer(desc)
        except OfferError as exc:
            await peer.close()
            return error(400, str(exc))
        except NoCandidate as exc:
            await peer.close()
            return error(500, str(exc))
        except Capacity as exc:  # no cluster node took the session
            await peer.close()
            return error(503, str(exc))
        except Exception:
            await peer.close()
            raise
        return JSONResponse(
            {
                "sdp": answer.sdp,
                "type": answer.type,
                "stream": peer.id,
                "model": service.bundle.model_id,
                "analysis_fps": service.fps,
                "threshold": service.bundle.threshold,
                **({"node": getattr(peer, "node", None)} if cluster is not None else {}),
                **({"worker": peer.worker.index} if isinstance(peer, WorkerSession) else {}),
            }
        )

    def session_state(stream: str) -> dict[str, Any] | None:
        if cluster is not None:
            return cluster.session(stream)
        if pool is not None:
            return pool.session_state(stream)
        peer = service.owners.get(stream)
        if isinstance(peer, PeerSession):
            return {"stream": stream, "state": "ended" if peer.closed else "live"}
        return None

    async def session(request: Request) -> JSONResponse:
        """A webcam session's state: {"stream", "state": "live" | "ended", "node" (with
        --ray-address), "message"}; with ?wait=S (0 to 60) the answer waits until the session
        has ended or S seconds have passed.

        With --ray-address a session whose node died is `ended` with `message`, the `error`
        status message its data channel would have carried (that channel died with the node);
        the page asks when its connection drops. With --ingest-workers the same for a session
        whose worker process died, and `worker` names a live session's worker. Without --ray-address everything comes on the
        data channel, and an ended session is soon unknown. 400 bad wait, 404 no such session
        (or one that ended long ago)."""
        stream = request.path_params["session_id"]
        raw = request.query_params.get("wait", "0")
        try:
            wait = float(raw)
        except ValueError:
            wait = -1.0
        if not 0 <= wait <= 60:
            raise HTTPException(400, "wait must be a number of seconds from 0 to 60")
        end = time.monotonic() + wait
        state = session_state(stream)
        while state is not None and state["state"] == "live" and time.monotonic() < end:
            await asyncio.sleep(0.2)
            state = session_state(stream)
        if state is None:
            raise HTTPException(404, "no session with that id")
        return JSONResponse(state, headers={"Cache-Control": "no-store"})

    schema = DocstringSchema()

    async def openapi(request: Request) -> JSONResponse:
        """This description of the HTTP API (OpenAPI 3.1)."""
        return JSONResponse(schema.get_schema(request.app.routes))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error(exc.status_code, str(exc.detail))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.start()
        if pool is not None:
            service.workers = pool
            await pool.start()
        registry.start()
        try:
            yield
        finally:
            await registry.close()
            await service.close()
            store.close()

    routes: list[Route | Mount] = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/livez", livez),
        Route("/readyz", readyz),
        Route("/favicon.ico", favicon),
        Route("/v1/config", config),
        Route("/metrics", metrics),
        Route("/openapi.json", openapi),
        Route("/offer", offer, methods=["POST"]),
        Route("/v1/sessions/{session_id}", session, methods=["GET"]),
        Route("/v1/analyze", UploadAnalyzer(service).handle, methods=["POST"]),
        *camera_routes(registry, read_json),
    ]
    if settings.static_dir.is_dir():
        routes.append(Mount("/static", StaticFiles(directory=settings.static_dir), name="static"))
    app = Starlette(
        middleware=[Middleware(Guard, settings=settings, service=service)],
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error},
    )
    relative_slash_redirects(app.router)  # never a Location built from the Host header
    app.state.cameras = registry  # for code that embeds the app (and tests): its camera registry
    return app
