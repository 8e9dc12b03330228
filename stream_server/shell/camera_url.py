"""Camera URL policy: only rtsp:// and rtsps://, a safe default address policy with an optional
host/network allow-list, one identity per camera, and credentials (in `user:pass@` or in the
query string) that never leave the process: redacted in every response and log line.

The address policy is applied to the addresses a host name resolves to on EVERY connect (see
`resolve_checked`, called by the RTSP reader before each attempt), not only at registration, so
a name that later moves to a loopback or metadata address (DNS rebinding) is refused then."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote_plus, urlsplit

SCHEMES = ("rtsp", "rtsps")
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322}
MAX_URL = 2048

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Query parameters that carry credentials (compared lower-case with `-`/`_` removed), and the
# fragments that mark one anywhere in a parameter's name (`camPassword`, `x_api_key`, ...).
SECRET_PARAMS = frozenset(
    {"u", "p", "pw", "user", "username", "usr", "login", "loginuse", "loginpas", "account"}
)
SECRET_FRAGMENTS = ("pass", "pwd", "psw", "token", "secret", "auth", "key", "sig", "cred", "sess")


def resolve_host(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to (the system resolver). Tests replace `resolver`."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(i[4][0]) for i in infos]


# Looked up at call time, so a test can inject a resolver whose answers change (DNS rebinding).
resolver: Callable[[str, int], list[str]] = resolve_host


class CameraUrlError(ValueError):
    """A camera URL that is refused; the message says why (and never contains credentials)."""


class CameraAddressError(CameraUrlError):
    """A camera host that resolves (now) to an address the policy refuses."""


def secret_param(name: str) -> bool:
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    return key in SECRET_PARAMS or any(f in key for f in SECRET_FRAGMENTS)


def _query(query: str, *, drop_secrets: bool) -> str:
    if not query:
        return ""
    out = []
    for part in query.split("&"):
        name = part.split("=", 1)[0]
        if secret_param(unquote_plus(name)):
            if drop_secrets:
                continue
            part = f"{name}=***"
        out.append(part)
    return "&".join(out)


def _netloc(parts: SplitResult) -> str:
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    return host + (f":{parts.port}" if _port(parts) else "")


def redact(url: str) -> str:
    """The URL without user name, password or secret query values (safe to show)."""
    try:
        parts = urlsplit(url)
        netloc = _netloc(parts)
    except ValueError:
        return "<invalid url>"
    cred = "***@" if parts.username or parts.password else ""
    query = _query(parts.query, drop_secrets=False)
    return f"{parts.scheme.lower()}://{cred}{netloc}{parts.path}" + (f"?{query}" if query else "")


def identity(url: str) -> str:
    """What makes two camera URLs the same camera: scheme and host in lower case, the default
    port spelled out, credentials (user:pass@ and secret query parameters) left out."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = _port(parts) or DEFAULT_PORTS.get(scheme, 554)
    host = (parts.hostname or "").lower().rstrip(".")
    if ":" in host:
        host = f"[{ipaddress.ip_address(host.split('%')[0]).compressed}]"
    query = _query(parts.query, drop_secrets=True)
    return f"{scheme}://{host}:{port}{parts.path or '/'}" + (f"?{query}" if query else "")


def _port(parts: SplitResult) -> int | None:
    try:
        return parts.port
    except ValueError:
        raise CameraUrlError("camera URL has an invalid port") from None


def check_url(url: object, allow: tuple[str, ...] = ()) -> str:
    """Return the URL, its scheme in lower case, if it may be registered; raise CameraUrlError
    otherwise. A numeric host is checked against the address policy here; a host name is
    checked (resolved) on every connect by `resolve_checked`.

    `allow` lists host names and networks (CIDR) that cameras may live on; empty: any public
    address (see `address_allowed`)."""
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
    if not url.lower().startswith(scheme + "://"):
        raise CameraUrlError("url must look like rtsp://host[:port]/path")
    url = scheme + url[len(scheme) :]  # RtSp:// -> rtsp:// (FFmpeg knows lower case only)
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise CameraUrlError("url has no host")
    _port(parts)
    if "|" in url or "\\" in url:
        raise CameraUrlError("url contains characters that are not allowed (| or \\)")
    if "%" in host:
        raise CameraUrlError("camera host must not carry an IPv6 zone (%)")
    numeric = _numeric(host)
    if numeric is None and _odd_numeric(host):
        raise CameraUrlError(
            f"camera host {host} is an unusual spelling of a numeric address; "
            "write it as a dotted quad (a.b.c.d) or IPv6"
        )
    policy = AddressPolicy.parse(allow)
    if numeric is not None:
        why = policy.refusal(numeric, host)
        if why:
            raise CameraAddressError(why)
    elif policy.restricted and host.lower().rstrip(".") not in policy.names and not policy.networks:
        raise CameraUrlError(f"camera host {host} is not in the allow-list")
    return url


def _numeric(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _odd_numeric(host: str) -> bool:
    """Forms the C resolver reads as an IPv4 address though they are no dotted quad:
    `2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1`, ... (inet_aton accepts them)."""
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


def _plain(addr: IpAddress) -> IpAddress:
    """An IPv4-mapped or -compatible IPv6 address as the IPv4 address it stands for."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr.sixtofour is not None:
            return addr.sixtofour
    return addr


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses a camera may be contacted at.

    Without an allow-list: public (globally routable unicast) addresses only; loopback,
    link-local (169.254.0.0/16, including the 169.254.169.254 metadata address), private
    (10/8, 172.16/12, 192.168/16, fc00::/7), shared (100.64/10), unspecified, multicast and
    reserved addresses are refused. With an allow-list: only listed names, and addresses
    inside listed networks (which may be private or loopback: allowing is explicit)."""

    names: frozenset[str]
    networks: tuple[IpNetwork, ...]

    @classmethod
    def parse(cls, allow: tuple[str, ...]) -> AddressPolicy:
        names, networks = set(), []
        for entry in allow:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry.lower().rstrip("."))
        return cls(frozenset(names), tuple(networks))

    @property
    def restricted(self) -> bool:
        return bool(self.names or self.networks)

    def refusal(self, addr: IpAddress, host: str, *, named: bool = False) -> str | None:
        """Why `addr` (what `host` resolved to) is refused, or None when it is allowed.
        `named`: the host is a name listed in the allow-list (its addresses are trusted)."""
        plain = _plain(addr)
        if any(a in n for a in {addr, plain} for n in self.networks if a.version == n.version):
            return None
        if self.restricted:
            if named:
                return None
            shown = host if _numeric(host) is not None else f"{host} ({addr})"
            return f"camera host {shown} is not in the allow-list"
        if plain.is_global and not plain.is_multicast and not plain.is_reserved:
            return None
        kind = (
            "loopback"
            if plain.is_loopback
            else "link-local"
            if plain.is_link_local
            else "unspecified"
            if plain.is_unspecified
            else "multicast"
            if plain.is_multicast
            else "reserved"
            if plain.is_reserved
            else "private"
            if plain.is_private
            else "non-public"
        )
        shown = host if _numeric(host) is not None else f"{host} resolves to {addr}, which"
        return (
            f"camera address {shown} is {kind}; such addresses are refused unless allowed "
            "with --camera-allow (a host name or network, e.g. 192.168.1.0/24)"
        )


def resolve_checked(url: str, allow: tuple[str, ...]) -> tuple[str, int]:
    """Resolve the camera's host NOW and check every address it resolves to; return the one
    address to connect to (and the port), so that nothing resolves the name again in between.
    Raises CameraAddressError when an address is refused and OSError when it does not resolve."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = _port(parts) or DEFAULT_PORTS.get(parts.scheme.lower(), 554)
    policy = AddressPolicy.parse(allow)
    numeric = _numeric(host)
    addrs = [str(numeric)] if numeric is not None else resolver(host, port)
    if not addrs:
        raise OSError(f"{host} has no address")
    named = host.lower().rstrip(".") in policy.names
    for a in addrs:
        why = policy.refusal(ipaddress.ip_address(a.split("%")[0]), host, named=named)
        if why:  # one refused answer refuses them all: never pick among mixed answers
            raise CameraAddressError(why)
    return addrs[0], port
