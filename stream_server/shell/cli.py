"""`deepfake-serve`: load and warm the bundle, then serve HTTP + WebRTC with uvicorn."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from stream_server.core.bundle import BundleError
    from stream_server.shell.setting_fields import SettingsError
    from stream_server.shell.settings import parse_settings

    try:
        settings = parse_settings(argv)
    except SettingsError as exc:
        print(f"deepfake-serve: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from stream_server.shell.server import apply_log_format, quiet_chatty_loggers
    from stream_server.shell.tls import tls_files

    apply_log_format(settings.log_format)
    quiet_chatty_loggers(settings.log_level)
    try:
        tls = tls_files(settings)  # before the model loads: a bad certificate fails fast
    except SettingsError as exc:
        print(f"deepfake-serve: error: {exc}", file=sys.stderr)
        return 2
    from stream_server.shell.api import create_app
    from stream_server.shell.server import build_server
    from stream_server.shell.service import Service

    try:
        service = Service(settings)
    except BundleError as exc:
        print(f"deepfake-serve: error: {exc}", file=sys.stderr)
        return 1
    from stream_server.shell.cluster import ClusterError
    from stream_server.shell.store import StoreError

    try:
        app = create_app(service)
    except (StoreError, ClusterError) as exc:
        print(f"deepfake-serve: error: {exc}", file=sys.stderr)
        return 2
    server = build_server(app, settings, service.begin_shutdown, tls=tls)

    def announce(text: str) -> None:
        """A start-up line on stderr: as is, or with --log-format json as a JSON log line."""
        if settings.log_format == "json":
            from stream_server.shell.server import JsonFormatter

            record = logging.LogRecord("deepfake-serve", logging.INFO, "", 0, text, None, None)
            text = JsonFormatter().format(record)
        else:
            text = "deepfake-serve: " + text
        print(text, file=sys.stderr, flush=True)

    if tls is not None:
        kind = "self-signed certificate" if tls.self_signed else "certificate"
        announce(f"TLS {kind} {tls.cert}, SHA-256 fingerprint {tls.fingerprint}")
    scheme = "https" if tls is not None else "http"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    announce(
        f"{service.bundle.model_id} on {','.join(service.sessions.providers)}; "
        f"open {scheme}://{host}:{settings.port}/ (runs in the foreground; Ctrl-C stops it)"
    )
    server.run()
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
