"""ICE servers and addresses as the settings give them: `--ice-servers` entries (STUN/TURN
URLs, credentials as USER:CREDENTIAL@, or the browser's iceServers JSON) parsed into
`IceServer`s for the server's aiortc and the page, redacted for logs, and the checks of
`--ice-servers` and `--ice-addresses`."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from urllib.parse import quote, unquote

from stream_server.shell.setting_fields import SettingsError, comma_list


@dataclass(frozen=True)
class IceServer:
    """One STUN/TURN server as the browser's RTCIceServer has it."""

    url: str  # without credentials
    username: str | None = None
    credential: str | None = None

    @property
    def for_browser(self) -> bool:
        """Browsers throw on a turn:/turns: URL without username and credential."""
        return self.url.startswith("stun:") or (
            self.username is not None and self.credential is not None
        )

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"urls": [self.url]}
        if self.username is not None:
            out["username"] = self.username
        if self.credential is not None:
            out["credential"] = self.credential
        return out


ICE_SCHEMES = ("stun:", "turn:", "turns:")


def parse_ice_server(entry: str) -> IceServer:
    """`stun:host:port`, `turn:host:port?transport=tcp`, or with credentials
    `turn:USER:CREDENTIAL@host:port?transport=udp` (percent-encode `:` `@` `,` in them).
    A turn: URL without credentials is accepted (the server's aiortc can use it) but browsers
    refuse one, so the page is not given it (`IceServer.for_browser`)."""
    scheme, sep, rest = entry.partition(":")
    if not sep or scheme + ":" not in ICE_SCHEMES:
        raise SettingsError(f"ICE server {entry!r} must be a stun:, turn: or turns: URL")
    if rest.startswith("//"):
        rest = rest[2:]
    user: str | None = None
    cred: str | None = None
    if "@" in rest:
        info, _, rest = rest.rpartition("@")
        u, has_cred, c = info.partition(":")
        user, cred = unquote(u), (unquote(c) if has_cred else None)
    host = rest.split("?", 1)[0]
    if not host or host.startswith(":"):
        raise SettingsError(f"ICE server {redact_ice(entry)!r} names no host")
    if scheme == "stun" and user is not None:
        raise SettingsError(f"ICE server {redact_ice(entry)!r}: stun: URLs take no credentials")
    if user is not None and cred is None:
        raise SettingsError(
            f"ICE server {redact_ice(entry)!r}: credentials are USER:CREDENTIAL@ "
            "(e.g. turn:alice:secret@turn.example.com:3478)"
        )
    return IceServer(f"{scheme}:{rest}", user, cred)


def redact_ice(entry: str) -> str:
    """An ICE server entry fit for a log line: the credential replaced."""
    scheme, _, rest = entry.partition(":")
    if "@" not in rest:
        return entry
    info, _, host = rest.rpartition("@")
    return f"{scheme}:{info.partition(':')[0]}:***@{host}"


def ice_entries(raw: str) -> tuple[str, ...]:
    """--ice-servers: a comma list of URLs (credentials as USER:CREDENTIAL@), or a JSON array
    shaped like the browser's iceServers ([{"urls": ..., "username": ..., "credential": ...}])."""
    if not raw.lstrip().startswith("["):
        return comma_list(raw)
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"ICE servers JSON is invalid ({exc.msg})") from None
    out: list[str] = []
    for item in data if isinstance(data, list) else [None]:
        if not isinstance(item, dict) or not isinstance(item.get("urls"), str | list):
            raise SettingsError('ICE servers JSON must be a list of {"urls": ..., ...} objects')
        urls = [item["urls"]] if isinstance(item["urls"], str) else item["urls"]
        user, cred = item.get("username"), item.get("credential")
        for url in urls:
            if not isinstance(url, str):
                raise SettingsError("ICE server urls must be strings")
            if user is None and cred is None:
                out.append(url)
                continue
            scheme, _, rest = url.partition(":")
            info = quote(str(user), safe="") + ":" + quote(str(cred), safe="")
            out.append(f"{scheme}:{info}@{rest}")
    return tuple(out)


def check_ice_address(value: str) -> str | None:
    """A `Setting.check` for one --ice-addresses entry: it must be an IP address."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"ICE address {value!r} is not an IP address"
    return None


def check_ice_server(value: str) -> str | None:
    """A `Setting.check` for one --ice-servers entry: it must parse (`parse_ice_server`)."""
    parse_ice_server(value)  # raises SettingsError with the reason
    return None
