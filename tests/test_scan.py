"""Offline scanning: deepfake-scan and POST /v1/analyze on the same engine as live streams."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

from bench.media import face_frames, faceless_frames, write_video
from tests.conftest import LiveServer

ROOT = Path(__file__).resolve().parent.parent


def scan_cli(bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "stream_server.shell.scan_cli",
            "--bundle",
            str(bundle),
            "--quiet",
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(
        tmp_path_factory.mktemp("clips") / "face.mp4", face_frames(75, size=(480, 360)), fps=15
    )  # 5 s


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        s = out.add_stream("aac", rate=16000)
        s.layout = "mono"
        t = np.arange(16000, dtype=np.float32) / 16000
        frame = av.AudioFrame.from_ndarray(
            (0.1 * np.sin(2 * np.pi * 440 * t))[None].astype(np.float32),
            format="fltp",
            layout="mono",
        )
        frame.sample_rate = 16000
        frame.pts = 0
        frame.time_base = Fraction(1, 16000)
        for pkt in s.encode(frame):
            out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    return path


def upload(server: LiveServer, path: Path, name: str | None = None) -> httpx.Response:
    with path.open("rb") as f:
        return httpx.post(
            server.url + "/v1/analyze",
            files={"file": (name or path.name, f, "video/mp4")},
            timeout=120,
        )


def test_cli_and_upload_agree_and_timeline_covers_the_clip(
    tiny_bundle: Path, face_clip: Path, live_server: LiveServer
) -> None:
    r = scan_cli(tiny_bundle, "--json", str(face_clip))
    assert r.returncode in (0, 1), r.stderr
    doc = json.loads(r.stdout)
    (cli,) = doc["results"]
    assert cli["verdict"] in ("real", "fake") and 0 <= cli["p_fake"] <= 1
    assert r.returncode == (1 if cli["verdict"] == "fake" else 0)
    assert cli["faces"] == 1 and cli["frames_with_face"] == cli["frames_analysed"]
    # 5 s at 5 analysed frames/s.
    assert cli["frames_analysed"] == 25
    assert len(cli["timeline"]) == math.ceil(cli["duration_s"]) == 5
    assert all(s["p_fake"] is not None for s in cli["timeline"])
    http = upload(live_server, face_clip)
    assert http.status_code == 200, http.text
    body = http.json()
    assert body["path"] == "face.mp4" and body["verdict"] == cli["verdict"]
    assert body["p_fake"] == pytest.approx(cli["p_fake"], abs=1e-5)
    assert [s["second"] for s in body["timeline"]] == [s["second"] for s in cli["timeline"]]
    for a, b in zip(body["timeline"], cli["timeline"], strict=True):
        assert a["p_fake"] == pytest.approx(b["p_fake"], abs=1e-5)


def test_cli_text_output_and_no_face(tiny_bundle: Path, tmp_path: Path) -> None:
    clip = write_video(tmp_path / "room.mp4", faceless_frames(30, size=(320, 240)), fps=15)
    r = scan_cli(tiny_bundle, str(clip))
    assert r.returncode == 0, r.stderr
    assert f"{clip}: NO_FACE p_fake=- faces=0" in r.stdout


def test_bad_files_get_clear_errors(
    tiny_bundle: Path, tmp_path: Path, live_server: LiveServer
) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 100)
    audio = write_audio_only(tmp_path / "voice.mp4")
    r = scan_cli(tiny_bundle, "--json", str(corrupt), str(text), str(audio))
    assert r.returncode == 3
    errors = {Path(x["path"]).name: x["error"] for x in json.loads(r.stdout)["results"]}
    assert "not a readable video" in errors["corrupt.mp4"]
    assert "not a readable video" in errors["notes.mp4"]
    assert "has no video stream" in errors["voice.mp4"]
    for f, expect in (
        (corrupt, "not a readable video"),
        (text, "not a readable video"),
        (audio, "has no video stream"),
    ):
        resp = upload(live_server, f, name="clip.mp4")
        assert resp.status_code == 422
        assert resp.json()["error"].startswith("clip.mp4 ") and expect in resp.json()["error"]
    assert httpx.get(live_server.url + "/healthz").status_code == 200


def test_upload_limits_and_no_temporary_files_left(
    tiny_bundle: Path, face_clip: Path, tmp_path: Path
) -> None:
    updir = tmp_path / "uploads"
    updir.mkdir()
    with LiveServer(bundle=tiny_bundle, max_upload_bytes=20_000, upload_dir=updir) as srv:
        resp = upload(srv, face_clip)
        assert resp.status_code == 413 and "larger than 20000 bytes" in resp.json()["error"]
        resp = httpx.post(
            srv.url + "/v1/analyze", content=b"x", headers={"content-type": "video/mp4"}
        )
        assert resp.status_code == 415
        resp = httpx.post(srv.url + "/v1/analyze", files={"other": ("a.txt", b"hello")})
        assert resp.status_code == 400 and "'file' field" in resp.json()["error"]
        assert os.listdir(updir) == []
    with LiveServer(bundle=tiny_bundle, max_video_seconds=2, upload_dir=updir) as srv:
        resp = upload(srv, face_clip)
        assert resp.status_code == 413 and "limit of 2 s" in resp.json()["error"]
        assert os.listdir(updir) == []


def _auc(labels: list[int], scores: list[float]) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_labelled_folder_prints_metrics_that_match_a_direct_computation(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    d = tmp_path / "labelled"
    d.mkdir()
    meta = {}
    frames = face_frames(40, size=(320, 240))
    for i in range(4):
        clip = [np.roll(f, 12 * i, axis=1) for f in frames]
        if i % 2:
            clip = [np.clip(f.astype(int) + [40, -20, -20], 0, 255).astype(np.uint8) for f in clip]
        write_video(d / f"v{i}.mp4", clip, fps=10)
        meta[f"v{i}.mp4"] = {"label": "FAKE" if i % 2 else "REAL"}
    (d / "metadata.json").write_text(json.dumps(meta))
    r = scan_cli(tiny_bundle, "--json", "--roc", str(tmp_path / "roc.png"), str(d))
    assert r.returncode in (0, 1), r.stderr
    doc = json.loads(r.stdout)
    labels = [1 if x["label"] == "fake" else 0 for x in doc["results"]]
    scores = [x["p_fake"] for x in doc["results"]]
    m = doc["metrics"]
    assert m["n"] == 4 and m["positives"] == 2
    assert m["auc"] == pytest.approx(_auc(labels, scores), abs=1e-6)
    ll = -np.mean([np.log(s) if y else np.log(1 - s) for s, y in zip(scores, labels, strict=True)])
    assert m["log_loss"] == pytest.approx(ll, abs=1e-5)
    acc = np.mean([(s >= doc["threshold"]) == bool(y) for s, y in zip(scores, labels, strict=True)])
    assert m["accuracy"] == pytest.approx(acc)
    assert (tmp_path / "roc.png").stat().st_size > 1000
    text = scan_cli(tiny_bundle, str(d))
    assert f"metrics on 4 labelled videos (2 fake): AUC {m['auc']:.4f}" in text.stdout


def test_bad_bundle_and_missing_path(tmp_path: Path, tiny_bundle: Path) -> None:
    r = scan_cli(tmp_path, str(tmp_path))
    assert r.returncode == 2 and "has no manifest.json" in r.stderr
    r = scan_cli(tiny_bundle, str(tmp_path / "nope.mp4"))
    assert r.returncode == 2 and "does not exist" in r.stderr
