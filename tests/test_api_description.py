"""Operations (issue 17): GET /openapi.json describes every route the app has (built by
starlette's SchemaGenerator from the routes and their docstrings); --log-format json writes one
JSON object a line; no secret (bearer token, camera credentials, TURN credential, webhook
secret, MQTT password) appears in any log line, even at debug level. Real uvicorn and real
`deepfake-serve` processes on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from starlette.routing import Route

from tests.conftest import LiveServer, free_port
from tests.timing import poll


def test_openapi_lists_every_route_with_a_summary(live_server: LiveServer) -> None:
    r = httpx.get(live_server.url + "/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    schema = r.json()
    assert schema["openapi"].startswith("3.") and schema["info"]["title"] == "deepfake-live"
    paths = schema["paths"]
    routes = [route for route in live_server.app.routes if isinstance(route, Route)]
    assert len(routes) >= 15
    for route in routes:
        for method in route.methods or ["GET"]:
            if method == "HEAD":
                continue
            op = paths.get(route.path, {}).get(method.lower())
            assert op is not None, f"{method} {route.path} is not in /openapi.json"
            assert op["summary"] and op["responses"], (method, route.path)
            if "{" in route.path:
                assert [p["name"] for p in op["parameters"]] == list(route.param_convertors)
    described = {(p, m) for p, ops in paths.items() for m in ops}
    have = {
        (route.path, m.lower()) for route in routes for m in (route.methods or []) if m != "HEAD"
    }
    assert described == have  # nothing described that the app does not serve
    assert "/v1/cameras/{camera_id}/history" in paths and "/v1/alerts" in paths
    assert "patch" in paths["/v1/cameras/{camera_id}"]


def test_json_logs_carry_no_secret(tiny_bundle: Path) -> None:
    """deepfake-serve --log-format json --log-level debug with a token, a TURN credential, a
    webhook secret, an MQTT password and a camera whose URL has a password: the page opened as
    /?token=..., the API used with the token, the camera registered and failing. Every stderr
    line is a JSON object with time, level, logger and message, and none holds a secret."""
    from tests.test_remote_use import served

    token = "tok-" + "7" * 24
    turn_pass = "turn-pass-5a5a5a"
    hook_secret = "hook-secret-9f9f9f9f"
    mqtt_pass = "mqtt-pass-3c3c3c"
    cam_pass = "cam-pass-1b1b1b"
    secrets = (token, turn_pass, hook_secret, mqtt_pass, cam_pass)
    args = [
        "--bundle",
        str(tiny_bundle),
        "--log-format",
        "json",
        "--log-level",
        "debug",
        "--token",
        token,
        "--camera-allow",
        "127.0.0.1",
        "--ice-servers",
        f"turn:alice:{turn_pass}@127.0.0.1:9?transport=udp",
        "--webhooks",
        f"http://127.0.0.1:{free_port()}/hook",
        "--webhook-secret",
        hook_secret,
        "--mqtt",
        f"mqtt://bob:{mqtt_pass}@127.0.0.1:{free_port()}/cams",
    ]
    auth = {"Authorization": f"Bearer {token}"}
    with served(*args) as srv:
        url = f"http://127.0.0.1:{srv.port}"
        srv.wait_line(r"runs in the foreground")
        poll(lambda: _ready(url), 60, every=0.2, until=bool)
        assert httpx.get(f"{url}/?token={token}").status_code == 200
        assert httpx.get(url + "/v1/config", headers=auth).json()["ice_servers"]
        cam_url = f"rtsp://carol:{cam_pass}@127.0.0.1:{free_port()}/stream"
        r = httpx.post(url + "/v1/cameras", json={"url": cam_url}, headers=auth)
        assert r.status_code == 201, r.text
        assert cam_pass not in r.text
        cid = r.json()["id"]
        poll(
            lambda: httpx.get(f"{url}/v1/cameras/{cid}", headers=auth).json()["status"],
            15,
            every=0.2,
            until=lambda s: s == "error",
        )
        assert httpx.get(f"{url}/v1/cameras?token=wrong-{token}").status_code == 401
        httpx.patch(f"{url}/v1/cameras/{cid}", json={"url": cam_url + "2"}, headers=auth)
    lines = [line for line in srv.lines if line.strip()]
    assert len(lines) >= 5, lines
    for line in lines:
        record = json.loads(line)  # every line is one JSON object
        assert {"time", "level", "logger", "message"} <= set(record), line
        assert record["time"].endswith("Z")
        for secret in secrets:
            assert secret not in line, f"a secret is in the log: {line}"
    messages = " ".join(json.loads(line)["message"] for line in lines)
    assert f"camera {cid} started" in messages


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
