"""Request guard (ASGI middleware): optional bearer token, per-client rate limit on POST /offer,
and request bodies bounded while they are read: the size limit is checked on the bytes actually
received (a declared Content-Length is only an early refusal; chunked bodies count too), the
whole body must arrive within a deadline (408), shutdown interrupts a body being received (503),
and a client that disconnects mid-body ends its request quietly. Every refusal is a JSON 4xx/5xx
with a one-line reason."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stream_server.shell.settings import Settings

if TYPE_CHECKING:
    from stream_server.shell.service import Service

log = logging.getLogger(__name__)

OPEN_PATHS = ("/", "/healthz", "/livez", "/readyz", "/favicon.ico")
MAX_HEADER_BYTES = 16 * 1024
OPEN_PREFIXES = ("/static/",)


@dataclass
class TokenBucket:
    rate_per_s: float
    burst: float
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def allow(self, key: str, now: float | None = None) -> float:
        """0 if allowed now, else seconds until the next request would be."""
        now = time.monotonic() if now is None else now
        tokens, last = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate_per_s)
        if tokens >= 1.0:
            self.buckets[key] = (tokens - 1.0, now)
            if len(self.buckets) > 10_000:  # forget idle clients
                cutoff = now - self.burst / self.rate_per_s
                self.buckets = {k: v for k, v in self.buckets.items() if v[1] > cutoff}
            return 0.0
        self.buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate_per_s


class Guard:
    def __init__(self, app: ASGIApp, settings: Settings, service: Service | None = None) -> None:
        self.app = app
        self.settings = settings
        self.service = service
        self.token = settings.token.encode() if settings.token else None
        self.offers = TokenBucket(settings.offer_rate_per_minute / 60.0, settings.offer_burst)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        raw_headers = scope.get("headers", [])
        if sum(len(k) + len(v) for k, v in raw_headers) > MAX_HEADER_BYTES:
            await _reply(send, 431, f"request headers are larger than {MAX_HEADER_BYTES} bytes")
            return
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET")
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        if (
            self.token is not None
            and self._protected(path)
            and not self._authorised(scope, headers)
        ):
            await _reply(send, 401, "missing or wrong bearer token", {"www-authenticate": "Bearer"})
            return
        length = headers.get("content-length", "")
        limit = (
            self.settings.max_upload_bytes
            if path == "/v1/analyze"
            else self.settings.max_body_bytes
        )
        if length.isdigit() and int(length) > limit:
            await _reply(send, 413, f"body is larger than {limit} bytes")
            return
        if path == "/offer" and method == "POST":
            client = (scope.get("client") or ("unknown", 0))[0]
            wait = self.offers.allow(client)
            if wait > 0:
                await _reply(
                    send,
                    429,
                    "too many offers from this client; slow down",
                    {"retry-after": str(max(1, round(wait)))},
                )
                return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = BodyReader(receive, limit, self.settings.body_timeout_seconds, self.service)
        try:
            await self.app(scope, body.receive, send)
        except ClientDisconnect:
            body.refused("disconnected")
            log.info("client %s went away during %s %s", _client(scope), method, path)

    def _protected(self, path: str) -> bool:
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return False
        if path == "/metrics":
            return not self.settings.metrics_public
        return True

    def _authorised(self, scope: Scope, headers: dict[str, str]) -> bool:
        assert self.token is not None
        auth = headers.get("authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not given:  # EventSource cannot set headers: feeds may pass ?token=
            qs = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = (qs.get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), self.token)


def _client(scope: Scope) -> str:
    return str((scope.get("client") or ("unknown", 0))[0])


class BodyReader:
    """Wraps an HTTP request's `receive`: counts the body bytes as they arrive and refuses the
    request (HTTPException, answered by the app's handler) once they pass `limit` (413), once
    the body has not fully arrived `timeout` seconds after the request began (408), or when the
    service begins shutting down while the body is still arriving (503). After the last body
    chunk, `receive` passes through untouched (it then only reports disconnects)."""

    def __init__(
        self, receive: Receive, limit: int, timeout: float, service: Service | None
    ) -> None:
        self._receive = receive
        self.limit = limit
        self.timeout = timeout
        self.service = service
        self.deadline = time.monotonic() + timeout
        self.received = 0
        self.done = False

    def refused(self, reason: str) -> None:
        if self.service is not None:
            self.service.metrics.requests_refused.labels(reason).inc()

    async def receive(self) -> Message:
        if self.done:
            return await self._receive()
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self.refused("timeout")
            raise HTTPException(408, f"request body not received within {self.timeout:g} s")
        if self.service is not None and self.service.stopping.is_set():
            self.refused("shutdown")
            raise HTTPException(503, "server is shutting down")
        message = await self._next(remaining)
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.refused("too_large")
                raise HTTPException(413, f"body is larger than {self.limit} bytes")
            self.done = not message.get("more_body", False)
        else:
            self.done = True
        return message

    async def _next(self, remaining: float) -> Message:
        waiters: set[asyncio.Future[Any]] = set()
        get = asyncio.ensure_future(self._receive())
        waiters.add(get)
        stop = None
        if self.service is not None:
            stop = asyncio.ensure_future(self.service.stopping_async.wait())
            waiters.add(stop)
        try:
            await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                if not w.done():
                    w.cancel()
        if get.done() and not get.cancelled():
            message: Message = get.result()
            return message
        if stop is not None and stop.done():
            self.refused("shutdown")
            raise HTTPException(503, "server is shutting down")
        self.refused("timeout")
        raise HTTPException(408, f"request body not received within {self.timeout:g} s")


async def _reply(send: Send, status: int, reason: str, extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": reason}).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
