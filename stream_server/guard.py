"""Request guard (ASGI middleware): optional bearer token, per-client rate limit on POST /offer,
and a cap on declared body sizes. Every refusal is a JSON 4xx with a one-line reason."""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from stream_server.settings import Settings

OPEN_PATHS = ("/", "/healthz")
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
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
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
        await self.app(scope, receive, send)

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


async def _reply(send: Send, status: int, reason: str, extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": reason}).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
