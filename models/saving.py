"""A trained model on disk: the directory `deepfake-train` writes and `deepfake-export` reads.

MODEL_DIR/config.json    ModelConfig + feature_dim
MODEL_DIR/encoder.keras  uint8 crops -> embeddings
MODEL_DIR/head.keras     (embeddings, mask) -> p_fake
MODEL_DIR/training.json  optional: data, date, metrics (copied into the bundle manifest)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from models.cnn_gru import build_encoder, build_head, feature_dim_of
from models.config import ModelConfig


@dataclass
class KerasModel:
    config: ModelConfig
    encoder: keras.Model
    head: keras.Model
    training: dict[str, Any] | None = None

    @property
    def feature_dim(self) -> int:
        return feature_dim_of(self.encoder)


def new_model(cfg: ModelConfig) -> KerasModel:
    encoder = build_encoder(cfg)
    return KerasModel(cfg, encoder, build_head(cfg, feature_dim_of(encoder)))


def save_model_dir(model: KerasModel, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.config.save(path / "config.json")
    model.encoder.save(path / "encoder.keras")
    model.head.save(path / "head.keras")
    if model.training is not None:
        (path / "training.json").write_text(json.dumps(model.training, indent=2) + "\n")
    return path


def load_model_dir(path: Path) -> KerasModel:
    path = Path(path)
    for name in ("config.json", "encoder.keras", "head.keras"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} is not a model directory: {name} is missing")
    cfg = ModelConfig.load(path / "config.json")
    encoder = keras.saving.load_model(path / "encoder.keras", compile=False)
    head = keras.saving.load_model(path / "head.keras", compile=False)
    training = None
    if (path / "training.json").is_file():
        training = json.loads((path / "training.json").read_text())
    return KerasModel(cfg, encoder, head, training)
