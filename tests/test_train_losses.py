"""The generator's training losses: VGG19 layout and loading, perceptual loss, discriminator, mouth crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lipsync.errors import WeightsError
from lipsync.train.config import ConfigError, DiscriminatorConfig, PerceptualConfig
from lipsync.train.losses import (
    GanTerms,
    ImagePyramid,
    PatchDiscriminator,
    PerceptualLoss,
    UntrainedPerceptualWarning,
    VGG19Features,
    crop_mouths,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    l1_loss,
    load_vgg19_features,
    mouth_boxes,
    pyramid_kernel_size,
    pyramid_sigma,
)

# torchvision's vgg19 `features` convolutions: sequential index -> (out, in) channels.
TORCHVISION_VGG19_CONVS = {
    0: (64, 3), 2: (64, 64),
    5: (128, 64), 7: (128, 128),
    10: (256, 128), 12: (256, 256), 14: (256, 256), 16: (256, 256),
    19: (512, 256), 21: (512, 512), 23: (512, 512), 25: (512, 512),
    28: (512, 512), 30: (512, 512), 32: (512, 512), 34: (512, 512),
}  # fmt: skip
TINY_VGG = PerceptualConfig(width_divisor=16, input_size=128)
TINY_DISC = DiscriminatorConfig(block_expansion=4, num_blocks=2, max_features=8)


def expected_vgg_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for index, (out_c, in_c) in TORCHVISION_VGG19_CONVS.items():
        shapes[f"features.{index}.weight"] = (out_c, in_c, 3, 3)
        shapes[f"features.{index}.bias"] = (out_c,)
    return shapes


def write_vgg_file(
    path: Path, drop: str | None = None, reshape: str | None = None, legacy: bool = False
) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=generator) for k, shape in expected_vgg_shapes().items()}
    if drop is not None:
        del state[drop]
    if reshape is not None:
        state[reshape] = torch.zeros(7)
    state["classifier.0.weight"] = torch.zeros(2, 3)  # tiny stand-ins for the ignored head
    state["classifier.6.bias"] = torch.zeros(2)
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return state


def tiny_perceptual() -> PerceptualLoss:
    torch.manual_seed(0)
    with pytest.warns(UntrainedPerceptualWarning, match="UNTRAINED"):
        return PerceptualLoss(TINY_VGG)


# --- VGG19 ------------------------------------------------------------------------------------------------
def test_vgg_key_layout_matches_torchvision() -> None:
    with torch.device("meta"):
        model = VGG19Features()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == 32
    assert shapes == expected_vgg_shapes()


@pytest.mark.parametrize("legacy", [True, False])  # torchvision's 2017 file is in the legacy format
def test_vgg_load_equals_file_and_ignores_classifier(tmp_path: Path, legacy: bool) -> None:
    path = tmp_path / "vgg19.pth"
    state = write_vgg_file(path, legacy=legacy)
    model = load_vgg19_features(path)
    loaded = model.state_dict()
    assert set(loaded) == set(expected_vgg_shapes())
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"drop": "features.21.weight"}, "features.21.weight"),
        ({"reshape": "features.5.bias"}, "features.5.bias"),
    ],
)
def test_vgg_load_names_bad_keys(tmp_path: Path, kwargs: dict[str, str], named: str) -> None:
    path = tmp_path / "vgg19.pth"
    write_vgg_file(path, **kwargs)
    with pytest.raises(WeightsError, match=named) as info:
        load_vgg19_features(path)
    assert "vgg19-dcbb9e9d.pth" in info.value.fix


def test_vgg_load_rejects_stray_keys_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "vgg19.pth"
    state = write_vgg_file(path)
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"unexpected \(1\): extra.weight"):
        load_vgg19_features(path)
    with pytest.raises(WeightsError, match="do not exist"):
        load_vgg19_features(tmp_path / "absent.pth")


def test_vgg_outputs_five_relu_slices() -> None:
    model = VGG19Features(width_divisor=16)
    outputs = model(torch.randn(1, 3, 32, 32))
    assert [tuple(o.shape) for o in outputs] == [
        (1, 4, 32, 32),
        (1, 8, 16, 16),
        (1, 16, 8, 8),
        (1, 32, 4, 4),
        (1, 32, 2, 2),
    ]
    assert all(bool((o >= 0).all()) for o in outputs)  # ReLU outputs


# --- Pyramid and perceptual loss ---------------------------------------------------------------------------
def test_pyramid_kernel_formula() -> None:
    for scale, sigma, size in [(1.0, 0.0, 1), (0.5, 0.5, 5), (0.25, 1.5, 13), (0.125, 3.5, 29)]:
        assert pyramid_sigma(scale) == sigma
        assert pyramid_kernel_size(scale) == size
    pyramid = ImagePyramid((1.0, 0.5, 0.25, 0.125))
    assert [pyramid.kernel(i).numel() for i in range(4)] == [1, 5, 13, 29]
    assert all(torch.isclose(pyramid.kernel(i).sum(), torch.tensor(1.0)) for i in range(4))
    x = torch.full((2, 3, 64, 64), 0.3)
    levels = pyramid(x)
    assert [tuple(level.shape[-2:]) for level in levels] == [(64, 64), (32, 32), (16, 16), (8, 8)]
    assert levels[0] is x
    assert all(torch.allclose(level, torch.tensor(0.3)) for level in levels)  # edges replicated, not zeroed
    with pytest.raises(ConfigError, match=r"0\.3"):
        ImagePyramid((0.3,))


def test_perceptual_zero_monotonic_and_gradients() -> None:
    loss_fn = tiny_perceptual()
    generator = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, 256, 256, generator=generator) * 2 - 1
    noise = torch.randn(target.shape, generator=generator)
    assert loss_fn(target.clone(), target).item() == 0.0
    small = loss_fn(target + 0.05 * noise, target).item()
    large = loss_fn(target + 0.3 * noise, target).item()
    assert 0 < small < large
    prediction = (target + 0.1 * noise).requires_grad_(True)
    loss_fn(prediction, target).backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in loss_fn.vgg.parameters())
    assert list(loss_fn.parameters()) == list(loss_fn.vgg.parameters())  # nothing trainable hides in it
    loss_fn.train()
    assert not loss_fn.vgg.training


def test_perceptual_config_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="layer_weights"):
        PerceptualLoss(PerceptualConfig(width_divisor=16, layer_weights=(1.0, 1.0)))
    with pytest.raises(ConfigError, match="width_divisor"):
        PerceptualLoss(PerceptualConfig(width_divisor=16, vgg19_weights=tmp_path / "vgg19.pth"))
    with pytest.raises(ConfigError, match="16 px"):
        PerceptualLoss(PerceptualConfig(width_divisor=16, input_size=64, scales=(1.0, 0.125)))


def test_perceptual_loads_file(tmp_path: Path) -> None:
    path = tmp_path / "vgg19.pth"
    state = write_vgg_file(path)
    loss_fn = PerceptualLoss(PerceptualConfig(vgg19_weights=path, input_size=32, scales=(1.0, 0.5)))
    assert not loss_fn.untrained
    assert torch.equal(loss_fn.vgg.state_dict()["features.34.weight"], state["features.34.weight"])


# --- Discriminator and LSGAN ------------------------------------------------------------------------------
def test_discriminator_shapes_default() -> None:
    with torch.device("meta"):
        disc = PatchDiscriminator(DiscriminatorConfig())
        features, prediction = disc(torch.zeros(2, 3, 256, 256))
    assert [tuple(f.shape) for f in features] == [
        (2, 64, 126, 126),
        (2, 128, 61, 61),
        (2, 256, 29, 29),
        (2, 512, 26, 26),
    ]
    assert tuple(prediction.shape) == (2, 1, 26, 26)


def test_discriminator_tiny_and_spectral_norm() -> None:
    torch.manual_seed(0)
    disc = PatchDiscriminator(TINY_DISC)
    features, prediction = disc(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in features] == [(2, 8, 30, 30), (2, 8, 27, 27)]
    assert tuple(prediction.shape) == (2, 1, 27, 27)
    convs = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3
    assert all(torch.nn.utils.parametrize.is_parametrized(c, "weight") for c in convs)
    assert isinstance(disc.blocks[0].norm, torch.nn.Identity)
    assert isinstance(disc.blocks[1].norm, torch.nn.InstanceNorm2d) and disc.blocks[1].norm.affine
    assert isinstance(disc.blocks[1].pool, torch.nn.Identity)


def test_lsgan_values() -> None:
    ones, zeros = torch.ones(2, 1, 5, 5), torch.zeros(2, 1, 5, 5)
    assert discriminator_loss(ones, zeros).item() == 0.0
    assert generator_adversarial_loss(zeros).item() == 1.0
    assert generator_adversarial_loss(ones).item() == 0.0
    assert discriminator_loss(zeros, ones).item() == 2.0
    assert discriminator_loss(torch.full_like(ones, 0.5), torch.full_like(ones, 0.5)).item() == 0.5


def test_feature_matching() -> None:
    feats = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)]
    assert feature_matching_loss(feats, [f.clone() for f in feats], (1.0, 1.0)).item() == 0.0
    shifted = [feats[0] + 1, feats[1] + 2]
    assert feature_matching_loss(feats, shifted, (1.0, 0.5)).item() == pytest.approx(2.0)
    with pytest.raises(ConfigError, match=r"one loss\.feature_matching weight"):
        feature_matching_loss(feats, feats, (1.0,))


def test_gan_terms_route_gradients() -> None:
    torch.manual_seed(0)
    disc = PatchDiscriminator(TINY_DISC)
    terms = GanTerms(disc, (1.0, 1.0))
    real = torch.rand(2, 3, 64, 64) * 2 - 1
    fake = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    g = terms.generator_losses(real, fake)
    (g.adversarial + g.feature_matching).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None and p.requires_grad for p in disc.parameters())
    fake.grad = None
    terms.discriminator_loss(real, fake).backward()
    assert fake.grad is None
    assert all(p.grad is not None for p in disc.parameters())


# --- Mouth boxes and crops ---------------------------------------------------------------------------------
def lip_landmarks(centre: tuple[float, float], half_width: float, half_height: float) -> np.ndarray:
    points = np.full((68, 2), 128.0)
    angles = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    points[48:68, 0] = centre[0] + half_width * np.cos(angles)
    points[48:68, 1] = centre[1] + half_height * np.sin(angles)
    return points


def test_mouth_boxes_shape_and_containment() -> None:
    padding = 10
    landmarks = np.stack(
        [lip_landmarks((128.3, 180.7), 30.2, 8.0), lip_landmarks((120.0, 170.0), 20.0, 25.0)]  # wide, open
    )
    boxes = mouth_boxes(torch.from_numpy(landmarks), padding)
    assert boxes.shape == (2, 4) and boxes.dtype == np.int64
    for box, points in zip(boxes, landmarks, strict=True):
        x1, y1, x2, y2 = box.tolist()
        assert x2 - x1 == 2 * (y2 - y1)
        lips = points[48:68]
        assert x1 <= lips[:, 0].min() - padding and lips[:, 0].max() + padding < x2
        assert y1 <= lips[:, 1].min() - padding and lips[:, 1].max() + padding < y2
        centre = lips.min(axis=0) / 2 + lips.max(axis=0) / 2
        assert abs((x1 + x2) / 2 - centre[0]) <= 1 and abs((y1 + y2) / 2 - centre[1]) <= 1
    # A normal mouth gives the reference's box: padded lip width (+ rounding slack), half as tall.
    assert boxes[0, 2] - boxes[0, 0] <= 2 * 30.2 + 2 * padding + 6


def test_mouth_boxes_clipped_at_edges() -> None:
    landmarks = np.stack([lip_landmarks((5.0, 250.0), 30.0, 8.0), lip_landmarks((300.0, -20.0), 5.0, 2.0)])
    boxes = mouth_boxes(landmarks, padding=10)
    assert (boxes >= 0).all() and (boxes <= 256).all()
    assert boxes[0, 0] == 0 and boxes[0, 3] == 256
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    crops = crop_mouths(torch.zeros(2, 3, 256, 256), boxes, size=32)
    assert crops.shape == (2, 3, 32, 32)


def test_crop_mouths_backprops_and_resizes() -> None:
    images = torch.randn(2, 3, 256, 256, requires_grad=True)
    boxes = np.array([[100, 150, 180, 190], [0, 0, 256, 128]])
    crops = crop_mouths(images, boxes)
    assert crops.shape == (2, 3, 256, 256)
    crops.sum().backward()
    assert images.grad is not None
    assert images.grad[0, :, 150:190, 100:180].abs().sum() > 0
    assert images.grad[0, :, :150].abs().sum() == 0  # outside the box: no gradient
    with pytest.raises(ValueError, match="not inside"):
        crop_mouths(images, np.array([[0, 0, 300, 10], [0, 0, 10, 10]]))


def test_l1_loss() -> None:
    assert l1_loss(torch.zeros(2, 3), torch.full((2, 3), -0.5)).item() == 0.5


@pytest.mark.parametrize("config_name", ["stabilized-silent-tiny", "renderer-tiny"])
def test_the_untrained_vgg_warning_names_the_key_of_the_trainers_config(config_name: str) -> None:
    from lipsync.train.config import RendererTrainConfig, StabilizedTrainConfig, load_config
    from lipsync.train.renderer_losses import vgg_losses
    from lipsync.train.stabilized_config import loss_weights
    from lipsync.train.stabilized_losses import GeneratorLosses

    path = Path(__file__).resolve().parents[1] / "configs" / "train" / f"{config_name}.yaml"
    with pytest.warns(UntrainedPerceptualWarning, match=r"set loss\.vgg19_weights to"):
        if config_name.startswith("stabilized"):
            stabilized = load_config(path, StabilizedTrainConfig)
            assert stabilized.loss.vgg19_weights is None
            GeneratorLosses(stabilized, loss_weights(stabilized), None)
        else:
            renderer = load_config(path, RendererTrainConfig)
            assert renderer.loss.vgg19_weights is None
            vgg_losses(renderer)
