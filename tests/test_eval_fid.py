"""FID: the Fréchet distance, running feature statistics, and pytorch-fid's InceptionV3 layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lipsync.errors import WeightsError
from lipsync.eval.fid import FeatureStats, fid_between, frechet_distance, inception_features
from lipsync.eval.networks.inception import (
    FID_FEATURE_DIM,
    FID_WEIGHTS_FILE,
    FidInceptionV3,
    load_fid_inception,
    save_random_fid_inception,
)

from conftest import centre_crops

# torchvision documents 27,161,264 parameters for inception_v3 (1000 classes, with AuxLogits). Without
# AuxLogits (conv0 768*128 + BN 2*128, conv1 128*768*5*5 + BN 2*768, fc 768*1000 + 1000 = 3,326,696) and
# with 1008 classes (+ 8 * 2048 + 8 = 16,392) that is pytorch-fid's network:
TORCHVISION_INCEPTION_V3_PARAMS = 27_161_264
AUX_LOGITS_PARAMS = 768 * 128 + 2 * 128 + 128 * 768 * 5 * 5 + 2 * 768 + 768 * 1000 + 1000
EXTRA_CLASSES_PARAMS = 8 * 2048 + 8
FID_INCEPTION_PARAMS = TORCHVISION_INCEPTION_V3_PARAMS - AUX_LOGITS_PARAMS + EXTRA_CLASSES_PARAMS
TOP_LEVEL_MODULES = {
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    *(f"Mixed_{name}" for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c")),
    "fc",
}
# A few key shapes of torchvision's Inception3, written out independently of the model code.
SAMPLE_SHAPES = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_4a_3x3.bn.running_var": (192,),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7dbl_2.conv.weight": (128, 128, 7, 1),
    "Mixed_6e.branch7x7_2.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch3x3_2b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}
SELF_FID_TOLERANCE = 1e-6  # relative to the trace of the covariance
CROPS = 24
NOISE_SIGMAS = (8, 24, 64)
# The end-to-end FIDs use all 2048 dims of the real features
# (rank-deficient with 24 samples, as FIDs of one clip are).
TEST_FID_DIMS = FID_FEATURE_DIM  # all 2048: the eigen route takes ~1.5 s per FID


def _stats(features: np.ndarray) -> FeatureStats:
    stats = FeatureStats()
    stats.add(features)
    return stats


# --- Fréchet distance and statistics ------------------------------------------------------------------


def test_frechet_distance_matches_closed_form_for_diagonal_covariances() -> None:
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_rejects_a_clearly_complex_root() -> None:
    # Not a covariance: the product has a negative eigenvalue, so its root is imaginary.
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([1.0, -4.0]), method="sqrtm")


@pytest.mark.parametrize("samples", [20, 300])  # fewer samples than dims (singular), and more
def test_eigen_route_equals_pytorch_fid_sqrtm_recipe(samples: int) -> None:
    rng = np.random.default_rng(samples)
    a = _stats(rng.standard_normal((samples, 64)) @ rng.standard_normal((64, 64)))
    b = _stats(rng.standard_normal((samples, 64)) @ rng.standard_normal((64, 64)) + 0.5)
    moments = (a.mean(), a.covariance(), b.mean(), b.covariance())
    eigen = frechet_distance(*moments, method="eigen")
    assert eigen == pytest.approx(frechet_distance(*moments, method="sqrtm"), rel=1e-6)
    assert eigen > 0


def test_synthetic_fid_is_zero_for_a_set_and_grows_with_noise() -> None:
    rng = np.random.default_rng(0)
    mixing = rng.standard_normal((32, 32))
    features = rng.standard_normal((400, 32)) @ mixing + 3.0
    base = _stats(features)
    assert abs(fid_between(base, base)) < SELF_FID_TOLERANCE * np.trace(base.covariance())
    fids = [fid_between(base, _stats(features + rng.normal(0, std, features.shape))) for std in (0.3, 1, 3)]
    assert 0 < fids[0] < fids[1] < fids[2]


def test_feature_stats_equal_numpy_in_uneven_chunks() -> None:
    rng = np.random.default_rng(1)
    features = rng.standard_normal((101, 16)) * 0.01 + 1000.0  # a large mean: no cancellation allowed
    stats = FeatureStats()
    for start, stop in ((0, 1), (1, 8), (8, 8), (8, 58), (58, 101)):
        stats.add(features[start:stop])
    assert stats.count == 101 and stats.dim == 16
    np.testing.assert_allclose(stats.mean(), features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance(), np.cov(features, rowvar=False), rtol=1e-7, atol=1e-12)


def test_feature_stats_and_fid_refuse_bad_input() -> None:
    stats = _stats(np.ones((1, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        fid_between(stats, _stats(np.random.default_rng(0).standard_normal((5, 4))))
    with pytest.raises(ValueError, match="dims"):
        stats.add(np.ones((2, 5)))
    with pytest.raises(ValueError, match="at least 2"):
        stats.covariance()


# --- InceptionV3 layout and loading -------------------------------------------------------------------


def test_fid_inception_has_the_layout_of_the_released_file() -> None:
    with torch.device("meta"):
        model = FidInceptionV3()
    assert sum(p.numel() for p in model.parameters()) == FID_INCEPTION_PARAMS == 23_850_960
    state = model.state_dict()
    assert {key.split(".")[0] for key in state} == TOP_LEVEL_MODULES
    assert not any("AuxLogits" in key for key in state)
    for key, shape in SAMPLE_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 94 and all(m.eps == 0.001 for m in norms)
    assert not any(m.bias is not None for m in model.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_fid_inception(tmp_path_factory.mktemp("fid") / FID_WEIGHTS_FILE, seed=0)


def test_random_file_has_the_exact_layout(random_inception: Path) -> None:
    saved = torch.load(random_inception, map_location="cpu", weights_only=True)
    with torch.device("meta"):
        expected = FidInceptionV3().state_dict()
    assert {k: tuple(v.shape) for k, v in saved.items()} == {k: tuple(v.shape) for k, v in expected.items()}


def test_loading_is_strict(random_inception: Path, tmp_path: Path) -> None:
    state = torch.load(random_inception, map_location="cpu", weights_only=True)
    missing = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    del missing["Mixed_6c.branch7x7dbl_3.bn.running_var"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=r"missing \(1\): Mixed_6c\.branch7x7dbl_3\.bn\.running_var"):
        load_fid_inception(tmp_path / "missing.pth")  # absent BatchNorm counters alone are fine

    state["fc.weight"] = torch.zeros(1000, 2048)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match=r"wrong shape.*fc\.weight \(1000, 2048\)"):
        load_fid_inception(tmp_path / "shape.pth")

    with pytest.raises(WeightsError, match=FID_WEIGHTS_FILE.replace(".", r"\.")):
        load_fid_inception(tmp_path / "absent.pth")


def test_pool_branches_are_those_of_pytorch_fid(random_inception: Path) -> None:
    """A, C and E_1 average without the zero padding; Mixed_7c (E_2) takes a 3x3 stride-1 max pool."""
    model = load_fid_inception(random_inception)
    inputs: dict[str, torch.Tensor] = {}
    pooled: dict[str, torch.Tensor] = {}
    blocks = ("Mixed_5b", "Mixed_6e", "Mixed_7b", "Mixed_7c")
    for name in blocks:
        block = getattr(model, name)
        block.register_forward_pre_hook(lambda _m, args, name=name: inputs.__setitem__(name, args[0]))
        block.branch_pool.register_forward_pre_hook(
            lambda _m, args, name=name: pooled.__setitem__(name, args[0])
        )
    with torch.inference_mode():
        model(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    for name in blocks:
        block_input = inputs[name]
        if name == "Mixed_7c":
            expected = F.max_pool2d(block_input, 3, stride=1, padding=1)
        else:
            expected = F.avg_pool2d(block_input, 3, stride=1, padding=1, count_include_pad=False)
            padded_mean = F.avg_pool2d(block_input, 3, stride=1, padding=1, count_include_pad=True)
            assert not torch.allclose(pooled[name], padded_mean), name
        torch.testing.assert_close(pooled[name], expected, msg=name)


# --- End to end on real frames -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def face_crops() -> np.ndarray:
    """(24, S, S, 3) centre crops (half the frame) of the first frames of talk_b.mp4."""
    return centre_crops("talk_b.mp4", CROPS)


def test_fid_of_real_crops_is_zero_against_itself_and_grows_with_noise(
    random_inception: Path, face_crops: np.ndarray
) -> None:
    model = load_fid_inception(random_inception)
    assert not model.training
    features = inception_features(model, face_crops, batch_size=16)
    assert features.shape == (CROPS, FID_FEATURE_DIM) and features.dtype == np.float64
    assert np.isfinite(features).all() and features.std(axis=0).max() > 0

    base = _stats(features[:, :TEST_FID_DIMS])
    assert abs(fid_between(base, base)) < SELF_FID_TOLERANCE * np.trace(base.covariance())
    rng = np.random.default_rng(0)
    fids = []
    for sigma in NOISE_SIGMAS:
        noisy = np.clip(face_crops + rng.normal(0, sigma, face_crops.shape), 0, 255).astype(np.uint8)
        fids.append(fid_between(base, _stats(inception_features(model, noisy)[:, :TEST_FID_DIMS])))
    assert 0 < fids[0] < fids[1] < fids[2], fids
