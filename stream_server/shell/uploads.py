"""POST /v1/analyze: a multipart video upload scanned on the shared engine.

The file is identified by decoding it (never by its name or declared type). The body is bounded
while it is read (`guard.BodyReader`: size on the bytes received, chunked or not; a receive
deadline; shutdown); temporary files are always removed. An analysis slot is taken only once the
whole body has arrived, so slow senders cannot starve others: at most `max_analyses` uploads are
analysed at once (others get 429), each off the event loop, one frame at a time through the same
engine as live streams, so live streams keep their latency. Shutdown stops an analysis between
frames (503), before uvicorn would cancel the request.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from pathlib import Path

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from stream_server.core.scan import ScanCancelled, ScanError, ScanLimits, scan_file
from stream_server.shell.service import Service

CHUNK = 1 << 20


class UploadAnalyzer:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings = service.settings
        self.running = 0

    async def handle(self, request: Request) -> JSONResponse:
        """Analyse an uploaded video (multipart/form-data, field 'file'): the verdict, with
        per-window scores.

        413 too large, 415 not multipart, 429 too many analyses at once."""
        s = self.settings
        ctype = request.headers.get("content-type", "").lower()
        if not ctype.startswith("multipart/form-data"):
            raise HTTPException(415, "upload the video as multipart/form-data with a 'file' field")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > s.max_upload_bytes:
            raise HTTPException(413, f"upload is larger than {s.max_upload_bytes} bytes")
        tmpdir = Path(tempfile.mkdtemp(prefix="deepfake-upload-", dir=s.upload_dir))
        try:
            name, path = await self._receive(request, tmpdir)
            return await self._analyse(name, path)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

    async def _receive(self, request: Request, tmpdir: Path) -> tuple[str, Path]:
        """The uploaded file, written to `tmpdir`; (its name, its path)."""
        async with request.form(max_files=1, max_fields=4) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise HTTPException(400, "the form has no 'file' field with a video")
            name = Path(upload.filename or "upload").name[:200]
            path = tmpdir / "video"
            with path.open("wb") as out:
                while chunk := await upload.read(CHUNK):
                    out.write(chunk)
        if path.stat().st_size == 0:
            raise HTTPException(400, "the uploaded file is empty")
        return name, path

    async def _analyse(self, name: str, path: Path) -> JSONResponse:
        s, svc = self.settings, self.service
        if svc.stopping.is_set():
            raise HTTPException(503, "server is shutting down")
        if self.running >= s.max_analyses:
            raise HTTPException(
                429, f"{s.max_analyses} analyses are already running; retry shortly"
            )
        self.running += 1
        cancel = threading.Event()  # this request was cancelled: stop its scan too
        limits = ScanLimits(
            max_seconds=s.max_video_seconds,
            max_frame_side=s.max_frame_side,
            max_frame_pixels=s.max_frame_pixels,
        )
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                svc.executor,
                lambda: scan_file(
                    path,
                    svc.bundle,
                    svc.detector,
                    svc.engine,
                    limits,
                    fps=svc.fps,  # the server's override, as live streams use
                    name=name,
                    stop=lambda: cancel.is_set() or svc.stopping.is_set(),
                ),
            )
        except ScanCancelled:
            raise HTTPException(503, "server is shutting down") from None
        except ScanError as exc:
            raise HTTPException(413 if exc.too_long or exc.too_large else 422, str(exc)) from None
        finally:
            cancel.set()
            self.running -= 1
        body = result.to_dict()
        body["path"] = name
        body["threshold"] = svc.bundle.threshold
        return JSONResponse(body)
