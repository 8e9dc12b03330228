"""/v1/cameras: register, list, read, change and delete RTSP cameras (kept in the state
database, with stable ids); each camera's history and live Server-Sent Events feed; /v1/alerts."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from stream_server.shell.cameras import (
    Camera,
    CameraRegistry,
    CameraTaken,
    DuplicateCamera,
    ReadOnlyCamera,
)
from stream_server.shell.service import Capacity
from stream_server.shell.store import parse_time

JsonReader = Callable[[Request, int], Awaitable[Any]]


def _since_until(request: Request, default_span: float) -> tuple[float, float]:
    now = time.time()
    try:
        raw = request.query_params.get("since")
        since = parse_time(raw, "since") if raw is not None else now - default_span
        raw = request.query_params.get("until")
        until = parse_time(raw, "until") if raw is not None else now + 60
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    if until <= since:
        raise HTTPException(400, "until must be later than since")
    return since, until


def camera_routes(registry: CameraRegistry, read_json: JsonReader) -> list[Route]:
    async def create(request: Request) -> JSONResponse:
        """Register a camera: {"url": "rtsp://...", "name": ..., "id": ..., "alert_seconds":
        ...}; only url is required. The id is the one given or a slug of the name; the camera
        is kept and comes back with the same id after a restart. 201 with the camera; 400 bad
        value, 409 the camera or the id exists, 503 camera limit reached."""
        body = await read_json(request, 8192)
        if not isinstance(body, dict):
            raise HTTPException(400, "body must be a JSON object with url and name")
        try:
            cam = registry.add(body)
        except (DuplicateCamera, CameraTaken) as exc:
            raise HTTPException(409, str(exc)) from None
        except ValueError as exc:  # CameraUrlError too
            raise HTTPException(400, str(exc)) from None
        except Capacity as exc:
            raise HTTPException(503, str(exc)) from None
        return JSONResponse(cam.view(), status_code=201)

    async def listing(request: Request) -> JSONResponse:
        """The cameras, each as GET /v1/cameras/{id} shows it."""
        return JSONResponse({"cameras": [c.view() for c in registry.cameras.values()]})

    def find(request: Request) -> Camera:
        cam = registry.cameras.get(request.path_params["camera_id"])
        if cam is None:
            raise HTTPException(404, "no camera with that id")
        return cam

    async def read(request: Request) -> JSONResponse:
        """One camera: id, name, URL without credentials, its settings, status, frame rate and
        last score."""
        return JSONResponse(find(request).view())

    async def change(request: Request) -> JSONResponse:
        """Change a camera: any of {"name", "url", "alert_seconds"} (a new URL reconnects it;
        the id stays). 409 for a camera declared in --cameras-file."""
        cam = find(request)
        body = await read_json(request, 8192)
        if not isinstance(body, dict):
            raise HTTPException(400, "body must be a JSON object")
        try:
            cam = registry.update(cam.id, body)
        except (DuplicateCamera, ReadOnlyCamera) as exc:
            raise HTTPException(409, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return JSONResponse(cam.view())

    async def delete(request: Request) -> Response:
        """Remove a camera and its history (204). 409 for a camera declared in
        --cameras-file."""
        try:
            await registry.remove(find(request).id)
        except ReadOnlyCamera as exc:
            raise HTTPException(409, str(exc)) from None
        return Response(status_code=204)

    async def history(request: Request) -> JSONResponse:
        """A camera's kept history between ?since= and ?until= (Unix seconds or ISO 8601;
        default: the last hour): per-minute score summaries (the minute being counted is
        marked partial), status changes and alerts, oldest first."""
        cam = find(request)
        since, until = _since_until(request, 3600)
        return JSONResponse(registry.history(cam.id, since, until))

    async def alerts(request: Request) -> JSONResponse:
        """Alerts of every camera (or ?camera=ID), newest first, since ?since= (default: the
        last 24 hours), at most ?limit= (1..1000, default 100)."""
        since, until = _since_until(request, 86400)
        camera = request.query_params.get("camera")
        if camera is not None and camera not in registry.cameras:
            raise HTTPException(404, "no camera with that id")
        raw = request.query_params.get("limit", "100")
        if not raw.isdigit() or not 1 <= int(raw) <= 1000:
            raise HTTPException(400, "limit must be a whole number from 1 to 1000")
        found = registry.store.alerts(since, until, camera_id=camera, limit=int(raw))
        return JSONResponse({"alerts": found})

    async def events(request: Request) -> StreamingResponse:
        """The camera's live feed (Server-Sent Events): the camera, then its score and status
        messages."""
        cam = find(request)
        queue = cam.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                yield f"event: camera\ndata: {json.dumps(cam.view())}\n\n"
                while True:
                    try:
                        msg = await asyncio.wait_for(queue.get(), timeout=15)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    yield f"event: {msg.type}\ndata: {msg.to_json()}\n\n"
            finally:
                cam.unsubscribe(queue)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return [
        Route("/v1/cameras", create, methods=["POST"]),
        Route("/v1/cameras", listing, methods=["GET"]),
        Route("/v1/cameras/{camera_id}", read, methods=["GET"]),
        Route("/v1/cameras/{camera_id}", change, methods=["PATCH"]),
        Route("/v1/cameras/{camera_id}", delete, methods=["DELETE"]),
        Route("/v1/cameras/{camera_id}/history", history, methods=["GET"]),
        Route("/v1/cameras/{camera_id}/events", events, methods=["GET"]),
        Route("/v1/alerts", alerts, methods=["GET"]),
    ]
