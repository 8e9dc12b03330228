"""The one typed settings object: built from CLI flags and DEEPFAKE_* environment variables,
validated once at start-up, then passed in. Nothing else reads the environment."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import quote, unquote

from stream_server.core.bundle import DEFAULT_BUNDLE
from stream_server.core.manifest import MAX_ANALYSIS_FPS

ENV_PREFIX = "DEEPFAKE_"
DEFAULT_STATIC = Path(__file__).resolve().parents[2] / "client_web"


class SettingsError(ValueError):
    """A setting is invalid; the message says which and why."""


def default_data_dir() -> Path:
    """Where state (the self-signed certificate, later the database) lives without --data-dir:
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
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    bundle: Path = DEFAULT_BUNDLE
    precision: str = "auto"  # auto (what the manifest names) | fp32 | int8
    providers: str = "auto"  # auto | cpu | cuda | tensorrt | comma list
    threads: int = 0  # onnxruntime intra-op threads for the encoder (0 = all cores)
    analysis_fps: float | None = None  # None: the bundle's
    max_streams: int = 16
    max_batch: int = 16
    max_wait_ms: float = 0.0  # 0: never wait; batches form from what queued while busy
    max_frame_side: int = 1280  # larger frames are downscaled before analysis
    max_frame_pixels: int = 3840 * 2160  # larger frames: uploads 413, cameras refused
    max_sdp_bytes: int = 64 * 1024
    max_remote_candidates: int = 32  # distinct ICE candidates kept from an offer
    peer_setup_seconds: float = 15.0  # a WebRTC peer not connected by then is closed
    peer_idle_seconds: float = 30.0  # a connected peer sending no video this long is closed
    max_body_bytes: int = 1024 * 1024  # any request body except uploads
    token: str | None = None  # bearer token for /offer, /v1/* and feeds; none: open
    metrics_public: bool = True  # /metrics without the token
    offer_rate_per_minute: float = 60.0  # POST /offer per client address
    offer_burst: float = 10.0
    max_upload_bytes: int = 200 * 1024 * 1024  # POST /v1/analyze body limit
    max_video_seconds: float = 300.0  # longest uploaded video analysed
    max_analyses: int = 2  # uploads analysed at once; more get 429
    body_timeout_seconds: float = 120.0  # a request body not fully received by then gets 408
    keep_alive_seconds: float = 5.0  # idle connections (and ones sending no request) closed
    max_connections: int = 512  # open HTTP connections; more are closed at once
    upload_dir: Path | None = None  # temporary files (default: the system's temp dir)
    cameras_file: Path | None = None  # JSON list of {"url": "rtsp://...", "name": ...} at start-up
    max_cameras: int = 16
    camera_allow: tuple[str, ...] = ()  # allowed camera hosts / networks; empty: public only
    camera_stall_seconds: float = 5.0  # no frames for this long: source_lost, reconnect
    camera_backoff_max: float = 30.0  # longest wait between reconnect attempts
    alert_seconds: float = 3.0  # a face above the threshold this long fires an alert
    webhooks: tuple[str, ...] = ()  # http(s) URLs that receive alerts as JSON POSTs
    ice_addresses: tuple[str, ...] = ()  # local addresses ICE offers; empty: all but loopback
    ice_servers: tuple[str, ...] = ()  # stun:/turn: URLs; none by default (no public STUN)
    tls_cert: Path | None = None  # PEM certificate (chain): serve HTTPS
    tls_key: Path | None = None  # its PEM private key
    tls_self_signed: bool = False  # make (once) and keep a self-signed certificate in data_dir
    data_dir: Path | None = None  # state; None: default_data_dir()
    static_dir: Path = DEFAULT_STATIC
    log_level: str = "info"

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise SettingsError(msg)

        if not 0 < self.port < 65536:
            bad(f"port must be 1..65535, got {self.port}")
        if self.precision not in ("auto", "fp32", "int8"):
            bad(f"precision must be auto, fp32 or int8, got {self.precision!r}")
        if self.analysis_fps is not None and not 0 < self.analysis_fps <= MAX_ANALYSIS_FPS:
            # the same range a bundle's analysis_fps has (stream_server.core.manifest owns it)
            bad(f"analysis fps must be in (0, {MAX_ANALYSIS_FPS:g}], got {self.analysis_fps}")
        if not 1 <= self.max_streams <= 1024:
            bad(f"max streams must be 1..1024, got {self.max_streams}")
        if not 1 <= self.max_batch <= 256:
            bad(f"max batch must be 1..256, got {self.max_batch}")
        if not 0 <= self.max_wait_ms <= 1000:
            bad(f"max wait must be 0..1000 ms, got {self.max_wait_ms}")
        if self.threads < 0:
            bad("threads must be >= 0")
        if self.max_frame_side < 64:
            bad("max frame side must be >= 64")
        if not 64 * 64 <= self.max_frame_pixels <= 1 << 30:
            bad(f"max frame pixels must be 4096..{1 << 30}, got {self.max_frame_pixels}")
        if self.token is not None and len(self.token) < 16:
            bad("token must be at least 16 characters")
        if self.offer_rate_per_minute <= 0 or self.offer_burst < 1:
            bad("offer rate must be > 0 per minute with a burst of at least 1")
        if not 1 <= self.max_remote_candidates <= 1000:
            bad(f"max remote candidates must be 1..1000, got {self.max_remote_candidates}")
        if not 0 < self.peer_setup_seconds <= 600:
            bad(f"peer setup seconds must be in (0, 600], got {self.peer_setup_seconds}")
        if not 0 < self.peer_idle_seconds <= 3600:
            bad(f"peer idle seconds must be in (0, 3600], got {self.peer_idle_seconds}")
        if not 0 < self.body_timeout_seconds <= 3600:
            bad(f"body timeout seconds must be in (0, 3600], got {self.body_timeout_seconds}")
        if not 0 < self.keep_alive_seconds <= 600:
            bad(f"keep alive seconds must be in (0, 600], got {self.keep_alive_seconds}")
        if not 4 <= self.max_connections <= 100_000:
            bad(f"max connections must be 4..100000, got {self.max_connections}")
        if self.max_upload_bytes < 1024:
            bad("max upload bytes must be >= 1024")
        if not 1 <= self.max_analyses <= 64:
            bad(f"max analyses must be 1..64, got {self.max_analyses}")
        if self.max_video_seconds <= 0:
            bad("max video seconds must be > 0")
        if self.upload_dir is not None and not Path(self.upload_dir).is_dir():
            bad(f"upload dir {self.upload_dir} is not a directory")
        if not 1 <= self.max_cameras <= 256:
            bad(f"max cameras must be 1..256, got {self.max_cameras}")
        if not 0.5 <= self.camera_stall_seconds <= 120:
            bad("camera stall seconds must be 0.5..120")
        if not 1 <= self.camera_backoff_max <= 3600:
            bad("camera backoff max must be 1..3600 s")
        if self.alert_seconds < 0:
            bad("alert seconds must be >= 0")
        for w in self.webhooks:
            if not w.startswith(("http://", "https://")):
                bad(f"webhook {w!r} must be an http:// or https:// URL")
        if self.cameras_file is not None and not Path(self.cameras_file).is_file():
            bad(f"cameras file {self.cameras_file} does not exist")
        for a in self.ice_addresses:
            try:
                ipaddress.ip_address(a)
            except ValueError:
                bad(f"ICE address {a!r} is not an IP address")
        for s in self.ice_servers:
            parse_ice_server(s)
        for what, path in (("TLS certificate", self.tls_cert), ("TLS key", self.tls_key)):
            if path is not None and not Path(path).is_file():
                bad(f"{what} {path} does not exist")
        if self.data_dir is not None and Path(self.data_dir).exists():
            if not Path(self.data_dir).is_dir():
                bad(f"data dir {self.data_dir} is not a directory")
        if self.log_level not in ("critical", "error", "warning", "info", "debug"):
            bad(f"log level {self.log_level!r} is not one of critical, error, warning, info, debug")


_FLAGS: list[tuple[str, type, str]] = [
    ("host", str, "address to listen on"),
    ("port", int, "port to listen on"),
    ("bundle", Path, "model bundle directory (default: the bundled default model)"),
    ("precision", str, "encoder precision: auto (the manifest's choice), fp32 or int8"),
    (
        "providers",
        str,
        "onnxruntime providers: auto (CUDA when available, else CPU), cpu, cuda, ...",
    ),
    ("threads", int, "onnxruntime threads for the encoder (0 = all cores)"),
    ("analysis_fps", float, "analysed frames per second per stream (default: the bundle's)"),
    (
        "max_streams",
        int,
        "concurrent streams (WebRTC peers, cameras and camera viewers); the next gets 503",
    ),
    ("max_batch", int, "largest encoder micro-batch (face crops from all streams)"),
    (
        "max_wait_ms",
        float,
        "extra wait to fill a micro-batch (0: take what is queued; batches still form under load)",
    ),
    ("max_frame_side", int, "frames larger than this are downscaled before analysis"),
    (
        "max_frame_pixels",
        int,
        "uploads, scans and cameras whose frames have more pixels than this are refused before "
        "decoding",
    ),
    (
        "max_remote_candidates",
        int,
        "remote ICE candidates kept from an offer (the highest-priority ones; more are dropped)",
    ),
    ("peer_setup_seconds", float, "a WebRTC peer not connected within this is closed"),
    ("peer_idle_seconds", float, "a connected WebRTC peer sending no video this long is closed"),
    ("token", str, "bearer token required on /offer, /v1/* and feeds (web page: open /?token=...)"),
    ("metrics_public", str, "true/false: serve /metrics without the token"),
    ("offer_rate_per_minute", float, "POST /offer allowed per client address per minute"),
    ("offer_burst", float, "POST /offer burst per client address"),
    ("max_body_bytes", int, "largest request body (uploads have their own limit)"),
    ("max_upload_bytes", int, "largest video upload accepted by POST /v1/analyze"),
    ("max_video_seconds", float, "longest uploaded video analysed"),
    ("max_analyses", int, "uploads analysed at once (more get 429)"),
    (
        "body_timeout_seconds",
        float,
        "a request body (upload) not fully received within this gets 408",
    ),
    (
        "keep_alive_seconds",
        float,
        "idle HTTP connections, and new ones that send no request, are closed after this",
    ),
    ("max_connections", int, "most open HTTP connections; more are closed on arrival"),
    ("upload_dir", Path, "directory for temporary upload files"),
    ("cameras_file", Path, "JSON list of cameras to register at start-up"),
    ("max_cameras", int, "most RTSP cameras registered at once"),
    (
        "camera_allow",
        str,
        "comma list of camera hosts or networks (CIDR) allowed, e.g. 192.168.1.0/24 or "
        "127.0.0.1 (empty: public addresses only; loopback, link-local and private refused)",
    ),
    ("camera_stall_seconds", float, "no frames for this long marks a camera lost"),
    ("camera_backoff_max", float, "longest wait between camera reconnect attempts"),
    ("alert_seconds", float, "seconds a face must stay above the threshold to alert"),
    ("webhooks", str, "comma list of http(s) URLs that receive alerts"),
    ("ice_addresses", str, "comma list of local IPs that ICE offers (e.g. 127.0.0.1)"),
    (
        "ice_servers",
        str,
        "STUN/TURN servers for the server and the page (none by default): a comma list of "
        "stun:HOST:PORT and turn:USER:CREDENTIAL@HOST:PORT?transport=udp|tcp URLs "
        "(turns: for TLS), or a JSON array like the browser's iceServers",
    ),
    ("tls_cert", Path, "PEM certificate (chain) file: serve HTTPS (with --tls-key)"),
    ("tls_key", Path, "PEM private key file of --tls-cert"),
    (
        "tls_self_signed",
        str,
        "serve HTTPS with a self-signed certificate made once and kept in --data-dir "
        "(for a LAN; browsers warn until it is accepted; its SHA-256 fingerprint is printed)",
    ),
    (
        "data_dir",
        Path,
        "directory for kept state such as the self-signed certificate "
        "(default: $XDG_DATA_HOME/deepfake-live or ~/.local/share/deepfake-live)",
    ),
    ("static_dir", Path, "web client directory"),
    ("log_level", str, "critical, error, warning, info or debug"),
]


BOOL_FLAGS = ("metrics_public", "tls_self_signed")


def parse_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """CLI flags win over DEEPFAKE_<NAME> environment variables, which win over defaults."""
    env = os.environ if environ is None else environ
    from stream_server.core.version import version_string

    p = argparse.ArgumentParser(
        prog="deepfake-serve",
        description="Live deepfake detection over WebRTC: serves the web client, POST /offer, "
        "/healthz and /metrics. Runs in the foreground until Ctrl-C or SIGTERM. Every flag can "
        "also be set as DEEPFAKE_<FLAG> (e.g. DEEPFAKE_PORT).",
    )
    p.add_argument("--version", action="version", version=version_string("deepfake-serve"))
    for name, typ, help_ in _FLAGS:
        extra: dict[str, object] = {}
        if name in BOOL_FLAGS and name != "metrics_public":
            extra = {"nargs": "?", "const": "true"}  # `--tls-self-signed` alone means true
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=typ if typ is not str else str,
            default=None,
            help=f"{help_} [env {ENV_PREFIX}{name.upper()}]",
            **extra,  # type: ignore[arg-type]
        )
    args = p.parse_args(argv)
    values: dict[str, object] = {}
    types = {f.name: f for f in fields(Settings)}
    for name, typ, _ in _FLAGS:
        raw = getattr(args, name)
        if raw is None and (ENV_PREFIX + name.upper()) in env:
            try:
                raw = typ(env[ENV_PREFIX + name.upper()])
            except ValueError:
                raise SettingsError(
                    f"{ENV_PREFIX}{name.upper()} is not a valid {typ.__name__}"
                ) from None
        if raw is None:
            continue
        if name in ("ice_addresses", "camera_allow", "webhooks"):
            raw = _list(str(raw))
        if name == "ice_servers":
            raw = _ice_entries(str(raw))
        if name in BOOL_FLAGS:
            if str(raw).lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise SettingsError(f"{name.replace('_', ' ')} must be true or false")
            raw = str(raw).lower() in ("true", "1", "yes")
        values[name] = raw
    assert set(values) <= set(types)
    return Settings(**values)  # type: ignore[arg-type]
