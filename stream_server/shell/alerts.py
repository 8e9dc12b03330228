"""Alerts: a face whose fake probability stays at or above the threshold for `hold_seconds` fires
one alert (logged, and POSTed as JSON to each webhook with retries, signed with HMAC-SHA256 when
a secret is set), never blocking scoring. Camera status changes, per-minute score summaries and
alerts also go to an MQTT broker when --mqtt is set (stream_server.shell.mqtt)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter

from stream_server.core.messages import ScoreMessage
from stream_server.shell.store import iso

log = logging.getLogger(__name__)


@dataclass
class AlertTracker:
    """Per-source state: since when each face track has been above the threshold."""

    threshold: float
    hold_seconds: float
    above_since: dict[int, float] = field(default_factory=dict)
    fired: set[int] = field(default_factory=set)

    def update(self, msg: ScoreMessage, now: float | None = None) -> list[dict[str, Any]]:
        now = time.monotonic() if now is None else now
        alerts = []
        seen = set()
        for face in msg.faces:
            seen.add(face.track)
            if face.label == "fake" and face.p_fake >= self.threshold:
                start = self.above_since.setdefault(face.track, now)
                if now - start >= self.hold_seconds and face.track not in self.fired:
                    self.fired.add(face.track)
                    alerts.append(
                        {
                            "track": face.track,
                            "p_fake": face.p_fake,
                            "box": list(face.box),
                            "above_for_s": round(now - start, 2),
                        }
                    )
            else:
                self.above_since.pop(face.track, None)
                self.fired.discard(face.track)
        for gone in set(self.above_since) - seen:
            self.above_since.pop(gone, None)
            self.fired.discard(gone)
        return alerts


SIGNATURE_HEADER = "X-Deepfake-Signature"
TIMESTAMP_HEADER = "X-Deepfake-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value: 'sha256=' + hex HMAC-SHA256 of 'TIMESTAMP.BODY' keyed with
    the secret (the timestamp is signed too, so a receiver can refuse old replays)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class WebhookNotifier:
    """POSTs alerts to webhook URLs from a bounded queue, with exponential-backoff retries.

    Each POST carries the alert as JSON with its wall-clock time ('timestamp', Unix seconds,
    and 'time', ISO 8601 UTC), and, with a secret, the headers X-Deepfake-Timestamp and
    X-Deepfake-Signature (see `sign`)."""

    def __init__(
        self,
        urls: Sequence[str],
        retries: int = 3,
        timeout: float = 5.0,
        queue_size: int = 100,
        secret: str | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.urls = list(urls)
        self.retries = retries
        self.timeout = timeout
        self.secret = secret
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=queue_size)
        self.dropped = 0
        self.delivered = 0
        self.failed = 0
        self.counter = Counter(
            "deepfake_webhook_deliveries",
            "Webhook deliveries by result: delivered (a 2xx-4xx answer), failed (no answer or "
            "5xx after every retry), dropped (the queue was full)",
            ["result"],
            registry=registry if registry is not None else CollectorRegistry(),
        )
        for result in ("delivered", "failed", "dropped"):
            self.counter.labels(result)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.urls and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="webhooks")

    def notify(self, alert: dict[str, Any]) -> None:
        log.warning("ALERT %s", alert)
        if not self.urls:
            return
        try:
            self.queue.put_nowait(alert)
        except asyncio.QueueFull:
            self.dropped += 1
            self.counter.labels("dropped").inc()

    async def _run(self) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
            while True:
                alert = await self.queue.get()
                for url in self.urls:
                    await self._post(client, url, alert)

    def request(self, alert: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        """The body and headers of one delivery (signed now)."""
        body = json.dumps(alert, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        if self.secret:
            stamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = stamp
            headers[SIGNATURE_HEADER] = sign(self.secret, stamp, body)
        return body, headers

    async def _post(self, client: Any, url: str, alert: dict[str, Any]) -> None:
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                body, headers = self.request(alert)
                r = await client.post(url, content=body, headers=headers)
                if r.status_code < 500:
                    self.delivered += 1
                    self.counter.labels("delivered").inc()
                    return
            except Exception as exc:  # network errors: retry
                log.debug("webhook %s attempt %d failed: %s", url, attempt + 1, exc)
            if attempt < self.retries:
                await asyncio.sleep(delay)
                delay *= 2
        self.failed += 1
        self.counter.labels("failed").inc()
        log.error("webhook %s failed after %d attempts", url, self.retries + 1)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None


class Publisher(Protocol):
    def start(self) -> None: ...

    def publish(self, kind: str, camera: str, payload: dict[str, Any]) -> None: ...

    async def close(self) -> None: ...


class Notifiers:
    """Where camera events go: alerts to the webhooks; status changes, minute summaries and
    alerts to the publishers (MQTT). Every event gets its wall-clock time."""

    def __init__(self, webhooks: WebhookNotifier, publishers: Sequence[Publisher] = ()) -> None:
        self.webhooks = webhooks
        self.publishers = list(publishers)

    def start(self) -> None:
        self.webhooks.start()
        for p in self.publishers:
            p.start()

    def publish(self, kind: str, camera: str, payload: dict[str, Any], now: float) -> None:
        event = {"type": kind, **payload, "timestamp": round(now, 3), "time": iso(now)}
        for p in self.publishers:
            p.publish(kind, camera, event)

    def alert(self, alert: dict[str, Any], now: float) -> None:
        event = {**alert, "timestamp": round(now, 3), "time": iso(now)}
        self.webhooks.notify(event)
        for p in self.publishers:
            p.publish("alert", str(alert["camera"]), event)

    async def close(self) -> None:
        await self.webhooks.close()
        for p in self.publishers:
            await p.close()
