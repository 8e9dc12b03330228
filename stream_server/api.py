"""HTTP side (starlette): the web client, POST /offer, /healthz, /metrics."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from stream_server.service import Capacity, Service
from stream_server.uploads import UploadAnalyzer
from stream_server.webrtc import OfferError, PeerSession, check_offer, configure_ice

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
        try:
            yield
        finally:
            await service.close()

    routes: list[Route | Mount] = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route("/offer", offer, methods=["POST"]),
        Route("/v1/analyze", UploadAnalyzer(service).handle, methods=["POST"]),
    ]
    if settings.static_dir.is_dir():
        routes.append(Mount("/static", StaticFiles(directory=settings.static_dir), name="static"))
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error}
    )
    app.state.service = service
    return app
