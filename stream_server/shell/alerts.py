"""Alerts: a face whose fake probability stays at or above the threshold for `hold_seconds` fires
one alert (logged, and POSTed as JSON to each webhook with retries), never blocking scoring."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from stream_server.core.messages import ScoreMessage

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


class WebhookNotifier:
    """POSTs alerts to webhook URLs from a bounded queue, with exponential-backoff retries."""

    def __init__(
        self, urls: Sequence[str], retries: int = 3, timeout: float = 5.0, queue_size: int = 100
    ) -> None:
        self.urls = list(urls)
        self.retries = retries
        self.timeout = timeout
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=queue_size)
        self.dropped = 0
        self.delivered = 0
        self.failed = 0
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

    async def _run(self) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
            while True:
                alert = await self.queue.get()
                for url in self.urls:
                    await self._post(client, url, alert)

    async def _post(self, client: Any, url: str, alert: dict[str, Any]) -> None:
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                r = await client.post(url, json=alert)
                if r.status_code < 500:
                    self.delivered += 1
                    return
            except Exception as exc:  # network errors: retry
                log.debug("webhook %s attempt %d failed: %s", url, attempt + 1, exc)
            if attempt < self.retries:
                await asyncio.sleep(delay)
                delay *= 2
        self.failed += 1
        log.error("webhook %s failed after %d attempts", url, self.retries + 1)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
