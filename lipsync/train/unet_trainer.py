"""`lipsync train unet`: the two-stage MuseTalk generator training on HuggingFace accelerate.

One script for one CPU, one GPU, several GPUs or machines (`accelerate launch -m lipsync.cli.main train
unet --config FILE`). Per micro-batch: the frozen VAE encodes the masked target and the reference, the UNet
predicts the target latent in one pass from them and the audio tokens (+ positional encoding, as at
inference), the frozen VAE decodes it with gradients, and the losses compare images in pixel space:
stage 1 L1 + perceptual; stage 2 adds the face and mouth GANs with feature matching and the SyncNet loss.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from lipsync.errors import LipsyncError
from lipsync.models.musetalk.loading import (
    MuseTalkModels,
    TrainingInfo,
    load_unet,
    load_vae,
    load_whisper,
)
from lipsync.models.musetalk.unet import audio_context, run_unet, unet_config
from lipsync.models.musetalk.vae import decode_images, encode_images, masked_copy
from lipsync.models.musetalk.weights import FAMILY, UNET_CONFIG_FILE, WeightsLayout
from lipsync.models.weights import is_untrained
from lipsync.train import run_files
from lipsync.train.config import UNetTrainConfig, flat_hparams, to_dict, validate_unet_config
from lipsync.train.data.features import ensure_whisper_features, stale_whisper_clips, whisper_weights_id
from lipsync.train.export import EXPORT_VERSION, TRAINED_BY, export_unet
from lipsync.train.losses import GanTerms, PatchDiscriminator, PerceptualLoss, crop_mouths, mouth_boxes
from lipsync.train.unet_data import UNetBatch, UNetTrainDataset, collate_unet, split_clips, validation_batch
from lipsync.train.validation import save_strip

log = logging.getLogger(__name__)

DATASET_LENGTH = 1 << 30  # samples are drawn at random; the loader never runs out
TENSORBOARD_PROJECT = "unet"


class TrainingError(LipsyncError):
    """A training run that cannot start or continue."""


@dataclass
class LossTerms:
    """One micro-batch's generator losses (unweighted) and their weighted total."""

    total: torch.Tensor
    l1: torch.Tensor
    perceptual: torch.Tensor | None = None
    gan: torch.Tensor | None = None
    mouth_gan: torch.Tensor | None = None
    feature_matching: torch.Tensor | None = None
    sync: torch.Tensor | None = None

    def scalars(self) -> dict[str, float]:
        terms = {f.name: getattr(self, f.name) for f in fields(self)}
        return {f"loss/{k}": float(v.detach()) for k, v in terms.items() if v is not None}


@dataclass
class Discriminators:
    face: nn.Module | None
    mouth: nn.Module | None

    def active(self) -> list[tuple[str, nn.Module]]:
        return [(name, d) for name, d in (("face", self.face), ("mouth", self.mouth)) if d is not None]


@dataclass
class UNetTrainResult:
    steps: int
    seconds: float
    samples_per_second: float
    validation_l1: list[tuple[int, float]] = field(default_factory=list)
    export_dir: Path | None = None


def _lr_lambda(warmup: int, total: int) -> Any:
    """Linear warm-up, then linear decay to zero at the last step (the reference's 'linear' schedule)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


class UNetTrainer:
    """Holds the networks, optimisers and data of one run; `run()` trains to max_steps."""

    def __init__(self, config: UNetTrainConfig, progress: bool = True) -> None:
        validate_unet_config(config)
        self.config = config
        self.progress = progress
        out = Path(config.output_dir)
        self.accelerator = run_files.make_accelerator(
            out, config.mixed_precision, config.seed, gradient_accumulation_steps=config.grad_accum
        )
        self.device = self.accelerator.device
        layout = WeightsLayout(Path(config.weights), EXPORT_VERSION)
        self.vae = load_vae(layout, self.device, torch.float32)
        if config.gradient_checkpointing:
            self.vae.enable_gradient_checkpointing()  # type: ignore[attr-defined]
        self.unet_config, unet = self._build_unet()
        if config.gradient_checkpointing:
            cast(Any, unet).enable_gradient_checkpointing()
        unet.train()
        self._prepare_features(layout, unet)

        train_clips, val_clips = split_clips(Path(config.data.root), config.data)
        if not train_clips:
            raise TrainingError(
                f"no training clips in {config.data.root} after the validation split",
                "prepare more data, or hold out fewer clips (data.val_*)",
            )
        self.val_clips = val_clips or train_clips[:1]
        self.step = 0
        self.losses = self._build_losses()
        self.discriminators = self._build_discriminators()

        opt = config.optim
        optimizer = torch.optim.AdamW(
            unet.parameters(), lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay, eps=opt.eps
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _lr_lambda(opt.warmup_steps, config.max_steps)
        )
        self.d_optimizers: list[torch.optim.Optimizer] = []
        self.d_schedulers: list[torch.optim.lr_scheduler.LRScheduler] = []
        for _, disc in self.discriminators.active():
            d_opt = torch.optim.AdamW(
                disc.parameters(),
                lr=config.loss.discriminator.lr,
                betas=opt.betas,
                weight_decay=opt.weight_decay,
                eps=opt.eps,
            )
            self.d_optimizers.append(d_opt)
            self.d_schedulers.append(
                torch.optim.lr_scheduler.CosineAnnealingLR(
                    d_opt, T_max=config.max_steps, eta_min=config.loss.discriminator.eta_min
                )
            )
        self.train_clips = train_clips
        self.unet, self.optimizer = self.accelerator.prepare(unet, optimizer)
        prepared = [
            self.accelerator.prepare(d, o)
            for (_, d), o in zip(self.discriminators.active(), self.d_optimizers, strict=True)
        ]
        self._set_discriminators([d for d, _ in prepared])
        self.d_optimizers = [o for _, o in prepared]
        self.accelerator.register_for_checkpointing(self.scheduler, *self.d_schedulers)
        self.step = self._resume()
        self.loader = self._loader(train_clips, seed=config.seed + self.step)
        self.validation_batch = self._validation_batch()

    # --- setup ------------------------------------------------------------------------------------

    def _build_unet(self) -> tuple[dict[str, Any], nn.Module]:
        init = self.config.init_unet
        if init is None:
            from diffusers import UNet2DConditionModel

            config = unet_config(tiny=self.config.unet_size == "tiny")
            return config, UNet2DConditionModel.from_config(config)
        init = Path(init)
        config_path = init.parent / UNET_CONFIG_FILE
        for path, what in ((init, "UNet weights"), (config_path, "its musetalk.json")):
            if not path.is_file():
                raise TrainingError(
                    f"init_unet: {what} {path} does not exist",
                    "point init_unet at a unet.pth / pytorch_model.bin with musetalk.json beside it",
                )
        config = json.loads(config_path.read_text(encoding="utf-8"))
        unet = load_unet(config_path, init, torch.float32)
        return config, nn.Module.to(cast(nn.Module, unet), self.device)

    def _prepare_features(self, layout: WeightsLayout, unet: nn.Module) -> None:
        """Whisper features of every clip, computed once (main process first, others wait). The encoder is
        loaded only when some clip needs it."""
        weights_id = whisper_weights_id(layout.root)
        if not stale_whisper_clips(Path(self.config.data.root), weights_id):
            return
        encoder, extractor = load_whisper(layout, self.device, torch.float32)
        models = MuseTalkModels(
            self.vae,
            unet,  # type: ignore[arg-type]
            encoder,
            extractor,
            self.device,
            torch.float32,
            EXPORT_VERSION,
            is_untrained(layout.root, FAMILY),
            layout.vae_weights,
            self.config.audio_window,
        )
        with self.accelerator.main_process_first():
            computed = ensure_whisper_features(
                Path(self.config.data.root),
                models,
                weights_id,
                progress=self.progress and self.accelerator.is_main_process,
            )
        if computed:
            log.info("computed whisper features for %d clips", computed)
        del encoder

    def _build_losses(self) -> dict[str, nn.Module]:
        loss = self.config.loss
        modules: dict[str, nn.Module] = {}
        if loss.perceptual > 0:
            modules["perceptual"] = PerceptualLoss(loss.perceptual_net).to(self.device)
        if loss.sync > 0:
            from lipsync.models.syncnet import load_syncnet
            from lipsync.train.losses.sync import SyncLoss

            assert loss.syncnet is not None  # validate_unet_config checked it
            model, spec = load_syncnet(Path(loss.syncnet), loss.syncnet_kind)
            if spec.frames != self.config.clip_frames:
                raise TrainingError(
                    f"the SyncNet takes {spec.frames} frames but clip_frames is {self.config.clip_frames}",
                    f"set clip_frames: {spec.frames} for the sync loss (the reference uses 16)",
                )
            modules["sync"] = SyncLoss(model, spec).to(self.device)
        return modules

    def _build_discriminators(self) -> Discriminators:
        loss = self.config.loss
        make = lambda: PatchDiscriminator(loss.discriminator).to(self.device)  # noqa: E731
        return Discriminators(
            face=make() if loss.gan > 0 else None, mouth=make() if loss.mouth_gan > 0 else None
        )

    def _set_discriminators(self, prepared: list[nn.Module]) -> None:
        it = iter(prepared)
        self.discriminators = Discriminators(
            face=next(it) if self.discriminators.face is not None else None,
            mouth=next(it) if self.discriminators.mouth is not None else None,
        )

    def _loader(self, clips: list[Path], seed: int) -> DataLoader[Any]:
        dataset = UNetTrainDataset(
            clips, self.config, length=DATASET_LENGTH, seed=seed, min_frames=self.config.data.min_clip_frames
        )
        loader: DataLoader[Any] = DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            num_workers=self.config.data.num_workers,
            collate_fn=collate_unet,
            persistent_workers=self.config.data.num_workers > 0,
        )
        prepared: DataLoader[Any] = self.accelerator.prepare(loader)
        return prepared

    def _validation_batch(self) -> UNetBatch:
        return validation_batch(
            self.val_clips,
            self.config,
            self.config.validation_samples,
            seed=self.config.seed,
            min_frames=self.config.data.min_clip_frames,
        )

    # --- checkpoints ------------------------------------------------------------------------------

    @property
    def checkpoints_dir(self) -> Path:
        return run_files.checkpoints_dir(self.config.output_dir)

    def _resume(self) -> int:
        return run_files.resume(self.accelerator, self.config.output_dir)

    def save_checkpoint(self) -> Path:
        config = self.config
        path = run_files.save_checkpoint(
            self.accelerator, config.output_dir, self.step, to_dict(config), config.keep_checkpoints
        )
        if self.accelerator.is_main_process:
            self.export()
        return path

    def export(self) -> Path:
        info = TrainingInfo(
            audio_window=self.config.audio_window,
            stage=self.config.stage,
            steps=self.step,
            trained_by=TRAINED_BY,
        )
        unet = self.accelerator.unwrap_model(self.unet)
        return export_unet(
            unet,
            self.unet_config,
            Path(self.config.weights),
            Path(self.config.output_dir) / run_files.EXPORT_DIR,
            info,
        )

    # --- one step ---------------------------------------------------------------------------------

    def _generate(
        self, batch: UNetBatch, reference: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(prediction, ground truth), both (B*F, 3, 256, 256) in [-1, 1]."""
        target = batch.target.flatten(0, 1).to(self.device)
        ref = (batch.reference if reference is None else reference).flatten(0, 1).to(self.device)
        with torch.no_grad():
            latents = torch.cat(
                [encode_images(self.vae, masked_copy(target)), encode_images(self.vae, ref)], 1
            )
        context = audio_context(batch.audio.flatten(0, 1).to(self.device))
        predicted = run_unet(self.unet, latents, context)
        return decode_images(self.vae, predicted), target

    def _generator_losses(self, batch: UNetBatch, pred: torch.Tensor, target: torch.Tensor) -> LossTerms:
        weights = self.config.loss
        l1 = (pred - target).abs().mean()
        terms = LossTerms(total=weights.l1 * l1, l1=l1)
        if "perceptual" in self.losses:
            terms.perceptual = self.losses["perceptual"](pred, target)
            terms.total = terms.total + weights.perceptual * terms.perceptual
        adversarial_on = self.step >= weights.gan_start_step
        for name, disc in self.discriminators.active():
            fake, real = (pred, target) if name == "face" else self._mouths(batch, pred, target)
            gan = GanTerms(disc, weights.feature_matching).generator_losses(real, fake)
            adversarial, matching = gan.adversarial, gan.feature_matching
            weight = weights.gan if name == "face" else weights.mouth_gan
            terms.total = terms.total + matching + (weight * adversarial if adversarial_on else 0.0)
            if name == "face":
                terms.gan = adversarial
            else:
                terms.mouth_gan = adversarial
            terms.feature_matching = (
                matching if terms.feature_matching is None else terms.feature_matching + matching
            )
        if "sync" in self.losses:
            frames = pred.unflatten(0, (-1, self.config.clip_frames))
            terms.sync = self.losses["sync"](frames, batch.mel.to(self.device))
            terms.total = terms.total + weights.sync * terms.sync
        return terms

    def _mouths(
        self, batch: UNetBatch, pred: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        boxes = mouth_boxes(batch.mouth_landmarks.flatten(0, 1), self.config.loss.mouth_padding)
        return crop_mouths(pred, boxes), crop_mouths(target, boxes)

    def _discriminator_step(
        self, batch: UNetBatch, pred: torch.Tensor, target: torch.Tensor
    ) -> dict[str, float]:
        logs: dict[str, float] = {}
        fake_all, real_all = pred.detach(), target
        for (name, disc), opt in zip(self.discriminators.active(), self.d_optimizers, strict=True):
            fake, real = (fake_all, real_all) if name == "face" else self._mouths(batch, fake_all, real_all)
            loss = GanTerms(disc, self.config.loss.feature_matching).discriminator_loss(real, fake)
            self.accelerator.backward(loss)
            opt.step()
            opt.zero_grad(set_to_none=True)
            logs[f"loss/discriminator_{name}"] = float(loss.detach())
        return logs

    def train_step(self, batch: UNetBatch) -> dict[str, float]:
        with self.accelerator.accumulate(self.unet, *[d for _, d in self.discriminators.active()]):
            with self.accelerator.autocast():
                pred, target = self._generate(batch)
                terms = self._generator_losses(batch, pred, target)
            self.accelerator.backward(terms.total)
            if self.accelerator.sync_gradients:
                self.accelerator.clip_grad_norm_(self.unet.parameters(), self.config.optim.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            logs = terms.scalars()
            if self.discriminators.active():
                with self.accelerator.autocast():
                    logs |= self._discriminator_step(batch, pred, target)
        if self.accelerator.sync_gradients:
            self.scheduler.step()
            for scheduler in self.d_schedulers:
                scheduler.step()
        return logs

    # --- validation -------------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> float:
        """L1 on the fixed validation samples; saves an image strip (masked | reference | prediction |
        prediction with the target as its own reference | ground truth)."""
        self.unet.eval()
        batch = self.validation_batch
        with self.accelerator.autocast():
            pred, target = self._generate(batch)
            self_ref, _ = self._generate(batch, reference=batch.target)
        l1 = float((pred - target).abs().mean())
        self.unet.train()
        if self.accelerator.is_main_process:
            columns = [masked_copy(target), batch.reference.flatten(0, 1), pred, self_ref, target]
            path = run_files.validation_strip_path(self.config.output_dir, self.step)
            strip = save_strip([c.float().cpu() for c in columns], path)
            tracker = self.accelerator.get_tracker("tensorboard", unwrap=True)
            tracker.add_image("validation", strip, self.step, dataformats="HWC")
            self._log({"validation/l1": l1})
        return l1

    def _log(self, values: dict[str, float]) -> None:
        run_files.log_values(self.accelerator, self.config.output_dir, self.step, values)

    # --- loop -------------------------------------------------------------------------------------

    def run(self) -> UNetTrainResult:
        config = self.config
        if self.accelerator.is_main_process:
            self.accelerator.init_trackers(TENSORBOARD_PROJECT, config=flat_hparams(config))
        history: list[tuple[int, float]] = []
        if self.step == 0 or self.step % config.validate_every != 0:
            history.append((self.step, self.validate()))
        bar = tqdm(
            total=config.max_steps,
            initial=self.step,
            desc=f"stage {config.stage}",
            unit="step",
            disable=not (self.progress and self.accelerator.is_main_process),
        )
        samples = 0
        started = time.perf_counter()
        batches = run_files.endless(self.loader)
        while self.step < config.max_steps:
            batch = next(batches)
            logs = self.train_step(batch)
            samples += batch.target.shape[0] * batch.target.shape[1] * self.accelerator.num_processes
            if not self.accelerator.sync_gradients:
                continue
            self.step += 1
            bar.update(1)
            if self.step % config.log_every == 0 or self.step == config.max_steps:
                elapsed = time.perf_counter() - started
                logs |= {
                    "lr": float(self.scheduler.get_last_lr()[0]),
                    "samples_per_second": samples / elapsed,
                }
                self._log(logs)
                bar.set_postfix(l1=f"{logs['loss/l1']:.4f}", sps=f"{logs['samples_per_second']:.2f}")
            if self.step % config.validate_every == 0 or self.step == config.max_steps:
                history.append((self.step, self.validate()))
            if self.step % config.checkpoint_every == 0 or self.step == config.max_steps:
                self.save_checkpoint()
        bar.close()
        seconds = time.perf_counter() - started
        self.accelerator.end_training()
        export_dir = Path(config.output_dir) / run_files.EXPORT_DIR
        return UNetTrainResult(
            steps=self.step,
            seconds=seconds,
            samples_per_second=samples / seconds if seconds > 0 else math.nan,
            validation_l1=history,
            export_dir=export_dir if export_dir.is_dir() else None,
        )


def train_unet(config: UNetTrainConfig, progress: bool = True) -> UNetTrainResult:
    return UNetTrainer(config, progress).run()
