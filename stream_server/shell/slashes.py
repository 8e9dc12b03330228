"""Trailing-slash redirects that never reflect the Host header.

Starlette's router answers `/healthz/` (or `/static`) with a redirect to an absolute URL built
from the request's Host header, so whoever sets the header chooses where the client is sent
(cache poisoning, phishing links). Here the same redirect carries a relative Location: the
path only, always a single leading slash (so `//host/` cannot become a protocol-relative URL),
the query string kept.
"""

from __future__ import annotations

from starlette.responses import RedirectResponse
from starlette.routing import Match, Router
from starlette.types import Receive, Scope, Send


def relative_slash_redirects(router: Router) -> None:
    """Replace `router`'s trailing-slash redirect with one whose Location is relative; requests
    that no route matches either way still reach the router's own 404."""
    fallback = router.default
    router.redirect_slashes = False

    async def default(scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and path not in ("", "/"):
            other = path.rstrip("/") if path.endswith("/") else path + "/"
            probe = {**scope, "path": other}
            if other and any(r.matches(probe)[0] is not Match.NONE for r in router.routes):
                location = "/" + other.lstrip("/")
                query = scope.get("query_string", b"")
                if query:
                    location += "?" + query.decode("latin-1")
                await RedirectResponse(location)(scope, receive, send)
                return
        await fallback(scope, receive, send)

    router.default = default
