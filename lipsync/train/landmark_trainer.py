"""`lipsync train landmarks`: the landmark-prior family's audio-to-landmark transformer.

One trainer on HuggingFace accelerate (one CPU or GPU; `accelerate launch` for several), as IP_LAP trains
it: batches of 5-frame samples (`landmark_data.py`), L1 + velocity loss (`landmark_losses.py`), Adam with
default betas and no schedule.

OUTPUT_DIR/
  checkpoints/step-N/   full state (transformer, optimiser, RNGs) and trainer.json: a rerun resumes from it
  export/               a landmark-prior weights folder (`landmark_export.py`: the rest copied from
                        base_weights, or scaffolded and marked untrained)
  validation/step-N.png predicted (red) against real (green) lips and jaw over every k-th frame of the
                        first held-out clip (`landmark_inspect.py`)
  logs/                 TensorBoard; metrics.jsonl: every logged value, one JSON line each
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader

from lipsync.models.landmark_prior.landmark_transformer import LandmarkTransformer
from lipsync.train import run_files
from lipsync.train.config import ConfigError, LandmarkTrainConfig, flat_hparams, to_dict
from lipsync.train.landmark_config import validate_landmark_config
from lipsync.train.landmark_data import MIN_CLIP_FRAMES, LandmarkBatch, LandmarkSamples, usable_clips
from lipsync.train.landmark_export import export_landmarks
from lipsync.train.landmark_inspect import clip_inspection, inspection_strip, save_inspection
from lipsync.train.landmark_losses import landmark_loss, velocity_loss
from lipsync.train.landmark_prior_clips import FamilyClips
from lipsync.train.random_batches import RandomBatches, fixed_batch
from lipsync.train.syncnet_data import identity_collate
from lipsync.train.unet_data import split_clips

TENSORBOARD_PROJECT = "landmarks"
PIXELS = 128  # the held-out error is also given in pixels of a face this size (the paper's)


@dataclass
class LandmarkTrainResult:
    steps: int
    start_step: int
    seconds: float
    samples_per_second: float  # 5-frame samples over all processes
    validation_l1: list[tuple[int, float]] = field(default_factory=list)  # held-out L1, crop units
    export_dir: Path | None = None


class LandmarkTrainer:
    """The transformer, optimiser and data of one run; `run()` trains to max_steps."""

    def __init__(self, config: LandmarkTrainConfig, progress: bool = True) -> None:
        self.family = validate_landmark_config(config)
        self.config = config
        self.progress = progress
        self.accelerator = run_files.make_accelerator(config.output_dir, config.mixed_precision, config.seed)
        self.device = self.accelerator.device

        train_folders, val_folders = split_clips(Path(config.data.root), config.data)
        train_clips, val_clips = usable_clips(train_folders), usable_clips(val_folders)
        if not train_clips:
            raise ConfigError(
                f"no training clips of 25 frames or more in {config.data.root} after the validation split",
                "prepare more data, or hold out fewer clips (data.val_*)",
            )
        val_clips = val_clips or train_clips[:1]
        self.train_samples = LandmarkSamples(FamilyClips(train_clips))
        self.val_samples = LandmarkSamples(FamilyClips(val_clips))
        self.inspected = clip_inspection(val_clips[0], config.face_size)

        transformer = LandmarkTransformer(self.family.transformer)
        optimizer = torch.optim.Adam(transformer.parameters(), lr=config.lr)
        self.transformer, self.optimizer = self.accelerator.prepare(transformer, optimizer)
        self.step = run_files.resume(self.accelerator, config.output_dir)
        self.start_step = self.step
        stream = RandomBatches(
            self.train_samples,
            config.batch_size,
            config.seed * 1_000_003 + self.step,
            self.accelerator.process_index,
            MIN_CLIP_FRAMES,
            "prepare longer clips, or hold out fewer clips (data.val_*)",
        )
        self.loader: DataLoader[Any] = DataLoader(
            stream,
            batch_size=None,
            collate_fn=identity_collate,
            num_workers=config.data.num_workers,
            persistent_workers=config.data.num_workers > 0,
        )
        self.validation_batch = fixed_batch(self.val_samples, config.validation_samples, config.seed)

    # --- checkpoints and export -------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        config = self.config
        path = run_files.save_checkpoint(
            self.accelerator, config.output_dir, self.step, to_dict(config), config.keep_checkpoints
        )
        if self.accelerator.is_main_process:
            self.export()
        return path

    def export(self) -> Path:
        """OUTPUT_DIR/export: this run's transformer in a landmark-prior weights folder."""
        config = self.config
        size: Literal["full", "tiny"] = "tiny" if config.tiny else "full"
        info = {
            "steps": self.step,
            "loss": {"l1": config.l1_weight, "velocity": config.velocity_weight},
        }
        transformer = self.accelerator.unwrap_model(self.transformer)
        out = Path(config.output_dir) / run_files.EXPORT_DIR
        return export_landmarks(out, transformer, self.family, config.base_weights, size, info)

    # --- one step ---------------------------------------------------------------------------------

    def _predict(self, batch: LandmarkBatch) -> torch.Tensor:
        return self.transformer(batch.mels, batch.pose, batch.references)

    def train_step(self, batch: LandmarkBatch) -> dict[str, float]:
        batch = batch.to(self.device)
        with self.accelerator.autocast():
            predicted = self._predict(batch)
        loss = landmark_loss(
            predicted.float(), batch.target, self.config.l1_weight, self.config.velocity_weight
        )
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss.total)
        self.optimizer.step()
        return loss.scalars()

    # --- validation -------------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> float:
        """Held-out L1 of the content landmarks (crop units; also in pixels at 128 px) and velocity loss on
        the fixed validation samples; writes the inspection strip."""
        self.transformer.eval()
        batch = self.validation_batch.to(self.device)
        with self.accelerator.autocast():
            predicted = self._predict(batch).float()
        l1 = float((predicted - batch.target).abs().mean())
        velocity = float(velocity_loss(predicted, batch.target))
        self.transformer.train()
        if self.accelerator.is_main_process:
            config = self.config
            transformer = self.accelerator.unwrap_model(self.transformer)
            references = self.family.landmark_references
            strip = inspection_strip(
                transformer, self.inspected, config.strip_every, config.strip_frames, references
            )
            save_inspection(strip, run_files.validation_strip_path(config.output_dir, self.step))
            tracker = self.accelerator.get_tracker("tensorboard", unwrap=True)
            tracker.add_image("validation", strip, self.step, dataformats="HWC")
            values = {
                "validation/l1": l1,
                "validation/l1_px128": l1 * PIXELS,
                "validation/velocity": velocity,
            }
            run_files.log_values(self.accelerator, config.output_dir, self.step, values)
        return l1

    # --- loop -------------------------------------------------------------------------------------

    def run(self) -> LandmarkTrainResult:
        config = self.config
        if self.accelerator.is_main_process:
            self.accelerator.init_trackers(TENSORBOARD_PROJECT, config=flat_hparams(config))
        history: list[tuple[int, float]] = []

        def validate() -> None:
            history.append((self.step, self.validate()))

        seconds, samples_per_second = run_files.train_loop(
            self, config, "landmark transformer", ("l1", "loss/l1"), validate
        )
        export_dir = Path(config.output_dir) / run_files.EXPORT_DIR
        return LandmarkTrainResult(
            steps=self.step,
            start_step=self.start_step,
            seconds=seconds,
            samples_per_second=samples_per_second,
            validation_l1=history,
            export_dir=export_dir if export_dir.is_dir() else None,
        )


def train_landmarks(config: LandmarkTrainConfig, progress: bool = True) -> LandmarkTrainResult:
    """Train (or resume) the landmark transformer as `config` says; see the module doc for the outputs."""
    try:
        return LandmarkTrainer(config, progress).run()
    finally:
        run_files.forget_accelerate_state()
