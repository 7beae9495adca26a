"""`lipsync train syncnet`: train a SyncNet expert on a prepared dataset, with HuggingFace accelerate.

The same code runs on one CPU, one GPU, or several GPUs under `accelerate launch`. Each step: a batch of
balanced in-sync / shifted pairs (single-identity by default), AdamW on BCE(clamp(cos, 0, 1), label).
Every `eval_every` steps and at the end: accuracy (threshold 0.5 on the sync probability) and ROC AUC on a
fixed, balanced set of pairs from held-out clips.

OUTPUT_DIR/
  syncnet-last.pt       the latest weights (`save_syncnet`; load with `load_syncnet`)
  syncnet-best.pt       the weights with the best held-out accuracy so far
  state/                accelerate state (model, optimiser, RNG, step) for resuming: a rerun with the
                        same output_dir continues from it
  tensorboard/          TensorBoard event files (train/loss, train/accuracy, val/accuracy, val/auc, ...)
  result.json           the SyncNetTrainResult of the last run

`kind: avsyncnet` trains the stabilized-sync family's AVSyncNet the same way (Adam (0.5, 0.999) as the
paper; pairs cut with that family's crop rule, negatives from a non-overlapping part of the clip); its
files are avsyncnet-last.safetensors / avsyncnet-best.safetensors (`load_avsyncnet`) and
audio_encoder.safetensors, the last weights' ResNetSE-34 as the stabilized-sync weights folder holds it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from lipsync.models.stabilized_sync.losses import ADAM_BETAS
from lipsync.models.stabilized_sync.weights import AUDIO_ENCODER_FILE
from lipsync.models.syncnet import (
    SyncNetSpec,
    build_syncnet,
    load_syncnet,
    save_syncnet,
    sync_probability,
)
from lipsync.train import run_files
from lipsync.train.config import ConfigError, SyncNetTrainConfig, flat_hparams
from lipsync.train.losses.sync import sync_bce
from lipsync.train.stabilized_avsync import (
    AVSyncSpec,
    avsync_faces,
    avsync_spec,
    build_avsyncnet,
    load_avsyncnet,
    save_audio_encoder,
    save_avsyncnet,
)
from lipsync.train.syncnet_data import (
    PairIndex,
    SyncPairSource,
    SyncPairStream,
    eval_pairs,
    identity_collate,
    split_sync_clips,
)

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "syncnet-last.pt"
BEST_CHECKPOINT = "syncnet-best.pt"
STATE_DIR = "state"
TRACKER_NAME = "tensorboard"  # event files go to OUTPUT_DIR/tensorboard
RESULT_FILE = "result.json"
SYNC_THRESHOLD = 0.5  # a pair is called "in sync" when its sync probability exceeds this
ADAMW_BETAS = (0.9, 0.999)
AVSYNC_LAST_CHECKPOINT = "avsyncnet-last.safetensors"
AVSYNC_BEST_CHECKPOINT = "avsyncnet-best.safetensors"
PairSpec = SyncNetSpec | AVSyncSpec


@dataclass(frozen=True)
class SyncNetTrainResult:
    output_dir: Path
    steps: int  # optimiser steps in total, including those before a resume
    start_step: int  # 0, or the step this run resumed from
    seconds: float  # wall time of this run's training steps (evaluation excluded)
    samples_per_second: float  # training pairs per second over all processes
    val_accuracy: float | None  # final held-out accuracy (None without held-out clips)
    val_auc: float | None
    best_val_accuracy: float | None
    checkpoint: Path  # the last weights
    best_checkpoint: Path | None
    train_clips: int
    val_clips: int
    audio_encoder: Path | None = None  # kind avsyncnet: the ResNetSE-34 file a weights folder holds
    val_loss: float | None = None  # final held-out BCE

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    auc: float
    loss: float
    pairs: int


class TrainProgress:
    """The counters saved with the accelerate state (register_for_checkpointing needs state_dict)."""

    def __init__(self) -> None:
        self.step = 0
        self.best_accuracy = -1.0

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "best_accuracy": self.best_accuracy}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.best_accuracy = float(state["best_accuracy"])


def syncnet_spec(config: SyncNetTrainConfig) -> PairSpec:
    if config.kind == "avsyncnet":
        return avsync_spec(config)
    spec = SyncNetSpec(config.kind, config.frames, config.image_size, config.width_divisor)
    try:
        spec.validate()
    except ValueError as exc:
        raise ConfigError(
            f"SyncNet settings: {exc}", "fix kind / frames / image_size / width_divisor"
        ) from exc
    return spec


def validate_syncnet_config(config: SyncNetTrainConfig) -> PairSpec:
    """Checks that need no files; returns the network's spec."""
    spec = syncnet_spec(config)
    for name in (
        "batch_size",
        "max_steps",
        "eval_every",
        "checkpoint_every",
        "log_every",
        "face_cache_bytes",
    ):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} is {getattr(config, name)}", f"give {name} >= 1")
    if config.batch_size < 2:
        raise ConfigError("batch_size is 1", "use at least 2 (a positive and a negative per batch)")
    if config.lr <= 0:
        raise ConfigError(f"lr is {config.lr}", "give a positive learning rate")
    if config.max_seconds is not None and config.max_seconds <= 0:
        raise ConfigError(f"max_seconds is {config.max_seconds}", "give a positive time or leave it out")
    return spec


def build_model(spec: PairSpec) -> nn.Module:
    """A randomly initialised network of `spec`."""
    return build_avsyncnet(spec) if isinstance(spec, AVSyncSpec) else build_syncnet(spec)


def save_model(model: nn.Module, spec: PairSpec, path: Path) -> None:
    if isinstance(spec, AVSyncSpec):
        save_avsyncnet(model, spec, path)  # type: ignore[arg-type]
    else:
        save_syncnet(model, spec, path)  # type: ignore[arg-type]


def initial_model(config: SyncNetTrainConfig, spec: PairSpec) -> nn.Module:
    """A random network, or the checkpoint `config.init` (which must have the same spec)."""
    if config.init is None:
        return build_model(spec)
    loaded: PairSpec
    model: nn.Module
    if isinstance(spec, AVSyncSpec):
        model, loaded = load_avsyncnet(config.init)
    else:
        model, loaded = load_syncnet(config.init, kind=spec.kind)
    if loaded != spec:
        raise ConfigError(
            f"init checkpoint {config.init} is {loaded}, the config asks for {spec}",
            "set kind / frames / image_size / width_divisor to the checkpoint's, or drop init",
        )
    return model


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting half."""
    positive, negative = scores[labels > 0.5], scores[labels <= 0.5]
    if not len(positive) or not len(negative):
        return float("nan")
    greater = (positive[:, None] > negative[None, :]).mean()
    ties = (positive[:, None] == negative[None, :]).mean()
    return float(greater + 0.5 * ties)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    source: SyncPairSource,
    pairs: Sequence[PairIndex],
    batch_size: int,
    device: torch.device,
) -> EvalResult:
    """Accuracy (threshold 0.5), ROC AUC and BCE of `model` on `pairs` of `source`."""
    was_training = model.training
    model.eval()
    scores: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    loss_sum = 0.0
    try:
        for i in range(0, len(pairs), batch_size):
            batch = source.batch(pairs[i : i + batch_size]).to(device)
            vision, audio = model(batch.faces, batch.mels)
            loss_sum += float(sync_bce(vision, audio, batch.labels)) * len(batch)
            scores.append(sync_probability(vision, audio).cpu().numpy())
            labels.append(batch.labels.cpu().numpy())
    finally:
        model.train(was_training)
    score, label = np.concatenate(scores), np.concatenate(labels)
    accuracy = float(((score > SYNC_THRESHOLD) == (label > 0.5)).mean())
    return EvalResult(accuracy, roc_auc(score, label), loss_sum / len(pairs), len(pairs))


def train_syncnet(config: SyncNetTrainConfig, progress: bool = True) -> SyncNetTrainResult:
    """Train (or resume training) a SyncNet as `config` says; see the module doc for the outputs."""
    spec = validate_syncnet_config(config)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision, log_with="tensorboard", project_dir=str(output_dir)
    )
    try:
        return _train(config, spec, accelerator, progress)
    finally:
        run_files.forget_accelerate_state()


def _train(
    config: SyncNetTrainConfig, spec: PairSpec, accelerator: Accelerator, progress: bool
) -> SyncNetTrainResult:
    output_dir = Path(config.output_dir)
    state_dir = output_dir / STATE_DIR
    set_seed(config.seed + accelerator.process_index)

    split = split_sync_clips(config.data)
    faces = avsync_faces(spec) if isinstance(spec, AVSyncSpec) else None
    train_source = SyncPairSource(
        split.train, spec, config.negative_min_offset, cache_bytes=config.face_cache_bytes, faces=faces
    )
    if not train_source.clips:
        raise ConfigError(
            f"no training clip of {config.data.root} is long enough for {spec.frames}-frame pairs with "
            f"negatives {config.negative_min_offset} frames away",
            "prepare longer clips, or lower frames / negative_min_offset",
        )
    val_source = SyncPairSource(
        split.val, spec, config.negative_min_offset, cache_bytes=config.face_cache_bytes, faces=faces
    )
    held_out = eval_pairs(val_source, config.eval_pairs)
    if not held_out and accelerator.is_main_process:
        log.warning("no held-out clips: set data.val_clips / val_speakers / val_fraction to measure accuracy")

    resuming = (state_dir / "model.safetensors").is_file() or (state_dir / "pytorch_model.bin").is_file()
    model = build_model(spec) if resuming else initial_model(config, spec)
    model.train()
    if isinstance(spec, AVSyncSpec):  # paper §3.5: Adam (0.5, 0.999) for every model
        optimizer: torch.optim.Optimizer = torch.optim.Adam(
            model.parameters(), lr=config.lr, betas=ADAM_BETAS
        )
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=ADAMW_BETAS)
    model, optimizer = accelerator.prepare(model, optimizer)
    counters = TrainProgress()
    accelerator.register_for_checkpointing(counters)
    if resuming:
        accelerator.load_state(str(state_dir))
        if accelerator.is_main_process:
            log.info("resumed from %s at step %d", state_dir, counters.step)
    start_step = counters.step

    stream = SyncPairStream(
        train_source,
        config.batch_size,
        config.single_identity_batches,
        seed=config.seed * 1_000_003 + start_step,  # a resumed run draws new batches
        rank=accelerator.process_index,
    )
    loader: DataLoader[Any] = DataLoader(
        stream,
        batch_size=None,
        collate_fn=identity_collate,
        num_workers=config.data.num_workers,
        persistent_workers=config.data.num_workers > 0,
    )
    if accelerator.is_main_process:
        accelerator.init_trackers(TRACKER_NAME, config=flat_hparams(config))
    unwrapped: nn.Module = accelerator.unwrap_model(model)
    avsync = isinstance(spec, AVSyncSpec)
    last_path = output_dir / (AVSYNC_LAST_CHECKPOINT if avsync else LAST_CHECKPOINT)
    best_path = output_dir / (AVSYNC_BEST_CHECKPOINT if avsync else BEST_CHECKPOINT)
    audio_path = output_dir / AUDIO_ENCODER_FILE if avsync else None

    def run_eval(step: int) -> EvalResult | None:
        if not held_out or not accelerator.is_main_process:
            return None
        result = evaluate(unwrapped, val_source, held_out, config.batch_size, accelerator.device)
        accelerator.log(
            {"val/accuracy": result.accuracy, "val/auc": result.auc, "val/loss": result.loss}, step=step
        )
        if result.accuracy > counters.best_accuracy:
            counters.best_accuracy = result.accuracy
            save_model(unwrapped, spec, best_path)
        return result

    def checkpoint() -> None:
        accelerator.wait_for_everyone()
        accelerator.save_state(str(state_dir))
        if accelerator.is_main_process:
            save_model(unwrapped, spec, last_path)
            if audio_path is not None:
                save_audio_encoder(unwrapped.get_submodule("audio_encoder"), audio_path)

    samples_per_step = config.batch_size * accelerator.num_processes
    bar = tqdm(
        total=config.max_steps,
        initial=start_step,
        desc="syncnet",
        disable=not (progress and accelerator.is_local_main_process),
    )
    window_loss, window_correct, window_count = 0.0, 0, 0
    train_seconds, samples = 0.0, 0
    last_eval: EvalResult | None = None
    evaluated_at, saved_at = -1, -1
    batches = iter(loader)
    started = time.monotonic()
    while counters.step < config.max_steps:
        if run_files.out_of_time(accelerator, time.monotonic() - started, config.max_seconds):
            break
        tick = time.monotonic()
        batch = next(batches).to(accelerator.device)
        with accelerator.autocast():
            vision, audio = model(batch.faces, batch.mels)
        loss = sync_bce(vision, audio, batch.labels)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        counters.step += 1
        samples += samples_per_step
        train_seconds += time.monotonic() - tick

        with torch.no_grad():
            probability = sync_probability(vision, audio)
            correct = int(((probability > SYNC_THRESHOLD) == (batch.labels > 0.5)).sum())
        window_loss += loss.item() * len(batch)
        window_correct += correct
        window_count += len(batch)
        bar.update(1)
        step = counters.step
        if step % config.log_every == 0 or step == config.max_steps:
            metrics = {
                "train/loss": window_loss / window_count,
                "train/accuracy": window_correct / window_count,
                "train/samples_per_second": samples / max(train_seconds, 1e-9),
            }
            accelerator.log(metrics, step=step)
            bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", acc=f"{metrics['train/accuracy']:.2f}")
            window_loss, window_correct, window_count = 0.0, 0, 0
        if step % config.eval_every == 0:
            last_eval, evaluated_at = run_eval(step), step
            if last_eval is not None:
                bar.set_postfix(val_acc=f"{last_eval.accuracy:.3f}", val_auc=f"{last_eval.auc:.3f}")
        if step % config.checkpoint_every == 0:
            checkpoint()
            saved_at = step
    bar.close()

    if evaluated_at != counters.step:
        last_eval = run_eval(counters.step)
    if saved_at != counters.step or not last_path.is_file():
        checkpoint()
    accelerator.end_training()

    result = SyncNetTrainResult(
        output_dir=output_dir,
        steps=counters.step,
        start_step=start_step,
        seconds=train_seconds,
        samples_per_second=samples / train_seconds if train_seconds > 0 else 0.0,
        val_accuracy=last_eval.accuracy if last_eval else None,
        val_auc=last_eval.auc if last_eval and not math.isnan(last_eval.auc) else None,
        best_val_accuracy=counters.best_accuracy if counters.best_accuracy >= 0 else None,
        checkpoint=last_path,
        best_checkpoint=best_path if best_path.is_file() else None,
        train_clips=len(train_source),
        val_clips=len(val_source),
        audio_encoder=audio_path,
        val_loss=last_eval.loss if last_eval else None,
    )
    if accelerator.is_main_process:
        (output_dir / RESULT_FILE).write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    return result
