"""--mqtt mqtt://[USER:PASSWORD@]HOST[:PORT]/PREFIX: camera status changes, per-minute score
summaries and alerts published as JSON to an MQTT broker (paho-mqtt, the `mqtt` extra).

Topics, under PREFIX (default 'deepfake'):
  PREFIX/status                 'online' / 'offline' (retained; 'offline' is also the will)
  PREFIX/cameras/ID/status      the camera's status (retained, QoS 1)
  PREFIX/cameras/ID/summary     one minute's score summary (QoS 1)
  PREFIX/cameras/ID/alert       an alert (QoS 1)

paho runs its own network thread and reconnects by itself; a broker that is down never blocks
scoring: messages queue in paho (bounded) and the counters in /metrics say what happened."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger(__name__)

MAX_QUEUED = 1000  # messages paho keeps while the broker is away


class MqttUrlError(ValueError):
    """--mqtt is not a usable broker URL; the message says why."""


@dataclass(frozen=True)
class MqttTarget:
    host: str
    port: int
    prefix: str
    tls: bool
    username: str | None = None
    password: str | None = None

    def redacted(self) -> str:
        auth = "***@" if self.username is not None else ""
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{auth}{self.host}:{self.port}/{self.prefix}"


def parse_mqtt_url(url: str) -> MqttTarget:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("mqtt", "mqtts"):
        raise MqttUrlError("--mqtt must be mqtt://HOST[:PORT]/PREFIX (or mqtts:// for TLS)")
    if not parts.hostname:
        raise MqttUrlError("--mqtt names no broker host (mqtt://HOST[:PORT]/PREFIX)")
    try:
        port = parts.port or (8883 if scheme == "mqtts" else 1883)
    except ValueError:
        raise MqttUrlError("--mqtt has an invalid port") from None
    prefix = parts.path.strip("/") or "deepfake"
    if any(c in prefix for c in "#+\0") or "//" in prefix:
        raise MqttUrlError("--mqtt topic prefix may not hold '#', '+' or empty levels")
    if parts.query or "#" in url:
        raise MqttUrlError("--mqtt takes no query, and its topic prefix may not hold '#'")
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return MqttTarget(parts.hostname, port, prefix, scheme == "mqtts", user, password)


def require_paho() -> None:
    try:
        import paho.mqtt.client  # noqa: F401
    except ImportError:
        raise MqttUrlError(
            "--mqtt needs the paho-mqtt package: pip install 'deepfake-live[mqtt]'"
        ) from None


class MqttPublisher:
    def __init__(
        self, target: MqttTarget, client_id: str, registry: CollectorRegistry | None = None
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.target = target
        self.connected = threading.Event()
        self.counter = Counter(
            "deepfake_mqtt_messages",
            "MQTT messages by result: queued (handed to the client), published (acknowledged "
            "or sent), dropped (the client's queue was full or it refused)",
            ["result"],
            registry=registry if registry is not None else CollectorRegistry(),
        )
        for result in ("queued", "published", "dropped"):
            self.counter.labels(result)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        client.max_queued_messages_set(MAX_QUEUED)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        if target.username is not None:
            client.username_pw_set(target.username, target.password)
        if target.tls:
            client.tls_set()
        client.will_set(self.topic("status"), "offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client

    def topic(self, *levels: str) -> str:
        return "/".join((self.target.prefix, *levels))

    def start(self) -> None:
        self.client.connect_async(self.target.host, self.target.port, keepalive=30)
        self.client.loop_start()
        log.info("MQTT: publishing to %s", self.target.redacted())

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("MQTT broker %s refused the connection: %s", self.target.redacted(), reason)
            return
        self.connected.set()
        client.publish(self.topic("status"), "online", qos=1, retain=True)
        log.info("MQTT: connected to %s", self.target.redacted())

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if self.connected.is_set():
            log.warning("MQTT: disconnected from %s (%s)", self.target.redacted(), reason)
        self.connected.clear()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self.counter.labels("published").inc()

    def publish(self, kind: str, camera: str, payload: dict[str, Any]) -> None:
        topic = self.topic("cameras", camera, kind)
        body = json.dumps(payload, separators=(",", ":"))
        info = self.client.publish(topic, body, qos=1, retain=kind == "status")
        if info.rc == 0:
            self.counter.labels("queued").inc()
        else:
            self.counter.labels("dropped").inc()
            log.debug("MQTT: %s not queued (rc %s)", topic, info.rc)

    async def close(self) -> None:
        import asyncio

        def stop() -> None:
            if self.connected.is_set():
                info = self.client.publish(self.topic("status"), "offline", qos=1, retain=True)
                try:
                    info.wait_for_publish(2)
                except (RuntimeError, ValueError):
                    pass
            self.client.disconnect()
            self.client.loop_stop()

        await asyncio.get_running_loop().run_in_executor(None, stop)
