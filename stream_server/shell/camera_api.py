"""/v1/cameras: register, list, read and delete RTSP cameras; a Server-Sent Events feed each."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from stream_server.shell.camera_url import CameraUrlError
from stream_server.shell.cameras import Camera, CameraRegistry, DuplicateCamera
from stream_server.shell.service import Capacity

JsonReader = Callable[[Request, int], Awaitable[Any]]


def camera_routes(registry: CameraRegistry, read_json: JsonReader) -> list[Route]:
    async def create(request: Request) -> JSONResponse:
        body = await read_json(request, 8192)
        if not isinstance(body, dict):
            raise HTTPException(400, "body must be a JSON object with url and name")
        try:
            cam = registry.add(body.get("url"), body.get("name"))
        except CameraUrlError as exc:
            raise HTTPException(400, str(exc)) from None
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        except DuplicateCamera as exc:
            raise HTTPException(409, str(exc)) from None
        except Capacity as exc:
            raise HTTPException(503, str(exc)) from None
        return JSONResponse(cam.view(), status_code=201)

    async def listing(request: Request) -> JSONResponse:
        return JSONResponse({"cameras": [c.view() for c in registry.cameras.values()]})

    def find(request: Request) -> Camera:
        cam = registry.cameras.get(request.path_params["camera_id"])
        if cam is None:
            raise HTTPException(404, "no camera with that id")
        return cam

    async def read(request: Request) -> JSONResponse:
        return JSONResponse(find(request).view())

    async def delete(request: Request) -> Response:
        await registry.remove(find(request).id)
        return Response(status_code=204)

    async def events(request: Request) -> StreamingResponse:
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
        Route("/v1/cameras/{camera_id}", delete, methods=["DELETE"]),
        Route("/v1/cameras/{camera_id}/events", events, methods=["GET"]),
    ]
