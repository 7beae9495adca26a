"""LPIPS (AlexNet, v0.1) against a hand-written computation of its formula; LipLMD; both in `lipsync eval`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lipsync.cli.main import main
from lipsync.config import DubSettings, RuntimeSettings
from lipsync.errors import WeightsError
from lipsync.eval.landmark_metrics import lip_lmd, mean_over_faces
from lipsync.eval.lpips import lpips_distances, lpips_input
from lipsync.eval.networks.download import eval_files
from lipsync.eval.networks.lpips_net import (
    ALEXNET_FILE,
    LPIPS_LINEAR_FILE,
    load_lpips,
    package_linear_file,
    save_random_alexnet,
)
from lipsync.eval.networks.weights import EvalWeightFiles
from lipsync.eval.run import EvalOptions, evaluate
from lipsync.io.audio import load_audio
from lipsync.pipeline.dub import DubPipeline

from conftest import media, write_clip, write_wav

# torchvision's alexnet().features, written out independently of the model code: index -> (shape, stride,
# padding); max-pools (3, stride 2) follow features 1, 4 and 11.
ALEXNET_CONVS = {
    0: ((64, 3, 11, 11), 4, 2),
    3: ((192, 64, 5, 5), 1, 2),
    6: ((384, 192, 3, 3), 1, 1),
    8: ((256, 384, 3, 3), 1, 1),
    10: ((256, 256, 3, 3), 1, 1),
}
POOL_AFTER = {0, 3}  # the convolutions whose ReLU is followed by a max-pool before the next LPIPS layer
LPIPS_CHANNELS = (64, 192, 384, 256, 256)
SHIFT = np.array([-0.030, -0.088, -0.188])
SCALE = np.array([0.458, 0.448, 0.450])
EPS = 1e-10
TINY = (2, 3, 40, 48)  # images for the reference computation
CLIP_FRAMES = 12
SAMPLES_PER_FRAME = 640  # 16 kHz audio at 25 fps
OPTIONS = EvalOptions(device="cpu", progress=False)


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(AlexNet checkpoint in torchvision's keys, lpips v0.1 linear layers in the package's keys)."""
    folder = tmp_path_factory.mktemp("lpips-weights")
    generator = torch.Generator().manual_seed(3)
    backbone: dict[str, torch.Tensor] = {}
    for index, (shape, _, _) in ALEXNET_CONVS.items():
        fan_in = math.prod(shape[1:])
        backbone[f"features.{index}.weight"] = torch.randn(shape, generator=generator) * (2 / fan_in) ** 0.5
        backbone[f"features.{index}.bias"] = torch.randn(shape[0], generator=generator) * 0.1
    backbone["classifier.6.bias"] = torch.zeros(1000)  # the head is in the real file; LPIPS ignores it
    linear = {
        f"lin{i}.model.1.weight": torch.rand((1, c, 1, 1), generator=generator) / c
        for i, c in enumerate(LPIPS_CHANNELS)
    }
    torch.save(backbone, folder / ALEXNET_FILE)
    torch.save(linear, folder / LPIPS_LINEAR_FILE)
    return folder / ALEXNET_FILE, folder / LPIPS_LINEAR_FILE


def reference_lpips(x0: np.ndarray, x1: np.ndarray, backbone: Path, linear: Path) -> np.ndarray:
    """The published formula written out in float64: AlexNet relu1..relu5 by plain conv/relu/pool calls,
    then per layer unit-normalise over channels, squared difference, weighted channel sum, spatial mean."""
    conv = torch.load(backbone, weights_only=True)
    lins = torch.load(linear, weights_only=True)
    distances = np.zeros(len(x0))
    for n in range(len(x0)):
        feats = []
        for image in (x0[n], x1[n]):
            h = torch.from_numpy((image - SHIFT[:, None, None]) / SCALE[:, None, None])[None]
            layers = []
            for index, (_, stride, padding) in ALEXNET_CONVS.items():
                w = conv[f"features.{index}.weight"].double()
                b = conv[f"features.{index}.bias"].double()
                h = F.relu(F.conv2d(h, w, b, stride=stride, padding=padding))
                layers.append(h[0].numpy())
                if index in POOL_AFTER:
                    h = F.max_pool2d(h, kernel_size=3, stride=2)
            feats.append(layers)
        total = 0.0
        for layer, (f0, f1) in enumerate(zip(*feats, strict=True)):
            n0 = f0 / (np.sqrt((f0**2).sum(axis=0)) + EPS)
            n1 = f1 / (np.sqrt((f1**2).sum(axis=0)) + EPS)
            weights = lins[f"lin{layer}.model.1.weight"].double().numpy().reshape(-1)
            weighted = np.einsum("c,chw->hw", weights, (n0 - n1) ** 2)
            total += weighted.mean()
        distances[n] = total
    return distances


def test_the_distance_is_the_published_formula(lpips_files: tuple[Path, Path]) -> None:
    net = load_lpips(*lpips_files).double()
    rng = np.random.default_rng(0)
    x0, x1 = rng.uniform(-1, 1, TINY), rng.uniform(-1, 1, TINY)
    ours = net(torch.from_numpy(x0), torch.from_numpy(x1)).numpy()
    expected = reference_lpips(x0, x1, *lpips_files)
    assert ours.shape == (TINY[0],) and np.all(expected > 0)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)


def test_identical_crops_give_zero_and_different_ones_a_symmetric_positive_distance(
    lpips_files: tuple[Path, Path],
) -> None:
    net = load_lpips(*lpips_files)
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    assert np.all(np.abs(lpips_distances(net, a, a)) < 1e-7)
    ab, ba = lpips_distances(net, a, b), lpips_distances(net, b, a)
    assert np.all(ab > 0)
    np.testing.assert_allclose(ab, ba, rtol=1e-5)
    # uint8 crops become [-1, 1] as lpips' im2tensor makes them
    scaled = lpips_input(np.array([[[[0, 255, 127]]]], dtype=np.uint8), torch.device("cpu"))
    assert scaled.flatten().tolist() == pytest.approx([-1.0, 1.0, 127 / 127.5 - 1])
    x0, x1 = (lpips_input(x, torch.device("cpu")).double().numpy() for x in (a[:1], b[:1]))
    np.testing.assert_allclose(ab[:1], reference_lpips(x0, x1, *lpips_files), rtol=1e-4)


def test_layouts_and_missing_files(lpips_files: tuple[Path, Path], tmp_path: Path) -> None:
    # the scaffold writes torchvision's feature keys and shapes
    scaffold = torch.load(save_random_alexnet(tmp_path / ALEXNET_FILE), weights_only=True)
    assert {k: tuple(v.shape) for k, v in scaffold.items() if k.endswith("weight")} == {
        f"features.{i}.weight": shape for i, (shape, _, _) in ALEXNET_CONVS.items()
    }
    backbone, linear = lpips_files
    with pytest.raises(WeightsError, match="lin5"):  # the squeeze file (7 layers) is not the alex one
        extra = tmp_path / "squeeze.pth"
        torch.save(
            {**torch.load(linear, weights_only=True), "lin5.model.1.weight": torch.ones(1, 1, 1, 1)}, extra
        )
        load_lpips(backbone, extra)
    with pytest.raises(WeightsError, match=ALEXNET_FILE) as caught:
        load_lpips(tmp_path / "absent.pth", linear)
    assert "download.pytorch.org" in caught.value.fix
    found = package_linear_file()  # an installed lpips package's file, found without importing lpips
    assert found is None or found.parts[-3:] == ("weights", "v0.1", "alex.pth")
    fetched = {f.name: f for f in eval_files(mirror="")}
    assert fetched[ALEXNET_FILE].sha256_prefix == "7be5be79"
    assert fetched[ALEXNET_FILE].url == "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"


def test_a_missing_file_skips_lpips_naming_it(lpips_files: tuple[Path, Path], tmp_path: Path) -> None:
    backbone, _ = lpips_files
    weights = EvalWeightFiles.in_folder(
        tmp_path / "none", alexnet=backbone, lpips_linear=tmp_path / "gone.pth"
    )
    clip = media("talk_b.mp4")
    options = EvalOptions(device="cpu", progress=False, max_frames=4)
    report = evaluate(clip, tmp_path / "r", reference=clip, weights=weights, options=options)
    metric = report.metric("lpips")
    assert metric.status == "skipped" and metric.value is None
    assert (
        metric.needs == str(tmp_path / "gone.pth") and "lpips/weights/v0.1/alex.pth" in metric.skipped_reason
    )
    assert "pip download lpips" in metric.skipped_reason
    assert report.metric("lip_lmd").value == 0  # a clip against itself


def test_lip_lmd_by_hand() -> None:
    reference = np.zeros((3, 68, 2))
    reference[:, 48:68] = np.arange(40).reshape(20, 2) + 100.0
    generated = reference.copy()
    generated[:, 48:68] += (3.0, 4.0)  # every lip point moves 3 px right, 4 px down in the frame
    generated[:, :48] += 50.0  # other points do not count
    generated[2] = np.nan  # no face found
    boxes = np.array([[10, 20, 266, 148], [0, 0, 128, 128], [0, 0, 128, 128]], dtype=np.float64)
    values = lip_lmd(generated, reference, boxes)
    # frame 0: the 256 x 128 box becomes 128 x 128, so x is halved: sqrt(1.5^2 + 4^2)
    assert values[0] == pytest.approx(math.sqrt(1.5**2 + 4**2), abs=1e-12)
    assert values[1] == pytest.approx(5.0, abs=1e-12) and math.isnan(values[2])
    boxes[1] = np.nan  # no box: no value
    assert mean_over_faces(lip_lmd(generated, reference, boxes), "LipLMD") == (pytest.approx(values[0]), 1)
    with pytest.raises(ValueError, match="no frame has a face"):
        mean_over_faces(np.full(2, np.nan), "LipLMD")


def test_cli_eval_of_a_short_dub_reports_lpips(
    lpips_files: tuple[Path, Path], tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = media("talk_c.mp4")
    clip = write_clip(source, tmp_path / "clip.mp4", CLIP_FRAMES)
    dub = tmp_path / "dub.mp4"
    settings = DubSettings(runtime=RuntimeSettings(device="cpu", dtype="fp32"), silence="generate")
    speech = load_audio(source).samples[: CLIP_FRAMES * SAMPLES_PER_FRAME]  # the clip's own speech
    audio = write_wav(tmp_path / "speech.wav", speech)
    DubPipeline.from_pretrained(tiny_weights, settings=settings)(clip, audio, dub, progress=False)
    folder = tmp_path / "eval-weights"
    folder.mkdir()
    for file in lpips_files:
        (folder / file.name).symlink_to(file)
    out = tmp_path / "report"
    args = ["eval", str(dub), "--reference", str(clip), "--out", str(out), "--eval-weights", str(folder)]
    assert main([*args, "--max-frames", str(CLIP_FRAMES), "--device", "cpu", "-q"]) == 0
    assert "LPIPS" in capsys.readouterr().out
    metrics = {m["key"]: m for m in json.loads((out / "report.json").read_text())["metrics"]}
    lpips = metrics["lpips"]
    assert lpips["status"] == "ok" and lpips["value"] > 0 and lpips["samples"] == CLIP_FRAMES
    assert not lpips["untrained_weights"] and lpips["better"] == "lower"
    assert metrics["lip_lmd"]["status"] == "ok" and metrics["lip_lmd"]["unit"] == "px"
