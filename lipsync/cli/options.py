"""Command-line options shared by several `lipsync` commands, each defined once.

Every default comes from the settings dataclasses in `lipsync.config`, so the library and the command line
agree. Nothing here imports torch, diffusers or mediapipe: `lipsync --help` stays quick.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path
from typing import Any, get_args

from lipsync.config import (
    DEFAULT_EXTRA_MARGIN_V15,
    AudioFeatureMode,
    DeviceChoice,
    DtypeChoice,
    DubSettings,
    FaceSettings,
    RuntimeSettings,
    SilenceMode,
    default_avatars_dir,
    default_extra_margin,
    default_weights_dir,
)
from lipsync.models.families import FAMILY_NAMES

DUB = DubSettings()
FACE = FaceSettings()
RUNTIME = RuntimeSettings()
WEIGHTS_HELP = "weights folder (default: $LIPSYNC_WEIGHTS or ./models); its lipsync.json says what it holds"
AVATARS_HELP = "folder of prepared avatars (default: $LIPSYNC_AVATARS or ./avatars)"

# Settings fields a message from the library names, and the flag that sets each.
FLAGS = {
    "model": "--model",
    "version": "--version",
    "device": "--device",
    "dtype": "--dtype",
    "batch_size": "--batch-size",
    "bbox_shift": "--bbox-shift",
    "extra_margin": "--extra-margin",
    "face_index": "--face",
    "silence": "--silence",
    "image_fps": "--image-fps",
    "audio_features": "--audio-features",
    "face_size": "--face-size",
}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_model_options(parser: argparse.ArgumentParser, batch: bool = True) -> None:
    parser.add_argument("--weights", type=Path, default=default_weights_dir(), help=WEIGHTS_HELP)
    parser.add_argument(
        "--model",
        choices=FAMILY_NAMES,
        default=DUB.model,
        help="model family, where the weights folder holds more than one",
    )
    parser.add_argument(
        "--version",
        dest="model_version",
        default=DUB.version,
        help="weights version: MuseTalk v15 or v1 (default: what the folder's lipsync.json says, else "
        "the family's default, v15 for MuseTalk)",
    )
    parser.add_argument("--device", choices=get_args(DeviceChoice), default=RUNTIME.device)
    parser.add_argument(
        "--dtype", choices=get_args(DtypeChoice), default=RUNTIME.dtype, help="auto: fp16 GPU, bf16 CPU"
    )
    if batch:
        parser.add_argument(
            "--batch-size",
            type=positive_int,
            default=RUNTIME.batch_size,
            help=f"frames per network pass (default {RUNTIME.batch_size})",
        )


def add_avatars_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--avatars", type=Path, default=default_avatars_dir(), help=AVATARS_HELP)


def add_face_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bbox-shift",
        type=int,
        default=FACE.bbox_shift,
        help="px: move the crop centre down (+, more mouth) or up (-)",
    )
    parser.add_argument(
        "--extra-margin",
        type=int,
        default=None,
        help=f"px below the chin included in the crop (v15 default {DEFAULT_EXTRA_MARGIN_V15}, v1: 0)",
    )
    parser.add_argument(
        "--face", type=int, default=FACE.face_index, help="which face: 0 = largest, 1 = next ..."
    )


def positive_fraction(text: str) -> Fraction:
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def add_image_fps_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--image-fps",
        type=positive_fraction,
        default=DUB.image_fps,
        help=f"frame rate for a photo (default {DUB.image_fps})",
    )


def add_speech_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--silence",
        choices=get_args(SilenceMode),
        default=DUB.silence,
        help="where the speech is silent: keep the source mouth (default) or generate anyway",
    )
    parser.add_argument(
        "--audio-features",
        choices=get_args(AudioFeatureMode),
        default=DUB.audio_features,
        help="segment: whisper over whole 30 s segments, as the reference (default); "
        "sliding: the blocks a live stream uses, so the result equals a stream of the same audio",
    )


def settings_from_args(args: argparse.Namespace) -> DubSettings:
    """The DubSettings the parsed options describe; options a command lacks keep their defaults."""

    def given(name: str, default: Any) -> Any:
        return getattr(args, name, default)

    version = given("model_version", DUB.version)
    extra_margin = given("extra_margin", None)
    return DubSettings(
        model=given("model", DUB.model),
        version=version,
        face=FaceSettings(
            bbox_shift=given("bbox_shift", FACE.bbox_shift),
            extra_margin=default_extra_margin(version) if extra_margin is None else extra_margin,
            face_index=given("face", FACE.face_index),
        ),
        runtime=RuntimeSettings(
            device=given("device", RUNTIME.device),
            dtype=given("dtype", RUNTIME.dtype),
            batch_size=given("batch_size", RUNTIME.batch_size),
        ),
        silence=given("silence", DUB.silence),
        image_fps=given("image_fps", DUB.image_fps),
        audio_features=given("audio_features", DUB.audio_features),
    )


def with_flags(message: str) -> str:
    """A library message with each settings field it names in backquotes followed by its flag."""
    for field, flag in FLAGS.items():
        message = message.replace(f"`{field}`", f"`{field}` ({flag})")
    return message
