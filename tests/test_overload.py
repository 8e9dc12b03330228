"""Overload with fault injection: the engine is slowed on purpose so that frames fall due faster
than they can be analysed. Newest frame wins: every due frame is either analysed or counted as
dropped (in the score messages' `dropped` and in `deepfake_frames_dropped_total`), the analysed
frames keep up with the sender instead of lagging further and further behind, and latency stays
bounded by about one analysis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bench.media import face_frames
from tests.conftest import LiveServer
from tests.exposition import sample
from tests.rtc_client import ClientPeer
from tests.timing import scaled

# Every micro-batch takes at least this long: 2.5x the 0.2 s between due frames at 5 fps.
ENGINE_DELAY = 0.5


@pytest.fixture
def slow_server(tiny_bundle: Path) -> Iterator[LiveServer]:
    """A live server whose engine sleeps ENGINE_DELAY before each micro-batch (the worker thread
    looks `_process` up on the instance each time, so wrapping it there slows every batch)."""
    with LiveServer(bundle=tiny_bundle) as srv:
        engine = srv.service.engine
        real: Callable[[Any], None] = engine._process

        def slow(batch: Any) -> None:
            time.sleep(ENGINE_DELAY)
            real(batch)

        engine._process = slow  # type: ignore[method-assign]
        yield srv


def test_slow_engine_drops_oldest_counts_drops_and_keeps_up(slow_server: LiveServer) -> None:
    srv = slow_server
    fps = srv.service.fps
    assert fps == 5.0  # the tiny bundle's rate: a frame is due every 0.2 s

    # At each pick-up, how far the newest frame received is ahead of the frame taken for
    # analysis (both in stream time): under 1/fps when the newest due frame wins.
    ahead: list[float] = []

    async def run() -> ClientPeer:
        peer = ClientPeer(srv.url, face_frames(60), fps=15)
        await peer.connect()
        stream = srv.service.streams[peer.answer["stream"]]
        real_prepare = stream._prepare

        def spy(due: Any) -> Any:
            ahead.append(stream.clock.last - due.t)
            return real_prepare(due)

        stream._prepare = spy  # type: ignore[method-assign]
        await peer.wait_scores(14, within=40.0)  # times the test time scale
        await peer.close()
        return peer

    peer = asyncio.run(run())
    scores = peer.scores()
    assert len(scores) >= 14, f"only {len(scores)} scores in 40 s"
    # Drop after the peer closed: let its stream end, so the counters are final.
    deadline = time.monotonic() + scaled(10)
    while srv.service.streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not srv.service.streams

    # 1. Drops are counted in the messages: never decreasing, and growing under overload.
    dropped = [m["dropped"] for m in scores]
    assert dropped == sorted(dropped), dropped
    assert dropped[-1] > 0, dropped
    # Conservation: between the first and the last message every frame that fell due was either
    # analysed (a message) or counted as dropped; nothing vanished and nothing queued up.
    steady = scores[2:]  # past the first analyses (which pay one-off start-up costs)
    due = (steady[-1]["t"] - steady[0]["t"]) * fps
    accounted = (len(steady) - 1) + (steady[-1]["dropped"] - steady[0]["dropped"])
    assert abs(accounted - due) <= 2.5, (accounted, due)
    # With each analysis taking ENGINE_DELAY, most due frames must be dropped.
    assert accounted - (len(steady) - 1) >= 0.4 * due, (dropped, due)

    # 2. ... and in Prometheus, as the same count (one stream only).
    text = httpx.get(srv.url + "/metrics").text
    total = sample(text, "deepfake_frames_dropped_total")
    assert dropped[-1] <= total <= dropped[-1] + 4 * fps * ENGINE_DELAY + 2, (total, dropped)
    assert sample(text, "deepfake_frames_analysed_total") >= len(scores)

    # 3. Newest frame wins: consecutive analysed frames are about one analysis apart in stream
    # time (not 1/fps apart, as a queue would give), so how far the analysed frame lags behind
    # the sender stays level instead of growing by ~(ENGINE_DELAY - 1/fps) per message.
    ts = np.array([m["t"] for m in steady])
    at = np.array(
        [peer.received_at[i] for i, m in enumerate(peer.messages) if m.get("type") == "score"][2:]
    )
    assert float(np.median(np.diff(ts))) >= 0.8 * ENGINE_DELAY, np.diff(ts)
    lag = at - ts  # receive time minus stream time: constant (plus jitter) if it keeps up
    growth = float(np.mean(lag[-3:]) - np.mean(lag[:3]))
    queued_growth = (len(ts) - 1) * (ENGINE_DELAY - 1 / fps)
    assert growth < 1.0 < queued_growth, (growth, queued_growth, lag)

    # The frame analysed is the newest due one: the frames received since fell in its own 1/fps
    # bucket (a frame or two of slack: the face-stage thread starts a moment after the pick-up),
    # not the ENGINE_DELAY-old first frame due after the previous pick-up.
    assert len(ahead) >= 10
    assert float(np.median(ahead)) < 1 / fps, ahead
    assert max(ahead) < 1 / fps + 2 / 15, ahead

    # 4. Latency stays bounded: arrival of the analysed frame to its score is about one analysis
    # (the delay plus face stage), never the backlog of a queue.
    latency = [m["latency_ms"] / 1000 for m in steady]
    assert min(latency) >= ENGINE_DELAY * 0.9, latency
    assert max(latency) < 2 * ENGINE_DELAY + scaled(1.5), latency
