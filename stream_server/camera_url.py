"""Camera URL policy: only rtsp:// and rtsps://, an optional host/network allow-list, and
credentials that never leave the process (redacted in every response and log line)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import SplitResult, urlsplit

SCHEMES = ("rtsp", "rtsps")
MAX_URL = 2048


class CameraUrlError(ValueError):
    """A camera URL that is refused; the message says why (and never contains credentials)."""


def redact(url: str) -> str:
    """The URL without user name or password (safe to show)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if _port(parts) else "")
    cred = "***@" if parts.username or parts.password else ""
    return f"{parts.scheme}://{cred}{netloc}{parts.path}" + (
        f"?{parts.query}" if parts.query else ""
    )


def _port(parts: SplitResult) -> int | None:
    try:
        return parts.port
    except ValueError:
        raise CameraUrlError("camera URL has an invalid port") from None


def check_url(url: object, allow: tuple[str, ...] = ()) -> str:
    """Return the URL if it may be opened; raise CameraUrlError otherwise.

    `allow` lists host names and networks (CIDR) that cameras may live on; empty allows any host.
    """
    if not isinstance(url, str) or not url:
        raise CameraUrlError("url must be a non-empty string")
    if len(url) > MAX_URL:
        raise CameraUrlError(f"url is longer than {MAX_URL} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise CameraUrlError("url contains whitespace or control characters")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in SCHEMES:
        shown = scheme + ":" if scheme and len(scheme) < 20 and scheme.isalnum() else "this"
        raise CameraUrlError(
            f"only rtsp:// and rtsps:// camera URLs are accepted, not {shown} URLs"
        )
    parts = urlsplit(url)
    if not url.lower().startswith(scheme + "://"):
        raise CameraUrlError("url must look like rtsp://host[:port]/path")
    host = parts.hostname
    if not host:
        raise CameraUrlError("url has no host")
    _port(parts)
    if "|" in url or "\\" in url:
        raise CameraUrlError("url contains characters that are not allowed (| or \\)")
    if allow and not host_allowed(host, allow):
        raise CameraUrlError(f"camera host {host} is not in the allow-list")
    return url


def host_allowed(host: str, allow: tuple[str, ...]) -> bool:
    networks = []
    names = set()
    for entry in allow:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry.lower())
    if host.lower() in names:
        return True
    try:
        addrs = [ipaddress.ip_address(host)]
    except ValueError:
        if not networks:
            return False
        try:  # a host name is allowed by network only if every address it resolves to is inside
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        addrs = [ipaddress.ip_address(str(i[4][0])) for i in infos]
    return bool(addrs) and all(any(a in n for n in networks) for a in addrs)
