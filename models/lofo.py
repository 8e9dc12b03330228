"""Leave one generator family out: for each family, fine-tune the encoder without that family's
fakes (`deepfake-train --exclude-family F --encoder-only`) and report how its fakes score against
the held-out reals; writes lofo.json (and, with --bundle, refreshes that bundle's model card).

    python -m models.lofo --out runs/lofo --bundle models/default_bundle -- --data ... (train args)

`--at-once`: one fine-tune without any family's fakes, every family scored from it. For a recipe
that trains on no real fakes at all (`--unit-weights synth=1`: synthetic fakes made from real
clips only), the five leave-one-out runs would train the same thing five times; the one run is
the same measurement, and for any other recipe a harder one (each family is unseen and so are
all the others).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from models.evaluation import interval, split_groups
from models.finetune import FAMILY_NAMES


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m models.lofo",
        description="Leave-one-generator-family-out evaluation of the encoder fine-tune.",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for one run per family")
    p.add_argument("--families", nargs="+", default=list(FAMILY_NAMES), choices=FAMILY_NAMES)
    p.add_argument(
        "--bundle", type=Path, help="write lofo.json into this bundle and refresh its card"
    )
    p.add_argument(
        "--at-once",
        action="store_true",
        help="one run with every family left out, instead of one run per family",
    )
    p.add_argument(
        "train_args", nargs=argparse.REMAINDER, help="after --: deepfake-train arguments"
    )
    return p


AT_ONCE_DIR = "all-families"


def summarise(out: Path, families: list[str], how: str, at_once: bool = False) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for f in families:
        ev_file = out / (AT_ONCE_DIR if at_once else f) / "frame_eval.json"
        if not ev_file.is_file():
            continue
        ev = json.loads(ev_file.read_text())
        fam = ev["families"].get(f)
        if not fam:
            continue
        scored = [r for r in ev.get("rows", []) if r["label"] == 0 or r["family"] == f]
        rows[f] = {
            "auc": fam["auc"],
            "auc_95": interval(scored, split_groups(ev_file.parent)),
            "fakes": fam["fakes"],
            "reals": fam["reals"],
            "mean_p_fake": fam["mean_p_fake"],
            "mean_p_fake_real": ev.get("mean_p_fake_real"),
            "still_pair_auc": (ev.get("still_pairs") or {}).get("frame_auc")
            if f == "dfdc"
            else None,
            "held_out_auc_other_families": None if at_once else ev.get("held_out_auc"),
            "steps": ev["fine_tune"]["steps"],
        }
    aucs = [r["auc"] for r in rows.values()]
    return {
        "how": how,
        "at_once": at_once,
        "families": rows,
        "mean_auc": sum(aucs) / len(aucs) if aucs else None,
        "min_auc": min(aucs) if aucs else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    train_args = [a for a in args.train_args if a != "--"]
    if not train_args:
        print(
            "python -m models.lofo: error: give deepfake-train arguments after --", file=sys.stderr
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    runs = [(AT_ONCE_DIR, args.families)] if args.at_once else [(f, [f]) for f in args.families]
    for k, (name, left_out) in enumerate(runs, 1):
        run_dir = args.out / name
        what = ", ".join(left_out)
        if (run_dir / "frame_eval.json").is_file():
            print(f"[lofo] without {what}: done already", file=sys.stderr)
            continue
        print(
            f"[lofo {time.monotonic() - t0:6.0f}s] {k}/{len(runs)}: without {what}",
            file=sys.stderr,
            flush=True,
        )
        cmd = [sys.executable, "-m", "models", *train_args, "--out", str(run_dir)]
        for f in left_out:
            cmd += ["--exclude-family", f]
        r = subprocess.run([*cmd, "--encoder-only"])
        if r.returncode != 0:
            print(
                f"python -m models.lofo: error: the run without {what} failed ({r.returncode})",
                file=sys.stderr,
            )
            return 1
    command = "Command: python -m models.lofo " + " ".join(sys.argv[1:] if argv is None else argv)
    scoring = (
        "scored by the frame classifier (mean of up to 16 frames per clip) against the held-out "
        "real clips. "
    )
    runs_were = (
        "One fine-tune without any family's fakes (every family left out at once: clips, the "
        "DFDC still pairs and DFDC still images); the same identity split; each family's fakes "
        if args.at_once
        else "Each row is a separate fine-tune without that family's fakes (clips and, for DFDC, "
        "the still pairs and DFDC still images); the same identity split; the family's fakes "
    )
    how = runs_were + "(train and held-out side alike, none trained on) " + scoring + command
    result = summarise(args.out, args.families, how, args.at_once)
    (args.out / "lofo.json").write_text(json.dumps(result, indent=1))
    for f, r in result["families"].items():
        print(f"[lofo] without {f}: its {r['fakes']} fakes AUC {r['auc']:.3f}", file=sys.stderr)
    if result["mean_auc"] is not None:
        print(
            f"[lofo] mean AUC {result['mean_auc']:.3f}, min {result['min_auc']:.3f}",
            file=sys.stderr,
        )
    if args.bundle:
        from models.evaluation import rewrite_model_card

        (args.bundle / "lofo.json").write_text(json.dumps(result, indent=1))
        rewrite_model_card(args.bundle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
