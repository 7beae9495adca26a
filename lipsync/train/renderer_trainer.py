"""`lipsync train renderer`: the landmark-prior family's alignment model M_a and rendering model M_r.

One trainer on HuggingFace accelerate (one CPU or GPU; `accelerate launch` for several). Per step, on B
target frames (`renderer_data.py`: family crops, real landmark sketches of t − 2 … t + 2, N image and L lip
references from other frames of the clip, m_t): the occluded target goes through M_a with the references,
M_r draws the face, the stage's terms (`renderer_losses.py`) update the trained models with Adam (IP_LAP:
lr 1e-4, default betas; the paper names no optimiser), then the discriminator takes its step on the same
faces (Adam, betas 0.5, 0.999, IP_LAP's).

Stages (`stage`): joint (the default: the paper trains one loss over both models), alignment (M_a on L_w
alone), rendering (M_r with the frozen M_a of `alignment_weights`).

OUTPUT_DIR/
  checkpoints/step-N/   full state (networks, optimisers, RNGs) and trainer.json: a rerun resumes from it
  export/               a landmark-prior weights folder (`lipsync dub --weights OUTPUT_DIR/export`)
  validation/step-N.png per held-out sample: occluded target, warped references Ī^r, output, real
  logs/                 TensorBoard; metrics.jsonl: every logged value, one JSON line each
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lipsync.errors import WeightsError
from lipsync.eval.image_metrics import psnr
from lipsync.models.landmark_prior.alignment import Alignment, AlignmentModel
from lipsync.models.landmark_prior.generator import occlude, to_images
from lipsync.models.landmark_prior.landmark_transformer import LandmarkTransformer, TransformerConfig
from lipsync.models.landmark_prior.losses import gan_discriminator_loss
from lipsync.models.landmark_prior.networks import load_models
from lipsync.models.landmark_prior.renderer import RenderingModel
from lipsync.models.landmark_prior.weights import TRANSFORMER_PART, FamilyConfig, read_config
from lipsync.train import run_files
from lipsync.train.config import ConfigError, RendererTrainConfig, flat_hparams, to_dict
from lipsync.train.random_batches import RandomBatches, fixed_batch
from lipsync.train.renderer_config import render_config, validate_renderer_config
from lipsync.train.renderer_data import MIN_CLIP_FRAMES, RendererBatch, RendererClips
from lipsync.train.renderer_export import export_renderer, transformer_untrained
from lipsync.train.renderer_losses import RendererLosses, StepLosses, discriminator
from lipsync.train.syncnet_data import identity_collate
from lipsync.train.unet_data import split_clips
from lipsync.train.validation import save_strip

TENSORBOARD_PROJECT = "renderer"
D_BETAS = (0.5, 0.999)  # IP_LAP's discriminator Adam; M_a and M_r use Adam's defaults (IP_LAP)


@dataclass
class RendererTrainResult:
    steps: int
    start_step: int
    seconds: float
    samples_per_second: float
    validation: list[dict[str, float]] = field(default_factory=list)  # step, l1, psnr, loss per validation
    export_dir: Path | None = None


class RendererTrainer:
    """The networks, optimisers and data of one run; `run()` trains to max_steps."""

    def __init__(self, config: RendererTrainConfig, progress: bool = True) -> None:
        self.weights = validate_renderer_config(config)
        self.config = config
        self.progress = progress
        self.accelerator = run_files.make_accelerator(config.output_dir, config.mixed_precision, config.seed)
        self.device = self.accelerator.device
        self.render = render_config(config)
        self.family, self.transformer_source = self._family()
        self.losses = RendererLosses(config, self.weights).to(self.device)

        train_clips, val_clips = split_clips(Path(config.data.root), config.data)
        if not train_clips:
            raise ConfigError(
                f"no training clips in {config.data.root} after the validation split",
                "prepare more data, or hold out fewer clips (data.val_*)",
            )
        counts = (config.references, config.lip_references)
        self.train_clips = RendererClips(train_clips, config.face_size, *counts)
        self.val_clips = RendererClips(val_clips or train_clips[:1], config.face_size, *counts)

        stage = config.stage
        alignment = self._frozen_alignment() if stage == "rendering" else AlignmentModel(self.render)
        renderer = RenderingModel(self.render)
        d = discriminator(config)
        trained = [
            *(renderer.parameters() if stage != "alignment" else ()),
            *(alignment.parameters() if stage != "rendering" else ()),
        ]
        optimizer = torch.optim.Adam(trained, lr=config.lr)
        d_optimizer = torch.optim.Adam(d.parameters(), lr=config.lr, betas=D_BETAS)
        accelerator = self.accelerator
        if stage == "alignment":
            self.alignment, self.optimizer = accelerator.prepare(alignment, optimizer)
            self.renderer, self.discriminator, self.d_optimizer = renderer, d, None
        elif stage == "rendering":
            self.renderer, self.discriminator, self.optimizer, self.d_optimizer = accelerator.prepare(
                renderer, d, optimizer, d_optimizer
            )
            self.alignment = alignment.to(self.device)
        else:
            prepared = accelerator.prepare(alignment, renderer, d, optimizer, d_optimizer)
            self.alignment, self.renderer, self.discriminator, self.optimizer, self.d_optimizer = prepared
        self.step = run_files.resume(accelerator, config.output_dir)
        self.start_step = self.step
        stream = RandomBatches(
            self.train_clips,
            config.batch_size,
            config.seed * 1_000_003 + self.step,
            accelerator.process_index,
            MIN_CLIP_FRAMES,
            "prepare longer clips (lipsync data prepare --min-clip-seconds)",
        )
        self.loader: DataLoader[Any] = DataLoader(
            stream,
            batch_size=None,
            collate_fn=identity_collate,
            num_workers=config.data.num_workers,
            persistent_workers=config.data.num_workers > 0,
        )
        self.validation_batch = fixed_batch(self.val_clips, config.validation_samples, config.seed)

    # --- setup ------------------------------------------------------------------------------------

    def _family(self) -> tuple[FamilyConfig, Path | None]:
        """The export's config.json, and the folder whose transformer it copies (None: an untrained one).
        The transformer comes from `landmark_transformer`, else (stage rendering) from `alignment_weights`."""
        config = self.config
        source = config.landmark_transformer or config.alignment_weights
        if source is None:
            transformer = TransformerConfig.tiny() if config.tiny else TransformerConfig()
            family = FamilyConfig(transformer, self.render)
        else:
            field_name = "landmark_transformer" if config.landmark_transformer else "alignment_weights"
            try:
                family = replace(read_config(source), render=self.render)
            except WeightsError as exc:
                raise ConfigError(f"{field_name}: {exc.problem}", exc.fix) from exc
        counts = (config.inference_references, config.inference_lip_references)
        return replace(family, references=counts[0], lip_references=counts[1]), source

    def _frozen_alignment(self) -> AlignmentModel:
        """Stage rendering: M_a of `alignment_weights`, frozen, with this run's widths and switches."""
        folder = self.config.alignment_weights
        assert folder is not None  # validated
        try:
            models = load_models(folder, self.device, torch.float32)
        except WeightsError as exc:
            raise ConfigError(f"alignment_weights: {exc.problem}", exc.fix) from exc
        if models.config.render != self.render:
            raise ConfigError(
                f"alignment_weights {folder} holds an M_a of {models.config.render}, "
                f"this run trains {self.render}",
                "set face_size / tiny / width_divisor / the ablation switches to that run's, "
                "or train M_a with them",
            )
        return models.alignment

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
        """OUTPUT_DIR/export: this run's M_a and M_r with the transformer of `_family`."""
        config = self.config
        alignment = self.accelerator.unwrap_model(self.alignment)
        renderer = self.accelerator.unwrap_model(self.renderer)
        source = self.transformer_source
        untrained: list[str] = []
        transformer: Path | torch.nn.Module
        if source is None:
            with torch.random.fork_rng():
                torch.manual_seed(config.seed)
                transformer = LandmarkTransformer(self.family.transformer)
            untrained.append(TRANSFORMER_PART)
        else:
            transformer = source
            if transformer_untrained(source):
                untrained.append(TRANSFORMER_PART)
        if config.stage == "alignment":
            untrained.append("renderer")
        info = {
            "stage": config.stage,
            "steps": self.step,
            "face_size": config.face_size,
            "width_divisor": config.width_divisor,
            "landmark_transformer": str(source) if source else None,
            "alignment_weights": str(config.alignment_weights) if config.alignment_weights else None,
            "ablation": {
                "without_alignment": config.without_alignment,
                "without_lip_module": config.without_lip_module,
                "without_audio_attention": config.without_audio_attention,
            },
            "training_references": [config.references, config.lip_references],
            "loss_weights": to_dict(self.weights),
            "vgg19": str(config.loss.vgg19_weights) if config.loss.vgg19_weights else "untrained",
        }
        size: Literal["full", "tiny"] = "tiny" if config.tiny or config.width_divisor > 1 else "full"
        out = Path(config.output_dir) / run_files.EXPORT_DIR
        return export_renderer(out, self.family, alignment, renderer, transformer, size, untrained, info)

    # --- one step ---------------------------------------------------------------------------------

    def _forward(self, batch: RendererBatch) -> tuple[Tensor, Alignment, Tensor | None]:
        """(occluded targets, M_a's output, M_r's faces — None in stage alignment)."""
        masked = occlude(batch.target)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.stage != "rendering"):
            aligned = self.alignment(
                masked, batch.target_sketches, batch.references, batch.reference_sketches
            )
        if self.config.stage == "alignment":
            return masked, aligned, None
        output = self.renderer(
            masked, batch.target_sketches, batch.lip_references, batch.lip_sketches, batch.mel, aligned
        )
        return masked, aligned, output

    def train_step(self, batch: RendererBatch) -> dict[str, float]:
        batch = batch.to(self.device)
        warming = self.config.stage == "joint" and self.step < self.config.warmup_steps
        with self.accelerator.autocast():
            _, aligned, output = self._forward(batch)
            if output is None or warming:
                losses: StepLosses = self.losses.warp(aligned.image, batch.target)
            else:
                fake = self.discriminator(output)
                with torch.no_grad():
                    real = self.discriminator(batch.target)
                losses = self.losses(aligned.image, output, batch.target, fake, real)
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(losses.total)
        self.optimizer.step()
        logs = losses.scalars()
        if output is None or warming or self.d_optimizer is None:
            return logs
        with self.accelerator.autocast():
            d_loss = gan_discriminator_loss(
                self.discriminator(batch.target), self.discriminator(output.detach())
            )
        self.d_optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(d_loss)
        self.d_optimizer.step()
        return logs | {"loss/discriminator": float(d_loss.detach())}

    # --- validation -------------------------------------------------------------------------------

    def _trained(self) -> list[torch.nn.Module]:
        stage = self.config.stage
        return [
            m
            for m, trains in ((self.alignment, stage != "rendering"), (self.renderer, stage != "alignment"))
            if trains
        ]

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """On the fixed held-out samples: L1 and PSNR of the output (stage alignment: of Ī^r) against the
        real frame, and the stage's perceptual term (L_w in stage alignment, else L_r); writes a strip."""
        for network in self._trained():
            network.eval()
        batch = self.validation_batch.to(self.device)
        with self.accelerator.autocast():
            masked, aligned, output = self._forward(batch)
        face = (aligned.image if output is None else output).float()
        loss = float(self.losses.vgg.perceptual(face, batch.target))
        l1 = float((face - batch.target).abs().mean())
        ours, real = to_images(face), to_images(batch.target)
        values = {
            "validation/l1": l1,
            "validation/psnr": float(
                np.mean([min(psnr(a, b), 100.0) for a, b in zip(ours, real, strict=True)])
            ),
            "validation/loss": loss,
        }
        for network in self._trained():
            network.train()
        if self.accelerator.is_main_process:
            columns = [masked, aligned.image, face, batch.target]
            path = run_files.validation_strip_path(self.config.output_dir, self.step)
            strip = save_strip([c.float().cpu() * 2 - 1 for c in columns], path)
            tracker = self.accelerator.get_tracker("tensorboard", unwrap=True)
            tracker.add_image("validation", strip, self.step, dataformats="HWC")
            self._log(values)
        return values

    def _log(self, values: dict[str, float]) -> None:
        run_files.log_values(self.accelerator, self.config.output_dir, self.step, values)

    # --- loop -------------------------------------------------------------------------------------

    def run(self) -> RendererTrainResult:
        config = self.config
        if self.accelerator.is_main_process:
            self.accelerator.init_trackers(TENSORBOARD_PROJECT, config=flat_hparams(config))
        history: list[dict[str, float]] = []

        def validate() -> None:
            history.append({"step": self.step} | self.validate())

        seconds, samples_per_second = run_files.train_loop(
            self, config, f"renderer {config.stage}", ("loss", "loss/total"), validate
        )
        export_dir = Path(config.output_dir) / run_files.EXPORT_DIR
        return RendererTrainResult(
            steps=self.step,
            start_step=self.start_step,
            seconds=seconds,
            samples_per_second=samples_per_second,
            validation=history,
            export_dir=export_dir if export_dir.is_dir() else None,
        )


def train_renderer(config: RendererTrainConfig, progress: bool = True) -> RendererTrainResult:
    """Train (or resume) M_a and/or M_r as `config` says; see the module doc for the outputs."""
    try:
        return RendererTrainer(config, progress).run()
    finally:
        run_files.forget_accelerate_state()
