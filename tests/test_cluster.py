"""The service on a real local Ray cluster (ray.cluster_utils.Cluster: a head and two worker
nodes, each its own raylet and processes, all on 127.0.0.1): archive scans as Ray Data jobs, and
RTSP cameras (the real GStreamer server) in Ray actors that move when their node dies.
No part of Ray is mocked."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bench.media import face_frames, write_video
from stream_server.shell.cluster_engine import engine_info
from tests.browser import chromium, write_y4m
from tests.conftest import LiveServer, free_port
from tests.rtc_client import ClientPeer, watch_camera
from tests.rtsp import RtspServer
from tests.test_rtsp import FAST, Feed, register
from tests.timing import deadline, ms, poll, scaled

ROOT = Path(__file__).resolve().parent.parent
MB = 2**20
STREAMS_PER_NODE = 4


@contextmanager
def local_cluster(workers: int = 2) -> Iterator[Any]:
    """A head that runs no work (no CPU, no stream slots) and `workers` nodes with one CPU and
    STREAMS_PER_NODE stream slots each; small object stores, no dashboard; always shut down."""
    from ray.cluster_utils import Cluster

    from stream_server.shell.cluster import node_resources

    small = {"object_store_memory": 100 * MB, "include_dashboard": False}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "node_ip_address": "127.0.0.1",
            # A node that stops answering is declared dead after about 3 s (Ray's default
            # is about 15 s); deployments tune the same two settings.
            "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
            **small,
        },
    )
    try:
        for _ in range(workers):
            cluster.add_node(
                num_cpus=1,
                node_ip_address="127.0.0.1",
                resources=node_resources(STREAMS_PER_NODE),
                **small,
            )
        cluster.wait_for_nodes()
        yield cluster
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def scan_cli(bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream_server.shell.scan_cli", "--bundle", str(bundle), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )


def labelled_folder(d: Path, n: int = 6) -> Path:
    """`n` short face clips, every other one recoloured and labelled FAKE (DFDC metadata)."""
    d.mkdir()
    meta = {}
    frames = face_frames(30, size=(320, 240))
    for i in range(n):
        clip = [np.roll(f, 10 * i, axis=1) for f in frames]
        if i % 2:
            clip = [np.clip(f.astype(int) + [40, -20, -20], 0, 255).astype(np.uint8) for f in clip]
        write_video(d / f"v{i}.mp4", clip, fps=10)
        meta[f"v{i}.mp4"] = {"label": "FAKE" if i % 2 else "REAL"}
    (d / "notes.mp4").write_text("not a video\n")  # an error line, in its place in the order
    (d / "metadata.json").write_text(json.dumps(meta))
    return d


def test_a_cluster_scan_equals_the_local_scan(tiny_bundle: Path, tmp_path: Path) -> None:
    folder = labelled_folder(tmp_path / "archive")
    local = scan_cli(tiny_bundle, "--json", "--quiet", str(folder))
    assert local.returncode in (1, 3), local.stderr
    with local_cluster() as cluster:
        worker_ids = {n.node_id for n in cluster.worker_nodes}
        remote = scan_cli(
            tiny_bundle, "--json", "--ray-address", cluster.address, "--quiet", str(folder)
        )
    assert remote.returncode == local.returncode, remote.stderr
    a, b = json.loads(local.stdout), json.loads(remote.stdout)
    # The same files in the same order, each with the same result.
    assert [r["path"] for r in b["results"]] == [r["path"] for r in a["results"]]
    for x, y in zip(a["results"], b["results"], strict=True):
        if "error" in x:
            assert y == x
            continue
        assert y["p_fake"] == pytest.approx(x["p_fake"], abs=1e-6)
        assert {k: v for k, v in y.items() if k not in ("p_fake", "timeline")} == {
            k: v for k, v in x.items() if k not in ("p_fake", "timeline")
        }
    assert set(a["metrics"]) == set(b["metrics"]) and a["metrics"]["n"] == 6
    for k, v in a["metrics"].items():
        assert b["metrics"][k] == pytest.approx(v, abs=1e-6), k
    # Scanned on both worker nodes (the head runs no work), one actor each.
    per_node = b["cluster"]["files_per_node"]
    assert set(per_node) == worker_ids and sum(per_node.values()) == 7
    assert "cluster" not in a


# Scores resume on the surviving node within this many seconds of its peer dying (times the test
# time scale): Ray declares the node dead (~3 s here), restarts the actor elsewhere (a new
# process that loads the bundle), and the camera reconnects to the RTSP server.
FAILOVER_BOUND = 30.0


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 s of a face at 15 fps, H.264 without B-frames (as IP cameras stream)."""
    return write_video(
        tmp_path_factory.mktemp("rtsp") / "cam.mp4",
        face_frames(90, size=(320, 240)) * 20,
        fps=15,
        options={"tune": "zerolatency", "g": "15"},
    )


def wait_event(
    feed: Feed, pred: Callable[[tuple[str, dict[str, Any]]], bool], after: int, within: float
) -> int:
    """The index of the first feed event past `after` for which `pred` holds."""
    end = deadline(within)
    while time.monotonic() < end:
        for i, ev in enumerate(feed.events[after + 1 :], start=after + 1):
            if pred(ev):
                return i
        time.sleep(0.05)
    raise AssertionError(f"no such event within {within:g} s: {feed.events[after + 1 :][-5:]}")


@pytest.mark.rtsp
def test_cameras_spread_over_the_workers_and_move_when_a_node_dies(
    tiny_bundle: Path, long_clip: Path
) -> None:
    with local_cluster() as cluster, ExitStack() as stack:
        workers = {n.node_id: n for n in cluster.worker_nodes}
        cams = [stack.enter_context(RtspServer(long_clip, free_port())) for _ in range(4)]
        srv = stack.enter_context(
            LiveServer(bundle=tiny_bundle, ray_address=cluster.address, **FAST)
        )
        ids = []
        for i, cam in enumerate(cams):
            r = register(srv, cam.url, name=f"door {i}")
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        feeds = {cid: Feed(f"{srv.url}/v1/cameras/{cid}/events") for cid in ids}
        stack.callback(lambda: [f.close() for f in feeds.values()])
        first = {cid: wait_event(feeds[cid], lambda e: e[0] == "score", -1, 60) for cid in ids}
        # Every camera has scored; their statuses reach the API by the actors' long polls, so
        # on a loaded machine one may still read its previous status for a moment.
        deadline = time.monotonic() + 30
        while True:
            views = {c["id"]: c for c in httpx.get(srv.url + "/v1/cameras").json()["cameras"]}
            if all(views[cid]["status"] == "live" for cid in ids) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert all(views[cid]["status"] == "live" for cid in ids), {
            cid: views[cid]["status"] for cid in ids
        }
        placed = {cid: views[cid]["node"] for cid in ids}
        # Spread over both workers (SPREAD over the nodes with 'streams' slots), none on the head.
        assert Counter(placed.values()) == Counter({w: 2 for w in workers}), placed
        # Each node's cameras share its one engine (crops encoded together).
        assert all(views[cid]["engine"] == "node" for cid in ids)
        engines = {e["node"]: e for e in engine_info()}
        assert {w: engines[w]["streams"] for w in workers} == {w: 2 for w in workers}
        assert all(engines[w]["crops"] > 0 for w in workers)

        health = httpx.get(srv.url + "/healthz").json()["cluster"]
        by_node = {n["node"]: n for n in health["nodes"]}
        assert all(by_node[w]["streams"] == 4 and by_node[w]["streams_used"] == 2 for w in workers)
        assert health["streams_capacity"] == 8 and health["streams_used"] == 4

        # A camera is watched as in one process: its own actor answers the viewer's offer with
        # its node's candidates, relays the frames it decodes there and sends its scores.
        def watched(cid: str) -> dict[str, Any]:
            started = time.monotonic()
            answer, frame, messages = asyncio.run(watch_camera(srv.url, cid, within=30))
            assert (frame.width, frame.height) == (320, 240)
            scores = [m for m in messages if m["type"] == "score"]
            assert scores and {m["stream"] for m in scores} == {cid}, messages
            took = time.monotonic() - started
            print(f"watched {cid} on node {answer['node'][:12]}: frame and score in {took:.1f} s")
            return answer

        assert watched(ids[0])["node"] == placed[ids[0]]

        victim = placed[ids[0]]
        moved = [cid for cid in ids if placed[cid] == victim]
        stayed = [cid for cid in ids if placed[cid] != victim]
        (survivor,) = set(workers) - {victim}
        mark = {cid: len(feeds[cid].events) - 1 for cid in ids}
        died = time.monotonic()
        cluster.remove_node(workers[victim], allow_graceful=False)  # its processes killed

        resumed = {}
        for cid in moved:
            back = wait_event(
                feeds[cid],
                lambda e: e[0] == "reconnected" and "restarted by Ray" in e[1]["detail"],
                mark[cid],
                FAILOVER_BOUND,
            )
            lost = [e for e in feeds[cid].events[mark[cid] + 1 : back] if e[0] == "source_lost"]
            assert lost, "the camera reported losing its node before it came back"
            score = wait_event(feeds[cid], lambda e: e[0] == "score", back, FAILOVER_BOUND)
            resumed[cid] = time.monotonic() - died
            assert feeds[cid].events[score][1]["stream"] == cid
        assert max(resumed.values()) <= scaled(FAILOVER_BOUND), resumed
        print(f"scores resumed {resumed} s after the node died (bound {FAILOVER_BOUND:g} s)")
        # The other node's cameras kept scoring; everything now runs on the survivor.
        for cid in stayed:
            wait_event(feeds[cid], lambda e: e[0] == "score", mark[cid], 10)
            assert not [e for e in feeds[cid].events[mark[cid] + 1 :] if e[0] == "source_lost"]
        views = {c["id"]: c for c in httpx.get(srv.url + "/v1/cameras").json()["cameras"]}
        assert {views[cid]["node"] for cid in ids} == {survivor}
        assert all(views[cid]["status"] == "live" for cid in ids)
        assert [views[cid]["failovers"] for cid in moved] == [1, 1]
        # The kept history (the API's state database) has the move: lost, then live again.
        for cid in moved:
            kept = httpx.get(f"{srv.url}/v1/cameras/{cid}/history").json()["statuses"]
            changes = [(k["status"], k["detail"]) for k in kept]
            i = next(i for i, c in enumerate(changes) if c[0] == "lost")
            assert "Ray restarts the camera" in changes[i][1] and ("live", "") in changes[i:]
        assert all(views[cid]["engine"] == "node" for cid in ids)
        engines = {e["node"]: e for e in engine_info()}
        assert set(engines) == {survivor} and engines[survivor]["streams"] == 4
        print(f"survivor's engine: {engines[survivor]}")
        health = httpx.get(srv.url + "/healthz").json()["cluster"]
        assert [(n["node"], n["streams_used"]) for n in health["nodes"] if n["streams"]] == [
            (survivor, 4)
        ]
        metrics = httpx.get(srv.url + "/metrics").text
        assert f'deepfake_cluster_node_streams{{node="{survivor}"}} 4.0' in metrics
        assert f'deepfake_cluster_node_capacity{{node="{survivor}"}} 4.0' in metrics
        assert victim not in metrics
        # The relay hop a cluster camera's score takes (node actor -> API), before its feed.
        relay = {
            line.split()[0]: float(line.split()[1])
            for line in metrics.splitlines()
            if line.startswith("deepfake_cluster_relay_seconds")
        }
        count = relay["deepfake_cluster_relay_seconds_count"]
        within = {
            le: relay[f'deepfake_cluster_relay_seconds_bucket{{le="{le}"}}'] / count
            for le in ("0.01", "0.05", "0.2")
        }
        print(
            f"relay: {count:.0f} scores, mean {relay['deepfake_cluster_relay_seconds_sum'] / count * 1000:.1f} ms, within {within}"
        )
        assert count > 50 and within["0.2"] >= 0.9
        # A moved camera is watched on the node it now runs on.
        assert watched(ids[0])["node"] == survivor
        assert all(first[cid] >= 0 for cid in ids)


def test_the_single_process_service_never_imports_ray() -> None:
    """Without --ray-address nothing imports Ray: the service, the scan CLI and the camera
    registry load (and a scan's argument parsing runs) with Ray absent from sys.modules."""
    code = (
        "import sys\n"
        "from stream_server.shell import api, cameras, cli, scan_cli, settings\n"
        "settings.parse_settings([])\n"
        "scan_cli.parser().parse_args(['x.mp4'])\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


@pytest.mark.browser
def test_webcam_sessions_run_in_a_worker_nodes_actor(tiny_bundle: Path, tmp_path: Path) -> None:
    """A real aiortc client, then a real Chromium, offer to the API; a webcam actor on a worker
    node answers with its own peer, and the scores come on the data channel from that node.
    When the page's node dies, the page says so and its next offer lands on the other node."""
    clip = write_y4m(tmp_path / "face.y4m", face_frames(60, size=(640, 480)))
    with local_cluster() as cluster:
        workers = {n.node_id for n in cluster.worker_nodes}
        with LiveServer(bundle=tiny_bundle, ray_address=cluster.address, max_wait_ms=300) as srv:

            async def session() -> tuple[dict[str, Any], float, list[dict[str, Any]], Any]:
                peer = ClientPeer(srv.url, face_frames(30, size=(320, 240)))
                started = time.monotonic()
                answer = await peer.connect()
                answered = time.monotonic() - started
                try:
                    scores = await peer.wait_scores(5, 60)
                    async with httpx.AsyncClient() as client:
                        health = (await client.get(srv.url + "/healthz")).json()
                finally:
                    await peer.close()
                return answer, answered, scores, health

            answer, answered, scores, health = asyncio.run(session())
            print(f"offer answered by a new webcam actor in {answered:.2f} s")
            assert answer["node"] in workers
            assert len(scores) >= 5 and {s["stream"] for s in scores} == {answer["stream"]}
            assert all(len(s["faces"]) == 1 for s in scores)
            used = {n["node"]: n["streams_used"] for n in health["cluster"]["nodes"]}
            assert used[answer["node"]] == 1 and sum(used.values()) == 1
            assert health["streams"] == 0  # nothing analysed in the API's own process

            def cluster_streams() -> int:
                return int(httpx.get(srv.url + "/healthz").json()["cluster"]["streams_used"])

            # The aiortc session's slot is freed once its peer has gone; it ended without error.
            assert poll(cluster_streams, 30, every=0.2, until=lambda n: n == 0) == 0
            ended = httpx.get(f"{srv.url}/v1/sessions/{answer['stream']}").json()
            assert ended == {"stream": answer["stream"], "state": "ended"}
            # The session used its node's shared engine; frames that reach it together are
            # encoded in one run.
            engines = {e["node"]: e for e in engine_info()}
            assert engines[answer["node"]]["crops"] > 0
            assert sum(e["streams"] for e in engines.values()) == 1
            import ray

            from stream_server.core.bundle import load_bundle
            from stream_server.shell.cluster_engine import engine_name

            size = load_bundle(tiny_bundle).encoder.input_size
            actor = ray.get_actor(engine_name(answer["node"]))
            before = ray.get(actor.info.remote())
            # 8 one-crop frames of 8 "streams" sent together: with --max-wait-ms 300 they wait
            # for each other and are encoded together.
            crops = np.zeros((1, size, size, 3), np.uint8)
            out = ray.get([actor.encode.remote(crops, f"s{i}") for i in range(8)])
            after = ray.get(actor.info.remote())
            assert [o.shape[0] for o in out] == [1] * 8
            assert after["calls"] - before["calls"] == 8
            runs = after["batches"] - before["batches"]
            print(f"8 calls encoded in {runs} runs")
            assert runs <= 3 and after["most_jobs_per_batch"] >= 3
            with chromium(clip) as ctx:
                page = ctx.new_page()

                def wait_page(condition: str, within: float) -> None:
                    """Wait for `condition` on the page; on a timeout say what it showed."""
                    try:
                        page.wait_for_function(condition, timeout=ms(within))
                    except Exception as exc:
                        shown = page.evaluate(
                            "[document.querySelector('#status').textContent,"
                            " document.querySelector('#live-error').textContent]"
                        )
                        health = httpx.get(srv.url + "/healthz").json()["cluster"]
                        raise AssertionError(f"{condition}: page {shown}, {health}") from exc

                page.goto(srv.url + "/")
                page.get_by_role("button", name="Start camera").click()
                wait_page(
                    "['real','fake','warming_up']"
                    ".includes(document.querySelector('#verdict').dataset.label)",
                    60,
                )
                wait_page("Number(document.querySelector('#timeline').dataset.points) >= 3", 60)
                nodes = httpx.get(srv.url + "/healthz").json()["cluster"]["nodes"]
                (node,) = [n["node"] for n in nodes if n["streams_used"] == 1]
                assert node in workers and page.locator("#status").inner_text() == "live"
                # Its node dies: the page says the connection was lost and why (the API's
                # `error` message for the session), offers again, and a webcam actor on the
                # other node takes the session.
                (survivor,) = workers - {node}
                died = time.monotonic()
                cluster.remove_node(
                    next(n for n in cluster.worker_nodes if n.node_id == node),
                    allow_graceful=False,
                )
                wait_page(
                    "document.querySelector('#live-error').textContent.includes('Connection lost')",
                    60,
                )
                lost = time.monotonic() - died
                wait_page(
                    "document.querySelector('#live-error').textContent"
                    f".includes('cluster node {node[:12]} stopped')",
                    60,
                )
                why = time.monotonic() - died
                wait_page("document.querySelector('#status').textContent === 'live'", 60)
                back = time.monotonic() - died
                print(
                    f"page: connection lost shown {lost:.1f} s, the node's end {why:.1f} s, "
                    f"live again {back:.1f} s after"
                )
                nodes = httpx.get(srv.url + "/healthz").json()["cluster"]["nodes"]
                assert [(n["node"], n["streams_used"]) for n in nodes if n["streams"]] == [
                    (survivor, 1)
                ]
                page.get_by_role("button", name="Stop").click()
                assert poll(cluster_streams, 30, every=0.2, until=lambda n: n == 0) == 0


# A webcam session whose node dies is `ended`, with its `error` message, on the API's
# GET /v1/sessions/{id} within this many seconds (times the test time scale): the API's pending
# call to the session's actor fails once Ray knows the actor is gone (at the latest when it
# declares the node dead: ~3 s with the test's health check settings).
SESSION_END_BOUND = 20.0


def test_a_webcam_session_whose_node_dies_ends_with_an_error(tiny_bundle: Path) -> None:
    """A real aiortc client's webcam session on a worker's actor; that worker is removed (its
    processes killed). The data channel died with the node, so the API says why the session
    ended: GET /v1/sessions/{id} (what the page asks when its connection drops) answers
    `ended` with an `error` status message naming the node, and the node's slot is freed."""
    with local_cluster() as cluster:
        workers = {n.node_id: n for n in cluster.worker_nodes}
        with LiveServer(bundle=tiny_bundle, ray_address=cluster.address) as srv:

            async def session() -> tuple[dict[str, Any], dict[str, Any], float, str]:
                peer = ClientPeer(srv.url, face_frames(30, size=(320, 240)))
                async with httpx.AsyncClient(base_url=srv.url, timeout=90) as client:
                    try:
                        answer = await peer.connect()
                        assert len(await peer.wait_scores(3, 60)) >= 3
                        live = (await client.get(f"/v1/sessions/{answer['stream']}")).json()
                        assert live == {
                            "stream": answer["stream"],
                            "state": "live",
                            "node": answer["node"],
                        }
                        died = time.monotonic()
                        cluster.remove_node(workers[answer["node"]], allow_graceful=False)
                        r = await client.get(f"/v1/sessions/{answer['stream']}?wait=60")
                        took = time.monotonic() - died
                        state = peer.pc.connectionState  # the client's own view, by then
                    finally:
                        await peer.close()
                    assert r.status_code == 200, r.text
                    return answer, r.json(), took, state

            answer, ended, took, client_state = asyncio.run(session())
            print(
                f"session ended with an error {took:.1f} s after its node died (bound "
                f"{SESSION_END_BOUND:g} s; the client's connection was {client_state!r} then): "
                f"{ended['message']['detail']}"
            )
            assert took <= scaled(SESSION_END_BOUND), took
            assert ended["state"] == "ended"
            msg = ended["message"]
            assert msg["type"] == "error" and msg["stream"] == answer["stream"]
            assert f"actor on cluster node {answer['node'][:12]} stopped" in msg["detail"]
            # Its slot is freed; the dead node leaves /healthz once Ray has declared it dead.
            (survivor,) = set(workers) - {answer["node"]}
            health = poll(
                lambda: httpx.get(srv.url + "/healthz").json()["cluster"],
                30,
                every=0.5,
                until=lambda h: [n["node"] for n in h["nodes"] if n["streams"]] == [survivor],
            )
            assert health["streams_used"] == 0
            assert [n["node"] for n in health["nodes"] if n["streams"]] == [survivor]
            # Unknown sessions and bad waits are refused with a reason.
            assert httpx.get(srv.url + "/v1/sessions/nosuch").status_code == 404
            r = httpx.get(f"{srv.url}/v1/sessions/{answer['stream']}?wait=soon")
            assert r.status_code == 400 and "wait" in r.json()["error"]


def test_quick_cluster_benchmark_writes_results(tiny_bundle: Path, tmp_path: Path) -> None:
    """`python -m bench cluster --quick` runs end to end (numbers are reported, not asserted)."""
    out = tmp_path / "results"
    r = subprocess.run(
        [sys.executable, "-m", "bench", "cluster", "--quick", "--bundle", str(tiny_bundle)]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads((out / "cluster-quick.json").read_text())
    for side in ("single_process", "cluster", "cluster_own_engines"):
        level = data["webcam"][side]
        assert level["connected"] == 2 and level["analysed_fps_per_stream"] > 0, level
        assert level["latency_p95_ms"] is not None
    assert data["scan"]["files"] == 2 and data["scan"]["cluster_files_per_s"] > 0
    assert "added" in (out / "cluster-quick.md").read_text()


def test_an_unreachable_cluster_is_a_one_line_error(tiny_bundle: Path, tmp_path: Path) -> None:
    """Nothing listens at the address: both commands say so and exit 2 at once (Ray's own
    connect would retry for minutes)."""
    clip = write_video(tmp_path / "a.mp4", face_frames(10, size=(160, 120)), fps=10)
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    scan = scan_cli(tiny_bundle, "--json", "--ray-address", address, str(clip))
    serve = subprocess.run(
        [sys.executable, "-m", "stream_server", "--bundle", str(tiny_bundle)]
        + ["--port", str(free_port()), "--ray-address", address],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert time.monotonic() - started < scaled(60)
    for r, prog in ((scan, "deepfake-scan"), (serve, "deepfake-serve")):
        assert r.returncode == 2, r.stderr
        assert f"{prog}: error: cannot reach the Ray cluster at {address}" in r.stderr


def test_deepfake_node_has_version() -> None:
    from importlib.metadata import version

    exe = Path(sys.executable).parent / "deepfake-node"
    assert exe.exists(), f"{exe} is missing: pip install -e . installs the console scripts"
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"deepfake-node {version('deepfake-live')}"


def test_a_node_joins_with_its_own_stream_budget() -> None:
    """`deepfake-node --address HEAD --max-streams 3` (here `python -m stream_server.shell.cluster`)
    runs `ray start` for this machine: the node joins with 3 'streams' slots."""
    import os
    import signal

    from ray.cluster_utils import Cluster

    from stream_server.shell.cluster import connect, nodes

    small = {"object_store_memory": 100 * MB, "include_dashboard": False}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1", **small},
    )
    node = None
    said = ""
    address = cluster.address
    try:
        connect(cluster.address)
        node = subprocess.Popen(
            [sys.executable, "-m", "stream_server.shell.cluster", "--address", cluster.address]
            + ["--max-streams", "3", "--", "--block", "--num-cpus", "0", "--disable-usage-stats"]
            + ["--object-store-memory", str(100 * MB), "--node-ip-address", "127.0.0.1"],
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its raylet and workers, ended together below
        )
        joined = poll(nodes, 60, every=0.5, until=lambda ns: any(n["streams"] == 3 for n in ns))
        assert sorted(n["streams"] for n in joined) == [0, 3]
    finally:
        if node is not None:
            os.killpg(node.pid, signal.SIGTERM)
            said = node.communicate(timeout=60)[1]
        import ray

        ray.shutdown()
        cluster.shutdown()
    assert f'start --address {address} --resources {{"streams": 3.0}}' in said
