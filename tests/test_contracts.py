"""Direct tests of the small modules the end-to-end tests only reach through a server: the
flag/environment mapping of every setting, messages, windows, metrics, alerts, camera URLs and
the request guard. Nothing here opens a socket, so it all runs in a few seconds."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from stream_server.shell import setting_fields
from stream_server.shell import settings as settings_mod
from stream_server.shell.setting_fields import ENV_PREFIX, SettingsError
from stream_server.shell.settings import Settings, parse_settings

ROOT = Path(__file__).resolve().parent.parent

# One row per deepfake-serve flag: (what is typed, what Settings must hold). Every value differs
# from the default, so a flag or variable that is ignored, or lands on another field, fails.
# "<tmp>" is replaced by an existing directory, "<file>" by an existing file.
FLAG_VALUES: dict[str, tuple[str, Any]] = {
    "host": ("0.0.0.0", "0.0.0.0"),
    "port": ("9123", 9123),
    "bundle": ("<tmp>", "<tmp>"),
    "precision": ("int8", "int8"),
    "providers": ("cpu", "cpu"),
    "threads": ("3", 3),
    "analysis_fps": ("2.5", 2.5),
    "max_streams": ("7", 7),
    "max_batch": ("9", 9),
    "max_wait_ms": ("4.5", 4.5),
    "max_frame_side": ("640", 640),
    "max_frame_pixels": ("2000000", 2000000),
    "max_remote_candidates": ("7", 7),
    "peer_setup_seconds": ("7.5", 7.5),
    "peer_idle_seconds": ("12", 12.0),
    "sender_max_kbps": ("500", 500),
    "event_loop": ("auto", "auto"),
    "ingest_workers": ("3", 3),
    "token": ("t" * 20, "t" * 20),
    "metrics_public": ("false", False),
    "offer_rate_per_minute": ("30", 30.0),
    "offer_burst": ("4", 4.0),
    "max_body_bytes": ("2048", 2048),
    "max_upload_bytes": ("4096", 4096),
    "max_video_seconds": ("60", 60.0),
    "max_analyses": ("5", 5),
    "body_timeout_seconds": ("9", 9.0),
    "keep_alive_seconds": ("3", 3.0),
    "max_connections": ("64", 64),
    "upload_dir": ("<tmp>", "<tmp>"),
    "cameras_file": ("<file>", "<file>"),
    "max_cameras": ("4", 4),
    "camera_allow": ("10.0.0.0/8, cam.local", ("10.0.0.0/8", "cam.local")),
    "camera_stall_seconds": ("3", 3.0),
    "camera_backoff_max": ("8", 8.0),
    "alert_seconds": ("1.5", 1.5),
    "webhooks": (
        "http://a.invalid/x,https://b.invalid/y",
        ("http://a.invalid/x", "https://b.invalid/y"),
    ),
    "webhook_secret": ("w" * 20, "w" * 20),
    "mqtt": ("mqtt://broker.invalid:1884/cams", "mqtt://broker.invalid:1884/cams"),
    "ray_address": ("127.0.0.1:6379", "127.0.0.1:6379"),
    "ray_shared_engine": ("false", False),
    "history_days": ("7", 7.0),
    "ice_addresses": ("127.0.0.1, ::1", ("127.0.0.1", "::1")),
    "ice_servers": ("stun:stun.invalid:3478", ("stun:stun.invalid:3478",)),
    "tls_cert": ("<file>", "<file>"),
    "tls_key": ("<file>", "<file>"),
    "tls_self_signed": ("true", True),
    "data_dir": ("<tmp>", "<tmp>"),
    "static_dir": ("<tmp>", "<tmp>"),
    "log_level": ("debug", "debug"),
    "log_format": ("json", "json"),
}
FLAGS = [d.name for d in setting_fields.flagged(Settings)]
# Settings without a flag of their own (fixed).
NO_FLAG = {"max_sdp_bytes"}


def test_every_flag_has_a_row_and_every_setting_a_flag() -> None:
    missing = [n for n in FLAGS if n not in FLAG_VALUES]
    assert not missing, f"add a FLAG_VALUES row for {missing}"
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert set(FLAGS) <= fields
    assert fields - set(FLAGS) <= NO_FLAG, fields - set(FLAGS) - NO_FLAG


def test_readme_configuration_reference_is_the_declaration() -> None:
    """README's configuration reference is generated from the settings declaration
    (`python -m stream_server.shell.settings --write-readme`); editing either alone fails here."""
    readme = (ROOT / "README.md").read_text()
    assert settings_mod.readme_with_reference(readme) == readme, (
        "README's configuration reference is stale: run "
        "python -m stream_server.shell.settings --write-readme"
    )
    table = readme.split(settings_mod.README_BEGIN)[1].split(settings_mod.README_END)[0]
    for d in setting_fields.flagged(Settings):
        assert f"| `{d.flag}` | `{d.env}` |" in table, d.name


def test_each_setting_is_declared_once_with_help_and_its_bounds_enforced() -> None:
    """The declaration drives validation: every bound and choice is refused one step outside it
    with the setting's name, at construction as well as from the parser."""
    for d in setting_fields.declarations(Settings):
        assert d.how.help, d.name
        bad: list[object] = []
        if d.how.lo is not None:
            bad.append(d.how.lo if d.how.lo_open else d.how.lo - (1 if d.kind is int else 0.01))
        if d.how.hi is not None:
            bad.append(d.how.hi + (1 if d.kind is int else 0.01))
        if d.how.choices:
            bad.append("nonsense")
        for value in bad:
            with pytest.raises(SettingsError, match=d.label):
                Settings(**{d.name: d.kind(value) if d.kind in (int, float) else value})


def _row(name: str, tmp_path: Path) -> tuple[str, Any]:
    typed, want = FLAG_VALUES[name]
    (tmp_path / "cams.json").write_text("[]")
    paths = {"<tmp>": str(tmp_path), "<file>": str(tmp_path / "cams.json")}
    if typed in paths:
        return paths[typed], Path(paths[typed])
    return typed, want


@pytest.mark.parametrize("name", FLAGS)
def test_flag_and_environment_variable_set_the_same_field(name: str, tmp_path: Path) -> None:
    typed, want = _row(name, tmp_path)
    default = getattr(Settings(), name)
    assert want != default, f"row for {name} must differ from the default {default!r}"
    flag = "--" + name.replace("_", "-")
    env = ENV_PREFIX + name.upper()
    by_flag = parse_settings([flag, typed], {})
    by_env = parse_settings([], {env: typed})
    assert getattr(by_flag, name) == want
    assert getattr(by_env, name) == want
    # Nothing else moved.
    for other in FLAGS:
        if other != name:
            assert getattr(by_flag, other) == getattr(Settings(), other), other
            assert getattr(by_env, other) == getattr(Settings(), other), other


def test_flags_win_over_environment_and_help_names_both(
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = parse_settings(["--max-frame-side", "512"], {"DEEPFAKE_MAX_FRAME_SIDE": "800"})
    assert s.max_frame_side == 512
    with pytest.raises(SystemExit) as exit_:
        parse_settings(["--help"], {})
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in FLAGS:
        assert "--" + name.replace("_", "-") in text, name
        assert ENV_PREFIX + name.upper() in text, name


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"DEEPFAKE_MAX_STREAMS": "many"}, "DEEPFAKE_MAX_STREAMS is not a valid int"),
        ({"DEEPFAKE_ANALYSIS_FPS": "fast"}, "DEEPFAKE_ANALYSIS_FPS is not a valid float"),
        ({"DEEPFAKE_METRICS_PUBLIC": "maybe"}, "metrics public must be true or false"),
        ({"DEEPFAKE_MAX_FRAME_SIDE": "32"}, "max frame side must be >= 64"),
        ({"DEEPFAKE_MAX_ANALYSES": "0"}, "max analyses must be 1..64"),
        ({"DEEPFAKE_WEBHOOKS": "ftp://x"}, "must be an http:// or https:// URL"),
        ({"DEEPFAKE_ICE_SERVERS": "http://x"}, "must be a stun:, turn: or turns: URL"),
        ({"DEEPFAKE_ICE_SERVERS": "turn:alice@turn.invalid:3478"}, "USER:CREDENTIAL@"),
        ({"DEEPFAKE_ICE_SERVERS": '[{"url": "stun:x"}]'}, 'list of {"urls"'),
        ({"DEEPFAKE_TLS_SELF_SIGNED": "maybe"}, "tls self signed must be true or false"),
        ({"DEEPFAKE_TLS_CERT": "/nonexistent/cert.pem"}, "does not exist"),
        ({"DEEPFAKE_CAMERAS_FILE": "/nonexistent/cams.json"}, "does not exist"),
        ({"DEEPFAKE_LOG_LEVEL": "loud"}, "log level 'loud'"),
    ],
)
def test_bad_environment_values_are_refused_by_name(env: dict[str, str], error: str) -> None:
    with pytest.raises(SettingsError, match=error.replace(".", r"\.")):
        parse_settings([], env)


# -- messages --------------------------------------------------------------------------------


def test_score_message_wire_format() -> None:
    from stream_server.core.messages import FaceScore, ScoreMessage, StatusMessage

    face = FaceScore(3, (0.1234567, 0.2, 0.3, 0.4), 0.75, 12, "fake")
    msg = ScoreMessage("s1", 4, 1.234567, 0.75, "fake", (face,), 12.3456, 2, "tiny@1")
    d = json.loads(msg.to_json())
    assert d == {
        "type": "score",
        "stream": "s1",
        "seq": 4,
        "t": 1.2346,
        "p_fake": 0.75,
        "label": "fake",
        "faces": [
            {
                "track": 3,
                "box": [0.12346, 0.2, 0.3, 0.4],
                "p_fake": 0.75,
                "frames": 12,
                "label": "fake",
            }
        ],
        "latency_ms": 12.35,
        "dropped": 2,
        "model": "tiny@1",
    }
    assert msg.to_json() == json.dumps(msg.to_dict(), separators=(",", ":"))
    empty = ScoreMessage("s1", 0, 0.0, None, "no_face", (), 1.0, 0, "m")
    assert json.loads(empty.to_json())["p_fake"] is None and empty.to_dict()["faces"] == []
    st = StatusMessage("source_lost", "cam1", "stall")
    assert json.loads(st.to_json()) == {"type": "source_lost", "stream": "cam1", "detail": "stall"}


# -- window ----------------------------------------------------------------------------------


def test_frame_window_fills_in_order_then_rolls() -> None:
    from stream_server.core.window import FrameWindow

    w = FrameWindow(3, 2)
    assert w.count == 0 and not w.full and not w.mask().any()
    for i in range(1, 3):
        w.push(np.full(2, i, np.float32))
    assert w.count == 2 and w.mask().tolist() == [True, True, False]
    assert w.buf[:, 0].tolist() == [1, 2, 0]
    for i in range(3, 6):
        w.push(np.full(2, i, np.float32))
    assert w.full and w.count == 3 and w.mask().all()
    assert w.buf[:, 0].tolist() == [3, 4, 5]  # the oldest fell out, order kept


# -- metrics ---------------------------------------------------------------------------------


def test_metrics_names_and_separate_registries() -> None:
    from stream_server.core.metrics import Metrics

    a, b = Metrics(), Metrics()
    a.frames_dropped.inc(3)
    a.requests_refused.labels("too_large").inc()
    text_a, text_b = a.render().decode(), b.render().decode()
    for name in (
        "deepfake_frames_received_total",
        "deepfake_frames_analysed_total",
        "deepfake_frames_dropped_total",
        "deepfake_faces_total",
        "deepfake_inference_seconds_bucket",
        "deepfake_batch_size_bucket",
        "deepfake_score_latency_seconds_bucket",
        "deepfake_active_streams",
        "deepfake_errors_total",
    ):
        assert name in text_a, name
    assert "deepfake_frames_dropped_total 3.0" in text_a
    assert "deepfake_frames_dropped_total 0.0" in text_b  # one registry per service
    # Labelled counters are exported at 0 before anything happens.
    for reason in ("setup_timeout", "media_timeout"):
        assert f'deepfake_peers_closed_total{{reason="{reason}"}} 0.0' in text_b
    assert 'deepfake_requests_refused_total{reason="too_large"} 1.0' in text_a


# -- alerts ----------------------------------------------------------------------------------


def _msg(*faces: tuple[int, float, str]) -> Any:
    from stream_server.core.messages import FaceScore, ScoreMessage

    fs = tuple(FaceScore(t, (0.1, 0.1, 0.2, 0.2), p, 10, lab) for t, p, lab in faces)  # type: ignore[arg-type]
    return ScoreMessage("cam", 0, 0.0, None, "real", fs, 1.0, 0, "m")


def test_alert_fires_once_per_track_after_the_hold_and_rearms() -> None:
    from stream_server.shell.alerts import AlertTracker

    tr = AlertTracker(threshold=0.5, hold_seconds=3.0)
    assert tr.update(_msg((1, 0.9, "fake")), now=0.0) == []
    assert tr.update(_msg((1, 0.9, "fake"), (2, 0.1, "real")), now=2.9) == []
    (alert,) = tr.update(_msg((1, 0.9, "fake")), now=3.0)
    assert alert["track"] == 1 and alert["p_fake"] == 0.9 and alert["above_for_s"] == 3.0
    assert tr.update(_msg((1, 0.95, "fake")), now=10.0) == []  # one alert per track
    # Dropping below restarts the hold; warming-up faces never count.
    assert tr.update(_msg((1, 0.2, "real")), now=11.0) == []
    assert tr.update(_msg((1, 0.9, "fake")), now=12.0) == []
    assert len(tr.update(_msg((1, 0.9, "fake")), now=15.0)) == 1
    assert tr.update(_msg((3, 0.9, "warming_up")), now=16.0) == []
    assert tr.update(_msg((3, 0.9, "warming_up")), now=30.0) == []
    # A track that leaves the picture is forgotten (it would start its hold afresh).
    assert 1 not in tr.above_since and 1 not in tr.fired


def test_webhook_retries_server_errors_then_gives_up() -> None:
    from stream_server.shell.alerts import WebhookNotifier

    calls: list[str] = []
    answers = {"http://flaky/": [500, 200], "http://down/": [503, 503]}

    def handler(request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        calls.append(url)
        assert json.loads(request.content) == {"track": 1}
        return httpx.Response(answers[url].pop(0))

    async def run() -> WebhookNotifier:
        n = WebhookNotifier(["http://flaky/", "http://down/"], retries=1)
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            for url in n.urls:
                await n._post(client, url, {"track": 1})
        return n

    n = asyncio.run(run())
    assert calls == ["http://flaky/"] * 2 + ["http://down/"] * 2
    assert (n.delivered, n.failed) == (1, 1)


def test_webhook_queue_is_bounded_and_no_urls_means_log_only() -> None:
    from stream_server.shell.alerts import WebhookNotifier

    async def run() -> tuple[WebhookNotifier, WebhookNotifier]:
        none, full = WebhookNotifier([]), WebhookNotifier(["http://x/"], queue_size=2)
        none.notify({"track": 1})
        for i in range(5):  # not started: nothing drains the queue
            full.notify({"track": i})
        return none, full

    none, full = asyncio.run(run())
    assert none.queue.qsize() == 0 and none.dropped == 0
    assert full.queue.qsize() == 2 and full.dropped == 3


# -- camera URLs -----------------------------------------------------------------------------


def test_redacted_camera_urls_never_show_credentials() -> None:
    from stream_server.shell.camera_url import redact

    shown = redact("rtsp://admin:hunter2@cam.example:8554/live/1?ch=2")
    assert "hunter2" not in shown and "admin" not in shown
    assert shown.startswith("rtsp://") and "cam.example:8554/live/1" in shown
    assert redact("rtsp://cam.example/s") == "rtsp://cam.example/s"


@pytest.mark.parametrize(
    "url",
    ["http://cam/x", "file:///etc/passwd", "rtsp://", "rtsp://cam/a b", "rtsp://cam/a|b", "", 7],
)
def test_refused_camera_urls(url: object) -> None:
    from stream_server.shell.camera_url import CameraUrlError, check_url

    with pytest.raises(CameraUrlError):
        check_url(url, ("10.0.0.0/8",))


def test_camera_allow_list_by_network_and_name() -> None:
    from stream_server.shell.camera_url import CameraUrlError, check_url

    allow = ("10.1.0.0/16",)
    assert check_url("rtsp://10.1.2.3/s", allow) == "rtsp://10.1.2.3/s"
    assert check_url("rtsps://10.1.2.3:322/s", allow) == "rtsps://10.1.2.3:322/s"
    with pytest.raises(CameraUrlError, match="allow-list"):
        check_url("rtsp://10.2.0.1/s", allow)


# -- guard -----------------------------------------------------------------------------------


def test_token_bucket_burst_refill_and_wait() -> None:
    from stream_server.shell.guard import TokenBucket

    b = TokenBucket(rate_per_s=1.0, burst=2)
    assert b.allow("a", now=0.0) == 0 and b.allow("a", now=0.0) == 0
    assert b.allow("a", now=0.0) == pytest.approx(1.0)  # empty: a token in 1 s
    assert b.allow("b", now=0.0) == 0  # per client
    assert b.allow("a", now=0.5) == pytest.approx(0.5)
    assert b.allow("a", now=1.0) == 0


TOKEN = "guard-token-0123456789"


@pytest.mark.parametrize(
    ("method", "path", "public"),
    [
        ("GET", "/", True),
        ("GET", "/healthz", True),
        ("GET", "/livez", True),
        ("GET", "/readyz", True),
        ("GET", "/favicon.ico", True),
        ("GET", "/v1/config", False),
        ("GET", "/static/app.js", True),
        ("GET", "/metrics", False),
        ("POST", "/offer", False),
        ("POST", "/v1/analyze", False),
        ("GET", "/v1/cameras", False),
        ("POST", "/v1/cameras", False),
        ("GET", "/v1/cameras/abc", False),
        ("DELETE", "/v1/cameras/abc", False),
        ("GET", "/v1/cameras/abc/events", False),
        ("GET", "/anything-else", False),
    ],
)
def test_guard_token_on_every_route(method: str, path: str, public: bool) -> None:
    """The guard in front of a stand-in app: only the page, health and static files are open."""
    from stream_server.shell.guard import Guard

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = Guard(app, Settings(token=TOKEN, metrics_public=False))

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=guard)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return [
                (await c.request(method, path)).status_code,
                (
                    await c.request(method, path, headers={"authorization": "Bearer wrong"})
                ).status_code,
                (
                    await c.request(method, path, headers={"authorization": f"Bearer {TOKEN}"})
                ).status_code,
                (await c.request(method, path, params={"token": TOKEN})).status_code,
            ]

    codes = asyncio.run(run())
    assert codes == ([200] * 4 if public else [401, 401, 200, 200]), codes
