"""The service on a real local Ray cluster (ray.cluster_utils.Cluster: a head and two worker
nodes, each its own raylet and processes, all on 127.0.0.1): archive scans as Ray Data jobs.
No part of Ray is mocked."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.media import face_frames, write_video

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
        head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1", **small},
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
