"""Ablation setup C of the stabilized-sync paper (a wav2vec 2.0 audio encoder) with a tiny random wav2vec2
written here: the per-frame waveform windows (the samples of the frame's mel window, streamed equal to
offline), a few training steps, the export loading and dubbing, and the config errors."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lipsync.cli.main import main
from lipsync.config import DubSettings, RuntimeSettings, StreamSettings
from lipsync.io.video import probe_video
from lipsync.models.families import load_generator
from lipsync.models.stabilized_sync.generator import StabilizedSyncGenerator
from lipsync.models.stabilized_sync.wav2vec2 import (
    WAVE_WINDOW_SAMPLES,
    Wav2Vec2AudioEncoder,
    WaveWindows,
    wave_windows,
)
from lipsync.models.stabilized_sync.weights import WeightsLayout, read_config
from lipsync.models.syncnet import SyncNetSpec, build_syncnet, save_syncnet
from lipsync.models.weights import read_weights_manifest
from lipsync.pipeline.dub import DubPipeline
from lipsync.train.config import ConfigError, StabilizedTrainConfig, load_config
from lipsync.train.data.format import list_clips
from lipsync.train.stabilized_trainer import StabilizedTrainResult, train_stabilized

from conftest import REPO, media, write_clip

pytestmark = pytest.mark.filterwarnings("ignore::lipsync.train.losses.perceptual.UntrainedPerceptualWarning")
SETUP_C = REPO / "configs" / "train" / "ablation" / "stabilized-C.yaml"
HIDDEN = 32  # the tiny wav2vec2's hidden size
STEPS = 2
DUB_FRAMES = 6


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def wav2vec2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random wav2vec2 in the Hugging Face layout (config.json, model.safetensors and the
    preprocessor's do_normalize)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    folder = tmp_path_factory.mktemp("wav2vec2") / "wav2vec2-tiny"
    Wav2Vec2Model(config).save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True}))
    return folder


# --- the waveform windows ------------------------------------------------------------------------


def test_a_frames_waveform_window_holds_the_samples_of_its_mel_window() -> None:
    audio = np.arange(1, 16_001, dtype=np.float32)  # 1 s: 81 mel columns, sample i holds i + 1
    frames = [0, 7, 24]
    windows = wave_windows(audio, frames, 25)
    assert windows.shape == (3, WAVE_WINDOW_SAMPLES) == (3, 3800)
    # Frame 0: columns 0-15, samples -400 ... 3399 (the 400 before the start are zeros).
    assert np.array_equal(windows[0], np.concatenate([np.zeros(400), audio[:3400]]))
    # Frame 7: columns 22-37 (floor(80 * 7 / 25) = 22), samples 200 * 22 - 400 = 4000 ... 7799.
    assert np.array_equal(windows[1], audio[4000:7800])
    # Frame 24 would start at column 76; moved back to end at the last column (80): columns 65-80,
    # samples 12600 ... 16399, the 400 past the end zeros.
    assert np.array_equal(windows[2], np.concatenate([audio[12600:], np.zeros(400)]))


def test_streamed_waveform_windows_equal_the_offline_ones() -> None:
    rng = np.random.default_rng(0)
    audio = rng.standard_normal(13_000).astype(np.float32)
    fps = Fraction(25)
    offline = WaveWindows.offline(audio, fps)
    frames = offline.ready_frames()
    expected = wave_windows(audio, list(range(frames)), fps)
    assert np.array_equal(offline.windows(list(range(frames))), expected)
    stream, got, done = WaveWindows(fps), [], 0
    for chunk in np.array_split(audio, 9):
        stream.append(chunk)
        ready = stream.ready_frames(done)
        got.append(stream.windows(list(range(done, ready))))
        stream.forget_before(ready)
        done = ready
    stream.finish()
    got.append(stream.windows(list(range(done, stream.ready_frames(done)))))
    assert np.array_equal(np.concatenate(got), expected)


# --- training, export, dub -----------------------------------------------------------------------


def setup_c(root: Path, out: Path, wav2vec2: Path, syncnet: Path) -> StabilizedTrainConfig:
    """configs/train/ablation/stabilized-C.yaml, tiny, on the test dataset."""
    config = load_config(SETUP_C, StabilizedTrainConfig)
    held_out = tuple(p.name for p in list_clips(root))[-1:]
    data = dataclasses.replace(config.data, root=root, val_clips=held_out, val_fraction=0.0, num_workers=0)
    loss = dataclasses.replace(config.loss, wav2lip_syncnet=syncnet, vgg19_weights=None, vgg_width_divisor=16)
    return dataclasses.replace(
        config,
        output_dir=out,
        tiny=True,
        wav2vec2=wav2vec2,
        batch_size=2,
        max_steps=STEPS,
        checkpoint_every=STEPS,
        validate_every=STEPS,
        validation_samples=2,
        log_every=1,
        lr=1e-3,
        data=data,
        loss=loss,
    )


@pytest.fixture(scope="module")
def trained(
    prepared_media: Path, wav2vec2: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[StabilizedTrainResult, Path]:
    tmp = tmp_path_factory.mktemp("setup-c")
    spec = SyncNetSpec("wav2lip", frames=5, image_size=48, width_divisor=16)
    syncnet = save_syncnet(build_syncnet(spec), spec, tmp / "syncnet.pt")
    out = tmp / "run"
    return train_stabilized(setup_c(prepared_media, out, wav2vec2, syncnet), progress=False), out


def test_setup_c_trains_the_projection_only_and_exports_the_encoder(
    trained: tuple[StabilizedTrainResult, Path], wav2vec2: Path
) -> None:
    result, out = trained
    assert result.steps == STEPS and result.export_dir is not None
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    terms = [entry for entry in logged if "loss/sync" in entry]
    assert terms and all(np.isfinite(entry["loss/sync"]) for entry in terms)

    config = read_config(result.export_dir)
    assert config.audio_encoder == "wav2vec2" and config.wav2vec2 is not None
    assert config.wav2vec2["hidden_size"] == HIDDEN and config.wav2vec2_normalize
    assert not config.silent_lip_references
    training = read_weights_manifest(result.export_dir)["stabilized-sync"].training
    assert training["audio_encoder"] == "wav2vec2" and training["avsyncnet"] is None
    exported = load_file(WeightsLayout(result.export_dir).audio_encoder)
    assert exported["projection.weight"].shape == (512, HIDDEN)
    pretrained = load_file(wav2vec2 / "model.safetensors")
    assert {f"wav2vec2.{k}" for k in pretrained} | {"projection.weight", "projection.bias"} == set(exported)
    assert all(torch.equal(exported[f"wav2vec2.{k}"], v) for k, v in pretrained.items())  # frozen


def test_the_setup_c_export_loads_and_dubs(
    trained: tuple[StabilizedTrainResult, Path], tmp_path: Path
) -> None:
    export = trained[0].export_dir
    assert export is not None
    generator = load_generator(export, device="cpu", dtype="fp32")
    assert isinstance(generator, StabilizedSyncGenerator) and not generator.untrained
    assert isinstance(generator.models.audio_encoder, Wav2Vec2AudioEncoder)
    assert generator.models.silent_generator is None

    # The generator's conditioning: waveform windows, streamed equal to offline.
    audio = np.random.default_rng(1).standard_normal(9_000).astype(np.float32)
    offline = generator.offline_audio(audio, Fraction(25), "sliding")
    frames = list(range(offline.ready_frames()))
    stream = generator.streaming_audio(Fraction(25), StreamSettings())
    for chunk in np.array_split(audio, 4):
        stream.append(chunk)
    stream.finish()
    assert np.array_equal(stream.windows(frames), offline.windows(frames))
    assert offline.windows(frames).shape == (len(frames), WAVE_WINDOW_SAMPLES)

    clip = write_clip(media("talk_c.mp4"), tmp_path / "clip.mp4", DUB_FRAMES)
    settings = DubSettings(
        silence="generate", runtime=RuntimeSettings(device="cpu", dtype="fp32", batch_size=4)
    )
    out = tmp_path / "dubbed.mp4"
    summary = DubPipeline(generator, settings)(
        clip, media("speech_16k_stereo.wav"), out, progress=False, max_frames=DUB_FRAMES
    )
    assert summary.frames == probe_video(out).frame_count == DUB_FRAMES
    assert summary.frames_generated == DUB_FRAMES


# --- config errors -------------------------------------------------------------------------------


def test_a_missing_wav2vec2_folder_is_a_config_error_naming_it(tmp_path: Path) -> None:
    config = load_config(SETUP_C, StabilizedTrainConfig)
    assert config.wav2vec2 is not None and config.wav2vec2.name == "wav2vec2-base-960h"
    assert config.wav2vec2.resolve() == (REPO / "models" / "wav2vec2-base-960h").resolve()
    missing = tmp_path / "models" / "wav2vec2-base-960h"
    changed = dataclasses.replace(config, wav2vec2=missing, output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"wav2vec2-base-960h") as error:
        train_stabilized(changed, progress=False)
    assert str(missing) in str(error.value) and "huggingface.co/facebook/wav2vec2-base-960h" in str(
        error.value
    )

    missing.mkdir(parents=True)
    (missing / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"model\.safetensors"):
        train_stabilized(changed, progress=False)


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("audio_encoder: wav2vec2\n", "wav2vec2 is missing"),
        ("wav2vec2: somewhere\n", "audio_encoder"),
        ("audio_encoder: hubert\n", "audio_encoder"),
    ],
)
def test_a_bad_audio_encoder_setting_names_the_field(yaml: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"stage: silent\navsyncnet: a.safetensors\noutput_dir: {tmp_path / 'run'}\n" + yaml)
    with pytest.raises(ConfigError, match=message):
        train_stabilized(load_config(path, StabilizedTrainConfig), progress=False)
    assert main(["train", "stabilized", "--config", str(path), "-q"]) == 2
