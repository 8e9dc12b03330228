"""`deepfake-serve`: load and warm the bundle, then serve HTTP + WebRTC with uvicorn."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from stream_server.bundle import BundleError
    from stream_server.settings import SettingsError, parse_settings

    try:
        settings = parse_settings(argv)
    except SettingsError as exc:
        print(f"deepfake-serve: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from stream_server.api import create_app
    from stream_server.server import build_server
    from stream_server.service import Service

    try:
        service = Service(settings)
    except BundleError as exc:
        print(f"deepfake-serve: error: {exc}", file=sys.stderr)
        return 1
    app = create_app(service)
    server = build_server(app, settings, service.begin_shutdown)
    print(
        f"deepfake-serve: {service.bundle.model_id} on {','.join(service.sessions.providers)}; "
        f"open http://{settings.host}:{settings.port}/",
        file=sys.stderr,
        flush=True,
    )
    server.run()
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
