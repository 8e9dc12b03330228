"""`--ingest-workers N`: webcam sessions answered by N worker processes (a real uvicorn on
loopback, real worker processes, real aiortc peers), counted against one --max-streams, summed
into one /metrics, restarted when they die, and gone when the server stops."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from bench.media import face_frames
from stream_server.core.metrics import merge_exposition, monotonic_part
from stream_server.shell.setting_fields import SettingsError
from stream_server.shell.settings import Settings
from tests.conftest import LiveServer
from tests.exposition import sample
from tests.rtc_client import ClientPeer
from tests.timing import poll, scaled

N_FRAMES = 60


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_metrics_of_several_processes_add_up() -> None:
    texts = []
    for n in (2, 5):
        r = CollectorRegistry()
        Counter("frames", "Frames", registry=r).inc(n)
        Gauge("streams", "Streams", registry=r).set(n)
        Counter("closed", "Closed", ["reason"], registry=r).labels("idle").inc(n)
        Histogram("latency", "Latency", buckets=(0.1, 1.0), registry=r).observe(0.05 * n)
        texts.append(generate_latest(r).decode())
    merged = merge_exposition(texts).decode()
    assert sample(merged, "frames_total") == 7
    assert sample(merged, "streams") == 7
    assert 'closed_total{reason="idle"} 7.0' in merged
    assert 'latency_bucket{le="0.1"} 1.0' in merged  # 0.1 fell in it, 0.25 did not
    assert 'latency_bucket{le="1.0"} 2.0' in merged
    assert sample(merged, "latency_count") == 2
    assert "_created" not in merged
    assert "# TYPE frames_total counter" in merged and "# TYPE latency histogram" in merged
    # a merged exposition merges again: what exited workers counted is summed so
    again = merge_exposition([merged, monotonic_part(merged)]).decode()
    assert sample(again, "frames_total") == 14 and 'closed_total{reason="idle"} 14.0' in again
    assert sample(again, "latency_count") == 4
    assert sample(again, "streams") == 7  # gauges are not part of what an exited process kept


def test_ingest_workers_and_a_cluster_do_not_go_together() -> None:
    with pytest.raises(SettingsError, match="--ingest-workers and --ray-address"):
        Settings(ingest_workers=2, ray_address="127.0.0.1:6379")


def test_a_worker_that_cannot_start_stops_the_server_at_once(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the worker command fails at once (as a worker whose interpreter or
    environment is broken would); the server refuses to start within seconds, not after the
    3-minute start-up allowance, and leaves no worker behind."""
    import sys
    import time

    from stream_server.shell import workers

    monkeypatch.setattr(workers, "WORKER_COMMAND", [sys.executable, "-c", "raise SystemExit(3)"])
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="uvicorn did not start"):
        with LiveServer(bundle=tiny_bundle, ingest_workers=2):
            pass
    assert time.monotonic() - t0 < scaled(20)


def _offer_without_candidates_from(sdp: str) -> str:
    return "\r\n".join(line for line in sdp.split("\r\n") if not line.startswith("a=candidate"))


def test_webcam_sessions_are_spread_over_worker_processes(tiny_bundle: Path) -> None:
    with LiveServer(bundle=tiny_bundle, ingest_workers=2, max_streams=2) as srv:
        health = httpx.get(srv.url + "/healthz").json()
        workers = health["ingest_workers"]
        pids = [w["pid"] for w in workers]
        assert len(workers) == 2 and all(w["ready"] for w in workers), workers
        assert os.getpid() not in pids and all(alive(p) for p in pids)
        assert httpx.get(srv.url + "/readyz").status_code == 200

        async def run() -> dict[str, Any]:
            a = ClientPeer(srv.url, face_frames(N_FRAMES), fps=15)
            b = ClientPeer(srv.url, face_frames(N_FRAMES), fps=15)
            await a.connect()
            await b.connect()
            # the least-loaded worker takes each offer: one session in each process
            assert {a.answer["worker"], b.answer["worker"]} == {0, 1}, (a.answer, b.answer)
            got = await asyncio.gather(a.wait_scores(8, 15.0), b.wait_scores(8, 15.0))
            assert all(len(s) >= 8 for s in got), [len(s) for s in got]
            assert {m["stream"] for m in got[0]} == {a.answer["stream"]}
            assert {m["stream"] for m in got[1]} == {b.answer["stream"]}
            out: dict[str, Any] = {"answers": [a.answer, b.answer]}
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
                out["health"] = (await c.get("/healthz")).json()
                out["metrics"] = (await c.get("/metrics")).text
                # the limit counts the sessions in every worker
                third = ClientPeer(srv.url, face_frames(10), fps=15)
                try:
                    with pytest.raises(httpx.HTTPStatusError) as refused:
                        await third.connect()
                    out["third"] = refused.value.response
                finally:
                    await third.close()
                live = await c.get(f"/v1/sessions/{a.answer['stream']}")
                out["live"] = live.json()
            await a.close()
            await b.close()
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
                ended = await c.get(f"/v1/sessions/{a.answer['stream']}", params={"wait": 15})
                out["ended"] = ended.json()
                # an offer the worker's aiortc refuses is still a 400 with its reason
                bad = ClientPeer(srv.url, face_frames(10), fps=15)
                try:
                    bad.pc.addTrack(bad.track)
                    bad.pc.createDataChannel("scores")
                    await bad.pc.setLocalDescription(await bad.pc.createOffer())
                    sdp = _offer_without_candidates_from(bad.pc.localDescription.sdp)
                    out["bad"] = await c.post("/offer", json={"sdp": sdp, "type": "offer"})
                finally:
                    await bad.close()
            return out

        out = asyncio.run(run())
        assert out["health"]["streams"] == 2
        assert sorted(w["streams"] for w in out["health"]["ingest_workers"]) == [1, 1]
        text = out["metrics"]
        assert sample(text, "deepfake_active_streams") == 2  # one in each worker, summed
        assert sample(text, "deepfake_frames_analysed_total") >= 16
        assert out["third"].status_code == 503
        assert "stream limit" in out["third"].json()["error"]
        assert out["live"]["state"] == "live" and out["live"]["worker"] in (0, 1)
        assert out["ended"]["state"] == "ended" and "message" not in out["ended"]
        assert out["bad"].status_code == 400, out["bad"].text
        assert "candidate" in out["bad"].json()["error"]
        assert (
            poll(
                lambda: httpx.get(srv.url + "/healthz").json()["streams"],
                10,
                until=lambda n: n == 0,
            )
            == 0
        )
    # the workers stop with the server: no process is left behind
    assert poll(lambda: [p for p in pids if alive(p)], 15, until=lambda left: not left) == []


def test_a_crashed_worker_ends_its_sessions_and_is_started_again(tiny_bundle: Path) -> None:
    with LiveServer(bundle=tiny_bundle, ingest_workers=2) as srv:

        async def run() -> dict[str, Any]:
            out: dict[str, Any] = {}
            a = ClientPeer(srv.url, face_frames(N_FRAMES), fps=15)
            await a.connect()
            assert await a.wait_scores(3, 15.0)
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
                health = (await c.get("/healthz")).json()
                victim = health["ingest_workers"][a.answer["worker"]]
                out["victim"] = victim
                out["metrics_before"] = (await c.get("/metrics")).text
                os.kill(victim["pid"], signal.SIGKILL)
                r = await c.get(f"/v1/sessions/{a.answer['stream']}", params={"wait": 20})
                out["ended"] = r.json()
                await a.close()

                async def restarted() -> dict[str, Any]:
                    w: dict[str, Any] = (await c.get("/healthz")).json()["ingest_workers"][
                        victim["index"]
                    ]
                    return w

                w = await restarted()
                deadline = asyncio.get_running_loop().time() + scaled(60)
                while not (w["ready"] and w["pid"] != victim["pid"]):
                    assert asyncio.get_running_loop().time() < deadline, w
                    await asyncio.sleep(0.2)
                    w = await restarted()
                out["restarted"] = w
                out["metrics_restarted"] = (await c.get("/metrics")).text
            # new sessions still work, on either worker
            peers = [ClientPeer(srv.url, face_frames(N_FRAMES), fps=15) for _ in range(2)]
            for p in peers:
                await p.connect()
            out["after"] = await asyncio.gather(*(p.wait_scores(3, 15.0) for p in peers))
            out["workers_after"] = [p.answer["worker"] for p in peers]
            for p in peers:
                await p.close()
            return out

        out = asyncio.run(run())
        assert out["ended"]["state"] == "ended", out["ended"]
        msg = out["ended"]["message"]
        assert msg["type"] == "error" and "ingest worker" in msg["detail"], msg
        assert msg["stream"] == out["ended"]["stream"]
        assert out["restarted"]["restarts"] == 1
        assert not alive(out["victim"]["pid"])
        assert all(len(s) >= 3 for s in out["after"])
        assert sorted(out["workers_after"]) == [0, 1]
        # /metrics sums every process: what the dead worker had counted stays in the counters
        # (a total that went down would read as a counter reset to Prometheus), while its
        # gauges went with it
        frames = "deepfake_frames_analysed_total"
        before = sample(out["metrics_before"], frames)
        assert before >= 3
        assert sample(out["metrics_restarted"], frames) >= before
        assert sample(out["metrics_restarted"], "deepfake_active_streams") == 0


@pytest.mark.browser
def test_the_page_explains_a_crashed_worker_and_reconnects(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """The page in a real Chromium, its session in a worker that is then killed: the page shows
    the server's `error` message (from GET /v1/sessions/{id}) and goes live again on a worker."""
    from tests.browser import chromium, write_y4m
    from tests.timing import ms

    clip = write_y4m(tmp_path / "face.y4m", face_frames(60, size=(640, 480)))
    with LiveServer(bundle=tiny_bundle, ingest_workers=2) as srv, chromium(clip) as ctx:
        page = ctx.new_page()
        page.goto(srv.url + "/")
        # everything the page writes into its error line, kept (it is cleared once live again)
        page.evaluate(
            """() => {
              window.errorsSeen = [];
              const el = document.querySelector('#live-error');
              new MutationObserver(() => { if (el.textContent) window.errorsSeen.push(el.textContent); })
                .observe(el, { childList: true, characterData: true, subtree: true });
            }"""
        )
        page.get_by_role("button", name="Start camera").click()
        page.wait_for_function(
            "Number(document.querySelector('#timeline').dataset.points) >= 2", timeout=ms(20)
        )
        health = poll(
            lambda: httpx.get(srv.url + "/healthz").json(),
            10,
            until=lambda h: any(w["streams"] == 1 for w in h["ingest_workers"]),
        )
        (victim,) = [w for w in health["ingest_workers"] if w["streams"] == 1]
        os.kill(victim["pid"], signal.SIGKILL)
        page.wait_for_function(
            "window.errorsSeen.some(t => t.includes('ingest worker'))", timeout=ms(45)
        )
        seen = page.evaluate("window.errorsSeen")
        assert any(f"ingest worker {victim['index']} for this session stopped" in t for t in seen)
        # it reconnects by itself, to a worker that is ready, and scores again
        page.wait_for_function(
            "document.querySelector('#status').textContent === 'live'", timeout=ms(45)
        )
        before = int(page.locator("#timeline").get_attribute("data-points"))
        page.wait_for_function(
            f"Number(document.querySelector('#timeline').dataset.points) > {before}",
            timeout=ms(20),
        )
        assert httpx.get(srv.url + "/healthz").json()["streams"] == 1
