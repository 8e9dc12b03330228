"""The face stage: full-frame search plus the tracked-face (roi) detector the bundle carries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.media import face_box, face_frames, faceless_frames
from stream_server.core.bundle import BundleError, load_bundle, parse_roi
from stream_server.core.faces import Detectors, FaceStage, iou
from stream_server.core.runtime import open_sessions


@pytest.fixture(scope="module")
def detectors(tiny_bundle: Path) -> Detectors:
    bundle = load_bundle(tiny_bundle)
    d = Detectors.for_bundle(bundle, open_sessions(bundle, "cpu"))
    assert d.roi is not None, "a default export carries the tracked-face detector"
    return d


def test_tracked_face_is_followed_without_searching_every_frame(detectors: Detectors) -> None:
    n = 40
    frames = face_frames(n)
    stage = FaceStage(detectors)
    for i, f in enumerate(frames):
        matched, _ = stage.step(f)
        assert len(matched) == 1, f"frame {i}: {len(matched)} faces"
        track, det = matched[0]
        assert track.id == 0  # one face, one track all along
        # Whichever detector found it, the box is where the face is (and so is the crop).
        assert iou(det.box, face_box(i, n)) > 0.5, i
        full = detectors.full.detect(f)[0]
        assert iou(det.box, full.box) > 0.7, i
    # One full-frame search per `redetect_every` frames; the rest only looked around the face.
    assert stage.full_searches == int(np.ceil(n / detectors.redetect_every))


def test_lost_face_falls_back_to_full_search(detectors: Detectors) -> None:
    stage = FaceStage(detectors)
    for f in face_frames(3):
        stage.step(f)
    searches = stage.full_searches
    for f in faceless_frames(6):
        matched, _ = stage.step(f)
        assert matched == []
    assert stage.full_searches == searches + 6  # nothing to follow: every frame is searched
    assert stage.tracker.tracks == {}


def test_bundle_without_roi_detector_searches_every_frame(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    d = Detectors.for_bundle(bundle, open_sessions(bundle, "cpu"))
    stage = FaceStage(d.full)
    for f in face_frames(6):
        assert len(stage.step(f)[0]) == 1
    assert stage.full_searches == 6


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"roi_scale": 40.0}, "roi_scale"),
        ({"calibration": {"scale_w": 9, "scale_h": 1, "dx": 0, "dy": 0}}, "calibration"),
        ({"redetect_every": 0}, "redetect_every"),
        ({"file": 3}, "roi_detector.file"),
    ],
)
def test_bad_roi_section_is_refused(tiny_bundle: Path, change: dict, message: str) -> None:
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    with pytest.raises(BundleError, match=message):
        parse_roi({**m["roi_detector"], **change})


def test_two_faces_are_followed_separately(detectors: Detectors) -> None:
    """Each tracked face gets its own region; two faces never merge into one track."""
    frames = [np.concatenate([f[:, 80:400], f[:, 240:560]], axis=1) for f in face_frames(12)]
    stage = FaceStage(detectors)
    for f in frames:
        matched, _ = stage.step(f)
        assert sorted(t.id for t, _ in matched) == [0, 1]
        left, right = sorted((d.box for _, d in matched), key=lambda b: b[0])
        assert left[0] + left[2] / 2 < 0.5 < right[0] + right[2] / 2  # one face per half
        assert iou(left, right) < 0.1
    assert stage.full_searches == int(np.ceil(len(frames) / detectors.redetect_every))
