"""End-to-end fine-tuning of the frame encoder on face crops cut from video by the serving face
stage, with paired batches, online synthetic fakes and stream-like degradations.

A batch is made of *units*; each unit is one real crop and one fake crop, degraded together with
the same random parameters (`models.augment.degrade`):

- ``pair``: a fake clip's frame and its real `original` clip's frame at the nearest time (the
  same person and scene; DeepFaceLive halves, GHOST/roop/DFD/Wav2Lip sources, reenactment
  driving clips);
- ``clip``: a frame of a random real clip and a frame of a random fake clip (fakes drawn with
  equal weight per generator family, so one family's volume cannot dominate);
- ``still_pair``: a real/fake still pair of the same scene (`dfdc_faces`-style pair folders);
- ``synth``: a real crop and a synthetic fake made from it online (`models.synth`: self-blend,
  graphics face swap, landmark warp, re-render);
- ``still``: a real and a fake still face image (labelled image folders).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.augment import degrade_with_masks

FAMILIES: dict[str, str] = {
    "DeepFaceLive": "deepfacelive",
    "DFDC": "dfdc",
    **{
        g: "faceswap"
        for g in (
            "GHOST",
            "roop(inswapper)",
            "DeeperForensics",
            "DFD(FF++)",
            "Celeb-DF",
            "Deep-Live-Cam",
            "Deepfakes(FF++)",
            "unknown",
        )
    },
    **{
        g: "talking_head"
        for g in ("AniTalker", "MuseV", "DreamTalk", "SyncTalk", "DINet", "Wav2Lip+GFPGAN")
    },
    **{
        g: "reenactment"
        for g in (
            "MegActor",
            "LivePortrait",
            "DaGAN",
            "face-vid2vid",
            "FADM",
            "FOMM",
            "MCNet",
            "TPSMM",
        )
    },
}
FAMILY_NAMES = ("deepfacelive", "dfdc", "faceswap", "talking_head", "reenactment")
# Share of each unit kind in a batch (the recipe of the default bundle).
DEFAULT_UNIT_WEIGHTS = {"pair": 0.25, "clip": 0.25, "still_pair": 0.15, "synth": 0.25, "still": 0.1}


def cell_shares(mask: np.ndarray, grid: int) -> np.ndarray:
    """The mean of `mask` (HxW) over each cell of a `grid` x `grid` partition (area-weighted
    box resampling), float32 in [0, 1]."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(mask, np.float32))
    return np.clip(np.asarray(img.resize((grid, grid), Image.Resampling.BOX), np.float32), 0, 1)


def family_of(generator: str | None, label: int) -> str | None:
    """The generator family of a fake (None for a real); generators not in the table: 'other'."""
    if label == 0:
        return None
    return FAMILIES.get(generator or "", "other")


@dataclass
class Clip:
    name: str
    label: int
    family: str | None
    crops: np.ndarray  # (n, S, S, 3) uint8
    times: np.ndarray  # (n,)
    original: str | None = None
    group: str | None = None  # identity group (who is in it), for `--adversary`


@dataclass
class Pool:
    """Everything the batch maker draws from (training side only)."""

    clips: list[Clip]
    still_pairs: tuple[np.ndarray, np.ndarray] | None = None  # (real (n,S,S,3), fake (n,S,S,3))
    stills: tuple[np.ndarray, np.ndarray] | None = None  # (crops, labels)
    synth_kinds: tuple[str, ...] = ("sbi", "swap", "warp", "rerender")
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_UNIT_WEIGHTS))
    # Where the real crops that synthetic fakes are made from come from, and how often.
    synth_sources: tuple[str, ...] = ("clips", "still_pairs")


SYNTH_SOURCES = ("clips", "still_pairs", "stills")
# Shares of the synthetic fakes' real sources (renormalised over the ones in use and present).
SOURCE_WEIGHTS = {"clips": 0.5, "still_pairs": 0.25, "stills": 0.25}


def parse_sources(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in names if s not in SYNTH_SOURCES]
    if bad or not names:
        raise ValueError(
            f"--synth-sources takes a comma list of {', '.join(SYNTH_SOURCES)}, not {text!r}"
        )
    return names


class BatchMaker:
    """Draws units (real, fake) from a `Pool`; `batch(rng, units)` -> (x uint8, y float32)."""

    def __init__(
        self, pool: Pool, landmarks: Callable[[np.ndarray], np.ndarray] | None, margin: float
    ):
        self.pool = pool
        self.landmarks = landmarks
        self.margin = margin
        clips = [c for c in pool.clips if len(c.crops)]
        self.reals = [c for c in clips if c.label == 0]
        by_name = {c.name: c for c in self.reals}
        self.fakes_by_family: dict[str, list[Clip]] = {}
        for c in clips:
            if c.label == 1:
                self.fakes_by_family.setdefault(c.family or "other", []).append(c)
        self.pairs = [
            (c, by_name[c.original]) for c in clips if c.label == 1 and c.original in by_name
        ]
        # Identity groups of the training clips, numbered: what `--adversary` must not learn.
        self.groups = sorted({c.group for c in clips if c.group is not None})
        self._gid = {g: i for i, g in enumerate(self.groups)}
        # The real face images, by index into pool.stills (a synthetic fakes' source).
        self.real_stills = (
            np.zeros(0, np.int64) if pool.stills is None else np.flatnonzero(pool.stills[1] == 0)
        )
        sources = {
            "clips": len(self.reals),
            "still_pairs": 0 if pool.still_pairs is None else len(pool.still_pairs[0]),
            "stills": len(self.real_stills),
        }
        present = [s for s in pool.synth_sources if sources.get(s)]
        self.source_names = present
        sw = np.array(
            [
                # the historical default: clips 0.75, still pairs 0.25
                0.75
                if s == "clips" and set(present) == {"clips", "still_pairs"}
                else SOURCE_WEIGHTS[s]
                for s in present
            ]
        )
        self.source_probs = sw / sw.sum() if len(sw) else sw
        avail = {
            "pair": bool(self.pairs),
            "clip": bool(self.reals) and bool(self.fakes_by_family),
            "still_pair": pool.still_pairs is not None and len(pool.still_pairs[0]) > 0,
            "synth": bool(pool.synth_kinds) and landmarks is not None and bool(present),
            "still": pool.stills is not None
            and 0 < int(pool.stills[1].sum()) < len(pool.stills[1]),
        }
        w = {k: v for k, v in pool.weights.items() if avail.get(k) and v > 0}
        if not w:
            raise ValueError("nothing to train the encoder on: no real/fake clips, pairs or stills")
        total = sum(w.values())
        self.kinds = list(w)
        self.probs = np.array([w[k] / total for k in self.kinds])

    def describe(self) -> str:
        fam = ", ".join(f"{k} {len(v)}" for k, v in sorted(self.fakes_by_family.items()))
        mix = ", ".join(f"{k} {p:.2f}" for k, p in zip(self.kinds, self.probs, strict=True))
        return (
            f"{len(self.reals)} real clips, fake clips by family: {fam or 'none'}; "
            f"{len(self.pairs)} real/fake clip pairs; units: {mix}"
            + (
                "; synthetic fakes made from: "
                + ", ".join(
                    f"{s} {p:.2f}"
                    for s, p in zip(self.source_names, self.source_probs, strict=True)
                )
                if "synth" in self.kinds
                else ""
            )
        )

    # -- one unit each ---------------------------------------------------------------------------

    @staticmethod
    def _frame(c: Clip, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        i = int(rng.integers(len(c.crops)))
        return c.crops[i], float(c.times[i])

    def _gi(self, c: Clip) -> int:
        return self._gid.get(c.group, -1) if c.group is not None else -1

    def _real_crop(self, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """A real crop to make a synthetic fake from (`Pool.synth_sources`)."""
        # A sequential draw (first source or not, then second or third): with two sources it
        # uses the generator exactly as the clips-or-still-pairs draw before --synth-sources did,
        # so earlier runs repeat batch for batch.
        k = 0 if len(self.source_names) == 1 else int(rng.random() >= self.source_probs[0])
        if len(self.source_names) > 2 and k:
            k = 1 + int(rng.random() >= self.source_probs[1] / self.source_probs[1:].sum())
        which = self.source_names[k]
        if which == "clips":
            c = self.reals[int(rng.integers(len(self.reals)))]
            return self._frame(c, rng)[0], self._gi(c)
        if which == "still_pairs":
            sp = self.pool.still_pairs
            assert sp is not None
            return sp[0][int(rng.integers(len(sp[0])))], -1
        assert self.pool.stills is not None
        pick = self.real_stills[int(rng.integers(len(self.real_stills)))]
        return self.pool.stills[0][int(pick)], -1

    def _fake_clip(self, rng: np.random.Generator) -> Clip:
        fams = sorted(self.fakes_by_family)
        pool = self.fakes_by_family[fams[int(rng.integers(len(fams)))]]
        return pool[int(rng.integers(len(pool)))]

    def unit(self, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        real, fake, _ = self.unit_with_groups(kind, rng)
        return real, fake

    def unit_with_groups(
        self, kind: str, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """(real crop, fake crop, (identity index of each, -1 where unknown))."""
        real, fake, groups, _ = self.unit_with_mask(kind, rng)
        return real, fake, groups

    def unit_with_mask(
        self, kind: str, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, tuple[int, int], np.ndarray | None]:
        """`unit_with_groups` plus where the fake was manipulated (float HxW in [0, 1]) when that
        is known (synthetic fakes: their blend mask), else None."""
        if kind == "synth":
            return self._synth_unit(rng)
        return (*self._unit(kind, rng), None)

    def _unit(
        self, kind: str, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        if kind == "pair":
            fake, real = self.pairs[int(rng.integers(len(self.pairs)))]
            f, t = self._frame(fake, rng)
            j = int(np.argmin(np.abs(real.times - t)))
            return real.crops[j], f, (self._gi(real), self._gi(fake))
        if kind == "clip":
            real = self.reals[int(rng.integers(len(self.reals)))]
            fk = self._fake_clip(rng)
            return (
                self._frame(real, rng)[0],
                self._frame(fk, rng)[0],
                (self._gi(real), self._gi(fk)),
            )
        if kind == "still_pair":
            assert self.pool.still_pairs is not None
            r, f = self.pool.still_pairs
            k = int(rng.integers(len(r)))
            return r[k], f[k], (-1, -1)
        if kind == "still":
            assert self.pool.stills is not None
            crops, labels = self.pool.stills
            ri, fi = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
            return crops[int(rng.choice(ri))], crops[int(rng.choice(fi))], (-1, -1)
        raise ValueError(f"unknown unit kind {kind!r}")

    def _synth_unit(
        self, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, tuple[int, int], np.ndarray]:
        from models.synth import make_fake

        assert self.landmarks is not None
        target, g = self._real_crop(rng)
        pts = self.landmarks(target)
        which = self.pool.synth_kinds[int(rng.integers(len(self.pool.synth_kinds)))]
        donor = None
        if which == "swap":
            d, _ = self._real_crop(rng)
            donor = (d, self.landmarks(d))
        fake, mask = make_fake(which, target, pts, rng, donor, self.margin)
        return target, fake, (g, g), mask

    def batch(self, rng: np.random.Generator, units: int) -> tuple[np.ndarray, np.ndarray]:
        """`units` (real, fake) units: 2 * units crops, each unit's two crops side by side and
        degraded together."""
        x, y, _ = self.batch_with_groups(rng, units)
        return x, y

    def batch_with_groups(
        self, rng: np.random.Generator, units: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`batch` plus each crop's identity index (-1: unknown, e.g. stills)."""
        x, y, g, _ = self.batch_with_masks(rng, units, 0)
        return x, y, g

    def batch_with_masks(
        self, rng: np.random.Generator, units: int, grid: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`batch_with_groups` plus, with `grid` > 0, a manipulation map per crop,
        (2 * units, grid, grid, 2): [..., 0] the share of each grid cell that was manipulated,
        [..., 1] its weight (1 where that is known: every real crop is nowhere manipulated, a
        synthetic fake where its blend mask says; 0 for a fake of unknown extent). The crops and
        labels are the same with or without maps."""
        xs: list[np.ndarray] = []
        gs: list[int] = []
        maps: list[np.ndarray] = []
        ones = np.ones((grid, grid), np.float32)
        nowhere = np.stack([np.zeros_like(ones), ones], -1)  # a real crop: known, untouched
        unknown = np.zeros((grid, grid, 2), np.float32)  # a fake of unknown extent: no weight
        for kind in rng.choice(self.kinds, size=units, p=self.probs):
            real, fake, g, mask = self.unit_with_mask(str(kind), rng)
            crops, moved = degrade_with_masks(
                [real, fake], [mask] if mask is not None and grid else [], rng
            )
            xs.extend(crops)
            gs.extend(g)
            if grid:
                maps.append(nowhere)
                maps.append(np.stack([cell_shares(moved[0], grid), ones], -1) if moved else unknown)
        y = np.tile(np.array([0.0, 1.0], np.float32), units)
        m = (
            np.stack(maps).astype(np.float32)
            if grid
            else np.zeros((2 * units, 0, 0, 2), np.float32)
        )
        return np.stack(xs), y, np.asarray(gs, np.int32), m


# -- training loop -------------------------------------------------------------------------------


def frame_classifier(
    encoder: Any, dropout: float = 0.2, train_from_block: int = 0, train_bn: bool = False
) -> Any:
    """encoder -> dropout -> Dense(1, sigmoid): the frame-level fake probability used to
    fine-tune the encoder. Batch-norm layers keep their statistics (inference mode) unless
    `train_bn`, which trains them too (batch statistics while training, moving averages kept
    for serving); with `train_from_block` K, the stem and blocks before K keep their weights."""
    import re

    import keras

    from models.cnn_gru import FRAME_LAYER

    frozen = train_from_block > 0  # layers come in graph order: stem, block0, block1, ...
    for layer in encoder.layers:
        m = re.match(r"block(\d+)", layer.name)
        if frozen and m and int(m.group(1)) >= train_from_block:
            frozen = False
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = train_bn and not frozen
        elif layer.weights:
            layer.trainable = not frozen
    h = keras.layers.Dropout(dropout, name="frame_dropout")(encoder.output)
    out = keras.layers.Dense(1, activation="sigmoid", name=FRAME_LAYER)(h)
    return keras.Model(encoder.input, out, name="frame_classifier")


def clip_scores(clf: Any, clips: list[Clip], per_clip: int = 16, batch: int = 64) -> np.ndarray:
    """Mean frame probability per clip over up to `per_clip` evenly spaced frames."""
    picks = [
        c.crops[np.linspace(0, len(c.crops) - 1, min(per_clip, len(c.crops))).round().astype(int)]
        for c in clips
    ]
    if not picks:
        return np.zeros(0)
    x = np.concatenate(picks)
    p = np.concatenate(
        [
            np.asarray(clf(x[i : i + batch], training=False)).reshape(-1)
            for i in range(0, len(x), batch)
        ]
    )
    out, k = [], 0
    for q in picks:
        out.append(float(p[k : k + len(q)].mean()))
        k += len(q)
    return np.asarray(out)


def unit_loss(rank: float) -> Callable[[Any, Any], Any]:
    """Binary cross-entropy plus `rank` x softplus(logit(real) - logit(fake)) over the units of a
    batch, which `BatchMaker.batch` lays out as (real, fake) rows side by side."""
    import keras
    from keras import ops

    def loss(y_true: Any, y_pred: Any) -> Any:
        bce = keras.losses.binary_crossentropy(y_true, y_pred)
        p = ops.clip(ops.reshape(y_pred, (-1, 2)), 1e-6, 1 - 1e-6)
        z = ops.log(p) - ops.log(1 - p)
        return ops.mean(bce) + rank * ops.mean(ops.softplus(z[:, 0] - z[:, 1]))

    return loss


def reverse_gradient(t: Any, strength: float) -> Any:
    """`t` forward; -`strength` x the incoming gradient backward."""
    from keras import ops

    lam = float(strength)
    return ops.stop_gradient(t * (1.0 + lam)) - lam * t


def identity_adversary(clf: Any, groups: int, strength: float) -> Any:
    """A training-only model: `clf`'s output plus an identity classifier (`groups` classes) on
    the encoder's embedding behind a gradient reversal (identity forward, -`strength` x the
    gradient backward), the domain-adversarial recipe of Ganin & Lempitsky (2015)."""
    import keras

    emb = clf.get_layer("frame_dropout").input
    rev = keras.layers.Lambda(lambda t: reverse_gradient(t, strength), name="reverse_gradient")(emb)
    h = keras.layers.Dense(256, activation="relu", name="identity_hidden")(rev)
    who = keras.layers.Dense(groups, activation="softmax", name="identity")(h)
    return keras.Model(clf.input, [clf.output, who], name="identity_adversarial")


def manipulation_head(clf: Any) -> Any:
    """A training-only 1x1 convolution on the encoder's last feature map (before its global
    pooling) that predicts, per cell, how much of it was manipulated: the localisation target
    of Face X-ray-style training, which makes the features that feed the pooled embedding mark
    *where* a blend is rather than what the scene looks like."""
    import keras

    fmap = clf.get_layer("embedding").input
    return keras.layers.Conv2D(1, 1, activation="sigmoid", name="manipulation_map")(fmap)


def map_loss(y_true: Any, y_pred: Any) -> Any:
    """Binary cross-entropy of the manipulation map, weighted per cell by y_true[..., 1] (the
    share in [..., 0]); per crop, the mean over its weighted cells (0 where none is known)."""
    from keras import ops

    t, w = y_true[..., 0], y_true[..., 1]
    p = ops.clip(y_pred[..., 0], 1e-6, 1 - 1e-6)
    bce = -(t * ops.log(p) + (1 - t) * ops.log(1 - p))
    return ops.sum(w * bce, axis=(1, 2)) / ops.maximum(ops.sum(w, axis=(1, 2)), 1.0)


@dataclass
class FinetuneResult:
    steps: int
    losses: list[float]
    val_auc: list[tuple[int, float]]
    seconds: float
    map_losses: list[float] = field(default_factory=list)  # with `mask_loss`, this run's steps


def finetune(
    clf: Any,
    maker: BatchMaker,
    steps: int,
    ckpt: Path,
    *,
    units: int = 16,
    lr: float = 2e-4,
    ema: float = 0.0,
    rank: float = 0.0,
    adversary: float = 0.0,
    mask_loss: float = 0.0,
    seed: int = 0,
    resume: bool = False,
    val: list[Clip] | None = None,
    eval_every: int = 250,
    save_every: int = 100,
    say: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> FinetuneResult:
    """Fine-tune `clf` (a `frame_classifier`) for `steps` batches, checkpointing its weights and
    the step to `ckpt` every `save_every` steps; `resume` continues from the checkpoint (the
    learning-rate schedule continues; the batches are a function of (seed, step), so a resumed
    run draws the same batches as an uninterrupted one). With `adversary` L > 0 an identity
    classifier reads the embedding through a gradient reversal of strength L, so the encoder is
    pushed to drop what tells the training people apart (it is not saved: on resume it starts
    afresh). With `mask_loss` W > 0 a manipulation-map head (`manipulation_head`) is trained
    beside the classifier with weight W on the maps of `BatchMaker.batch_with_masks`; like the
    adversary it is training-only and not saved."""
    import keras
    from tqdm import tqdm

    from stream_server.core.evaluate import auc

    ckpt.mkdir(parents=True, exist_ok=True)
    wfile, sfile = ckpt / "finetune.weights.h5", ckpt / "finetune.json"
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        max(1, steps - min(100, steps // 10)),
        alpha=0.05,
        warmup_target=lr,
        warmup_steps=min(100, steps // 10),
    )
    opt = (
        keras.optimizers.Adam(schedule, use_ema=True, ema_momentum=ema)
        if ema > 0
        else keras.optimizers.Adam(schedule)
    )
    main_loss = unit_loss(rank) if rank > 0 else "binary_crossentropy"
    adv = adversary > 0 and len(maker.groups) >= 2
    model = identity_adversary(clf, len(maker.groups), adversary) if adv else clf
    grid = 0
    if mask_loss > 0:
        head = manipulation_head(clf)
        grid = int(head.shape[1])
        outputs = [*model.outputs, head] if adv else [clf.output, head]
        model = keras.Model(clf.input, outputs, name="with_manipulation_map")
    losses_of: list[Any] = [main_loss]
    weights_of = [1.0]
    if adv:
        losses_of.append("sparse_categorical_crossentropy")
        weights_of.append(1.0)
    if grid:
        losses_of.append(map_loss)
        weights_of.append(float(mask_loss))
    model.compile(
        optimizer=opt,
        loss=losses_of if len(losses_of) > 1 else main_loss,
        loss_weights=weights_of if len(losses_of) > 1 else None,
    )
    if adversary > 0 and not adv:
        say("--adversary: fewer than two identity groups among the training clips; off")
    start, losses, val_auc = 0, [], []
    if resume and wfile.is_file() and sfile.is_file():
        state = json.loads(sfile.read_text())
        clf.load_weights(wfile)
        start, losses = int(state["step"]), list(state.get("losses", []))
        val_auc = [tuple(v) for v in state.get("val_auc", [])]
        model.optimizer.build(model.trainable_variables)
        model.optimizer.iterations.assign(start)
        say(f"resumed encoder fine-tuning at step {start}/{steps}")
    t0 = time.monotonic()

    def save(step: int) -> None:
        clf.save_weights(wfile)
        sfile.write_text(json.dumps({"step": step, "losses": losses, "val_auc": val_auc}))

    def evaluate(step: int) -> None:
        if not val:
            return
        y = np.array([c.label for c in val])
        if 0 < y.sum() < len(y):
            a = auc(y, clip_scores(clf, val))
            val_auc.append((step, float(a)))
            say(f"step {step}: held-out clip AUC (frame mean) {a:.3f}")

    bar = tqdm(
        range(start, steps),
        desc="encoder fine-tune",
        unit="step",
        file=sys.stderr,
        initial=start,
        total=steps,
    )
    run_loss = run_id = run_map = None
    map_losses: list[float] = []
    for step in bar:
        x, y, g, maps = maker.batch_with_masks(np.random.default_rng([seed, step]), units, grid)
        if adv or grid:
            targets: list[Any] = [y]
            sw: list[Any] = [np.ones_like(y)]
            if adv:
                targets.append(np.maximum(g, 0))
                sw.append((g >= 0).astype(np.float32))
            if grid:
                targets.append(maps)
                sw.append(np.ones_like(y))
            out = np.asarray(model.train_on_batch(x, targets, sample_weight=sw)).reshape(-1)
            loss = float(out[1])
            if adv:
                id_loss = float(out[2])
                run_id = id_loss if run_id is None else 0.95 * run_id + 0.05 * id_loss
            if grid:
                m_loss = float(out[-1])
                map_losses.append(m_loss)
                run_map = m_loss if run_map is None else 0.95 * run_map + 0.05 * m_loss
        else:
            loss = float(np.asarray(model.train_on_batch(x, y)).reshape(-1)[0])
        losses.append(loss)
        run_loss = loss if run_loss is None else 0.95 * run_loss + 0.05 * loss
        post = {"loss": f"{run_loss:.3f}"}
        if run_id is not None:
            post["identity"] = f"{run_id:.2f}"
        if run_map is not None:
            post["map"] = f"{run_map:.3f}"
        bar.set_postfix(post)
        done = step + 1
        if ema > 0 and done == steps:
            model.optimizer.finalize_variable_values(model.trainable_variables)
        if done % save_every == 0 or done == steps:
            save(done)
        if eval_every and (done % eval_every == 0 or done == steps):
            evaluate(done)
            save(done)
    return FinetuneResult(steps, losses, val_auc, time.monotonic() - t0, map_losses)
