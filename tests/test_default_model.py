"""The bundled default model: it loads and serves, and its model card's held-out numbers are
reproduced by scanning the held-out videos from ../shared/data (the folders it was trained on)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stream_server.settings import DEFAULT_BUNDLE

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def test_default_bundle_validates_and_has_a_model_card() -> None:
    from export.validate import validate_bundle

    report = validate_bundle(DEFAULT_BUNDLE)
    assert report["model"].startswith("deepfake-cnn-gru")
    card = (DEFAULT_BUNDLE / "MODEL_CARD.md").read_text()
    m = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
    ev = m["training"]["evaluation"]
    assert f"AUC **{ev['auc']:.3f}**" in card
    assert "## Reproduce" in card and "deepfake-train --data" in card
    total = sum(f["bytes"] for f in m["files"].values())
    assert total < 30 * 1024 * 1024


@pytest.mark.shared_data
@pytest.mark.slow
def test_default_model_held_out_metrics_are_reproducible() -> None:
    from stream_server.evaluate import compute
    from stream_server.labels import read_labels
    from stream_server.scan import Scanner

    m = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
    ev = m["training"]["evaluation"]
    where: dict[str, Path] = {}
    labels: dict[str, int] = {}
    for d in m["training"]["data"]:  # the folders it was trained on, found under ../shared/data
        folder = SHARED / Path(d).name
        for name, label in read_labels(folder).items():
            where[name], labels[name] = folder / name, label
    files = ev["held_out_files"]
    assert len(files) >= 30
    # Held out means held out: none of these was a training video.
    assert m["training"]["videos"]["val"] == len(files)
    ys, ps, names = [], [], []
    with Scanner(DEFAULT_BUNDLE, providers="cpu") as scanner:
        for name in files:
            r = scanner.scan(where[name])
            if r.p_fake is not None:
                ys.append(labels[name])
                ps.append(r.p_fake)
                names.append(name)
    got = compute(ys, ps, m["threshold"])
    assert got.n == ev["scored"]
    assert got.auc == pytest.approx(ev["auc"], abs=0.02)  # the model card tells the truth
    assert got.accuracy == pytest.approx(ev["accuracy"], abs=0.05)
    assert got.auc > 0.5  # better than chance on people it never saw (the card states how much)
    # The per-family table of the card is reproduced too.
    for fam, row in ev.get("by_family", {}).items():
        if fam == "(real)":
            continue
        fk = [p for p, n in zip(ps, names, strict=True) if _family(where[n], n) == fam]
        assert len(fk) == row["fakes"]
        assert sum(fk) / len(fk) == pytest.approx(row["mean_p_fake"], abs=0.03)


def _family(path: Path, name: str) -> str | None:
    from models.finetune import family_of

    meta = json.loads((path.parent / "metadata.json").read_text())[name]
    return family_of(meta.get("generator"), int(meta["label"] == "FAKE"))
