"""Evaluate an exported bundle on held-out videos through the serving code path (the scanner),
record the metrics in its manifest, and write its model card."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from models.dfdc import Video
from models.finetune import family_of
from stream_server.core.bundle import load_bundle, read_manifest, write_manifest
from stream_server.core.evaluate import auc, auc_interval, compute, eer_threshold, plot_roc
from stream_server.core.scan import ScanError, Scanner

AUC_95_HOW = (
    "95 % percentile bootstrap of the AUC, 2,000 resamples of whole identity groups (a person's "
    "videos, a fake with its own real) with replacement"
)


def split_groups(out: Path) -> dict[str, str] | None:
    """file name -> identity group, from the training run's split.json (None without one)."""
    try:
        groups = json.loads((out / "split.json").read_text()).get("groups")
    except (OSError, ValueError):
        return None
    return groups if isinstance(groups, dict) else None


def interval(rows: list[dict[str, Any]], groups: dict[str, str] | None) -> list[float] | None:
    """The 95 % bootstrap interval of the AUC of `rows` (`label`, `p_fake`, `video`), resampling
    whole identity groups when `groups` (file name -> group, from split.json) names them all."""
    if not rows or len({r["label"] for r in rows}) < 2:
        return None
    clusters = None
    if groups and all(r["video"] in groups for r in rows):
        clusters = [groups[r["video"]] for r in rows]
    lo, hi = auc_interval([r["label"] for r in rows], [r["p_fake"] for r in rows], clusters)
    return [round(lo, 4), round(hi, 4)]


def by_group(
    rows: list[dict[str, Any]], key: str, threshold: float, groups: dict[str, str] | None = None
) -> dict[str, Any]:
    """Per family (or generator): its fakes against every scored real: AUC (with its 95 %
    interval, see `interval`), mean p_fake, the share flagged at `threshold`; and the reals' own
    row."""
    real_rows = [r for r in rows if r["label"] == 0]
    reals = [r["p_fake"] for r in real_rows]
    out: dict[str, Any] = {}
    for g in sorted({str(r[key]) for r in rows if r["label"] == 1}):
        fake_rows = [r for r in rows if r["label"] == 1 and str(r[key]) == g]
        fk = [r["p_fake"] for r in fake_rows]
        y = np.r_[np.zeros(len(reals)), np.ones(len(fk))]
        out[g] = {
            "fakes": len(fk),
            "auc_vs_reals": float(auc(y, np.r_[reals, fk])) if reals else None,
            "auc_95": interval(real_rows + fake_rows, groups),
            "mean_p_fake": float(np.mean(fk)),
            "flagged": float(np.mean(np.asarray(fk) >= threshold)),
        }
    if reals:
        out["(real)"] = {
            "reals": len(reals),
            "mean_p_fake": float(np.mean(reals)),
            "flagged": float(np.mean(np.asarray(reals) >= threshold)),
        }
    return out


def evaluate_bundle(
    bundle_dir: Path, videos: list[Video], out: Path, choose_threshold: bool = True
) -> dict[str, Any]:
    from tqdm import tqdm

    rows: list[dict[str, Any]] = []
    with Scanner(bundle_dir, providers="cpu") as scanner:
        for v in tqdm(videos, desc="held-out scan", unit="video", file=sys.stderr):
            try:
                r = scanner.scan(v.path)
            except ScanError as exc:
                rows.append({"video": v.name, "label": v.label, "error": str(exc)})
                continue
            rows.append(
                {
                    "video": v.name,
                    "label": v.label,
                    "generator": v.generator or "none",
                    "family": family_of(v.generator, v.label),
                    "p_fake": r.p_fake,
                    "verdict": r.verdict,
                    "frames": r.frames_analysed,
                    "frames_with_face": r.frames_with_face,
                }
            )
        threshold = scanner.bundle.threshold
    scored = [r for r in rows if r.get("p_fake") is not None]
    ys, ps = [r["label"] for r in scored], [r["p_fake"] for r in scored]
    if choose_threshold and scored:
        # The verdict threshold is chosen here, on held-out *video* scores (the equal-error point).
        threshold = round(eer_threshold(ys, ps), 4)
        for row in scored:  # verdicts at the chosen threshold, as the server will give them
            row["verdict"] = "fake" if row["p_fake"] >= threshold else "real"
    metrics = compute(ys, ps, threshold)
    groups = split_groups(out)
    result: dict[str, Any] = {
        "metrics": {**metrics.to_dict(), "auc_95": interval(scored, groups)},
        "by_family": by_group(scored, "family", threshold, groups),
        "by_generator": by_group(scored, "generator", threshold, groups),
        "videos": rows,
        "unscored": [r["video"] for r in rows if r.get("p_fake") is None],
    }
    (out / "evaluation.json").write_text(json.dumps(result, indent=1))
    plot_roc(
        [r["label"] for r in scored],
        [r["p_fake"] for r in scored],
        bundle_dir / "roc.png",
        "held-out identities (video level)",
    )
    manifest = read_manifest(bundle_dir)
    training = dict(manifest.training or {})
    training["evaluation"] = {
        "held_out_videos": len(rows),
        "scored": len(scored),
        **result["metrics"],
        "auc_95_how": AUC_95_HOW,
        "how": "deepfake-scan path on whole held-out videos; video p_fake = mean over frames",
        "threshold_from": "equal-error point of the held-out videos"
        if choose_threshold
        else "manifest",
        "by_family": result["by_family"],
        "by_generator": result["by_generator"],
        "held_out_files": sorted(r["video"] for r in rows),
    }
    write_manifest(bundle_dir, manifest.with_(training=training, threshold=threshold))
    load_bundle(bundle_dir)
    return result


def refresh_intervals(bundle_dir: Path, run_dir: Path) -> dict[str, Any]:
    """Recompute the AUC intervals of a bundle's held-out evaluation from the training run that
    made it (RUN/evaluation.json and RUN/split.json), store them in the manifest and rewrite the
    model card; for bundles evaluated before the intervals existed. Refuses a run whose held-out
    videos or AUC are not the bundle's."""
    result = json.loads((run_dir / "evaluation.json").read_text())
    manifest = read_manifest(bundle_dir)
    training = dict(manifest.training or {})
    ev = dict(training.get("evaluation") or {})
    scored = [r for r in result["videos"] if r.get("p_fake") is not None]
    if (
        sorted(r["video"] for r in result["videos"]) != ev.get("held_out_files")
        or abs(result["metrics"]["auc"] - ev.get("auc", -1.0)) > 1e-6
    ):
        raise ValueError(f"{run_dir} holds another evaluation than the one of {bundle_dir}")
    groups = split_groups(run_dir)
    ev["auc_95"], ev["auc_95_how"] = interval(scored, groups), AUC_95_HOW
    for key, field in (("family", "by_family"), ("generator", "by_generator")):
        fresh = by_group(scored, key, ev["threshold"], groups)
        ev[field] = {
            k: {**v, "auc_95": fresh.get(k, {}).get("auc_95")} if k != "(real)" else v
            for k, v in (ev.get(field) or {}).items()
        }
    training["evaluation"] = ev
    write_manifest(bundle_dir, manifest.with_(training=training))
    load_bundle(bundle_dir)
    rewrite_model_card(bundle_dir)
    return ev


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def rewrite_model_card(bundle_dir: Path) -> Path:
    """Regenerate MODEL_CARD.md from the manifest (and lofo.json, when present)."""
    t = read_manifest(bundle_dir).training or {}
    repro = t.get("reproduce") or {}
    return write_model_card(
        bundle_dir, bundle_dir, repro.get("command", ""), repro.get("seconds", 0.0)
    )


def write_model_card(bundle_dir: Path, out: Path, command: str = "", seconds: float = 0.0) -> Path:
    import os

    m = read_manifest(bundle_dir)
    t = dict(m.training or {})
    if command and t.get("reproduce", {}).get("command") != command:
        t["reproduce"] = {"command": command, "seconds": round(seconds, 1)}
        m = m.with_(training=t)
        write_manifest(bundle_dir, m)
    ev = t.get("evaluation") or {}
    vids = t.get("videos", {})
    q = m.encoder.quantization
    sizes = {n: f.bytes for n, f in m.files.items()}
    size = m.encoder.input.size
    gru = list(m.head.gru_units) if m.head.gru_units is not None else None
    frame_mean = m.head.kind == "frame_mean"
    ens = t.get("ensemble") or {}
    n_members = len(ens.get("members", []))
    lines = [
        f"# Model card: {m.name} {m.version}",
        "",
        "Generated by `deepfake-train` from the run that produced this bundle; numbers are measured, "
        "not edited.",
        "",
        "## What it is",
        (
            f"- {n_members} {m.backbone} frame encoders side by side ({m.feature_dim}-d: their "
            f"embeddings of each face crop concatenated, {size}x{size} uint8 RGB) and "
            if ens
            else f"- {m.backbone} frame encoder ({m.feature_dim}-d embedding per face crop, "
            f"{size}x{size} uint8 RGB) and "
        )
        + (
            "a frame-mean head (the weighted mean of their fine-tuned frame classifiers' "
            "probabilities of each crop, averaged over the valid steps of a window"
            if ens
            else "a frame-mean head (the fine-tuned frame classifier's probability of each crop, "
            "averaged over the valid steps of a window"
            if frame_mean
            else f"a masked GRU head {gru} over a window"
        )
        + f" of {m.window} embeddings "
        f"({m.window / m.analysis_fps:.0f} s at {m.analysis_fps:g} analysed frames/s"
        + (
            ")). A GRU over the same windows measured worse: docs/training.md."
            if frame_mean
            else ")."
        ),
        f"- Face stage: {m.detector.source}"
        + (
            f", with {m.roi_detector.detector.source} following tracked faces between full-frame "
            f"searches (every {m.roi_detector.redetect_every} analysed frames)"
            if m.roi_detector
            else ""
        )
        + f"; square crops with margin {m.crop.margin}.",
        f"- Encoder precision served by default: {m.encoder.precision}."
        + (
            f" INT8 drift vs fp32: min cosine {q['min_cosine']:.4f}, mean {q['mean_cosine']:.4f}, "
            f"max probability change {q['max_prob_change']:.4f} (bounds {q['bounds']})."
            if q
            else ""
        ),
        "- Files: " + ", ".join(f"`{n}` {b / 1e6:.1f} MB" for n, b in sizes.items()),
        "",
        "## Training data",
        f"- Folders: {', '.join(t.get('data', []))} (DFDC layout). Research-use data; none of it is "
        "shipped here.",
        f"- Training videos: {vids.get('train')} ({vids.get('train_real')} real, {vids.get('train_fake')} "
        f"fake); {t.get('face_crops')} face crops in all, cut by the serving face stage."
        + (
            f" Plus {t.get('synthetic_fakes')} self-blended synthetic fake clips made from the real "
            "training clips."
            if t.get("synthetic_fakes")
            else ""
        ),
        *(
            [
                f"- Face images (training side only): {t['images']['face_crops']} face crops "
                f"({t['images']['real']} real, {t['images']['fake']} fake) from "
                f"{', '.join(t['images']['folders'])}: still units of the encoder fine-tune"
                + (
                    "."
                    if frame_mean
                    else f", and runs of {t.get('settings', {}).get('window')} different faces as "
                    "extra clips for the head."
                )
            ]
            if t.get("images")
            else []
        ),
        *(_finetune_lines(t["encoder_finetune"]) if t.get("encoder_finetune") else []),
        *(_ensemble_lines(ens) if ens else []),
        f"- Held out (whole identities, never trained on): {vids.get('val')} videos "
        f"({vids.get('val_real')} real, {vids.get('val_fake')} fake).",
        f"- Settings: `{json.dumps(t.get('settings', {}), sort_keys=True)}`",
        f"- Trained on {t.get('date')} in {t.get('seconds')} s (training only; see README for the "
        "command and machine).",
        "",
        "## Reproduce",
        (
            f"`scripts/train_default.sh` (from the repository root, after `scripts/test.sh` set up "
            f"`.venv`) trains the members (stage 1, then stage 2 from it), runs `{command}` (export "
            f"and held-out evaluation: {seconds / 60:.1f} minutes on {_cpu()} with "
            f"{os.cpu_count()} cores and no GPU), then the leave-one-family-out runs "
            "(`python -m models.lofo`) and `python -m models.ensemble lofo`, which averages each "
            "of them with stage 1 as the served model averages stage 2 with it."
        )
        if ens
        else f"`{command}` (from the repository root, after `scripts/test.sh` set up `.venv`) took "
        f"{seconds / 60:.1f} minutes end to end (face crops, training, export, held-out evaluation) "
        f"on {_cpu()} with {os.cpu_count()} cores and no GPU. `scripts/train_default.sh` runs "
        + (
            "stage 1 (above), this command"
            if (t.get("encoder_finetune") or {}).get("init_from")
            else "this command"
        )
        + " and then the leave-one-family-out runs (`python -m models.lofo`).",
        "",
        "## Held-out results (video level, through the serving code path)",
    ]
    lines += _results_lines(ev, t.get("encoder_finetune"), bundle_dir, frame_mean, bool(ens))
    lines += [
        "",
        "## Limitations",
        "- Trained on a few hundred public demo clips and 6,000 DFDC still pairs: per-family numbers "
        "rest on a handful of held-out clips each (see the counts) and move by several hundredths "
        "between identity splits.",
        "- Generators outside these families (new diffusion video models, full-frame synthesis, "
        "face swaps tuned to hide blending) may score as real; the leave-one-family-out table is the "
        "best guide to how it does on a kind of fake it has never seen.",
        "- Scores depend on the face stage: small, profile or occluded faces may be missed (no score).",
        "- Strong beauty filters, heavy compression and low resolution can look like manipulation.",
        "- A score is evidence, not proof: do not take decisions about people on it alone.",
        "",
        "## Data terms",
        "Trained on research-use media: DFDC (Meta's terms), VoxCeleb2, GRID, MEAD, DeepFaceLive demo "
        "clips, LivePortrait and MegActor project pages, DeeperForensics-1.0, FaceForensics++/DFD, "
        "Celeb-DF, generator demo clips (GHOST, roop, Deep-Live-Cam, AniTalker, DreamTalk, MuseV, "
        "SyncTalk, DINet, Wav2Lip+GFPGAN)"
        + (
            "; face images: Kaggle hardfakevsrealfaces (StyleGAN2 fakes and photographs, no "
            "license given) and GenConViT's DFDC sample crops (DFDC terms)"
            if t.get("images")
            else ""
        )
        + "; synthetic fakes use dlib's 68-point landmarks (iBUG 300-W, non-commercial). Use this "
        "model for research and evaluation.",
        "",
    ]
    path = bundle_dir / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path


FAMILY_TITLES = {
    "deepfacelive": "DeepFaceLive (real-time face swap)",
    "dfdc": "DFDC (face swaps)",
    "faceswap": "other face swaps (GHOST, roop, DeeperForensics, DFD, Celeb-DF, Deep-Live-Cam, FF++)",
    "talking_head": "talking heads and lip-sync (AniTalker, MuseV, DreamTalk, SyncTalk, DINet, Wav2Lip)",
    "reenactment": "reenactment (MegActor, LivePortrait, FOMM, TPSMM, face-vid2vid, MCNet, DaGAN, FADM)",
    "other": "other",
}


def _num(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) else "n/a"


def _finetune_lines(ft: dict[str, Any]) -> list[str]:
    f = ft.get("fine_tune", {})
    sp = ft.get("still_pairs") or {}
    init = ft.get("init_from") or {}
    first = init.get("fine_tune") or {}
    return [
        *(
            [
                f"- Stage 1: the encoder was first fine-tuned for {first.get('steps')} batches on "
                f"{first.get('pool')} (`{init.get('command')}`); its frame classifier scored the "
                f"held-out clips {_num(init.get('held_out_auc'))} and, per family, "
                + ", ".join(f"{k} {_num(v)}" for k, v in (init.get("families") or {}).items())
                + ". Stage 2 below started from those weights."
            ]
            if first
            else [f"- Stage 1: started from `{init['weights']}`."]
            if init
            else []
        ),
        f"- Encoder fine-tuned end to end for {f.get('steps')} batches of {f.get('units_per_batch')} "
        "real/fake units (2 crops each, degraded together: flips, crop jitter, colour, down/up-"
        "scaling, blur, noise, JPEG) in "
        f"{f.get('seconds', 0) / 60:.1f} minutes. Pool: {f.get('pool')}.",
        f"- Synthetic fakes made online from real crops with dlib face-hull masks: "
        f"{', '.join(f.get('synthetic_kinds', [])) or 'none'}.",
        *(
            [
                f"- Manipulation map (weight {f['mask_loss']:g}): a training-only 1x1 "
                "convolution on the encoder's last feature map learned where each synthetic fake "
                "was blended (its hull mask per cell; every real crop: nowhere), so the features "
                "the classifier pools mark the blend rather than the scene. It is not exported."
            ]
            if f.get("mask_loss")
            else []
        ),
        *(
            [
                f"- Still pairs: {sp.get('train_pairs')} real/fake pairs from "
                f"{', '.join(sp.get('folders', []))} trained on, {sp.get('held_out_pairs')} held out "
                f"({sp.get('dropped_shared_people')} dropped as sharing DFDC originals with clips or "
                "images)."
            ]
            if sp
            else []
        ),
    ]


def _ensemble_lines(ens: dict[str, Any]) -> list[str]:
    out = [
        "- Served as an ensemble: the weighted mean of the frame probabilities of "
        f"{len(ens.get('members', []))} fine-tuned frame classifiers (`{ens.get('command')}`):"
    ]
    for i, mem in enumerate(ens.get("members", [])):
        fams = mem.get("families") or {}
        out.append(
            f"  - member {i + 1}, weight {mem.get('weight', 0):.2f}: `{mem.get('weights')}`, "
            f"{(mem.get('fine_tune') or {}).get('steps')} batches (`{mem.get('command')}`); its "
            f"frame classifier alone scored the held-out clips {_num(mem.get('held_out_auc'))}"
            + (
                ", per family " + ", ".join(f"{k} {_num(v)}" for k, v in fams.items())
                if fams
                else ""
            )
            + "."
        )
    return out


def _results_lines(
    ev: dict[str, Any],
    ft: dict[str, Any] | None,
    bundle_dir: Path,
    frame_mean: bool,
    ensemble: bool = False,
) -> list[str]:
    if not ev:
        return ["- No held-out evaluation was run."]
    lines = [
        f"- AUC **{ev['auc']:.3f}**{_ci(ev.get('auc_95'))}, log loss {ev['log_loss']:.3f}, EER "
        f"{ev['eer']:.3f}, accuracy {ev['accuracy']:.3f} at threshold {ev['threshold']} (chosen "
        f"at the equal-error point of these held-out videos, not on stills) on {ev['scored']} of "
        f"{ev['held_out_videos']} held-out videos (whole identities never trained on).",
    ]
    if ev.get("auc_95"):
        lines.append(
            f"- Intervals in brackets: {ev.get('auc_95_how', AUC_95_HOW)}. With this few videos "
            "they are wide: two models whose intervals overlap are not told apart by them."
        )
    lines.append(
        "- ROC curve: `roc.png`. Per-video scores: `evaluation.json` in the training output."
    )
    if ft and ft.get("held_out_auc") is not None and ensemble:
        lines.append(
            f"- The same held-out clips scored in training by the first member's frame classifier "
            f"alone (mean of up to 16 frames): AUC {ft['held_out_auc']:.3f}; the served ensemble "
            f"over windows (the numbers above): AUC {ev['auc']:.3f}."
        )
    elif ft and ft.get("held_out_auc") is not None and frame_mean:
        lines.append(
            f"- The same held-out clips scored by the fine-tuned frame classifier in training (mean "
            f"of up to 16 frames): AUC {ft['held_out_auc']:.3f}; served as a frame-mean head over "
            f"windows (the numbers above): AUC {ev['auc']:.3f}."
        )
    elif ft and ft.get("held_out_auc") is not None:
        lines.append(
            f"- The same held-out clips scored by the fine-tuned frame classifier alone (mean of up to "
            f"16 frames, no GRU): AUC {ft['held_out_auc']:.3f}; the GRU head over windows of "
            f"embeddings (what the server runs): AUC {ev['auc']:.3f}."
        )
    if ft and ft.get("still_pairs"):
        lines.append(
            f"- Held-out DFDC still pairs (frame level, frame classifier): AUC "
            f"{ft['still_pairs']['frame_auc']:.3f} on {ft['still_pairs']['held_out_pairs']} pairs."
        )
    fam = ev.get("by_family") or {}
    for title, groups, names in (
        ("generator family (fakes of the family against all held-out reals)", fam, FAMILY_TITLES),
        ("generator", ev.get("by_generator") or {}, {}),
    ):
        if not groups:
            continue
        lines += [
            "",
            f"### Held-out videos by {title}",
            "",
            "| group | held-out fakes | AUC vs reals (95 % interval) | mean p_fake | "
            "flagged at threshold |",
            "| --- | --- | --- | --- | --- |",
        ]
        for k, v in groups.items():
            if k == "(real)":
                lines.append(
                    f"| real videos | {v['reals']} reals | - | {v['mean_p_fake']:.2f} | "
                    f"{v['flagged']:.0%} (false alarms) |"
                )
                continue
            a = "-" if v["auc_vs_reals"] is None else f"{v['auc_vs_reals']:.3f}"
            a += _ci(v.get("auc_95"))
            lines.append(
                f"| {names.get(k, k)} | {v['fakes']} | {a} | {v['mean_p_fake']:.2f} | "
                f"{v['flagged']:.0%} |"
            )
    scored_fams = {
        k: v for k, v in fam.items() if k != "(real)" and v.get("auc_vs_reals") is not None
    }
    good = [
        FAMILY_TITLES.get(k, k).split(" (")[0]
        for k, v in scored_fams.items()
        if v["auc_vs_reals"] >= 0.8
    ]
    weak = [
        FAMILY_TITLES.get(k, k).split(" (")[0]
        for k, v in scored_fams.items()
        if v["auc_vs_reals"] < 0.65
    ]
    if scored_fams:
        lines += [
            "",
            f"- Good at (held-out AUC >= 0.80): {', '.join(good) or 'none of the families'}; "
            f"weak at (< 0.65): {', '.join(weak) or 'none'}. Families with one or two held-out "
            "fakes say little.",
        ]
    lofo_file = bundle_dir / "lofo.json"
    if lofo_file.is_file():
        lines += ["", *lofo_lines(json.loads(lofo_file.read_text()))]
    if ev["auc"] < 0.9:
        lines += [
            "",
            f"**Warning: AUC {ev['auc']:.2f} on held-out identities. Treat scores as one signal "
            "among others, and read the tables above for the kinds of fake it is weak on.**",
        ]
    lines += ["", f"- Held-out files: {', '.join(ev.get('held_out_files', []))}"]
    return lines


def _ci(pair: Any) -> str:
    """' [lo-hi]' for a stored interval, '' without one (bundles evaluated before it existed)."""
    return f" [{pair[0]:.2f}-{pair[1]:.2f}]" if pair else ""


def lofo_lines(lofo: dict[str, Any]) -> list[str]:
    """The leave-one-family-out table (from `python -m models.lofo`)."""
    rows = lofo.get("families", {})
    heading = (
        "### Every generator family left out at once (one fine-tune on none of the families' "
        "fakes; each family's fakes against the held-out reals)"
        if lofo.get("at_once")
        else "### Leave one generator family out (trained without the family, its fakes against "
        "the held-out reals)"
    )
    lines = [
        heading,
        "",
        f"{lofo.get('how', '')}",
        "",
        "| family left out | its fakes | AUC (95 % interval) | mean p_fake (fakes / reals) |",
        "| --- | --- | --- | --- |",
    ]
    for k, v in rows.items():
        extra = (
            f"; held-out still pairs frame AUC {v['still_pair_auc']:.3f}"
            if v.get("still_pair_auc") is not None
            else ""
        )
        lines.append(
            f"| {FAMILY_TITLES.get(k, k)} | {v['fakes']} | {v['auc']:.3f}{_ci(v.get('auc_95'))}"
            f"{extra} | "
            f"{v['mean_p_fake']:.2f} / {v['mean_p_fake_real']:.2f} |"
        )
    if rows:
        lines.append(f"| **mean over families** | | **{lofo['mean_auc']:.3f}** | |")
    if lofo.get("missing"):
        lines += [
            "",
            f"Not measured (no leave-one-out run): {', '.join(lofo['missing'])}; the mean is over "
            "the families above only.",
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m models.evaluation",
        description="Add the AUC intervals to a bundle's held-out evaluation and model card, from "
        "the training run that evaluated it (its evaluation.json and split.json).",
    )
    p.add_argument("bundle", type=Path, help="bundle directory (models/default_bundle)")
    p.add_argument("run", type=Path, help="the training run's --out (runs/default/model)")
    args = p.parse_args(argv)
    for need in (args.run / "evaluation.json", args.bundle / "manifest.json"):
        if not need.is_file():
            p.error(f"{need} not found")
    try:
        ev = refresh_intervals(args.bundle, args.run)
    except ValueError as exc:
        p.error(str(exc))
    lo, hi = ev["auc_95"] or (float("nan"), float("nan"))
    print(f"held-out AUC {ev['auc']:.3f}, 95 % interval {lo:.3f}-{hi:.3f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
