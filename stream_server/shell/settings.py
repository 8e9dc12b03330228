"""The one typed settings object: built from CLI flags and DEEPFAKE_* environment variables,
validated once at start-up, then passed in. Nothing else reads the environment.

Each setting is declared once, as a `Settings` field made by `setting(default, help, bounds...)`;
the command-line parser, the environment mapping, the validation and the README's configuration
reference (`python -m stream_server.shell.settings --write-readme`) are derived from it."""

from __future__ import annotations

import argparse
import functools
import ipaddress
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints
from urllib.parse import quote, unquote

from stream_server.core.bundle import DEFAULT_BUNDLE
from stream_server.core.manifest import MAX_ANALYSIS_FPS

ENV_PREFIX = "DEEPFAKE_"
DEFAULT_STATIC = Path(__file__).resolve().parents[2] / "client_web"


class SettingsError(ValueError):
    """A setting is invalid; the message says which and why."""


def default_data_dir() -> Path:
    """Where state (the state database, the self-signed certificate) lives without --data-dir:
    $XDG_DATA_HOME/deepfake-live, else ~/.local/share/deepfake-live."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "deepfake-live"


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


def _ice_entries(raw: str) -> tuple[str, ...]:
    """--ice-servers: a comma list of URLs (credentials as USER:CREDENTIAL@), or a JSON array
    shaped like the browser's iceServers ([{"urls": ..., "username": ..., "credential": ...}])."""
    if not raw.lstrip().startswith("["):
        return _list(raw)
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


def _list(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


@dataclass(frozen=True)
class Setting:
    """How one setting is given and checked: its help text, bounds, choices and extra checks.
    Its name, type and default are the `Settings` field's; the flag (`--max-streams`), the
    environment variable (`DEEPFAKE_MAX_STREAMS`), the parser, the validation and the README's
    configuration reference are all derived from the two together."""

    help: str
    lo: float | None = None  # lowest allowed value (see lo_open)
    hi: float | None = None  # highest allowed value, inclusive
    lo_open: bool = False  # lo itself is not allowed: (lo, hi]
    unit: str = ""  # shown after the range in messages and the reference ("s", "ms")
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None  # the value -> why it is refused, or None
    parse: Callable[[str], Any] | None = None  # text -> value, where the type's own does not do
    shown_default: str | None = None  # the default as the reference shows it (paths, computed)
    flag: bool = True  # False: fixed, not settable from the command line or the environment

    def range_text(self) -> str:
        lo, hi, u = self.lo, self.hi, (" " + self.unit if self.unit else "")
        if lo is not None and hi is not None:
            return (
                f"in ({_num(lo)}, {_num(hi)}]{u}" if self.lo_open else f"{_num(lo)}..{_num(hi)}{u}"
            )
        if lo is not None:
            return f"{'>' if self.lo_open else '>='} {_num(lo)}{u}"
        if hi is not None:
            return f"<= {_num(hi)}{u}"
        return ""


def _num(x: float) -> str:
    """1073741824, 0.5, 30: whole numbers without a decimal point or an exponent."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def setting(default: Any, help: str, **how: Any) -> Any:
    """A `Settings` field declared once: `port: int = setting(8080, "port to listen on", lo=1,
    hi=65535)`."""
    return field(default=default, metadata={"setting": Setting(help, **how)})


def _problem(check: Callable[[Any], bool], why: str) -> Callable[[Any], str | None]:
    return lambda v: None if check(v) else why


def _each(check: Callable[[str], str | None]) -> Callable[[tuple[str, ...]], str | None]:
    def run(values: tuple[str, ...]) -> str | None:
        for v in values:
            why = check(v)
            if why is not None:
                return why
        return None

    return run


def _is_ip(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"ICE address {value!r} is not an IP address"
    return None


def _is_ice_server(value: str) -> str | None:
    parse_ice_server(value)  # raises SettingsError with the reason
    return None


def _mqtt_url(value: str) -> str | None:
    from stream_server.shell.mqtt import MqttUrlError, parse_mqtt_url

    try:
        parse_mqtt_url(value)
    except MqttUrlError as exc:
        return str(exc)
    return None


def _webhook(value: str) -> str | None:
    if value.startswith(("http://", "https://")):
        return None
    return f"webhook {value!r} must be an http:// or https:// URL"


def _path_check(what: str, kind: str) -> Callable[[Path], str | None]:
    def run(path: Path) -> str | None:
        p = Path(path)
        if kind == "file" and not p.is_file():
            return f"{what} {path} does not exist"
        if kind == "dir" and not p.is_dir():
            return f"{what} {path} is not a directory"
        if kind == "dir if it exists" and p.exists() and not p.is_dir():
            return f"{what} {path} is not a directory"
        return None

    return run


LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclass(frozen=True)
class Settings:
    """Every setting of `deepfake-serve`, each declared once (see `Setting`)."""

    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(8080, "port to listen on", lo=1, hi=65535)
    bundle: Path = setting(
        DEFAULT_BUNDLE,
        "model bundle directory",
        shown_default="the bundled default model (models/default_bundle)",
    )
    precision: str = setting(
        "auto",
        "encoder precision: auto (the manifest's choice), fp32 or int8",
        choices=("auto", "fp32", "int8"),
    )
    providers: str = setting(
        "auto", "onnxruntime providers: auto (CUDA when available, else CPU), cpu, cuda, ..."
    )
    threads: int = setting(0, "onnxruntime threads for the encoder (0 = all cores)", lo=0)
    analysis_fps: float | None = setting(
        None,
        "analysed frames per second per stream, live and uploads alike",
        # the same range a bundle's analysis_fps has (stream_server.core.manifest owns it)
        lo=0,
        hi=MAX_ANALYSIS_FPS,
        lo_open=True,
        shown_default="the bundle's",
    )
    max_streams: int = setting(
        16,
        "concurrent streams (WebRTC peers, cameras and camera viewers); the next gets 503",
        lo=1,
        hi=1024,
    )
    max_batch: int = setting(
        16, "largest encoder micro-batch (face crops from all streams)", lo=1, hi=256
    )
    max_wait_ms: float = setting(
        0.0,
        "extra wait to fill a micro-batch (0: take what is queued; batches still form under load)",
        lo=0,
        hi=1000,
    )
    max_frame_side: int = setting(
        1280, "frames larger than this are downscaled before analysis", lo=64
    )
    max_frame_pixels: int = setting(
        3840 * 2160,
        "uploads, scans and cameras whose frames have more pixels than this are refused before "
        "decoding (uploads get 413, cameras an error status)",
        lo=64 * 64,
        hi=1 << 30,
    )
    max_sdp_bytes: int = setting(64 * 1024, "largest SDP offer accepted", flag=False)
    max_remote_candidates: int = setting(
        32,
        "remote ICE candidates kept from an offer (the highest-priority ones; more are dropped)",
        lo=1,
        hi=1000,
    )
    peer_setup_seconds: float = setting(
        15.0, "a WebRTC peer not connected within this is closed", lo=0, hi=600, lo_open=True
    )
    peer_idle_seconds: float = setting(
        30.0,
        "a connected WebRTC peer sending no video this long is closed",
        lo=0,
        hi=3600,
        lo_open=True,
    )
    max_body_bytes: int = setting(
        1024 * 1024, "largest request body (uploads have their own limit)"
    )
    token: str | None = setting(
        None,
        "bearer token required on /offer, /v1/* and feeds (web page: open /?token=...); none: open",
        check=_problem(lambda t: len(t) >= 16, "token must be at least 16 characters"),
    )
    metrics_public: bool = setting(True, "true/false: serve /metrics without the token")
    offer_rate_per_minute: float = setting(
        60.0, "POST /offer allowed per client address per minute", lo=0, lo_open=True
    )
    offer_burst: float = setting(10.0, "POST /offer burst per client address", lo=1)
    max_upload_bytes: int = setting(
        200 * 1024 * 1024, "largest video upload accepted by POST /v1/analyze", lo=1024
    )
    max_video_seconds: float = setting(300.0, "longest uploaded video analysed", lo=0, lo_open=True)
    max_analyses: int = setting(2, "uploads analysed at once (more get 429)", lo=1, hi=64)
    body_timeout_seconds: float = setting(
        120.0,
        "a request body (upload) not fully received within this gets 408",
        lo=0,
        hi=3600,
        lo_open=True,
    )
    keep_alive_seconds: float = setting(
        5.0,
        "idle HTTP connections, and new ones that send no request, are closed after this",
        lo=0,
        hi=600,
        lo_open=True,
    )
    max_connections: int = setting(
        512, "most open HTTP connections; more are closed on arrival", lo=4, hi=100_000
    )
    upload_dir: Path | None = setting(
        None,
        "directory for temporary upload files",
        check=_path_check("upload dir", "dir"),
        shown_default="the system's temporary directory",
    )
    cameras_file: Path | None = setting(
        None,
        "TOML ([[cameras]] tables, by the .toml suffix) or JSON file declaring cameras with "
        "the keys of POST /v1/cameras (url, name, id, alert_seconds); applied at every start",
        check=_path_check("cameras file", "file"),
    )
    max_cameras: int = setting(16, "most RTSP cameras registered at once", lo=1, hi=256)
    camera_allow: tuple[str, ...] = setting(
        (),
        "comma list of camera hosts or networks (CIDR) allowed, e.g. 192.168.1.0/24 or "
        "127.0.0.1 (empty: public addresses only; loopback, link-local and private refused)",
    )
    camera_stall_seconds: float = setting(
        5.0, "no frames for this long marks a camera lost (then it reconnects)", lo=0.5, hi=120
    )
    camera_backoff_max: float = setting(
        30.0, "longest wait between camera reconnect attempts", lo=1, hi=3600, unit="s"
    )
    alert_seconds: float = setting(
        3.0, "seconds a face must stay above the threshold to alert", lo=0
    )
    webhooks: tuple[str, ...] = setting(
        (), "comma list of http(s) URLs that receive alerts as JSON POSTs", check=_each(_webhook)
    )
    webhook_secret: str | None = setting(
        None,
        "key that signs webhook POSTs: X-Deepfake-Signature is sha256=HMAC-SHA256 of "
        "'TIMESTAMP.BODY' with X-Deepfake-Timestamp (Unix seconds); at least 16 characters",
        check=_problem(lambda t: len(t) >= 16, "webhook secret must be at least 16 characters"),
    )
    ray_address: str | None = setting(
        None,
        "run every RTSP camera in a Ray actor on a cluster node with a free 'streams' slot "
        "(an address, or 'auto'; needs the cluster extra; see docs/cluster.md)",
    )
    ray_shared_engine: bool = setting(
        True,
        "true/false: with --ray-address, the streams on a node send their crops to that node's "
        "one encoder (batched together) instead of each running its own",
    )
    mqtt: str | None = setting(
        None,
        "MQTT broker that receives camera status, minute summaries and alerts: "
        "mqtt://[USER:PASSWORD@]HOST[:PORT]/PREFIX (mqtts:// for TLS; needs paho-mqtt, the "
        "mqtt extra)",
        check=_mqtt_url,
    )
    history_days: float = setting(
        30.0,
        "days of camera history (minute summaries, status changes, alerts) kept",
        lo=0,
        hi=3650,
        lo_open=True,
    )
    ice_addresses: tuple[str, ...] = setting(
        (),
        "comma list of local IPs that ICE offers, e.g. 127.0.0.1 (empty: every address but "
        "loopback, and loopback when the host has nothing else)",
        check=_each(_is_ip),
    )
    ice_servers: tuple[str, ...] = setting(
        (),
        "STUN/TURN servers for the server and the page (none by default): a comma list of "
        "stun:HOST:PORT and turn:USER:CREDENTIAL@HOST:PORT?transport=udp|tcp URLs "
        "(turns: for TLS), or a JSON array like the browser's iceServers",
        check=_each(_is_ice_server),
        parse=_ice_entries,
    )
    tls_cert: Path | None = setting(
        None,
        "PEM certificate (chain) file: serve HTTPS (with --tls-key)",
        check=_path_check("TLS certificate", "file"),
    )
    tls_key: Path | None = setting(
        None, "PEM private key file of --tls-cert", check=_path_check("TLS key", "file")
    )
    tls_self_signed: bool = setting(
        False,
        "serve HTTPS with a self-signed certificate made once and kept in --data-dir "
        "(for a LAN; browsers warn until it is accepted; its SHA-256 fingerprint is printed)",
    )
    data_dir: Path | None = setting(
        None,
        "directory for kept state: the cameras and their history (state.sqlite3) and the "
        "self-signed certificate",
        check=_path_check("data dir", "dir if it exists"),
        shown_default="$XDG_DATA_HOME/deepfake-live or ~/.local/share/deepfake-live",
    )
    static_dir: Path = setting(
        DEFAULT_STATIC, "web client directory", shown_default="client_web/ of the checkout"
    )
    log_level: str = setting(
        "info",
        "log level (aioice/aiortc log only warnings unless it is debug)",
        choices=LOG_LEVELS,
    )
    log_format: str = setting(
        "text",
        "log lines as text, or json: one JSON object a line (time, level, logger, message)",
        choices=("text", "json"),
    )

    def __post_init__(self) -> None:
        for d in declarations():
            why = d.problem(getattr(self, d.name))
            if why is not None:
                raise SettingsError(why)


@dataclass(frozen=True)
class Declared:
    """One setting as declared: the field's name, type and default with its `Setting`."""

    name: str
    kind: type  # int, float, str, bool, Path or tuple (a comma list of strings)
    optional: bool  # None allowed (and the default)
    default: Any
    how: Setting

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")

    def from_text(self, raw: str) -> Any:
        """A flag's or environment variable's text as the field's value (ValueError if not)."""
        if self.how.parse is not None:
            return self.how.parse(raw)
        if self.kind is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise SettingsError(f"{self.label} must be true or false")
            return raw.lower() in ("true", "1", "yes")
        if self.kind is tuple:
            return _list(raw)
        return self.kind(raw)

    def problem(self, value: Any) -> str | None:
        """Why `value` is refused, or None."""
        how = self.how
        if value is None and self.optional:
            return None
        if how.choices and value not in how.choices:
            return f"{self.label} {value!r} is not one of {', '.join(how.choices)}"
        if self.kind in (int, float) and (how.lo is not None or how.hi is not None):
            low_ok = how.lo is None or (value > how.lo if how.lo_open else value >= how.lo)
            if not (low_ok and (how.hi is None or value <= how.hi)):
                return f"{self.label} must be {how.range_text()}, got {_num(value)}"
        return how.check(value) if how.check is not None else None


def _kind(hint: Any) -> tuple[type, bool]:
    args = [a for a in get_args(hint) if a is not type(None)]
    optional = len(args) < len(get_args(hint))
    base = args[0] if optional else hint
    origin = get_origin(base)
    return (origin if origin is not None else base), optional


@functools.cache
def declarations() -> tuple[Declared, ...]:
    """Every setting in declaration order."""
    hints = get_type_hints(Settings)
    out = []
    for f in fields(Settings):
        kind, optional = _kind(hints[f.name])
        out.append(Declared(f.name, kind, optional, f.default, f.metadata["setting"]))
    return tuple(out)


def flagged() -> tuple[Declared, ...]:
    """The settings a flag and an environment variable set (all but the fixed ones)."""
    return tuple(d for d in declarations() if d.how.flag)


def build_parser() -> argparse.ArgumentParser:
    from stream_server.core.version import version_string

    p = argparse.ArgumentParser(
        prog="deepfake-serve",
        description="Live deepfake detection over WebRTC: serves the web client, POST /offer, "
        "/healthz and /metrics. Runs in the foreground until Ctrl-C or SIGTERM. Every flag can "
        "also be set as DEEPFAKE_<FLAG> (e.g. DEEPFAKE_PORT).",
    )
    p.add_argument("--version", action="version", version=version_string("deepfake-serve"))
    for d in flagged():
        extra: dict[str, Any] = {}
        if d.kind is bool:
            extra = {"nargs": "?", "const": "true"}  # `--tls-self-signed` alone means true
        p.add_argument(
            d.flag,
            dest=d.name,
            type=d.kind if d.kind in (int, float, Path) else str,
            default=None,
            help=f"{d.how.help} [env {d.env}]",
            **extra,
        )
    return p


def parse_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """CLI flags win over DEEPFAKE_<NAME> environment variables, which win over defaults."""
    env = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    for d in flagged():
        raw = getattr(args, d.name)
        if raw is None and d.env in env:
            raw = env[d.env]
            if d.kind in (int, float):
                try:
                    raw = d.kind(raw)
                except ValueError:
                    raise SettingsError(f"{d.env} is not a valid {d.kind.__name__}") from None
        if raw is None:
            continue
        values[d.name] = d.from_text(raw) if isinstance(raw, str) else raw
    return Settings(**values)


def _shown(d: Declared) -> str:
    if d.how.shown_default is not None:
        return d.how.shown_default
    if d.default is None or d.default == ():
        return "none"
    if isinstance(d.default, bool):
        return str(d.default).lower()
    if isinstance(d.default, int | float):
        return _num(d.default)
    return str(d.default)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference_markdown() -> str:
    """The README's configuration reference: one row per flag, from the declarations."""
    rows = [
        "| flag | environment | type | default | allowed | what |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for d in flagged():
        allowed = d.how.range_text() or ", ".join(d.how.choices)
        if d.kind is bool:
            allowed = "true, false"
        kind = "list" if d.kind is tuple else "path" if d.kind is Path else d.kind.__name__
        rows.append(
            f"| `{d.flag}` | `{d.env}` | {kind} | {_cell(_shown(d))} | {_cell(allowed)} "
            f"| {_cell(d.how.help)} |"
        )
    return "\n".join(rows) + "\n"


README = Path(__file__).resolve().parents[2] / "README.md"
README_BEGIN = (
    "<!-- settings: generated by python -m stream_server.shell.settings --write-readme -->"
)
README_END = "<!-- settings: end -->"


def readme_with_reference(readme: str) -> str:
    """`readme` with the text between the markers replaced by `reference_markdown()`."""
    head, sep, rest = readme.partition(README_BEGIN)
    _, sep2, tail = rest.partition(README_END)
    if not sep or not sep2:
        raise SettingsError("README.md has no settings reference markers")
    return f"{head}{README_BEGIN}\n{reference_markdown()}{README_END}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    """`--markdown`: print the configuration reference; `--write-readme [PATH]`: put it into
    README.md between its markers."""
    p = argparse.ArgumentParser(prog="python -m stream_server.shell.settings")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--markdown", action="store_true", help="print the reference")
    g.add_argument("--write-readme", type=Path, nargs="?", const=README, metavar="PATH")
    args = p.parse_args(argv)
    if args.markdown:
        print(reference_markdown(), end="")
        return 0
    path: Path = args.write_readme
    path.write_text(readme_with_reference(path.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
