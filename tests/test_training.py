"""deepfake-train on small generated DFDC-format folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.media import face_frames, faceless_frames
from models.dfdc import DatasetError, identity_groups, read_folder, split_by_identity
from tests.conftest import TINY_MODEL_ARGS, tinted

ROOT = Path(__file__).resolve().parent.parent


def test_metadata_parsing(dfdc_folder: Path) -> None:
    ds = read_folder(dfdc_folder)
    assert len(ds.videos) == 7
    assert ds.skipped == {"missing.mp4": "file missing"}
    assert "7 videos (4 REAL, 3 FAKE)" in ds.summary() and "1 (file missing)" in ds.summary()
    fake = next(v for v in ds.videos if v.name == "person1_fake.mp4")
    assert fake.label == 1 and fake.original == "person1_real.mp4"


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (None, "metadata.json is missing"),
        ("{not json", "not valid JSON"),
        ("[]", "must map video file names"),
        ('{"a.mp4": {"label": "MAYBE"}}', "expected REAL or FAKE"),
        ('{"../x.mp4": {"label": "REAL"}}', "not a plain file name"),
        ('{"a.mp4": {"label": "REAL"}}', "none of the 1 videos"),
    ],
)
def test_metadata_errors(tmp_path: Path, content: str | None, error: str) -> None:
    if content is not None:
        (tmp_path / "metadata.json").write_text(content)
    with pytest.raises(DatasetError, match=error.replace("(", r"\(")):
        read_folder(tmp_path)


@pytest.mark.tensorflow  # deepfake-train loads Keras before it reads the data
def test_cli_rejects_folder_not_in_dfdc_layout(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "models", "--data", str(tmp_path), "--out", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"deepfake-train: error: {tmp_path} is not in DFDC layout: metadata.json is missing"
    )


def test_identity_groups_keep_people_on_one_side(dfdc_folder: Path) -> None:
    ds = read_folder(dfdc_folder)
    groups = identity_groups(ds.videos)
    for i in range(3):
        assert groups[f"person{i}_real.mp4"] == groups[f"person{i}_fake.mp4"]
    assert len(set(groups.values())) == 4
    rules = {"same_identity": [["^person0_", "^person1_"]]}
    assert len(set(identity_groups(ds.videos, rules).values())) == 3
    train, val = split_by_identity(
        ds.videos, groups, val_fraction=0.3, seed=1, max_group_fraction=1
    )
    assert val and train
    assert not {groups[v.name] for v in train} & {groups[v.name] for v in val}


def test_training_crops_are_the_servers_crops(dfdc_folder: Path, tiny_bundle: Path) -> None:
    """Training extracts faces with the serving face stage: same sampling, boxes and crops."""
    import av

    from models.extract import extract_video
    from stream_server.core.bundle import load_bundle
    from stream_server.core.engine import InferenceEngine
    from stream_server.core.faces import Detectors
    from stream_server.core.frames import FrameSampler
    from stream_server.core.pipeline import FramePipeline
    from stream_server.core.runtime import open_sessions

    bundle = load_bundle(tiny_bundle)
    s = open_sessions(bundle, "cpu")
    det = Detectors.for_bundle(bundle, s)
    video = dfdc_folder / "person0_real.mp4"
    got = extract_video(video, det, bundle.crop, bundle.encoder.input_size, fps=5.0)
    assert got.sampled == 15 and len(got.crops) == 15  # 3 s at 5 analysed frames/s, a face in each
    pipeline = FramePipeline(bundle, det, InferenceEngine(bundle, s))
    sampler = FrameSampler(5.0)
    served = []
    with av.open(str(video)) as c:
        for frame in c.decode(video=0):
            if sampler.due(float(frame.time)):
                served.append(pipeline.prepare(frame.to_ndarray(format="rgb24")).crops[0])
    np.testing.assert_array_equal(np.stack(served), got.crops)


def test_self_blended_fake_differs_only_inside_the_mask() -> None:
    from models.sbi import BlendParams, self_blend

    face = np.asarray(face_frames(1, size=(224, 224))[0])
    rng = np.random.default_rng(0)
    for _ in range(5):
        p = BlendParams.sample(rng, margin=0.25)
        out, mask = self_blend(face, p)
        assert out.shape == face.shape and out.dtype == np.uint8
        outside = mask == 0
        assert outside.mean() > 0.3  # the border of the crop is untouched
        np.testing.assert_array_equal(out[outside], face[outside])
        inside = mask > 0.5
        assert inside.any()
        assert np.abs(out[inside].astype(int) - face[inside]).mean() > 1.0


def _train(folder: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "models",
        "--data",
        str(folder),
        "--out",
        str(out),
        *TINY_MODEL_ARGS,
        "--val-fraction",
        "0",
        "--encoder-epochs",
        "2",
        "--head-steps",
        "10",
        "--batch-size",
        "16",
        "--finetune-blocks",
        "1",
        "--seed",
        "3",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)


def _head_losses(stderr: str) -> list[float]:
    return [
        float(line.split("loss ")[1].split(",")[0])
        for line in stderr.splitlines()
        if "head epoch" in line
    ]


@pytest.mark.tensorflow
def test_tiny_training_lowers_loss_and_resumes(dfdc_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    r = _train(dfdc_folder, out, "--head-epochs", "4", "--cache", str(tmp_path / "cache"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "read 7 videos (4 REAL, 3 FAKE); skipped 1 (file missing)" in r.stderr
    assert "1 videos without a face" in r.stderr
    assert "self-blended fakes: 3 synthetic clips" in r.stderr
    first = _head_losses(r.stderr)
    assert len(first) == 4
    for name in ("config.json", "encoder.keras", "head.keras", "training.json", "split.json"):
        assert (out / name).is_file()
    # Resume: continue the head from epoch 4 to 12 without redoing finished work.
    r = _train(
        dfdc_folder, out, "--head-epochs", "12", "--resume", "--cache", str(tmp_path / "cache")
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed head training after epoch 4" in r.stderr
    assert "restored the fine-tuned encoder from checkpoints (epoch 2)" in r.stderr
    rest = _head_losses(r.stderr)
    assert len(rest) == 8  # epochs 5..12 only
    assert np.mean(rest[-3:]) < first[0]
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["stage"] == "done"


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled face-image folder in the layout of ../shared/data/faces (labels.csv)."""
    from PIL import Image

    d = tmp_path_factory.mktemp("faces")
    rows = ["path,label,source"]
    frames = face_frames(12, size=(320, 240))
    for k, f in enumerate(frames):
        label = "FAKE" if k % 2 else "REAL"
        img = tinted([f])[0] if label == "FAKE" else f
        rel = f"set{k % 3}/{label.lower()}/{k}.jpg"
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / rel, quality=90)
        rows.append(f"{rel},{label},test")
    (d / "set0" / "blank.png").parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(faceless_frames(1, size=(200, 200))[0]).save(d / "set0" / "blank.png")
    rows.append("set0/blank.png,REAL,test")
    (d / "labels.csv").write_text("\n".join(rows) + "\n")
    return d


def test_image_folder_reading_and_errors(image_folder: Path, tmp_path: Path) -> None:
    from models.dfdc import read_image_folder

    imgs = read_image_folder(image_folder)
    assert len(imgs) == 13 and sum(i.label for i in imgs) == 6
    assert {i.group for i in imgs} == {"set0", "set1", "set2"}
    with pytest.raises(DatasetError, match="no labels.csv"):
        read_image_folder(tmp_path)
    for body, error in [
        ("name,kind\nx.jpg,REAL\n", "needs the columns path and label"),
        ("path,label\nx.jpg,MAYBE\n", "line 2: label must be REAL or FAKE"),
        ("path,label\n../x.jpg,REAL\n", "is not an image path"),
        ("path,label\nx.txt,REAL\n", "is not an image path"),
        ("path,label\nnothere.jpg,REAL\n", "names no image files that exist"),
    ]:
        (tmp_path / "labels.csv").write_text(body)
        with pytest.raises(DatasetError, match=error):
            read_image_folder(tmp_path)


@pytest.mark.tensorflow
def test_training_with_face_images(dfdc_folder: Path, image_folder: Path, tmp_path: Path) -> None:
    """Face images join the training side as clips of different faces; counts are recorded."""
    out = tmp_path / "model"
    r = _train(
        dfdc_folder,
        out,
        "--images",
        str(image_folder),
        "--no-sbi",
        "--finetune-blocks",
        "0",
        "--head-epochs",
        "2",
        "--cache",
        str(tmp_path / "cache"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    # 13 images, one without a face; 3 folders x 2 labels, 2 faces each -> 6 clips.
    assert "images: 12 face crops from 13 images (6 real, 6 fake; 1 without a face)" in r.stderr
    assert "as 6 training clips" in r.stderr
    info = json.loads((out / "training.json").read_text())["images"]
    assert info["face_crops"] == 12 and info["pseudo_clips"] == 6 and info["without_face"] == 1


@pytest.mark.tensorflow
def test_bundle_is_exported_by_deepfake_export_in_its_own_process(
    dfdc_folder: Path, tmp_path: Path
) -> None:
    """`--bundle`: training hands its model directory to `deepfake-export build` (models/ never
    imports export/); the bundle carries the training's fps and margin and its model card."""
    from stream_server.core.bundle import load_bundle

    out, bundle = tmp_path / "model", tmp_path / "bundle"
    r = _train(
        dfdc_folder,
        out,
        "--head-epochs",
        "1",
        "--encoder-epochs",
        "1",
        "--cache",
        str(tmp_path / "cache"),
        "--bundle",
        str(bundle),
        "--quantize",
        "none",
        "--fps",
        "4",
        "--margin",
        "0.3",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    b = load_bundle(bundle)
    assert (b.analysis_fps, b.crop.margin, b.window) == (4.0, 0.3, 8)
    assert b.manifest.training is not None and b.manifest.training["settings"]["fps"] == 4.0
    assert (bundle / "MODEL_CARD.md").is_file()


def test_train_config_has_one_typed_field_per_flag() -> None:
    """deepfake-train's steps read a TrainConfig, built from the parsed flags: every flag has a
    field and every field a flag (a new flag without a field fails here)."""
    from dataclasses import fields

    from models.train import TrainConfig, parser

    dests = {a.dest for a in parser()._actions if a.dest != "help"}
    assert {f.name for f in fields(TrainConfig)} == dests
    config = TrainConfig.from_args(parser().parse_args(["--data", "d", "--out", "o"]))
    assert config.data == [Path("d")] and config.out == Path("o") and config.bundle is None
    assert "data" not in config.settings() and config.settings()["window"] == config.window


def test_head_flag_takes_the_manifest_spelling_too_and_refuses_unknown_heads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The manifest says head.kind "frame_mean"; `--head frame_mean` trains the same head as
    `--head frame-mean`, and a head that does not exist is refused with the choices listed."""
    from models.train import parser

    for spelling in ("frame-mean", "frame_mean"):
        assert parser().parse_args(["--data", "d", "--out", "o", "--head", spelling]).head == (
            "frame-mean"
        )
    with pytest.raises(SystemExit):
        parser().parse_args(["--data", "d", "--out", "o", "--head", "lstm"])
    assert "'gru', 'frame-mean'" in capsys.readouterr().err
