"""HTTP side (starlette): the web client, POST /offer, /healthz, /metrics."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from stream_server.camera_api import camera_routes
from stream_server.camera_url import CameraUrlError
from stream_server.cameras import CameraRegistry
from stream_server.guard import Guard
from stream_server.service import Capacity, Service
from stream_server.slashes import relative_slash_redirects
from stream_server.uploads import UploadAnalyzer
from stream_server.webrtc import OfferError, PeerSession, ViewerSession, check_offer, configure_ice

log = logging.getLogger(__name__)


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


def create_app(service: Service) -> Starlette:
    settings = service.settings
    configure_ice(settings)
    registry = CameraRegistry(service)

    async def index(request: Request) -> Response:
        page = settings.static_dir / "index.html"
        if not page.is_file():
            return error(404, "web client not found")
        return FileResponse(page, headers={"Cache-Control": "no-cache"})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse(service.health())

    async def metrics(request: Request) -> Response:
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4")

    async def offer(request: Request) -> JSONResponse:
        body = await read_json(request, settings.max_sdp_bytes + 4096)
        try:
            desc = check_offer(body, settings.max_sdp_bytes)
        except OfferError as exc:
            return error(400, str(exc))
        peer: PeerSession | ViewerSession
        if isinstance(body, dict) and body.get("camera") is not None:
            camera = registry.cameras.get(str(body["camera"]))
            if camera is None:
                return error(404, "no camera with that id")
            try:
                peer = ViewerSession(service, settings, camera)
            except Capacity as exc:
                return error(503, str(exc))
        else:
            try:
                peer = PeerSession(service, settings)
            except Capacity as exc:
                return error(503, str(exc))
        try:
            answer = await peer.answer(desc)
        except OfferError as exc:
            await peer.close()
            return error(400, str(exc))
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
            }
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error(exc.status_code, str(exc.detail))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.start()
        registry.start()
        for entry in load_cameras_file(settings.cameras_file):
            try:
                registry.add(entry.get("url"), entry.get("name"))
            except (CameraUrlError, ValueError, Capacity) as exc:
                log.error("camera from %s refused: %s", settings.cameras_file, exc)
        try:
            yield
        finally:
            await registry.close()
            await service.close()

    routes: list[Route | Mount] = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route("/offer", offer, methods=["POST"]),
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
    app.state.service = service
    app.state.cameras = registry
    return app


def load_cameras_file(path: Path | None) -> list[dict[str, Any]]:
    """Cameras to register at start-up: a JSON list of {"url": ..., "name": ...}."""
    if path is None:
        return []
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.error("cameras file %s is unreadable: %s", path, exc)
        return []
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        log.error("cameras file %s must hold a JSON list of objects", path)
        return []
    return data
