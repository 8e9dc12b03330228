"""The bundled default model: it loads and serves, and its model card's held-out numbers are
reproduced by scanning the held-out videos from ../shared/data/dev."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stream_server.settings import DEFAULT_BUNDLE

SHARED_DEV = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "dev"


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
    labels = read_labels(SHARED_DEV)
    files = ev["held_out_files"]
    assert len(files) >= 30
    # Held out means held out: none of these was a training video.
    assert m["training"]["videos"]["val"] == len(files)
    ys, ps = [], []
    with Scanner(DEFAULT_BUNDLE, providers="cpu") as scanner:
        for name in files:
            r = scanner.scan(SHARED_DEV / name)
            if r.p_fake is not None:
                ys.append(labels[name])
                ps.append(r.p_fake)
    got = compute(ys, ps, m["threshold"])
    assert got.n == ev["scored"]
    assert got.auc == pytest.approx(ev["auc"], abs=0.02)  # the model card tells the truth
    assert got.auc > 0.5  # better than chance on people it never saw (the card states how much)
