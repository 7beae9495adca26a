"""CSIM: insightface's ArcFace iresnet layout and loading, crop preparation and matched cosines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lipsync.errors import WeightsError
from lipsync.eval.identity import arcface_embeddings, arcface_input, matched_cosine
from lipsync.eval.networks.arcface import (
    ARCFACE_EMBED_DIM,
    IRESNET_LAYERS,
    IResNet,
    arcface_variant,
    load_arcface,
    save_random_arcface,
)

from conftest import centre_crops

# insightface arcface_torch backbones/iresnet.py: blocks per stage of iresnet18 ... iresnet200.
REFERENCE_LAYERS = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
# Key shapes of an iresnet, written out independently of the model code.
SAMPLE_SHAPES = {
    "conv1.weight": (64, 3, 3, 3),
    "prelu.weight": (64,),
    "layer1.0.bn1.weight": (64,),
    "layer1.0.conv2.weight": (64, 64, 3, 3),
    "layer1.0.downsample.0.weight": (64, 64, 1, 1),
    "layer2.0.conv1.weight": (128, 64, 3, 3),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer2.0.downsample.1.running_var": (128,),
    "layer3.1.prelu.weight": (256,),
    "layer4.1.bn3.bias": (512,),
    "bn2.running_mean": (512,),
    "fc.weight": (512, 512 * 7 * 7),
    "fc.bias": (512,),
    "features.running_var": (512,),
}
CROPS = 24


def _meta_state(variant: str) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return IResNet(IRESNET_LAYERS[variant]).state_dict()


def test_iresnet_has_the_layout_of_arcface_torch() -> None:
    assert IRESNET_LAYERS == REFERENCE_LAYERS
    state = _meta_state("r18")
    for key, shape in SAMPLE_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    downsampled = {key.split(".downsample")[0] for key in state if ".downsample." in key}
    assert downsampled == {"layer1.0", "layer2.0", "layer3.0", "layer4.0"}
    assert not any(key.endswith(("conv1.bias", "conv2.bias")) for key in state)
    with torch.device("meta"):
        model = IResNet(IRESNET_LAYERS["r18"])
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    assert len(norms) == 1 + 4 + 3 * 8 + 1 + 1  # stem, 4 downsamples, 3 in each of 8 blocks, bn2, features
    assert all(m.eps == 1e-5 for m in norms) and isinstance(norms[-1], torch.nn.BatchNorm1d)


@pytest.mark.parametrize("variant", sorted(REFERENCE_LAYERS))
def test_variant_is_read_from_the_keys(variant: str) -> None:
    assert arcface_variant(_meta_state(variant), Path("backbone.pth")) == variant


def test_unknown_block_counts_are_named() -> None:
    state = {k: v for k, v in _meta_state("r34").items() if not k.startswith("layer3.5.")}
    with pytest.raises(WeightsError, match=r"\(3, 4, 5, 3\)"):
        arcface_variant(state, Path("backbone.pth"))


@pytest.fixture(scope="module")
def random_arcface(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_arcface(tmp_path_factory.mktemp("arcface") / "backbone.pth", "r18", seed=0)


def test_random_r18_loads_as_r18(random_arcface: Path) -> None:
    model, variant = load_arcface(random_arcface)
    assert variant == "r18" and not model.training
    saved = torch.load(random_arcface, map_location="cpu", weights_only=True)
    assert {k: tuple(v.shape) for k, v in saved.items()} == {
        k: tuple(v.shape) for k, v in _meta_state("r18").items()
    }


def test_ddp_prefix_and_nested_state_dict_are_accepted(random_arcface: Path, tmp_path: Path) -> None:
    state = torch.load(random_arcface, map_location="cpu", weights_only=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pth")
    model, variant = load_arcface(tmp_path / "ddp.pth")
    assert variant == "r18"
    torch.testing.assert_close(model.fc.weight, state["fc.weight"])


def test_wrong_layout_is_refused_naming_keys(random_arcface: Path, tmp_path: Path) -> None:
    state = torch.load(random_arcface, map_location="cpu", weights_only=True)
    del state["layer2.1.bn2.running_mean"]
    state["head.kernel"] = torch.zeros(512, 10)
    state["fc.weight"] = torch.zeros(512, 512 * 4 * 4)
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(WeightsError) as caught:
        load_arcface(tmp_path / "wrong.pth")
    message = str(caught.value)
    assert "layer2.1.bn2.running_mean" in message and "head.kernel" in message and "fc.weight" in message
    with pytest.raises(WeightsError, match=r"absent\.pth do not exist.*backbone\.pth"):
        load_arcface(tmp_path / "absent.pth")


def test_arcface_input_resizes_and_normalises() -> None:
    red = np.zeros((200, 160, 3), np.uint8)
    red[..., 0] = 255
    small = np.full((50, 50, 3), 51, np.uint8)
    x = arcface_input([red, small])
    assert x.shape == (2, 3, 112, 112) and x.dtype == torch.float32
    assert torch.all(x[0, 0] == 1) and torch.all(x[0, 1:] == -1)  # RGB order kept, [0, 255] -> [-1, 1]
    torch.testing.assert_close(x[1], torch.full((3, 112, 112), (51 / 255 - 0.5) / 0.5))


def test_matched_cosine_is_the_diagonal() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    b = np.array([[2.0, 0.0], [0.0, -1.0], [4.0, -3.0]])
    np.testing.assert_allclose(matched_cosine(a, b), [1.0, -1.0, 0.0], atol=1e-12)
    with pytest.raises(ValueError):
        matched_cosine(a, b[:2])


@pytest.fixture(scope="module")
def face_crops() -> np.ndarray:
    """(24, S, S, 3) centre crops of every fourth frame of talk_b.mp4 (some head motion between them)."""
    return centre_crops("talk_b.mp4", CROPS, step=4)


def test_csim_of_a_sequence_with_itself_is_one_and_lower_when_shuffled(
    random_arcface: Path, face_crops: np.ndarray
) -> None:
    model, _ = load_arcface(random_arcface)
    embeddings = arcface_embeddings(model, face_crops, batch_size=10)
    assert embeddings.shape == (CROPS, ARCFACE_EMBED_DIM)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-9)
    again = arcface_embeddings(model, face_crops, batch_size=CROPS)
    np.testing.assert_allclose(matched_cosine(embeddings, again), 1.0, atol=1e-5)

    order = np.random.default_rng(0).permutation(CROPS)  # row i against a different frame: a derangement
    shuffled_csim = matched_cosine(embeddings[order], embeddings[np.roll(order, 1)])
    assert shuffled_csim.max() < 1.0 - 1e-4 and shuffled_csim.mean() < 1.0 - 1e-2
