"""`lipsync train stabilized`: the stabilized-sync generators G_S (stage silent) and G_L (stage talking).

One trainer on HuggingFace accelerate (one CPU or GPU; `accelerate launch` for several). Per step, on 5
consecutive frames of B clips (`stabilized_data.py`): F_A from the frozen AVSyncNet audio encoder (or one
trained with the generator; or, ablation setup C, a frozen wav2vec2 with a trained projection), the
identity references (stage talking: first closed by the frozen G_S fed silence, unless turned off), the
pose references (targets with the lower half masked); the generator makes the faces, eq. 5's losses
(`stabilized_losses.py`) update it with Adam (0.5, 0.999), then the discriminator takes its step on the
same faces.

OUTPUT_DIR/
  checkpoints/step-N/   full state (networks, optimisers, RNGs) and trainer.json: a rerun resumes from it
  export/               a stabilized-sync weights folder (`lipsync dub --weights OUTPUT_DIR/export`)
  validation/step-N.png per held-out sample (middle frame): identity reference as G sees it, pose reference,
                        generated, ground truth
  logs/                 TensorBoard; metrics.jsonl: every logged value, one JSON line each
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lipsync.errors import WeightsError
from lipsync.models.stabilized_sync.avsyncnet import AVSyncNet
from lipsync.models.stabilized_sync.generator_net import (
    FaceDiscriminator,
    GeneratorConfig,
    TalkingFaceGenerator,
    generate_frames,
    pose_reference,
)
from lipsync.models.stabilized_sync.losses import ADAM_BETAS, discriminator_adversarial_loss
from lipsync.models.stabilized_sync.networks import AudioEncoder, load_models, silent_audio_input
from lipsync.models.stabilized_sync.wav2vec2 import Wav2Vec2AudioEncoder, load_pretrained_encoder
from lipsync.models.stabilized_sync.weights import FamilyConfig
from lipsync.train import run_files
from lipsync.train.config import ConfigError, StabilizedTrainConfig, flat_hparams, to_dict
from lipsync.train.random_batches import RandomBatches, fixed_batch
from lipsync.train.stabilized_avsync import load_avsyncnet
from lipsync.train.stabilized_config import (
    needs_sync_expert,
    require_wav2vec2_folder,
    uses_avsyncnet,
    validate_stabilized_config,
)
from lipsync.train.stabilized_data import MIN_CLIP_FRAMES, StabilizedBatch, StabilizedClips
from lipsync.train.stabilized_export import TRAINED_BY, export_stabilized
from lipsync.train.stabilized_losses import GeneratorLosses, SyncExpert
from lipsync.train.syncnet_data import identity_collate
from lipsync.train.unet_data import split_clips
from lipsync.train.validation import save_strip

log = logging.getLogger(__name__)

# The UNet trainer's output layout (not imported from it: that module loads diffusers, seconds at import).
TENSORBOARD_PROJECT = "stabilized"
STRIP_FRAME = 2  # the middle one of the 5 frames goes into the validation strips


@dataclass
class StabilizedTrainResult:
    steps: int
    start_step: int
    seconds: float
    samples_per_second: float  # 5-frame samples over all processes
    validation_l1: list[tuple[int, float]] = field(default_factory=list)  # held-out L1 per validation
    export_dir: Path | None = None


class StabilizedTrainer:
    """The networks, optimisers and data of one run; `run()` trains to max_steps."""

    def __init__(self, config: StabilizedTrainConfig, progress: bool = True) -> None:
        self.weights = validate_stabilized_config(config)
        self.config = config
        self.progress = progress
        self.accelerator = run_files.make_accelerator(config.output_dir, config.mixed_precision, config.seed)
        self.device = self.accelerator.device
        net = (
            GeneratorConfig.tiny(config.face_size)
            if config.tiny
            else GeneratorConfig.for_size(config.face_size)
        )
        self.net_config = net
        generator, discriminator = TalkingFaceGenerator(net), FaceDiscriminator(net)

        avsyncnet = self._avsyncnet()
        # The wav2vec2 encoder's projection always trains (the wav2vec2 itself only when asked).
        self.audio_trains = config.train_audio_encoder or config.audio_encoder == "wav2vec2"
        audio = self._audio_encoder(net.audio_dim, avsyncnet)
        self.losses = GeneratorLosses(config, self.weights, self._expert(avsyncnet)).to(self.device)
        self.silent, self.silent_audio = self._silent_generator(audio)

        train_clips, val_clips = split_clips(Path(config.data.root), config.data)
        if not train_clips:
            raise ConfigError(
                f"no training clips in {config.data.root} after the validation split",
                "prepare more data, or hold out fewer clips (data.val_*)",
            )
        waveforms = config.audio_encoder == "wav2vec2"
        self.train_clips = StabilizedClips(train_clips, config.face_size, waveforms)
        self.val_clips = StabilizedClips(val_clips or train_clips[:1], config.face_size, waveforms)

        trained = [*generator.parameters(), *(p for p in audio.parameters() if p.requires_grad)]
        optimizer = torch.optim.Adam(trained, lr=config.lr, betas=ADAM_BETAS)
        d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=ADAM_BETAS)
        if self.audio_trains:  # one prepare: the optimiser holds the encoder's parameters too
            prepared = self.accelerator.prepare(generator, discriminator, audio, optimizer, d_optimizer)
            self.generator, self.discriminator, self.audio, self.optimizer, self.d_optimizer = prepared
        else:
            prepared = self.accelerator.prepare(generator, discriminator, optimizer, d_optimizer)
            self.generator, self.discriminator, self.optimizer, self.d_optimizer = prepared
            self.audio = audio.to(self.device).eval()
        self.step = self._resume()
        self.start_step = self.step
        stream = RandomBatches(
            self.train_clips,
            config.batch_size,
            config.seed * 1_000_003 + self.step,
            self.accelerator.process_index,
            MIN_CLIP_FRAMES,
            "prepare longer clips (data.min_clip_frames does not apply here)",
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

    def _avsyncnet(self) -> AVSyncNet | None:
        config = self.config
        if config.avsyncnet is None or not uses_avsyncnet(config):
            return None
        model, spec = load_avsyncnet(config.avsyncnet)
        if spec.face_size != config.face_size:
            log.warning(
                "the AVSyncNet %s was trained on %d px faces, this generator makes %d px ones",
                config.avsyncnet,
                spec.face_size,
                config.face_size,
            )
        return model

    def _audio_encoder(
        self, audio_dim: int, avsyncnet: AVSyncNet | None
    ) -> AudioEncoder | Wav2Vec2AudioEncoder:
        """F_A's encoder: AVSyncNet's (frozen unless train_audio_encoder), or a pretrained wav2vec2 whose
        projection trains (and the wav2vec2 too with train_audio_encoder)."""
        config = self.config
        folder = require_wav2vec2_folder(config)
        if folder is not None:
            try:
                return load_pretrained_encoder(folder, audio_dim, config.train_audio_encoder)
            except WeightsError as exc:
                raise ConfigError(f"wav2vec2: {exc.problem}", exc.fix) from exc
        audio = AudioEncoder(audio_dim)
        if avsyncnet is not None:
            audio.encoder.load_state_dict(avsyncnet.audio_encoder.state_dict())
        audio.requires_grad_(config.train_audio_encoder).train(config.train_audio_encoder)
        return audio

    def _expert(self, avsyncnet: AVSyncNet | None) -> SyncExpert | None:
        """The frozen scorer of the sync loss (stage talking with a sync weight), else None."""
        if not needs_sync_expert(self.config):
            return None
        syncnet = self.config.loss.wav2lip_syncnet  # validated: set whenever sync_expert is wav2lip
        if self.config.loss.sync_expert == "wav2lip" and syncnet is not None:
            return SyncExpert.wav2lip(syncnet)
        return SyncExpert(avsyncnet)

    def _silent_generator(
        self, audio: AudioEncoder | Wav2Vec2AudioEncoder
    ) -> tuple[TalkingFaceGenerator | None, Tensor | None]:
        """Stage talking with silent references: the frozen G_S of the silent stage's export, and F_A of
        silence from the audio encoder G_S was trained with (the one in that export)."""
        config = self.config
        if config.stage != "talking" or not config.silent_references or config.silent_generator is None:
            return None, None
        models = load_models(
            Path(config.silent_generator), self.device, torch.float32, silent_lip_references=True, fold=False
        )
        if models.config.generator != self.net_config:
            raise ConfigError(
                f"silent_generator {config.silent_generator} holds a G_S of {models.config.generator}, "
                f"this run trains {self.net_config}",
                "set face_size / tiny to the silent stage's, or train G_S with them",
            )
        silent = models.silent_generator  # unfolded: the export writes it back in the file's layout
        assert silent is not None
        theirs, ours = models.audio_encoder.state_dict(), audio.state_dict()
        same = models.config.audio_encoder == config.audio_encoder and theirs.keys() == ours.keys()
        if (
            self.audio_trains
            or not same
            or any(not torch.equal(theirs[k], ours[k].to(theirs[k])) for k in ours)
        ):
            log.warning(
                "G_L's audio encoder is not the one G_S was trained with (%s); at inference the exported "
                "encoder feeds both, so G_S will hear silence through another encoder",
                config.silent_generator,
            )
        with torch.no_grad():
            silence = torch.from_numpy(silent_audio_input(models.config)).to(self.device)
            silent_audio = models.audio_encoder(silence)
        return silent, silent_audio

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
        """OUTPUT_DIR/export: G_L (stage silent: G_S, which then also fills the G_S slot), G_S and the audio
        encoder this run used."""
        config = self.config
        generator = self.accelerator.unwrap_model(self.generator)
        talking = config.stage == "talking"
        silent = self.silent if talking and self.silent is not None else generator
        audio = self.accelerator.unwrap_model(self.audio)
        family = FamilyConfig(self.net_config, silent_lip_references=talking and self.silent is not None)
        if isinstance(audio, Wav2Vec2AudioEncoder):
            family = replace(
                family, audio_encoder="wav2vec2", wav2vec2=audio.hf_config, wav2vec2_normalize=audio.normalize
            )
        loss = config.loss
        info = {
            "trained_by": TRAINED_BY,
            "stage": config.stage,
            "steps": self.step,
            "face_size": config.face_size,
            "silent_references": family.silent_lip_references,
            "train_audio_encoder": config.train_audio_encoder,
            "sync_loss": loss.sync_loss if needs_sync_expert(config) else None,
            "sync_expert": loss.sync_expert if needs_sync_expert(config) else None,
            "triplet_loss": loss.triplet_loss if self.weights.triplet > 0 else None,
            "avsyncnet": str(config.avsyncnet) if config.avsyncnet and uses_avsyncnet(config) else None,
            "audio_encoder": config.audio_encoder,
            "wav2vec2": str(config.wav2vec2) if config.wav2vec2 else None,
        }
        size: Literal["full", "tiny"] = "tiny" if config.tiny else "full"
        out = Path(config.output_dir) / run_files.EXPORT_DIR
        encoder = audio if isinstance(audio, Wav2Vec2AudioEncoder) else audio.encoder
        return export_stabilized(out, family, generator, silent, encoder, size, info)

    # --- one step ---------------------------------------------------------------------------------

    def _generate(self, batch: StabilizedBatch) -> tuple[Tensor, Tensor]:
        """(generated faces, identity references as the generator saw them), both (B, 5, 3, S, S)."""
        frames = batch.mels.shape[:2]
        inputs = batch.waves if self.config.audio_encoder == "wav2vec2" else batch.mels
        assert inputs is not None  # the clips give waveform windows when the wav2vec2 encoder reads them
        with torch.set_grad_enabled(self.audio_trains and torch.is_grad_enabled()):
            audio = self.audio(inputs.flatten(0, 1)).unflatten(0, frames)
        identity = batch.identity
        if self.silent is not None and self.silent_audio is not None:
            with torch.no_grad():
                silence = self.silent_audio.expand(*frames, -1)
                identity = generate_frames(self.silent, identity, pose_reference(identity), silence)
        generated = generate_frames(self.generator, identity, pose_reference(batch.target), audio)
        return generated, identity

    def train_step(self, batch: StabilizedBatch) -> dict[str, float]:
        batch = batch.to(self.device)
        with self.accelerator.autocast():
            generated, identity = self._generate(batch)
            fake_logits = self.discriminator(generated.flatten(0, 1))
            terms = self.losses(generated, batch.target, identity, batch.sync_mels, fake_logits)
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(terms.total)
        self.optimizer.step()
        with self.accelerator.autocast():
            real = self.discriminator(batch.target.flatten(0, 1))
            fake = self.discriminator(generated.detach().flatten(0, 1))
            d_loss = discriminator_adversarial_loss(real, fake)
        self.d_optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(d_loss)
        self.d_optimizer.step()
        return terms.scalars() | {"loss/discriminator": float(d_loss.detach())}

    # --- validation -------------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> float:
        """L1 of generated against ground-truth faces on the fixed held-out samples; writes a strip."""
        self.generator.eval()
        self.audio.eval()
        batch = self.validation_batch.to(self.device)
        with self.accelerator.autocast():
            generated, identity = self._generate(batch)
        l1 = float((generated.float() - batch.target).abs().mean())
        self.generator.train()
        self.audio.train(self.audio_trains)
        if self.accelerator.is_main_process:
            columns = [identity, pose_reference(batch.target), generated, batch.target]
            path = run_files.validation_strip_path(self.config.output_dir, self.step)
            strip = save_strip([c[:, STRIP_FRAME].float().cpu() for c in columns], path)
            tracker = self.accelerator.get_tracker("tensorboard", unwrap=True)
            tracker.add_image("validation", strip, self.step, dataformats="HWC")
            self._log({"validation/l1": l1})
        return l1

    def _log(self, values: dict[str, float]) -> None:
        run_files.log_values(self.accelerator, self.config.output_dir, self.step, values)

    # --- loop -------------------------------------------------------------------------------------

    def run(self) -> StabilizedTrainResult:
        config = self.config
        if self.accelerator.is_main_process:
            self.accelerator.init_trackers(TENSORBOARD_PROJECT, config=flat_hparams(config))
        history: list[tuple[int, float]] = []

        def validate() -> None:
            history.append((self.step, self.validate()))

        seconds, samples_per_second = run_files.train_loop(
            self, config, f"stabilized {config.stage}", ("l1", "loss/pixel"), validate
        )
        export_dir = Path(config.output_dir) / run_files.EXPORT_DIR
        return StabilizedTrainResult(
            steps=self.step,
            start_step=self.start_step,
            seconds=seconds,
            samples_per_second=samples_per_second,
            validation_l1=history,
            export_dir=export_dir if export_dir.is_dir() else None,
        )


def train_stabilized(config: StabilizedTrainConfig, progress: bool = True) -> StabilizedTrainResult:
    """Train (or resume) G_S or G_L as `config` says; see the module doc for the outputs."""
    try:
        return StabilizedTrainer(config, progress).run()
    finally:
        run_files.forget_accelerate_state()
