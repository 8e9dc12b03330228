"""Labels: how a frame's faces are labelled (`FramePipeline.label` in stream_server/core/pipeline.py)
and how a labelled folder's metadata reads (stream_server/core/labels.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stream_server.core.bundle import load_bundle
from stream_server.core.engine import InferenceEngine
from stream_server.core.faces import Detectors, Track
from stream_server.core.labels import DatasetError, read_labels
from stream_server.core.pipeline import FramePipeline, Prepared
from stream_server.core.runtime import open_sessions
from stream_server.core.window import FrameWindow


@pytest.fixture(scope="module")
def pipeline(tiny_bundle: Path) -> FramePipeline:
    bundle = load_bundle(tiny_bundle)
    sessions = open_sessions(bundle, "cpu")
    return FramePipeline(
        bundle, Detectors.for_bundle(bundle, sessions), InferenceEngine(bundle, sessions)
    )


def faces(pipeline: FramePipeline, *counts: int) -> Prepared:
    """Tracks whose windows hold `counts` embeddings each."""
    b = pipeline.bundle
    windows = []
    for n in counts:
        w = FrameWindow(b.window, b.feature_dim)
        for _ in range(n):
            w.push(np.zeros(b.feature_dim, np.float32))
        windows.append(w)
    tracks = [Track(i, (0.1 * i, 0.1, 0.2, 0.2)) for i in range(len(counts))]
    crops = np.zeros((len(counts), 8, 8, 3), np.uint8)
    return Prepared(tracks, crops, windows)


def test_no_face_is_no_face_without_a_score(pipeline: FramePipeline) -> None:
    r = pipeline.label(faces(pipeline), np.zeros(0, np.float32))
    assert (r.p_fake, r.label, r.faces) == (None, "no_face", ())


def test_a_face_warms_up_until_its_window_has_warmup_frames(pipeline: FramePipeline) -> None:
    warm, thr = pipeline.bundle.warmup_frames, pipeline.bundle.threshold
    assert warm == 5 and thr == 0.5  # the test bundle's manifest
    r = pipeline.label(faces(pipeline, warm - 1), np.array([0.9], np.float32))
    assert r.label == "warming_up" and r.faces[0].label == "warming_up"
    assert r.p_fake == pytest.approx(0.9) and r.faces[0].frames == warm - 1
    r = pipeline.label(faces(pipeline, warm), np.array([0.9], np.float32))
    assert r.label == "fake" and r.faces[0].label == "fake"


@pytest.mark.parametrize(("p", "label"), [(0.5, "fake"), (0.4999, "real"), (0.0, "real")])
def test_fake_exactly_when_p_fake_reaches_the_threshold(
    pipeline: FramePipeline, p: float, label: str
) -> None:
    r = pipeline.label(faces(pipeline, 20), np.array([p], np.float32))
    assert r.label == label and r.faces[0].label == label


def test_the_frame_is_its_most_suspicious_settled_face(pipeline: FramePipeline) -> None:
    # A warming-up face, however suspicious, does not decide the frame.
    r = pipeline.label(faces(pipeline, 20, 2, 20), np.array([0.3, 0.99, 0.45], np.float32))
    assert [f.label for f in r.faces] == ["real", "warming_up", "real"]
    assert (r.label, r.p_fake) == ("real", pytest.approx(0.45))
    r = pipeline.label(faces(pipeline, 20, 20), np.array([0.3, 0.7], np.float32))
    assert (r.label, r.p_fake) == ("fake", pytest.approx(0.7))
    assert [f.track for f in r.faces] == [0, 1]


def test_read_labels_maps_fake_to_1_and_refuses_bad_entries(tmp_path: Path) -> None:
    (tmp_path / "metadata.json").write_text(
        json.dumps({"a.mp4": {"label": "FAKE", "original": "b.mp4"}, "b.mp4": {"label": "REAL"}})
    )
    assert read_labels(tmp_path) == {"a.mp4": 1, "b.mp4": 0}
    (tmp_path / "metadata.json").write_text(json.dumps({"../x.mp4": {"label": "REAL"}}))
    with pytest.raises(DatasetError, match="not a plain file name"):
        read_labels(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"x.mp4": {"label": "fake"}}))
    with pytest.raises(DatasetError, match="expected REAL or FAKE"):
        read_labels(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="metadata.json is missing"):
        read_labels(tmp_path / "empty")
    with pytest.raises(DatasetError, match="is not a directory"):
        read_labels(tmp_path / "nowhere")
