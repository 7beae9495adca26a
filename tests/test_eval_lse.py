"""LSE-D / LSE-C: SyncNet v2 layout and loading, window arithmetic, scoring, and a planted AV shift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import python_speech_features
import torch
import torch.nn.functional as F
from scipy.signal import medfilt
from torch import Tensor

from lipsync.errors import InputError, WeightsError
from lipsync.eval.lse import (
    SAMPLES_PER_VIDEO_FRAME,
    VSHIFT,
    VideoWindowEmbedder,
    audio_embeddings,
    audio_windows,
    lse_from_embeddings,
    syncnet_mfcc,
    window_count,
)
from lipsync.eval.networks.syncnet_v2 import (
    SYNCNET_V2_EMBED_DIM,
    SYNCNET_V2_FILE,
    SyncEmbedder,
    SyncNetV2,
    load_syncnet_v2,
    save_random_syncnet_v2,
)
from lipsync.io.audio import to_pcm16

# --- SyncNet v2 layout ---------------------------------------------------------------------------------

# (Sequential index, kind, shape of the weight) of the reference model S, layer by layer.
AUDIO_CONVS = {0: (64, 1, 3, 3), 4: (192, 64, 3, 3), 8: (384, 192, 3, 3), 11: (256, 384, 3, 3),
               14: (256, 256, 3, 3), 18: (512, 256, 5, 4)}  # fmt: skip
LIP_CONVS = {0: (96, 3, 5, 7, 7), 4: (256, 96, 1, 5, 5), 8: (256, 256, 1, 3, 3), 11: (256, 256, 1, 3, 3),
             14: (256, 256, 1, 3, 3), 18: (512, 256, 1, 6, 6)}  # fmt: skip
FC_LINEARS = {0: (512, 512), 3: (1024, 512)}
BN_PARTS = ("weight", "bias", "running_mean", "running_var")


def _conv_stack_keys(prefix: str, convs: dict[int, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {}
    for index, shape in convs.items():
        keys[f"{prefix}.{index}.weight"] = shape
        keys[f"{prefix}.{index}.bias"] = (shape[0],)
        keys.update({f"{prefix}.{index + 1}.{part}": (shape[0],) for part in BN_PARTS})
    return keys


def _fc_keys(prefix: str) -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {}
    for index, shape in FC_LINEARS.items():
        keys[f"{prefix}.{index}.weight"] = shape
        keys[f"{prefix}.{index}.bias"] = (shape[0],)
        if index == 0:
            keys.update({f"{prefix}.1.{part}": (shape[0],) for part in BN_PARTS})
    return keys


EXPECTED_KEYS = {
    **_conv_stack_keys("netcnnaud", AUDIO_CONVS),
    **_fc_keys("netfcaud"),
    **_fc_keys("netfclip"),
    **_conv_stack_keys("netcnnlip", LIP_CONVS),
}


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_syncnet_v2(tmp_path_factory.mktemp("syncnet-v2") / SYNCNET_V2_FILE)


def test_layout_matches_the_reference_keys_and_shapes() -> None:
    with torch.device("meta"):
        model = SyncNetV2()
    state = {
        k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")
    }
    assert list(state) == list(EXPECTED_KEYS)  # the reference registration order too
    assert state == EXPECTED_KEYS
    assert len(EXPECTED_KEYS) == 88


def test_random_file_loads_and_embeds(random_weights: Path) -> None:
    saved = torch.load(random_weights, map_location="cpu", weights_only=True)
    assert list(saved) == list(EXPECTED_KEYS)  # no num_batches_tracked, like the released file
    model = load_syncnet_v2(random_weights)
    assert not model.training
    assert torch.equal(model.state_dict()["netcnnlip.1.running_mean"], saved["netcnnlip.1.running_mean"])
    generator = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        lip = model.forward_lip(torch.rand((1, 3, 5, 224, 224), generator=generator) * 255)
        aud = model.forward_aud(torch.randn((1, 1, 13, 20), generator=generator) * 10)
    assert lip.shape == aud.shape == (1, SYNCNET_V2_EMBED_DIM)
    assert torch.isfinite(lip).all() and torch.isfinite(aud).all()
    assert lip.abs().max() < 1e4 and aud.abs().max() < 1e4


def test_malformed_or_missing_files_name_the_problem(random_weights: Path, tmp_path: Path) -> None:
    state = torch.load(random_weights, map_location="cpu", weights_only=True)
    missing = dict(state)
    del missing["netcnnlip.0.weight"]
    torch.save(missing, tmp_path / "missing.model")
    with pytest.raises(WeightsError, match=r"missing \(1\): netcnnlip\.0\.weight"):
        load_syncnet_v2(tmp_path / "missing.model")
    misshapen = dict(state, **{"netfcaud.3.weight": torch.zeros(512, 512)})
    torch.save(misshapen, tmp_path / "misshapen.model")
    with pytest.raises(WeightsError, match=r"netfcaud\.3\.weight \(512, 512\) vs \(1024, 512\)"):
        load_syncnet_v2(tmp_path / "misshapen.model")
    with pytest.raises(WeightsError, match=SYNCNET_V2_FILE) as error:
        load_syncnet_v2(tmp_path / "nowhere" / "weights.model")
    assert "download_model.sh" in error.value.fix


# --- windows and MFCC ----------------------------------------------------------------------------------


def test_window_count_follows_the_reference() -> None:
    assert window_count(120, 120 * 640) == 115
    assert window_count(120, 120 * 640 + 639) == 115
    assert window_count(200, 10 * 640 + 639) == 5  # audio-limited: floor(samples / 640) - 5
    assert window_count(6, 6 * 640) == 1  # the shortest clip with a window
    assert window_count(5, 10**6) == 0
    assert window_count(0, 0) == 0


def test_audio_windows_take_columns_4t_to_4t_plus_20() -> None:
    columns = 319  # what 80 frames of audio give: 1 + ceil((80 * 640 - 400) / 160)
    mfcc = (np.arange(columns)[None, :] + 1000 * np.arange(13)[:, None]).astype(np.float32)
    count = window_count(80, 80 * 640)  # 75
    windows = audio_windows(mfcc, count)
    assert windows.shape == (count, 1, 13, 20) and windows.dtype == np.float32
    np.testing.assert_array_equal(windows[0, 0], mfcc[:, 0:20])
    last = count - 1
    np.testing.assert_array_equal(windows[last, 0], mfcc[:, 4 * last : 4 * last + 20])
    np.testing.assert_array_equal(windows[7, 0, 2], mfcc[2, 28:48])
    with pytest.raises(ValueError, match="MFCC columns"):
        audio_windows(mfcc[:, :39], 6)  # 6 windows need 4 * 5 + 20 = 40


def test_syncnet_mfcc_is_python_speech_features_on_int16_at_100_columns_per_second() -> None:
    rng = np.random.default_rng(0)
    samples = (rng.uniform(-0.5, 0.5, 3 * 16000)).astype(np.float32)
    mfcc = syncnet_mfcc(samples)
    assert mfcc.shape == (13, 299) and mfcc.dtype == np.float32  # 1 + ceil((n - 400) / 160)
    pcm = np.clip(np.rint(samples * 32767.0), -32768, 32767).astype(np.int16)
    np.testing.assert_array_equal(pcm, to_pcm16(samples))
    expected = python_speech_features.mfcc(pcm, 16000).T.astype(np.float32)
    np.testing.assert_array_equal(mfcc, expected)
    unscaled = python_speech_features.mfcc(samples, 16000).T  # float input would shift the energy row
    assert abs(float(mfcc[0].mean() - unscaled[0].mean()) - 2 * np.log(32767)) < 0.1
    assert syncnet_mfcc(np.zeros(10 * 16000, np.float32)).shape[1] == 999


# --- scoring -------------------------------------------------------------------------------------------


def _reference_mdist(video: Tensor, audio: Tensor, vshift: int) -> tuple[Tensor, list[Tensor]]:
    """calc_pdist and the mean over windows, written as the reference loop does it."""
    win = 2 * vshift + 1
    padded = F.pad(audio, (0, 0, vshift, vshift))
    dists = [
        F.pairwise_distance(video[[i], :].repeat(win, 1), padded[i : i + win, :]) for i in range(len(video))
    ]
    return torch.mean(torch.stack(dists, 1), 1), dists


@pytest.mark.parametrize("shift", [-15, -14, -6, 0, 4, 14, 15])
def test_planted_embedding_shift_is_found(shift: int) -> None:
    count, dim = 60, 16
    generator = torch.Generator().manual_seed(100 + shift)
    codes = torch.randn((count + 2 * VSHIFT, dim), generator=generator)  # code j is codes[j + VSHIFT]
    audio = codes[VSHIFT : VSHIFT + count]
    video = codes[VSHIFT - shift : VSHIFT - shift + count]  # video window i shows audio window i - shift
    result = lse_from_embeddings(video, audio)
    assert result.av_offset == shift
    assert result.windows == count
    assert result.offsets == list(range(VSHIFT, -VSHIFT - 1, -1))
    mdist, dists = _reference_mdist(video, audio, VSHIFT)
    np.testing.assert_allclose(result.distance_by_offset, mdist.numpy(), rtol=1e-6)
    assert result.lse_d == pytest.approx(float(mdist.min()))
    assert result.distance_by_offset[result.offsets.index(shift)] == result.lse_d
    assert result.lse_c == pytest.approx(float(torch.median(mdist) - mdist.min()))
    assert result.lse_c > 1.0
    minidx = VSHIFT - shift
    fconf = torch.median(mdist).numpy() - np.stack([d[minidx].numpy() for d in dists])
    np.testing.assert_allclose(result.framewise_confidence, medfilt(fconf, kernel_size=9), rtol=1e-5)


def test_lse_needs_a_window() -> None:
    with pytest.raises(InputError, match="no SyncNet window") as error:
        lse_from_embeddings(torch.zeros((0, 8)), torch.zeros((0, 8)))
    assert "6 frames" in error.value.fix
    short = lse_from_embeddings(torch.ones((3, 8)), torch.ones((3, 8)))  # fewer windows than the kernel
    assert len(short.framewise_confidence) == 3 and short.av_offset == 0


class PlantedNet:
    """A stand-in SyncEmbedder: mean brightness per frame vs the MFCC log-energy row, standardised."""

    def forward_lip(self, x: Tensor) -> Tensor:
        brightness = x.mean(dim=(1, 3, 4))  # (N, 5)
        return _standardise(brightness.repeat_interleave(4, dim=1))

    def forward_aud(self, x: Tensor) -> Tensor:
        return _standardise(x[:, 0, 0, :])  # coefficient 0: log frame energy, 20 columns


def _standardise(rows: Tensor) -> Tensor:
    return (rows - rows.mean(dim=1, keepdim=True)) / (rows.std(dim=1, keepdim=True) + 1e-6)


FRAMES = 120
TONE_HZ = 1000.0


def _planted_clip(video_lag: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames whose brightness follows s_{t - lag} and a tone whose per-frame loudness follows s_t."""
    rng = np.random.default_rng(7)
    pad = 2 * VSHIFT
    s = rng.uniform(0.0, 1.0, FRAMES + 2 * pad)  # s_t is s[t + pad]
    frames = [
        np.full((224, 224, 3), round(40 + 170 * s[t - video_lag + pad]), np.uint8) for t in range(FRAMES)
    ]
    amplitude = 0.01 * np.exp(3.0 * s[pad : pad + FRAMES])  # log energy is affine in s
    time = np.arange(FRAMES * SAMPLES_PER_VIDEO_FRAME) / 16000
    samples = np.repeat(amplitude, SAMPLES_PER_VIDEO_FRAME) * np.sin(2 * np.pi * TONE_HZ * time)
    return frames, samples.astype(np.float32)


@pytest.mark.parametrize("video_lag", [-4, 0, 3])
def test_planted_av_shift_through_the_full_path(video_lag: int) -> None:
    """A video lagging its audio by d frames scores AV offset +d (the reference's sign)."""
    net: SyncEmbedder = PlantedNet()
    frames, samples = _planted_clip(video_lag)
    count = window_count(len(frames), len(samples))
    assert count == FRAMES - 5
    audio = audio_embeddings(net, audio_windows(syncnet_mfcc(samples), count), "cpu")
    embedder = VideoWindowEmbedder(net, "cpu")
    for frame in frames:
        embedder.add(frame)
    video = embedder.finish(count)
    assert video.shape == audio.shape == (count, 20)
    result = lse_from_embeddings(video, audio)
    assert result.av_offset == video_lag
    assert result.lse_c > 1.0
    assert result.lse_d == min(result.distance_by_offset)
    assert result.distance_by_offset[result.offsets.index(video_lag)] == result.lse_d
    assert len(result.framewise_confidence) == count
    assert np.median(result.framewise_confidence) > 0


def test_video_embedder_batches_agree_and_memory_is_bounded() -> None:
    net = PlantedNet()
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(31)]
    count = window_count(len(frames), 31 * 640)  # 26: uses frames 0..29
    small, large = (
        VideoWindowEmbedder(net, "cpu", batch_size=3),
        VideoWindowEmbedder(net, "cpu", batch_size=50),
    )
    for frame in frames:
        small.add(frame)
        large.add(frame)
        assert small.frames_held <= 3 + 4
    a, b = small.finish(count), large.finish(count)
    assert a.shape == (count, 20)
    torch.testing.assert_close(a, b)
    expected = net.forward_lip(torch.from_numpy(np.stack(frames[5:10])).permute(3, 0, 1, 2)[None].float())
    torch.testing.assert_close(a[5:6], expected, atol=1e-3, rtol=1e-3)  # window 5 is frames 5..9
    with pytest.raises(ValueError, match="frames"):
        VideoWindowEmbedder(net, "cpu").finish(1)
