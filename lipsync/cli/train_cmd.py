"""`lipsync train unet|syncnet|stabilized --config FILE`: train a generator or a sync expert.

`unet` trains MuseTalk's generator; `syncnet` a SyncNet expert (or, `kind: avsyncnet`, the stabilized-sync
family's AVSyncNet); `stabilized` the stabilized-sync family's G_S (stage silent) or G_L (stage talking);
`landmarks` the landmark-prior family's audio-to-landmark transformer; `renderer` its alignment and
rendering models.
All run on HuggingFace accelerate: plain `lipsync train ...` uses one device (a GPU when there is one);
`accelerate launch -m lipsync.cli.main train ...` runs the same command on several GPUs or machines.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def register(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train a generator (UNet, stabilized-sync) or a sync expert")
    train_commands = train.add_subparsers(dest="train_command", required=True)
    unet = train_commands.add_parser(
        "unet", help="train the generator (stage 1: L1 + perceptual; stage 2: + GANs + sync loss)"
    )
    syncnet = train_commands.add_parser(
        "syncnet",
        help="train a SyncNet expert for the sync loss (kind avsyncnet: stabilized-sync's AVSyncNet)",
    )
    stabilized = train_commands.add_parser(
        "stabilized",
        help="train the stabilized-sync generators: G_S (stage silent), then G_L (stage talking)",
    )
    landmarks = train_commands.add_parser(
        "landmarks", help="train the landmark-prior family's audio-to-landmark transformer (IP_LAP's)"
    )
    renderer = train_commands.add_parser(
        "renderer", help="train the landmark-prior family's alignment and rendering models (M_a, M_r)"
    )
    for command in (unet, syncnet, stabilized, landmarks, renderer):
        command.add_argument("--config", type=Path, required=True, help="YAML config (see configs/train/)")
        command.add_argument("--output-dir", type=Path, help="override the config's output_dir")
        command.add_argument("--max-steps", type=int, help="override the config's max_steps")
        command.add_argument("--data", type=Path, help="override the config's data.root")
        command.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    unet.add_argument("--weights", type=Path, help="override the config's weights (frozen VAE + whisper)")


def _override(config: T, args: argparse.Namespace) -> T:
    changes: dict[str, Any] = {}
    if args.output_dir is not None:
        changes["output_dir"] = args.output_dir
    if args.max_steps is not None:
        changes["max_steps"] = args.max_steps
    if args.data is not None:
        changes["data"] = dataclasses.replace(config.data, root=args.data)  # type: ignore[attr-defined]
    if getattr(args, "weights", None) is not None:
        changes["weights"] = args.weights
    return dataclasses.replace(config, **changes)  # type: ignore[type-var]


def run(args: argparse.Namespace) -> int:
    from lipsync.train.config import StabilizedTrainConfig, SyncNetTrainConfig, UNetTrainConfig, load_config

    if args.train_command == "stabilized":
        from lipsync.train.stabilized_trainer import train_stabilized

        stabilized = train_stabilized(
            _override(load_config(args.config, StabilizedTrainConfig), args), progress=not args.quiet
        )
        print(f"trained {stabilized.steps} steps in {stabilized.seconds:.0f} s")
        for step, l1 in stabilized.validation_l1:
            print(f"  held-out L1 at step {step}: {l1:.4f}")
        if stabilized.export_dir is not None:
            print(
                f"exported to {stabilized.export_dir} "
                f"(use: lipsync dub ... --weights {stabilized.export_dir})"
            )
        return 0

    if args.train_command == "landmarks":
        return _run_landmarks(args)

    if args.train_command == "renderer":
        return _run_renderer(args)

    if args.train_command == "unet":
        from lipsync.train.unet_trainer import train_unet

        config = _override(load_config(args.config, UNetTrainConfig), args)
        result = train_unet(config, progress=not args.quiet)
        speed = f"{result.samples_per_second:.2f} samples/s"
        print(f"trained {result.steps} steps in {result.seconds:.0f} s ({speed})")
        for step, l1 in result.validation_l1:
            print(f"  validation L1 at step {step}: {l1:.4f}")
        if result.export_dir is not None:
            print(f"exported to {result.export_dir} (use: lipsync dub ... --weights {result.export_dir})")
        return 0

    from lipsync.train.syncnet_trainer import train_syncnet

    sync_config = _override(load_config(args.config, SyncNetTrainConfig), args)
    sync = train_syncnet(sync_config, progress=not args.quiet)
    print(f"trained {sync.steps} steps in {sync.seconds:.0f} s ({sync.samples_per_second:.0f} samples/s)")
    if sync.val_accuracy is not None:
        print(
            f"  held-out accuracy {sync.val_accuracy:.3f}, AUC {sync.val_auc:.3f} (in-sync vs shifted pairs)"
        )
    print(
        f"  checkpoints: {sync.checkpoint}"
        + (f", best {sync.best_checkpoint}" if sync.best_checkpoint else "")
    )
    if sync.audio_encoder is not None:
        print(f"  audio encoder (for a stabilized-sync weights folder): {sync.audio_encoder}")
    return 0


def _run_landmarks(args: argparse.Namespace) -> int:
    from lipsync.train.config import LandmarkTrainConfig, load_config
    from lipsync.train.landmark_trainer import PIXELS, train_landmarks

    result = train_landmarks(_override(load_config(args.config, LandmarkTrainConfig), args), not args.quiet)
    print(f"trained {result.steps} steps in {result.seconds:.0f} s")
    for step, l1 in result.validation_l1:
        print(
            f"  held-out landmark L1 at step {step}: {l1:.5f} of the crop ({l1 * PIXELS:.2f} px at {PIXELS})"
        )
    if result.export_dir is not None:
        print(f"exported to {result.export_dir} (use: lipsync dub ... --weights {result.export_dir})")
    return 0


def _run_renderer(args: argparse.Namespace) -> int:
    from lipsync.train.config import RendererTrainConfig, load_config
    from lipsync.train.renderer_trainer import train_renderer

    result = train_renderer(_override(load_config(args.config, RendererTrainConfig), args), not args.quiet)
    print(f"trained {result.steps} steps in {result.seconds:.0f} s")
    for values in result.validation:
        print(
            f"  held-out at step {values['step']:.0f}: L1 {values['validation/l1']:.4f}, "
            f"PSNR {values['validation/psnr']:.2f} dB, perceptual {values['validation/loss']:.4f}"
        )
    if result.export_dir is not None:
        print(f"exported to {result.export_dir} (use: lipsync dub ... --weights {result.export_dir})")
    return 0
