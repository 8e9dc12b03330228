"""Where camera events go (issue 17): a real MQTT broker (Debian's mosquitto on 127.0.0.1)
receives a real RTSP camera's status, minute summary and alert through --mqtt; a webhook receiver
checks each POST's HMAC-SHA256 signature against --webhook-secret; /metrics counts deliveries.
Loopback only."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, free_port
from tests.exposition import scrape
from tests.mqtt_broker import Broker, Subscriber
from tests.rtsp import RtspServer, write_camera_clip
from tests.timing import deadline, poll

FAST = {"camera_stall_seconds": 2.0, "camera_backoff_max": 1.0, "camera_allow": ("127.0.0.1",)}
SECRET = "hook-secret-0123456789"


class SigningReceiver:
    """A webhook endpoint (real uvicorn on loopback) that keeps each POST's raw body and headers
    and checks the signature the way a receiver would: HMAC-SHA256 of 'TIMESTAMP.BODY'."""

    def __init__(self, secret: str) -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        self.secret = secret
        self.received: list[tuple[dict[str, Any], bool, float]] = []

        async def hook(request: Request) -> Response:
            body = await request.body()
            stamp = request.headers.get("x-deepfake-timestamp", "")
            given = request.headers.get("x-deepfake-signature", "")
            want = (
                "sha256="
                + hmac.new(
                    secret.encode(), stamp.encode() + b"." + body, hashlib.sha256
                ).hexdigest()
            )
            valid = hmac.compare_digest(given, want)
            self.received.append((json.loads(body), valid, float(stamp or 0)))
            return Response(status_code=204 if valid else 401)

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        end = deadline(30)
        while not self.server.started:
            assert time.monotonic() < end and self.thread.is_alive(), "receiver did not start"
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)


@pytest.mark.rtsp
@pytest.mark.mqtt
def test_mqtt_and_a_signed_webhook_get_a_real_cameras_events(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """mosquitto on 127.0.0.1 and a signing webhook receiver; a GStreamer camera scored by a
    bundle whose threshold every face passes: the broker gets the service's 'online', the
    camera's status (retained), an alert, and its minute summary (kept when the camera is
    removed); the webhook gets the same alert, signed with the secret and stamped with the wall
    clock; /metrics counts one delivered webhook and the published MQTT messages."""
    pytest.importorskip("paho.mqtt", reason="paho-mqtt is not installed (pip install '.[mqtt]')")
    from stream_server.core.bundle import write_manifest

    bundle = tmp_path / "low-threshold"
    shutil.copytree(tiny_bundle, bundle)
    m = json.loads((bundle / "manifest.json").read_text())
    m["threshold"] = 0.01
    write_manifest(bundle, m)
    clip = write_camera_clip(tmp_path / "cam.mp4", loops=4)
    hook = SigningReceiver(SECRET)
    try:
        with (
            Broker(tmp_path / "mqtt") as broker,
            RtspServer(clip, free_port()) as rtsp,
        ):
            sub = Subscriber(broker.port, "cams-test/#")
            try:
                with LiveServer(
                    bundle=bundle,
                    mqtt=f"mqtt://127.0.0.1:{broker.port}/cams-test",
                    webhooks=(hook.url,),
                    webhook_secret=SECRET,
                    alert_seconds=0.5,
                    **FAST,
                ) as srv:
                    r = httpx.post(srv.url + "/v1/cameras", json={"url": rtsp.url, "name": "Gate"})
                    assert r.status_code == 201, r.text
                    base = "cams-test/cameras/gate"
                    status = sub.wait(base + "/status", lambda s: s["status"] == "live", 20)
                    assert status is not None, sub.messages
                    assert status["camera"] == "gate" and status["name"] == "Gate"
                    assert abs(status["timestamp"] - time.time()) < 60
                    assert status["time"].endswith("Z")
                    alert = sub.wait(base + "/alert", lambda a: True, 20)
                    assert alert is not None, sub.messages
                    assert alert["p_fake"] >= 0.01 and alert["above_for_s"] >= 0.5
                    poll(lambda: hook.received, 15, every=0.1, until=bool)
                    body, valid, stamp = hook.received[0]
                    assert valid, "the webhook's signature does not verify with the secret"
                    assert abs(stamp - time.time()) < 60
                    assert body["type"] == "alert" and body["camera"] == "gate"
                    assert body["id"] == alert["id"] and body["timestamp"] == alert["timestamp"]
                    assert abs(body["timestamp"] - time.time()) < 60
                    # Removing the camera keeps (and publishes) the minute it was counting.
                    assert httpx.delete(srv.url + "/v1/cameras/gate").status_code == 204
                    summary = sub.wait(base + "/summary", lambda s: s["scores"] > 0, 10)
                    assert summary is not None, sub.messages
                    assert summary["camera"] == "gate" and summary["t"] % 60 == 0
                    assert summary["with_face"] >= 1 and summary["p_fake_max"] >= 0.01
                    text = 'deepfake_webhook_deliveries_total{result="delivered"}'
                    assert scrape(srv.url, text) >= 1
                    text = 'deepfake_mqtt_messages_total{result="published"}'
                    poll(lambda: scrape(srv.url, text), 10, every=0.1, until=lambda n: n >= 3)
                online = [p for t, p, _ in sub.messages if t == "cams-test/status"]
                assert online[:1] == ["online"] and online[-1] == "offline", online
                retained = [r for t, _, r in sub.messages if t == base + "/status"]
                assert retained, sub.messages
            finally:
                sub.close()
    finally:
        hook.close()


def test_webhook_signature_matches_a_receivers_own_hmac() -> None:
    """`sign` is HMAC-SHA256 over 'TIMESTAMP.BODY' as the settings help describes; a body or
    timestamp changed in transit no longer verifies."""
    from stream_server.shell.alerts import WebhookNotifier

    n = WebhookNotifier(["http://127.0.0.1:9/x"], secret=SECRET)
    body, headers = n.request({"type": "alert", "camera": "c"})
    stamp = headers["X-Deepfake-Timestamp"]
    want = hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["X-Deepfake-Signature"] == "sha256=" + want
    other = hmac.new(SECRET.encode(), stamp.encode() + b"." + body + b" ", hashlib.sha256)
    assert headers["X-Deepfake-Signature"] != "sha256=" + other.hexdigest()
    assert "X-Deepfake-Signature" not in WebhookNotifier(["http://x/y"]).request({})[1]


def test_bad_mqtt_urls_are_refused_with_the_reason() -> None:
    from stream_server.shell.setting_fields import SettingsError
    from stream_server.shell.settings import Settings

    for url, why in [
        ("http://broker:1883/x", "--mqtt must be mqtt://HOST"),
        ("mqtt:///x", "names no broker host"),
        ("mqtt://broker:99999/x", "invalid port"),
        ("mqtt://broker/a/#", "may not hold '#'"),
        ("mqtt://broker/a/+/b", "may not hold"),
    ]:
        with pytest.raises(SettingsError, match=why):
            Settings(mqtt=url)
