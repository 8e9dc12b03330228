"""The one typed settings object: built from CLI flags and DEEPFAKE_* environment variables,
validated once at start-up, then passed in. Nothing else reads the environment.

Each setting is declared once, as a `Settings` field made by `setting(default, help, bounds...)`
(stream_server/shell/setting_fields.py); the command-line parser, the environment mapping, the
validation and the README's configuration reference (`python -m stream_server.shell.settings
--write-readme`) are derived from it."""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from stream_server.core.bundle import DEFAULT_BUNDLE
from stream_server.core.manifest import MAX_ANALYSIS_FPS
from stream_server.shell.ice import check_ice_address, check_ice_server, ice_entries
from stream_server.shell.setting_fields import (
    SettingsError,
    add_flags,
    check_that,
    each,
    given,
    path_check,
    reference_markdown,
    setting,
    validate,
)

DEFAULT_STATIC = Path(__file__).resolve().parents[2] / "client_web"


def default_data_dir() -> Path:
    """Where state (the state database, the self-signed certificate) lives without --data-dir:
    $XDG_DATA_HOME/deepfake-live, else ~/.local/share/deepfake-live."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "deepfake-live"


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
        "encoder precision: auto (the manifest's choice, but fp32 where the bundle has it on an "
        "x86 CPU without VNNI, whose INT8 kernels saturate), fp32 or int8",
        choices=("auto", "fp32", "int8"),
    )
    providers: str = setting(
        "auto", "onnxruntime providers: auto (CUDA when available, else CPU), cpu, cuda, ..."
    )
    # 1 by default: a live service's parallelism is its streams (the face-stage pool and the
    # engine run side by side); a second intra-op thread made the encoder's small batches no
    # faster and cost CPU the streams need (docs/performance.md, issue #18).
    threads: int = setting(1, "onnxruntime intra-op threads for the encoder (0 = all cores)", lo=0)
    # Every stream's RTP, SRTP and data channel runs on the one event loop. asyncio by default:
    # uvloop measured no less CPU per stream and more drops in overload (docs/performance.md).
    event_loop: str = setting(
        "asyncio",
        "event loop: asyncio, uvloop (needs the uvloop package) or auto (uvloop when installed)",
        choices=("auto", "asyncio", "uvloop"),
        check=check_that(
            lambda v: v != "uvloop" or importlib.util.find_spec("uvloop") is not None,
            "event loop uvloop needs the uvloop package (pip install uvloop)",
        ),
    )
    # One event loop and one GIL carry every stream's packets and Python work: past about 16
    # streams on 2 cores they fall behind before the CPU is used up (docs/performance.md).
    ingest_workers: int = setting(
        1,
        "processes that take webcam WebRTC sessions, each with its own event loop and engine "
        "(1 = all in this process; e.g. the number of cores); cameras, their viewers and "
        "uploads stay in this process",
        lo=1,
        hi=64,
    )
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
    # The page's sender is asked for at most this bit rate (RTCRtpSender maxBitrate): the event
    # loop's cost follows the packet rate, i.e. the bit rate (docs/performance.md, issue #18).
    sender_max_kbps: int = setting(
        350,
        "most kbit/s the web page's video sender is asked to send (RTCRtpSender maxBitrate, "
        "handed out as max_kbps in GET /v1/config capture; 0 = no cap)",
        lo=0,
        hi=100_000,
    )
    max_body_bytes: int = setting(
        1024 * 1024, "largest request body (uploads have their own limit)"
    )
    token: str | None = setting(
        None,
        "bearer token required on /offer, /v1/* and feeds (web page: open /?token=...); none: open",
        check=check_that(lambda t: len(t) >= 16, "token must be at least 16 characters"),
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
        check=path_check("upload dir", "dir"),
        shown_default="the system's temporary directory",
    )
    cameras_file: Path | None = setting(
        None,
        "TOML ([[cameras]] tables, by the .toml suffix) or JSON file declaring cameras with "
        "the keys of POST /v1/cameras (url, name, id, alert_seconds); applied at every start",
        check=path_check("cameras file", "file"),
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
        (), "comma list of http(s) URLs that receive alerts as JSON POSTs", check=each(_webhook)
    )
    webhook_secret: str | None = setting(
        None,
        "key that signs webhook POSTs: X-Deepfake-Signature is sha256=HMAC-SHA256 of "
        "'TIMESTAMP.BODY' with X-Deepfake-Timestamp (Unix seconds); at least 16 characters",
        check=check_that(lambda t: len(t) >= 16, "webhook secret must be at least 16 characters"),
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
        check=each(check_ice_address),
    )
    ice_servers: tuple[str, ...] = setting(
        (),
        "STUN/TURN servers for the server and the page (none by default): a comma list of "
        "stun:HOST:PORT and turn:USER:CREDENTIAL@HOST:PORT?transport=udp|tcp URLs "
        "(turns: for TLS), or a JSON array like the browser's iceServers",
        check=each(check_ice_server),
        parse=ice_entries,
    )
    tls_cert: Path | None = setting(
        None,
        "PEM certificate (chain) file: serve HTTPS (with --tls-key)",
        check=path_check("TLS certificate", "file"),
    )
    tls_key: Path | None = setting(
        None, "PEM private key file of --tls-cert", check=path_check("TLS key", "file")
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
        check=path_check("data dir", "dir if it exists"),
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
        validate(self)
        if self.ingest_workers > 1 and self.ray_address is not None:
            raise SettingsError(
                "--ingest-workers and --ray-address do not go together: on a cluster each "
                "webcam session already runs in an actor of its own"
            )


def build_parser() -> argparse.ArgumentParser:
    from stream_server.core.version import version_string

    p = argparse.ArgumentParser(
        prog="deepfake-serve",
        description="Live deepfake detection over WebRTC: serves the web client, POST /offer, "
        "/healthz and /metrics. Runs in the foreground until Ctrl-C or SIGTERM. Every flag can "
        "also be set as DEEPFAKE_<FLAG> (e.g. DEEPFAKE_PORT).",
    )
    p.add_argument("--version", action="version", version=version_string("deepfake-serve"))
    add_flags(p, Settings)
    return p


def parse_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """CLI flags win over DEEPFAKE_<NAME> environment variables, which win over defaults."""
    env = os.environ if environ is None else environ
    return Settings(**given(Settings, build_parser().parse_args(argv), env))


README = Path(__file__).resolve().parents[2] / "README.md"
README_BEGIN = (
    "<!-- settings: generated by python -m stream_server.shell.settings --write-readme -->"
)
README_END = "<!-- settings: end -->"


def readme_with_reference(readme: str) -> str:
    """`readme` with the text between the markers replaced by `reference_markdown(Settings)`."""
    head, sep, rest = readme.partition(README_BEGIN)
    _, sep2, tail = rest.partition(README_END)
    if not sep or not sep2:
        raise SettingsError("README.md has no settings reference markers")
    return f"{head}{README_BEGIN}\n{reference_markdown(Settings)}{README_END}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    """`--markdown`: print the configuration reference; `--write-readme [PATH]`: put it into
    README.md between its markers."""
    p = argparse.ArgumentParser(prog="python -m stream_server.shell.settings")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--markdown", action="store_true", help="print the reference")
    g.add_argument("--write-readme", type=Path, nargs="?", const=README, metavar="PATH")
    args = p.parse_args(argv)
    if args.markdown:
        print(reference_markdown(Settings), end="")
        return 0
    path: Path = args.write_readme
    path.write_text(readme_with_reference(path.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
