"""The CNN-GRU: a frame encoder (one embedding per face crop) and a masked GRU sequence head.

They are two models on purpose: the server encodes each crop once and reruns only the head over a
rolling window of cached embeddings. `build_sequence_model` joins them for end-to-end training.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from models.backbones import get_backbone
from models.config import ModelConfig

ENCODER_INPUT = "crops"
HEAD_EMBEDDINGS = "embeddings"
HEAD_MASK = "mask"
# The frame classifier's output layer, in the fine-tune's classifier and in a frame-mean head.
FRAME_LAYER = "frame_fake"


def build_encoder(cfg: ModelConfig) -> keras.Model:
    """uint8 RGB crops (batch, size, size, 3) -> embeddings (batch, feature_dim).

    The normalisation is inside the graph, so callers pass raw uint8 pixels.
    """
    bb = get_backbone(cfg.backbone)
    inp = keras.Input((cfg.input_size, cfg.input_size, 3), dtype="uint8", name=ENCODER_INPUT)
    x = layers.Rescaling(1.0 / bb.std, offset=-bb.mean / bb.std, name="normalize")(inp)
    x = bb.features(x, cfg.weights, cfg.input_size)
    if cfg.feature_layer:
        names = {layer.name for layer in keras.Model(inp, x).layers}
        if cfg.feature_layer not in names:
            raise ValueError(f"backbone {cfg.backbone} has no layer {cfg.feature_layer!r}")
        x = keras.Model(inp, x).get_layer(cfg.feature_layer).output
    out = layers.GlobalAveragePooling2D(name="embedding")(x)
    model = keras.Model(inp, out, name=f"encoder_{cfg.backbone}")
    if bb.post_build is not None:
        bb.post_build(model, cfg.weights)
    return model


def build_head(cfg: ModelConfig, feature_dim: int) -> keras.Model:
    """(embeddings (batch, window, dim), mask (batch, window) bool) -> p_fake (batch, 1).

    Masked steps are skipped by every GRU: a window whose first k steps are valid gives the same
    probability as the k-step sequence alone. The server keeps valid steps first while a window fills.
    """
    emb = keras.Input((cfg.window, feature_dim), name=HEAD_EMBEDDINGS)
    mask = keras.Input((cfg.window,), dtype="bool", name=HEAD_MASK)
    if cfg.head == "frame_mean":
        # The frame classifier of the encoder fine-tune on every step, averaged over valid steps.
        p = layers.Dense(1, activation="sigmoid", name=FRAME_LAYER)(emb)
        return keras.Model([emb, mask], MaskedMean(name="p_fake")([p, mask]), name="head")
    # Per-dimension standardisation, set from the training embeddings (identity until then).
    x = layers.Normalization(axis=-1, name="embedding_norm")(emb)
    if cfg.input_dropout > 0:
        x = layers.Dropout(cfg.input_dropout, name="input_dropout")(x)
    reg = keras.regularizers.l2(cfg.l2) if cfg.l2 > 0 else None
    for i, units in enumerate(cfg.gru_units):
        last = i == len(cfg.gru_units) - 1
        x = layers.GRU(units, return_sequences=not last, kernel_regularizer=reg, name=f"gru{i}")(
            x, mask=mask
        )
    x = layers.Dropout(cfg.dropout, name="dropout")(x)
    x = layers.Dense(cfg.dense_units, activation="relu", name="dense")(x)
    out = layers.Dense(1, activation="sigmoid", name="p_fake")(x)
    return keras.Model([emb, mask], out, name="head")


@keras.saving.register_keras_serializable(package="deepfake")
class MaskedMean(layers.Layer):  # type: ignore[misc]
    """[(batch, window, 1) values, (batch, window) bool mask] -> (batch, 1): the mean over the
    valid steps (0 for a window with none)."""

    def call(self, inputs: Any) -> Any:
        from keras import ops

        values, mask = inputs
        m = ops.expand_dims(ops.cast(mask, values.dtype), -1)
        return ops.sum(values * m, axis=1) / ops.maximum(ops.sum(m, axis=1), 1.0)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (input_shape[0][0], 1)


def set_embedding_norm(head: keras.Model, mean: Any, variance: Any) -> None:
    """Store the training embeddings' per-dimension mean and variance in the head."""
    import numpy as np

    layer = head.get_layer("embedding_norm")
    m = np.asarray(mean, "float32")
    v = np.maximum(np.asarray(variance, "float32"), 1e-6)
    shapes = [w.shape for w in layer.weights]
    layer.set_weights([m.reshape(shapes[0]), v.reshape(shapes[1]), *layer.get_weights()[2:]])
    layer.finalize_state()


def feature_dim_of(encoder: keras.Model) -> int:
    return int(encoder.output.shape[-1])
