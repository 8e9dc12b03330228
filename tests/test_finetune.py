"""End-to-end encoder fine-tuning: synthetic fakes with face-hull masks, paired batches,
family-balanced sampling, stream degradations, and a tiny fine-tune that learns and resumes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.finetune import BatchMaker, Clip, Pool, family_of
from tests.conftest import TINY_MODEL_ARGS

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    """A 160x160 crop as the face stage cuts it (the face's box is the centre 1/1.25)."""
    from PIL import Image

    from bench.media import face_frames

    img = Image.fromarray(face_frames(1, size=(300, 300))[0])
    return np.asarray(img.crop((70, 20, 250, 200)).resize((160, 160)))


@pytest.fixture(scope="module")
def landmarks() -> object:
    from models.synth import Landmarks

    return Landmarks(margin=0.25)


def test_landmarks_and_face_hull_mask(face: np.ndarray, landmarks: object) -> None:
    from models.synth import hull_mask

    pts = landmarks(face)  # type: ignore[operator]
    assert pts.shape == (68, 2)
    assert (pts > 0).all() and (pts < 160).all()
    rng = np.random.default_rng(0)
    for which in ("face", "lower"):
        mask = hull_mask(pts, 160, rng, which)
        assert mask.shape == (160, 160) and mask.min() == 0.0 and mask.max() > 0.9
        # The hull covers the landmarks' centre and leaves the crop's corners untouched.
        cx, cy = pts[48:68].mean(0).round().astype(int)
        assert mask[cy, cx] > 0.5
        assert mask[:8, :8].max() == 0 and mask[-8:, -8:].max() == 0
        assert 0.05 < (mask > 0.5).mean() < 0.7
    lower = hull_mask(pts, 160, np.random.default_rng(1), "lower")
    eye_y, eye_x = pts[36:42].mean(0)[::-1].round().astype(int)
    assert lower[eye_y, eye_x] == 0  # a mouth edit leaves the eyes alone


@pytest.mark.parametrize("kind", ["sbi", "swap", "warp", "rerender"])
def test_synthetic_fake_differs_from_the_real_crop_only_inside_the_mask(
    kind: str, face: np.ndarray, landmarks: object
) -> None:
    from models.synth import make_fake

    pts = landmarks(face)  # type: ignore[operator]
    donor = np.ascontiguousarray(face[:, ::-1])  # a mirrored face as the swap's donor
    rng = np.random.default_rng(3)
    for _ in range(3):
        fake, mask = make_fake(kind, face, pts, rng, (donor, landmarks(donor)))  # type: ignore[operator]
        assert fake.shape == face.shape and fake.dtype == np.uint8
        outside = mask == 0
        assert outside.mean() > 0.1 and outside[:8, :8].all()  # the corners are untouched
        np.testing.assert_array_equal(fake[outside], face[outside])
        inside = mask > 0.5
        assert np.abs(fake[inside].astype(int) - face[inside]).mean() > 0.5


def test_reenact_fake_redraws_the_whole_crop_but_never_smears_its_edges(
    face: np.ndarray, landmarks: object
) -> None:
    """A reenactment generator draws the whole frame from one source image: no blend boundary
    (the mask is the crop), every inner pixel moves, and the crop's edges are the real ones (the
    motion fades out there instead of stretching the border pixels)."""
    from models.synth import make_fake, motion_field

    pts = landmarks(face)  # type: ignore[operator]
    rng = np.random.default_rng(5)
    centre = (slice(40, 120), slice(40, 120))
    for _ in range(4):
        fake, mask = make_fake("reenact", face, pts, rng)
        assert fake.shape == face.shape and fake.dtype == np.uint8
        assert (mask == 1).all()
        assert np.abs(fake[centre].astype(int) - face[centre]).mean() > 1.0
        moved = motion_field(face, pts, rng)
        for edge in (np.s_[0], np.s_[-1], np.s_[:, 0], np.s_[:, -1]):
            np.testing.assert_allclose(moved[edge], face[edge], atol=1e-3)
        assert np.abs(moved[centre] - face[centre]).mean() > 1.0


def test_synthetic_fake_errors(face: np.ndarray) -> None:
    from models.synth import make_fake

    pts = np.zeros((68, 2), np.float32) + 80
    with pytest.raises(ValueError, match="donor"):
        make_fake("swap", face, pts, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown synthetic fake kind"):
        make_fake("morph", face, pts, np.random.default_rng(0))


def _clip(
    name: str,
    label: int,
    base: int,
    n: int,
    t0: float,
    family: str | None = None,
    original: str | None = None,
    size: int = 8,
) -> Clip:
    crops = np.stack([np.full((size, size, 3), base + i, np.uint8) for i in range(n)])
    return Clip(name, label, family, crops, t0 + 0.2 * np.arange(n), original)


def test_pair_units_put_a_fake_frame_beside_its_original_at_the_same_time() -> None:
    real = _clip("a_real", 0, 0, 20, 0.0)
    fake = _clip("a_fake", 1, 100, 20, 0.05, "deepfacelive", "a_real")  # 50 ms later each frame
    other_real = _clip("b_real", 0, 200, 5, 0.0)
    maker = BatchMaker(Pool([real, fake, other_real], weights={"pair": 1.0}), None, 0.25)
    assert maker.kinds == ["pair"] and len(maker.pairs) == 1
    rng = np.random.default_rng(0)
    for _ in range(50):
        r, f = maker.unit("pair", rng)
        assert int(r[0, 0, 0]) == int(f[0, 0, 0]) - 100  # same frame index of the same scene
    x, y = maker.batch(rng, 6)
    assert x.shape == (12, 8, 8, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(y, np.tile([0.0, 1.0], 6))  # real, fake, real, fake, ...


def test_units_of_a_batch_are_degraded_together() -> None:
    from models.augment import degrade

    rng = np.random.default_rng(5)
    a = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for _ in range(10):
        x, y = degrade([a, a.copy()], rng)
        np.testing.assert_array_equal(x, y)  # the same parameters for both crops of a unit


def test_fake_clips_are_drawn_evenly_across_families() -> None:
    clips = [_clip("r", 0, 0, 3, 0.0), _clip("lone", 1, 50, 3, 0.0, "talking_head")]
    clips += [_clip(f"s{i}", 1, 60, 3, 0.0, "faceswap") for i in range(10)]
    maker = BatchMaker(Pool(clips, weights={"clip": 1.0}), None, 0.25)
    rng = np.random.default_rng(0)
    draws = [maker._fake_clip(rng).family for _ in range(2000)]
    assert 0.45 < draws.count("talking_head") / len(draws) < 0.55


def test_nothing_to_train_on_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="nothing to train the encoder on"):
        BatchMaker(Pool([_clip("r", 0, 0, 3, 0.0)]), None, 0.25)


def test_synthetic_fakes_are_made_from_the_chosen_real_sources() -> None:
    """--synth-sources: the real crops behind the synthetic fakes come from the training clips,
    the still pairs' real halves and/or the real face images, never from a fake."""
    from models.finetune import parse_sources

    clips = [_clip("r", 0, 10, 3, 0.0), _clip("f", 1, 20, 3, 0.0, "faceswap")]
    pairs = (np.full((4, 8, 8, 3), 50, np.uint8), np.full((4, 8, 8, 3), 60, np.uint8))
    stills = (
        np.stack([np.full((8, 8, 3), v, np.uint8) for v in (90, 90, 200, 200)]),
        np.array([0, 0, 1, 1]),
    )

    def shares(sources: tuple[str, ...]) -> dict[int, float]:
        pool = Pool(clips, pairs, stills, weights={"synth": 1.0}, synth_sources=sources)
        maker = BatchMaker(pool, lambda c: np.zeros((68, 2), np.float32), 0.25)
        rng = np.random.default_rng(0)
        got = [int(maker._real_crop(rng)[0][0, 0, 0]) for _ in range(4000)]
        return {v: got.count(v) / len(got) for v in set(got)}

    default = shares(parse_sources("clips,still_pairs"))  # the recipe before the option
    assert set(default) <= {10, 11, 12, 50} and default[50] == pytest.approx(0.25, abs=0.03)
    assert set(shares(("stills",))) == {90}  # the real images only, never a fake one
    every = shares(parse_sources("clips, still_pairs, stills"))
    assert set(every) <= {10, 11, 12, 50, 90}
    assert every[90] == pytest.approx(0.25, abs=0.03) and every[50] == pytest.approx(0.25, abs=0.03)
    # A source with nothing in it is skipped; none at all is the usual clear error.
    assert set(shares(("still_pairs", "stills"))) == {50, 90}
    pool = Pool(clips, pairs, stills, weights={"synth": 1.0}, synth_sources=("clips", "stills"))
    said = BatchMaker(pool, lambda c: np.zeros((68, 2), np.float32), 0.25).describe()
    assert "synthetic fakes made from: clips 0.67, stills 0.33" in said  # in the training log
    with pytest.raises(ValueError, match="nothing to train"):
        BatchMaker(
            Pool([clips[1]], weights={"synth": 1.0}, synth_sources=("clips",)),
            lambda c: np.zeros((68, 2), np.float32),
            0.25,
        )
    with pytest.raises(ValueError, match="--synth-sources takes"):
        parse_sources("clips,videos")


def test_family_of() -> None:
    assert family_of("DeepFaceLive", 1) == "deepfacelive"
    assert family_of("MegActor", 1) == "reenactment"
    assert family_of("Wav2Lip+GFPGAN", 1) == "talking_head"
    assert family_of("something new", 1) == "other"
    assert family_of("none", 0) is None


def _texture_clips(n_clips: int, size: int, rng: np.random.Generator) -> list[Clip]:
    """Real clips: smooth noise; fake clips: the same kind of noise with a sharp-edged blended
    patch in the middle (a stand-in for a pasted face)."""
    from PIL import Image

    out = []
    for k in range(n_clips):
        frames = []
        for _ in range(6):
            small = rng.integers(0, 255, (size // 4, size // 4, 3), dtype=np.uint8)
            img = np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR))
            frames.append(img)
        crops = np.stack(frames)
        label = k % 2
        if label:
            q = size // 4
            crops[:, q:-q, q:-q] = np.clip(crops[:, q:-q, q:-q].astype(int) + 60, 0, 255)
        out.append(Clip(f"c{k}", label, "faceswap" if label else None, crops, np.arange(6) * 0.2))
    return out


@pytest.mark.tensorflow
def test_tiny_finetune_lowers_the_loss_and_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    from models.cnn_gru import build_encoder
    from models.config import ModelConfig
    from models.finetune import finetune, frame_classifier

    rng = np.random.default_rng(0)
    maker = BatchMaker(Pool(_texture_clips(12, 32, rng), weights={"clip": 1.0}), None, 0.25)
    cfg = ModelConfig(backbone="tiny_cnn", input_size=32, weights=None)
    ckpt = tmp_path / "ckpt"
    msgs: list[str] = []
    first = finetune(
        frame_classifier(build_encoder(cfg)),
        maker,
        60,
        ckpt,
        units=8,
        lr=3e-3,
        seed=1,
        eval_every=0,
        save_every=10,
        say=msgs.append,
    )
    assert len(first.losses) == 60
    assert np.mean(first.losses[-10:]) < 0.8 * np.mean(first.losses[:10])
    # Interrupted at 60 of 90 steps: a new process picks up at step 60 and finishes the schedule.
    second = finetune(
        frame_classifier(build_encoder(cfg)),
        maker,
        90,
        ckpt,
        units=8,
        lr=3e-3,
        seed=1,
        eval_every=0,
        save_every=10,
        resume=True,
        say=msgs.append,
    )
    assert "resumed encoder fine-tuning at step 60/90" in msgs
    assert len(second.losses) == 90 and second.losses[:60] == first.losses
    assert np.mean(second.losses[60:]) < np.mean(first.losses[:10])
    assert json.loads((ckpt / "finetune.json").read_text())["step"] == 90


@pytest.mark.tensorflow
def test_train_cli_end_to_end_fine_tune(tmp_path: Path, dfdc_folder: Path) -> None:
    def train(*extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [
            sys.executable,
            "-m",
            "models",
            "--data",
            str(dfdc_folder),
            "--out",
            str(tmp_path / "m"),
            "--cache",
            str(tmp_path / "cache"),
            *TINY_MODEL_ARGS,
            "--val-fraction",
            "0",
            "--units",
            "4",
            "--head-epochs",
            "1",
            "--head-steps",
            "4",
            "--batch-size",
            "8",
            "--synth",
            "sbi,warp,rerender,reenact",
            *extra,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)

    r = train("--encoder-steps", "6", "--encoder-only")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "encoder fine-tune pool: 3 real clips" in r.stderr
    assert "3 real/fake clip pairs" in r.stderr and "synth" in r.stderr
    ev = json.loads((tmp_path / "m" / "frame_eval.json").read_text())
    assert ev["fine_tune"]["steps"] == 6 and ev["fine_tune"]["synthetic_kinds"] == [
        "sbi",
        "warp",
        "rerender",
        "reenact",
    ]
    # A second stage starts from the first stage's frame classifier: with a learning rate too
    # small to move anything, it scores every held-out clip as the first stage left it.
    first = tmp_path / "m" / "checkpoints" / "finetune.weights.h5"
    r2 = train(
        "--encoder-steps", "1", "--encoder-only", "--lr", "1e-12", "--init-from", str(first),
        "--out", str(tmp_path / "stage2"),
    )  # fmt: skip
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert f"encoder fine-tune starts from {first}" in r2.stderr
    import h5py

    def arrays(f: Path) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        with h5py.File(f, "r") as h:

            def keep(name: str, item: object) -> None:  # returning anything else stops the walk
                if isinstance(item, h5py.Dataset) and not name.startswith("optimizer"):
                    out[name] = np.array(item)

            h.visititems(keep)
        return out

    # Another batch order (--batch-seed) trains other weights on the same identity split.
    rb = train(
        "--encoder-steps", "6", "--encoder-only", "--batch-seed", "7", "--out", str(tmp_path / "b7")
    )
    assert rb.returncode == 0, rb.stderr[-3000:]
    assert (tmp_path / "b7" / "split.json").read_text() == (
        tmp_path / "m" / "split.json"
    ).read_text()
    w0 = arrays(tmp_path / "m" / "checkpoints" / "finetune.weights.h5")
    w7 = arrays(tmp_path / "b7" / "checkpoints" / "finetune.weights.h5")
    assert not all(np.allclose(w0[k], w7[k], atol=1e-6) for k in w0)

    before, after = (
        arrays(first),
        arrays(tmp_path / "stage2" / "checkpoints" / "finetune.weights.h5"),
    )
    assert len(before) >= 8 and before.keys() == after.keys()  # 4 layers: kernels and biases
    assert all(np.allclose(before[k], after[k], atol=1e-6) for k in before)
    # ...and a fresh start (no --init-from) does not: the check above can fail.
    r0 = train(
        "--encoder-steps", "1", "--encoder-only", "--lr", "1e-12", "--out", str(tmp_path / "fresh")
    )
    assert r0.returncode == 0, r0.stderr[-3000:]
    fresh = arrays(tmp_path / "fresh" / "checkpoints" / "finetune.weights.h5")
    assert not all(np.allclose(before[k], fresh[k], atol=1e-6) for k in before)
    r3 = train("--encoder-steps", "1", "--init-from", str(tmp_path / "nothing.h5"))
    assert r3.returncode != 0 and "--init-from: no such weights file" in r3.stderr
    renamed = tmp_path / "stage1.h5"  # the same weights under a name Keras would misread
    renamed.write_bytes(first.read_bytes())
    r4 = train("--encoder-steps", "1", "--init-from", str(renamed))
    assert r4.returncode == 2 and "is not a Keras weights file" in r4.stderr
    r = train("--encoder-steps", "10", "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed encoder fine-tuning at step 6/10" in r.stderr
    assert (tmp_path / "m" / "encoder.keras").is_file() and (
        tmp_path / "m" / "head.keras"
    ).is_file()
    training = json.loads((tmp_path / "m" / "training.json").read_text())
    assert training["encoder_finetune"]["fine_tune"]["steps"] == 10
    # --mask-loss trains the manipulation map beside the classifier, and the card says so.
    rm = train(
        "--encoder-steps",
        "3",
        "--encoder-only",
        "--mask-loss",
        "1",
        "--out",
        str(tmp_path / "mask"),
    )
    assert rm.returncode == 0, rm.stderr[-3000:]
    assert "map=" in rm.stderr  # its loss on the progress bar
    ft = json.loads((tmp_path / "mask" / "frame_eval.json").read_text())["fine_tune"]
    assert ft["mask_loss"] == 1.0 and ev["fine_tune"]["mask_loss"] == 0.0
    from models.evaluation import _finetune_lines

    assert any("Manipulation map (weight 1)" in line for line in _finetune_lines({"fine_tune": ft}))
    assert not any("Manipulation map" in line for line in _finetune_lines(ev))


def test_eer_threshold_sits_between_the_classes() -> None:
    from stream_server.core.evaluate import eer_threshold

    assert 0.3 < eer_threshold([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.6, 0.7, 0.8]) < 0.6
    assert eer_threshold([0, 0], [0.1, 0.2]) == 0.5  # one class only: the default


@pytest.mark.shared_data
def test_every_shared_generator_has_a_family_and_identity_rules_hold() -> None:
    from models.dfdc import identity_groups, read_folders

    ds = read_folders([SHARED / "dev", SHARED / "dev_extra", SHARED / "reenact"])
    fams = {family_of(v.generator, v.label) for v in ds.videos if v.label}
    assert fams == {"deepfacelive", "dfdc", "faceswap", "talking_head", "reenactment"}
    rules = json.loads((ROOT / "models" / "data" / "identity_groups.json").read_text())
    g = identity_groups(ds.videos, rules)
    same = [
        [n for n in g if n.startswith("dreamtalk_M030_front_")],
        [n for n in g if n.startswith("anitalker_") and "Einstein-" in n],
        [n for n in g if "news6_00" in n],  # one man in two driving clips and their fakes
        [
            n
            for n in g
            if n.startswith("ghost_")
            and n != "ghost_2person.mp4"
            and n not in ("ghost_dirtydancing.mp4", "ghost_nggyup.mp4", "ghost_video5_mod.mp4")
        ],
        [n for n in g if n.startswith("celebdf_")],
        [n for n in g if n.startswith("lpweb_cross0_")],
    ]
    for members in same:
        assert len(members) >= 2 and len({g[n] for n in members}) == 1, members
    assert (
        g["dreamtalk_M030_front_angry_level3_001.mp4"]
        != g["dreamtalk_W009_front_angry_level3_001.mp4"]
    )


@pytest.mark.tensorflow
def test_ema_keeps_an_average_of_the_fine_tuned_weights(tmp_path: Path) -> None:
    import keras

    from models.cnn_gru import build_encoder
    from models.config import ModelConfig
    from models.finetune import clip_scores, finetune, frame_classifier
    from stream_server.core.evaluate import auc

    clips = _texture_clips(12, 32, np.random.default_rng(0))
    maker = BatchMaker(Pool(clips, weights={"clip": 1.0}), None, 0.25)
    cfg = ModelConfig(backbone="tiny_cnn", input_size=32, weights=None)
    kept = []
    for ema in (0.0, 0.9):
        keras.utils.set_random_seed(0)
        clf = frame_classifier(build_encoder(cfg))
        finetune(
            clf,
            maker,
            60,
            tmp_path / f"e{ema}",
            units=8,
            lr=3e-3,
            ema=ema,
            seed=1,
            eval_every=0,
            say=lambda m: None,
        )
        kept.append([np.asarray(w).copy() for w in clf.get_weights()])
        y = np.array([c.label for c in clips])
        assert auc(y, clip_scores(clf, clips)) >= 0.8  # the averaged weights still separate
    # Same batches, same start: the EMA run keeps different (averaged) weights.
    assert any(not np.allclose(a, b) for a, b in zip(kept[0], kept[1], strict=True))


@pytest.mark.tensorflow
def test_unit_ranking_loss_counts_only_misordered_units() -> None:
    from models.finetune import unit_loss

    y = np.array([[0.0], [1.0], [0.0], [1.0]], np.float32)
    ordered = np.array([[0.4], [0.6], [0.3], [0.7]], np.float32)  # each fake above its real
    swapped = ordered[[1, 0, 3, 2]]  # the same scores, each unit's pair swapped
    plain, ranked = unit_loss(0.0), unit_loss(1.0)
    gap_ordered = float(ranked(y, ordered)) - float(plain(y, ordered))
    gap_swapped = float(ranked(y, swapped)) - float(plain(y, swapped))
    assert gap_ordered > 0 and gap_swapped > gap_ordered + 0.5


@pytest.mark.tensorflow
def test_gradient_reversal_passes_values_and_negates_gradients() -> None:
    import tensorflow as tf

    from models.finetune import reverse_gradient

    t = tf.Variable([[1.0, -2.0, 3.0]])
    with tf.GradientTape() as tape:
        out = reverse_gradient(t, 0.3)
        s = tf.reduce_sum(out * tf.constant([[1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(out.numpy(), t.numpy())
    np.testing.assert_allclose(tape.gradient(s, t).numpy(), [[-0.3, -0.6, -0.9]], rtol=1e-6)


def test_batches_carry_each_crops_identity_group() -> None:
    rng = np.random.default_rng(0)
    clips = _texture_clips(6, 16, rng)
    for k, c in enumerate(clips):
        c.group = f"person{k // 2}"  # clips 0/1, 2/3, 4/5: one real and one fake each
    stills = (np.stack([c.crops[0] for c in clips]), np.array([c.label for c in clips]))
    maker = BatchMaker(Pool(clips, stills=stills, weights={"clip": 1.0, "still": 1.0}), None, 0.25)
    assert maker.groups == ["person0", "person1", "person2"]
    x, y, g = maker.batch_with_groups(np.random.default_rng(3), 40)
    assert len(x) == len(y) == len(g) == 80
    units = g.reshape(-1, 2)
    stills_drawn = (units == -1).all(axis=1)
    assert 0 < stills_drawn.sum() < len(units)  # stills carry no identity
    assert ((units[~stills_drawn] >= 0) & (units[~stills_drawn] < 3)).all()
    # Same (seed, step) -> same batch with or without the groups.
    x2, y2 = maker.batch(np.random.default_rng(3), 40)
    np.testing.assert_array_equal(x, x2)


def _resumes_where_it_stopped(
    maker: BatchMaker, cfg: object, ckpt: Path, kw: dict[str, object], done: int, steps: int
) -> None:
    """A fresh frame classifier resumed from `ckpt` (saved at step `done`) trains on to
    `steps` with the same options `kw`."""
    from models.cnn_gru import build_encoder
    from models.finetune import finetune, frame_classifier

    msgs: list[str] = []
    again = finetune(
        frame_classifier(build_encoder(cfg)),  # type: ignore[arg-type]
        maker,
        steps,
        ckpt,
        resume=True,
        say=msgs.append,
        **kw,  # type: ignore[arg-type]
    )
    assert f"resumed encoder fine-tuning at step {done}/{steps}" in msgs
    assert len(again.losses) == steps


@pytest.mark.tensorflow
def test_identity_adversarial_finetune_still_learns_and_resumes(tmp_path: Path) -> None:
    from models.cnn_gru import build_encoder
    from models.config import ModelConfig
    from models.finetune import clip_scores, finetune, frame_classifier
    from stream_server.core.evaluate import auc

    clips = _texture_clips(12, 32, np.random.default_rng(0))
    for k, c in enumerate(clips):
        c.group = f"person{k % 3}"
    maker = BatchMaker(Pool(clips, weights={"clip": 1.0}), None, 0.25)
    cfg = ModelConfig(backbone="tiny_cnn", input_size=32, weights=None)
    clf = frame_classifier(build_encoder(cfg))
    kw = {"units": 8, "lr": 3e-3, "adversary": 0.2, "seed": 1, "eval_every": 0}
    first = finetune(clf, maker, 60, tmp_path / "ck", say=lambda m: None, **kw)  # type: ignore[arg-type]
    assert np.mean(first.losses[-10:]) < 0.8 * np.mean(first.losses[:10])
    y = np.array([c.label for c in clips])
    assert auc(y, clip_scores(clf, clips)) >= 0.8
    # The saved model is the frame classifier alone (the identity head is training-only).
    assert [layer.name for layer in clf.layers if layer.name.startswith("identity")] == []
    _resumes_where_it_stopped(maker, cfg, tmp_path / "ck", kw, 60, 80)


@pytest.mark.tensorflow
@pytest.mark.parametrize("train_bn", [False, True])
def test_batch_norm_statistics_move_only_with_train_bn(tmp_path: Path, train_bn: bool) -> None:
    """By default the fine-tune keeps the backbone's batch-norm statistics (what the served
    encoder normalises with); `--train-bn` fits them to the training crops."""
    import keras

    from models.cnn_gru import build_encoder
    from models.config import ModelConfig
    from models.finetune import finetune, frame_classifier

    rng = np.random.default_rng(0)
    maker = BatchMaker(Pool(_texture_clips(8, 32, rng), weights={"clip": 1.0}), None, 0.25)
    encoder = build_encoder(ModelConfig(backbone="efficientnet_lite0", input_size=32, weights=None))
    bns = [la for la in encoder.layers if isinstance(la, keras.layers.BatchNormalization)]
    before = [np.array(b.moving_mean) for b in bns]
    finetune(
        frame_classifier(encoder, train_bn=train_bn),
        maker,
        3,
        tmp_path / "ckpt",
        units=4,
        eval_every=0,
        say=lambda m: None,
    )
    # Kept means bit for bit; fitted means any change (a layer whose batch means are near 0,
    # as head_bn's can be for a random init, moves by less than allclose's 1e-8).
    moved = [not np.array_equal(b.moving_mean, m) for b, m in zip(bns, before, strict=True)]
    assert all(moved) if train_bn else not any(moved)


@pytest.mark.tensorflow
def test_lofo_at_once_trains_once_without_every_family_and_scores_each(tmp_path: Path) -> None:
    """`python -m models.lofo --at-once`: one encoder-only run with every family's fakes left
    out (for a recipe trained on synthetic fakes only, what the per-family runs would train five
    times), each family's fakes (train and held-out side alike) scored from it against the
    held-out reals, and the bundle's model card says the families were left out at once."""
    from bench.media import face_frames, write_video
    from tests.conftest import tinted

    data = tmp_path / "data"
    data.mkdir()
    meta = {}
    generators = ["DeepFaceLive", "DFDC"]
    for i in range(6):
        frames = (
            face_frames(30, size=(320, 240))[i * 2 :] + face_frames(30, size=(320, 240))[: i * 2]
        )
        write_video(data / f"p{i}_real.mp4", frames, fps=10)
        write_video(data / f"p{i}_fake.mp4", tinted(frames), fps=10)
        meta[f"p{i}_real.mp4"] = {"label": "REAL", "original": None, "split": "train"}
        meta[f"p{i}_fake.mp4"] = {
            "label": "FAKE",
            "original": f"p{i}_real.mp4",
            "split": "train",
            "generator": generators[i % 2],
        }
    for j in range(4):  # people seen only in real clips: the held-out side (a pair of clips is
        # too large a group to hold out from this few videos)
        frames = face_frames(30, size=(320, 240))[j * 3 + 1 :]
        write_video(data / f"solo{j}_real.mp4", frames, fps=10)
        meta[f"solo{j}_real.mp4"] = {"label": "REAL", "original": None, "split": "train"}
    (data / "metadata.json").write_text(json.dumps(meta))
    out = tmp_path / "lofo"
    cmd = [
        sys.executable,
        "-m",
        "models.lofo",
        "--at-once",
        "--families",
        "deepfacelive",
        "dfdc",
        "--out",
        str(out),
        "--",
        "--data",
        str(data),
        "--cache",
        str(tmp_path / "cache"),
        *TINY_MODEL_ARGS,
        "--val-fraction",
        "0.5",
        "--units",
        "4",
        "--unit-weights",
        "synth=1",
        "--synth",
        "sbi,warp,rerender",
        "--encoder-steps",
        "4",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1/1: without deepfacelive, dfdc" in r.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["all-families"]
    ev = json.loads((out / "all-families" / "frame_eval.json").read_text())
    assert all(ev["families"][f]["left_out_of_training"] for f in ("deepfacelive", "dfdc"))
    lofo = json.loads((out / "lofo.json").read_text())
    assert lofo["at_once"] is True and sorted(lofo["families"]) == ["deepfacelive", "dfdc"]
    for f in ("deepfacelive", "dfdc"):
        row = lofo["families"][f]
        assert row["fakes"] == 3  # all of the family's fakes, whichever side of the split
        assert row["auc"] == ev["families"][f]["auc"]
        assert row["reals"] == 4
    assert lofo["mean_auc"] == pytest.approx(
        (lofo["families"]["deepfacelive"]["auc"] + lofo["families"]["dfdc"]["auc"]) / 2
    )
    from models.evaluation import lofo_lines

    assert "left out at once" in lofo_lines(lofo)[0]


def test_degrade_moves_a_mask_with_its_crop() -> None:
    """`degrade_with_masks` draws what `degrade` draws, and flips and shifts each mask exactly
    as it flips and shifts the crops, so a mask still covers the pixels it marked."""
    from models.augment import degrade, degrade_with_masks

    crop = np.zeros((64, 64, 3), np.uint8)
    crop[8:30, 4:24] = 255  # a bright patch off-centre
    mask = (crop[..., 0] > 0).astype(np.float32)
    flipped = 0
    for seed in range(30):
        (a,) = degrade([crop], np.random.default_rng(seed))
        (b,), (m,) = degrade_with_masks([crop], [mask], np.random.default_rng(seed))
        np.testing.assert_array_equal(a, b)
        bright = b.astype(float).mean(-1)
        bright = bright > (bright.max() + bright.min()) / 2
        inside = m > 0.5
        assert (bright & inside).sum() / max(1, (bright | inside).sum()) > 0.7  # IoU
        flipped += int(m[:, 32:].sum() > m[:, :32].sum())
    assert 3 < flipped < 27  # about half the draws mirror the crop, and its mask with it


def test_synthetic_units_carry_their_blend_mask_and_reals_are_nowhere_manipulated(
    face: np.ndarray, landmarks: object
) -> None:
    from models.finetune import cell_shares

    real = Clip("r", 0, None, np.stack([face] * 3), np.arange(3) * 0.2)
    fake = Clip("f", 1, "faceswap", np.stack([face[:, ::-1]] * 3), np.arange(3) * 0.2)
    maker = BatchMaker(
        Pool([real, fake], weights={"synth": 1.0, "clip": 1.0}),
        landmarks,  # type: ignore[arg-type]
        0.25,
    )
    rng = np.random.default_rng(7)
    x, y, _, maps = maker.batch_with_masks(rng, 12, 5)
    assert maps.shape == (24, 5, 5, 2)
    # The same crops as a batch drawn without maps.
    x2, y2 = maker.batch(np.random.default_rng(7), 12)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    reals, fakes = maps[0::2], maps[1::2]
    assert (reals[..., 0] == 0).all() and (reals[..., 1] == 1).all()
    known = fakes[..., 1].reshape(12, -1).max(axis=1) == 1
    assert 0 < known.sum() < 12  # synthetic fakes known, the clip unit's fakes not
    assert (fakes[~known] == 0).all()
    for m in fakes[known]:
        t = m[..., 0]
        corners = np.mean([t[0, 0], t[0, -1], t[-1, 0], t[-1, -1]])
        assert t.max() > 0.3 and t[2, 2] > corners and corners < 0.25  # the face, not a corner
    # cell_shares is an area mean: a half-covered crop gives half in the cells it cuts.
    half = np.zeros((160, 160), np.float32)
    half[:, :80] = 1
    np.testing.assert_allclose(cell_shares(half, 4), [[1, 1, 0, 0]] * 4, atol=1e-6)


@pytest.mark.tensorflow
def test_manipulation_map_finetune_learns_where_and_is_training_only(tmp_path: Path) -> None:
    import keras

    from models.cnn_gru import build_encoder
    from models.config import ModelConfig
    from models.finetune import clip_scores, finetune, frame_classifier
    from stream_server.core.evaluate import auc

    # The tiny CNN's initial weights come from Keras' global generator, which earlier tests
    # advance: seeded, the run is the same whichever tests ran before it.
    keras.utils.set_random_seed(0)
    size = 32
    clips = _texture_clips(12, size, np.random.default_rng(0))
    patch = np.zeros((size, size), np.float32)
    q = size // 4
    patch[q:-q, q:-q] = 1.0  # where `_texture_clips` pasted its fakes' patch

    class Known(BatchMaker):  # fakes whose manipulated region is known, as synthetic ones are
        def unit_with_mask(self, kind, rng):  # type: ignore[no-untyped-def, override]
            real, fake, groups = self._unit(kind, rng)
            return real, fake, groups, patch

    maker = Known(Pool(clips, weights={"clip": 1.0}), None, 0.25)
    cfg = ModelConfig(backbone="tiny_cnn", input_size=size, weights=None)
    clf = frame_classifier(build_encoder(cfg))
    kw = {"units": 8, "lr": 3e-3, "mask_loss": 1.0, "seed": 1, "eval_every": 0}
    first = finetune(clf, maker, 100, tmp_path / "ck", say=lambda m: None, **kw)  # type: ignore[arg-type]
    assert len(first.map_losses) == 100
    assert np.mean(first.map_losses[-10:]) < 0.7 * np.mean(first.map_losses[:10])
    assert np.mean(first.losses[-10:]) < 0.8 * np.mean(first.losses[:10])
    y = np.array([c.label for c in clips])
    assert auc(y, clip_scores(clf, clips)) >= 0.8
    # What is saved is the frame classifier alone: the map head is training-only.
    assert [layer.name for layer in clf.layers if layer.name == "manipulation_map"] == []
    _resumes_where_it_stopped(maker, cfg, tmp_path / "ck", kw, 100, 120)
