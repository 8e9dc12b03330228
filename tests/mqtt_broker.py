"""Start and stop a real MQTT broker (Debian's mosquitto) on loopback for a test, and a real
paho-mqtt subscriber that records what the broker delivers. `.ci/run` installs mosquitto
(scripts/setup_env.sh full) and paho-mqtt (the `mqtt` extra)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import LoopbackDaemon
from tests.timing import deadline, scaled


def require_mosquitto() -> str:
    path = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(
                "mosquitto is not installed; .ci/run must install it (apt-get install mosquitto)"
            )
        pytest.skip("mosquitto is not installed (apt-get install mosquitto); CI installs it")
    return path


class Broker(LoopbackDaemon):
    """mosquitto listening on 127.0.0.1:`port` only, anonymous clients allowed, no persistence;
    its log collected."""

    name = "mosquitto"

    def __init__(self, workdir: Path) -> None:
        from tests.conftest import free_port

        super().__init__(workdir, free_port())

    def start(self) -> Broker:
        exe = require_mosquitto()
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stdout\n"
            "log_type all\n"
        )
        self._launch([exe, "-c", str(conf)])
        return self

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Subscriber:
    """A paho-mqtt client subscribed to `topic` on the broker; `messages` is what arrived as
    (topic, payload text, retained)."""

    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, str, bool]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-subscriber")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rc, p: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append(
            (m.topic, m.payload.decode(), bool(m.retain))
        )
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert self.subscribed.wait(scaled(10)), "the test subscriber did not subscribe"

    def json(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p, _ in list(self.messages) if t == topic]

    def wait(self, topic: str, pred: Any, within: float) -> dict[str, Any] | None:
        end = deadline(within)
        while time.monotonic() < end:
            for m in self.json(topic):
                if pred(m):
                    return m
            time.sleep(0.05)
        return None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
