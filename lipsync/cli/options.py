"""Command-line options shared by several `lipsync` commands, so each is defined once."""

from __future__ import annotations

import argparse
import os
from fractions import Fraction
from pathlib import Path

from lipsync.config import (
    DEFAULT_EXTRA_MARGIN_V15,
    DubSettings,
    FaceSettings,
    RuntimeSettings,
    default_extra_margin,
)
from lipsync.pipeline.avatar_store import default_avatars_dir

DEFAULT_WEIGHTS = Path(os.environ.get("LIPSYNC_WEIGHTS", "models"))
DEFAULT_AVATARS = default_avatars_dir()
WEIGHTS_HELP = "weights folder in MuseTalk's models/ layout (default: $LIPSYNC_WEIGHTS or ./models)"
AVATARS_HELP = "folder of prepared avatars (default: $LIPSYNC_AVATARS or ./avatars)"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_model_options(parser: argparse.ArgumentParser, batch: bool = True) -> None:
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help=WEIGHTS_HELP)
    parser.add_argument(
        "--version", dest="model_version", choices=["v15", "v1"], default="v15", help="MuseTalk weights"
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto", help="auto: fp16 GPU, bf16 CPU"
    )
    if batch:
        parser.add_argument("--batch-size", type=positive_int, default=8, help="frames per network pass")


def add_avatars_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--avatars", type=Path, default=DEFAULT_AVATARS, help=AVATARS_HELP)


def add_face_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bbox-shift", type=int, default=0, help="px: move the crop centre down (+, more mouth) or up (-)"
    )
    parser.add_argument(
        "--extra-margin",
        type=int,
        default=None,
        help=f"px below the chin included in the crop (v15 default {DEFAULT_EXTRA_MARGIN_V15}, v1: 0)",
    )
    parser.add_argument("--face", type=int, default=0, help="which face: 0 = largest, 1 = next ...")


def add_speech_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--silence",
        choices=["keep", "generate"],
        default="keep",
        help="where the speech is silent: keep the source mouth (default) or generate anyway",
    )
    parser.add_argument(
        "--audio-features",
        choices=["segment", "sliding"],
        default="segment",
        help="segment: whisper over whole 30 s segments, as the reference (default); "
        "sliding: the blocks a live stream uses, so the result equals a stream of the same audio",
    )


def settings_from_args(args: argparse.Namespace) -> DubSettings:
    extra_margin = getattr(args, "extra_margin", None)
    if extra_margin is None:
        extra_margin = default_extra_margin(args.model_version)
    return DubSettings(
        version=args.model_version,
        face=FaceSettings(
            bbox_shift=getattr(args, "bbox_shift", 0),
            extra_margin=extra_margin,
            face_index=getattr(args, "face", 0),
        ),
        runtime=RuntimeSettings(
            device=args.device, dtype=args.dtype, batch_size=getattr(args, "batch_size", 8)
        ),
        silence=getattr(args, "silence", "keep"),
        image_fps=getattr(args, "image_fps", Fraction(25)),
        audio_features=getattr(args, "audio_features", "segment"),
    )
