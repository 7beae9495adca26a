"""`lipsync train unet` with tiny models on a dataset prepared from the shared media."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lipsync.cli.main import main
from lipsync.config import AUDIO_SAMPLE_RATE
from lipsync.io.audio import load_audio
from lipsync.io.video import probe_video
from lipsync.models.musetalk.loading import load_models
from lipsync.models.syncnet import SyncNetSpec, build_syncnet, save_syncnet
from lipsync.train.config import (
    ConfigError,
    DataConfig,
    DiscriminatorConfig,
    LossConfig,
    MarginConfig,
    OptimConfig,
    PerceptualConfig,
    UNetTrainConfig,
    load_config,
)
from lipsync.train.data.format import list_clips
from lipsync.train.unet_trainer import UNetTrainer, train_unet

from conftest import REPO, media, write_wav

TINY_PERCEPTUAL = PerceptualConfig(width_divisor=16, input_size=128, scales=(1.0, 0.5))


def held_out_clips(root: Path) -> tuple[str, ...]:
    """The last clip of each speaker: validation sees clips it never trained on."""
    last: dict[str, str] = {}
    for folder in list_clips(root):
        last[folder.name.split("__")[0]] = folder.name
    return tuple(last.values())


def tiny_config(root: Path, weights: Path, out: Path, **changes: object) -> UNetTrainConfig:
    base = UNetTrainConfig(
        stage=1,
        output_dir=out,
        weights=weights,
        unet_size="tiny",
        batch_size=4,
        max_steps=40,
        gradient_checkpointing=False,
        checkpoint_every=20,
        validate_every=20,
        validation_samples=4,
        log_every=5,
        data=DataConfig(root=root, val_clips=held_out_clips(root), min_face_size=0),
        loss=LossConfig(perceptual=0.01, perceptual_net=TINY_PERCEPTUAL),
        optim=OptimConfig(lr=1e-3, warmup_steps=5),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.slow  # a learning check (40 training steps): `make test-slow`
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_stage1_lowers_validation_l1_and_exports_for_dub(
    prepared_media: Path, tiny_weights: Path, tmp_path: Path
) -> None:
    config = tiny_config(prepared_media, tiny_weights, tmp_path / "run")
    result = train_unet(config, progress=False)

    first, last = result.validation_l1[0][1], result.validation_l1[-1][1]
    assert result.steps == 40
    assert last < 0.8 * first, result.validation_l1  # on held-out clips, after 40 steps
    assert result.samples_per_second > 0
    assert (tmp_path / "run" / "validation" / "step-00000040.png").is_file()
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*"))

    # The export is a weights folder the inference pipeline loads as is.
    export = result.export_dir
    assert export is not None
    entry = json.loads((export / "lipsync.json").read_text())["models"]["musetalk"]
    info = entry["training"]
    assert info["audio_window"] == 5 and info["steps"] == 40 and info["stage"] == 1
    assert entry["untrained"] is True  # the frozen parts were untrained scaffolds
    out = tmp_path / "dubbed.mp4"
    speech = load_audio(media("speech_44k_stereo.wav"), AUDIO_SAMPLE_RATE).samples[:AUDIO_SAMPLE_RATE]
    inputs = [str(media("talk_c.mp4")), str(write_wav(tmp_path / "speech.wav", speech))]
    options = ["--weights", str(export), "--device", "cpu", "--dtype", "fp32", "-q"]
    code = main(["dub", *inputs, "-o", str(out), *options])
    assert code == 0
    assert probe_video(out).frame_count == 25  # 1 s of speech at 25 fps


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_resume_continues_from_the_last_checkpoint(
    prepared_media: Path, tiny_weights: Path, tmp_path: Path
) -> None:
    config = tiny_config(
        prepared_media, tiny_weights, tmp_path / "run", max_steps=4, checkpoint_every=2, validate_every=2
    )
    train_unet(config, progress=False)
    saved = torch.load(tmp_path / "run" / "export" / "musetalkV15" / "unet.pth", weights_only=True)

    trainer = UNetTrainer(dataclasses.replace(config, max_steps=6), progress=False)
    assert trainer.step == 4  # picked up from checkpoints/step-00000004
    resumed = trainer.accelerator.unwrap_model(trainer.unet).state_dict()
    assert all(torch.equal(resumed[k].cpu(), v) for k, v in saved.items())
    result = trainer.run()
    assert result.steps == 6
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["step-00000002", "step-00000004", "step-00000006"]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_stage2_step_runs_every_loss(prepared_media: Path, tiny_weights: Path, tmp_path: Path) -> None:
    spec = SyncNetSpec(kind="wav2lip", frames=5, image_size=48, width_divisor=16)
    syncnet_path = tmp_path / "syncnet.pt"
    save_syncnet(build_syncnet(spec), spec, syncnet_path)
    config = tiny_config(
        prepared_media,
        tiny_weights,
        tmp_path / "run",
        stage=2,
        clip_frames=5,
        batch_size=1,
        grad_accum=2,
        max_steps=1,
        gradient_checkpointing=True,
        margin=MarginConfig(enabled=True),
        loss=LossConfig(
            perceptual=0.01,
            gan=0.01,
            mouth_gan=0.01,
            sync=0.05,
            gan_start_step=0,
            perceptual_net=TINY_PERCEPTUAL,
            discriminator=DiscriminatorConfig(block_expansion=4, max_features=32),
            syncnet=syncnet_path,
            syncnet_kind="wav2lip",
        ),
    )
    trainer = UNetTrainer(config, progress=False)
    before = {k: v.clone() for k, v in trainer.unet.state_dict().items()}
    logs: dict[str, float] = {}
    for batch in trainer.loader:
        logs |= trainer.train_step(batch)
        if trainer.accelerator.sync_gradients:
            break
    for term in ("l1", "perceptual", "gan", "mouth_gan", "feature_matching", "sync"):
        assert np.isfinite(logs[f"loss/{term}"]) and logs[f"loss/{term}"] > 0, term
    assert {"loss/discriminator_face", "loss/discriminator_mouth"} <= set(logs)
    after = trainer.unet.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_audio_window_is_stored_with_the_export_and_used_by_inference(
    prepared_media: Path, tiny_weights: Path, tmp_path: Path
) -> None:
    config = tiny_config(
        prepared_media, tiny_weights, tmp_path / "run", audio_window=3, max_steps=1, validate_every=1
    )
    trainer = UNetTrainer(config, progress=False)
    assert trainer.validation_batch.audio.shape[-2:] == (30, 384)  # 2T whisper frames x 5 layers
    export = trainer.export()
    models = load_models(export, "v15", torch.device("cpu"), torch.float32)
    assert models.audio_window == 3


def test_exports_made_before_lipsync_json_still_give_their_audio_window(
    tiny_weights: Path, tmp_path: Path
) -> None:
    old = Path(shutil.copytree(tiny_weights, tmp_path / "old-export"))
    (old / "lipsync.json").unlink()
    (old / "musetalkV15" / "lipsync-training.json").write_text('{"audio_window": 7, "stage": 1}')
    assert load_models(old, "v15", torch.device("cpu"), torch.float32).audio_window == 7


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("stage: 1\nloss:\n  l2: 1.0\n")
    with pytest.raises(ConfigError, match=r"loss\.l2"):
        load_config(path, UNetTrainConfig)
    path.write_text("audio_window: 4\n")
    code = main(["train", "unet", "--config", str(path)])
    assert code == 2


@pytest.mark.parametrize("name", ["unet-stage1", "unet-stage2", "unet-tiny", "unet-tiny-stage2"])
def test_shipped_configs_load(name: str) -> None:
    config = load_config(REPO / "configs" / "train" / f"{name}.yaml", UNetTrainConfig)
    assert config.audio_window == 5
    if config.stage == 2:
        assert config.clip_frames == 16 and config.loss.sync > 0 and config.margin.enabled
