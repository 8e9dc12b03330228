"""The uvicorn server as `deepfake-serve` runs it: connection limits, a request-head deadline,
keep-alive timeout, a shutdown that tells the service first and exits 0 on SIGTERM, and log
lines with secrets (`?token=`) redacted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import socket
import threading
from collections.abc import Callable, Generator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import HANDLED_SIGNALS

from stream_server.shell.settings import Settings

if TYPE_CHECKING:
    from stream_server.shell.tls import TlsFiles

# Query parameters whose values never reach a log line (the bearer token may be passed as
# ?token=, and the web page is opened as /?token=...). Keys are compared decoded (%74oken is
# `token` to the guard too) and case-insensitively.
SECRET_PARAMS = frozenset({"token", "access_token"})
REDACTED = "[redacted]"
_PARAM = re.compile(r"([?&;])([^=&;?#\s\"']+)=([^&;#\s\"']*)")


def redact(text: str) -> str:
    """`text` with the value of every secret query parameter replaced by `[redacted]`."""
    if "=" not in text:
        return text

    def sub(m: re.Match[str]) -> str:
        key = unquote_plus(m.group(2)).strip().lower()
        return f"{m.group(1)}{m.group(2)}={REDACTED}" if key in SECRET_PARAMS else m.group(0)

    return _PARAM.sub(sub, text)


class RedactSecrets(logging.Filter):
    """Rewrites a record's message and string arguments through `redact` (uvicorn's access
    log passes the request path, query string included, as an argument)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        return True


LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")


class JsonFormatter(logging.Formatter):
    """--log-format json: one JSON object a line: time (ISO 8601 UTC), level, logger, message
    (already redacted by `RedactSecrets`), and the exception text when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def apply_log_format(log_format: str) -> None:
    """Give every handler of the root and uvicorn loggers the JSON formatter (for json); call
    it after logging is configured (uvicorn.Config reconfigures its own loggers)."""
    if log_format != "json":
        return
    formatter = JsonFormatter()
    for name in LOGGERS:
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(formatter)


def install_log_redaction() -> RedactSecrets:
    """Put one `RedactSecrets` on uvicorn's loggers (records logged there, whatever handler
    takes them) and on every handler they and the root logger have (records propagated from
    any other logger). Idempotent; call it after logging is configured."""
    found = [
        f
        for name in LOGGERS
        for f in logging.getLogger(name).filters
        if isinstance(f, RedactSecrets)
    ]
    redactor = found[0] if found else RedactSecrets()
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for target in (logger, *logger.handlers):
            if redactor not in target.filters:
                target.addFilter(redactor)
    return redactor


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol plus two limits it lacks: a connection beyond `limit_concurrency`
    is closed on arrival (instead of holding a descriptor until it sends a request), and a
    connection that has not sent a complete request head within `timeout_keep_alive` of opening
    (or of its last response) is closed. uvicorn arms its keep-alive timer only after a response,
    so a socket that never sends a request, or sends its head byte by byte, was held forever.
    `build_server` sets `limit_concurrency` to `max_connections + 1`, so at most
    `max_connections` stay open."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limit = self.limit_concurrency
        if limit is not None and len(self.connections) >= limit:
            transport.close()
            return
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        cycle = self.cycle
        self._head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_timeout, cycle)

    def _head_timeout(self, cycle_then: Any) -> None:
        self._head_timer = None
        no_new_request = self.cycle is cycle_then and (
            self.cycle is None or self.cycle.response_complete
        )
        if no_new_request and not self.transport.is_closing():
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)


class Server(uvicorn.Server):
    """`on_shutdown` runs first when shutdown begins (before uvicorn waits for in-flight
    requests, and before it cancels them), so uploads can stop and answer 503 instead of being
    cancelled mid-request. A shutdown asked for by SIGTERM/SIGINT that completes exits 0: the
    signal is not re-raised as uvicorn does."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.on_shutdown()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


# WebRTC libraries that log every ICE check at INFO (14-23 lines per connection): kept at
# WARNING unless the log level is debug.
CHATTY_LOGGERS = ("aioice", "aiortc")


def quiet_chatty_loggers(log_level: str) -> None:
    level = logging.DEBUG if log_level == "debug" else logging.WARNING
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(level)


def build_server(
    app: Any,
    settings: Settings,
    on_shutdown: Callable[[], None],
    *,
    log_level: str | None = None,
    port: int | None = None,
    tls: TlsFiles | None = None,
) -> Server:
    """uvicorn for `app`; with `tls`, HTTPS with uvicorn's own TLS (ssl_certfile/keyfile)."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port if port is None else port,
        log_level=log_level or settings.log_level,
        http=GuardedH11,
        loop=settings.event_loop,
        timeout_keep_alive=int(max(1, round(settings.keep_alive_seconds))),
        # uvicorn counts the connection asking, so one more lets `max_connections` all serve.
        limit_concurrency=settings.max_connections + 1,
        timeout_graceful_shutdown=3,
        ssl_certfile=str(tls.cert) if tls is not None else None,
        ssl_keyfile=str(tls.key) if tls is not None else None,
    )
    quiet_chatty_loggers(log_level or settings.log_level)
    install_log_redaction()  # uvicorn.Config has just (re)configured logging
    apply_log_format(settings.log_format)
    return Server(config, on_shutdown)
