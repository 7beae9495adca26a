"""`lipsync landmarks-inspect CLIP_DIR|VIDEO --weights DIR -o strip.png`: the landmark transformer of a
landmark-prior weights folder, its predicted lips and jaw (red) against the real ones (green) over every
k-th frame of a prepared clip folder or a video (lipsync/train/landmark_inspect.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lipsync.cli.options import positive_int

COMMAND = "landmarks-inspect"
DEFAULT_MAX_FRAMES = 250  # frames of a video tracked (10 s at 25 fps)


def register(commands: argparse._SubParsersAction) -> None:
    inspect = commands.add_parser(
        COMMAND,
        help="draw a landmark-prior transformer's predicted (red) and real (green) lips over a clip's frames",
    )
    inspect.add_argument("source", type=Path, help="a prepared clip folder (DATASET/clips/ID) or a video")
    inspect.add_argument("--weights", type=Path, required=True, help="a landmark-prior weights folder")
    inspect.add_argument("-o", "--output", type=Path, required=True, help="the strip, a .png")
    inspect.add_argument("--every", type=positive_int, default=5, help="every k-th frame (default 5)")
    inspect.add_argument("--frames", type=positive_int, default=8, help="frames in the strip (default 8)")
    inspect.add_argument(
        "--max-frames",
        type=positive_int,
        default=DEFAULT_MAX_FRAMES,
        help=f"a video's frames tracked, the references' pool (default {DEFAULT_MAX_FRAMES})",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from lipsync.errors import InputError
    from lipsync.models.landmark_prior.generator import LandmarkPriorGenerator
    from lipsync.train.landmark_inspect import (
        clip_inspection,
        inspection_strip,
        save_inspection,
        video_inspection,
    )

    generator = LandmarkPriorGenerator.from_pretrained(args.weights, torch.device("cpu"), torch.float32)
    source = Path(args.source)
    if source.is_dir():
        clip = clip_inspection(source, generator.face_size)
    elif source.is_file():
        clip = video_inspection(source, generator, args.max_frames)
    else:
        raise InputError(f"{source} does not exist", "give a prepared clip folder or a video file")
    references = generator.config.landmark_references
    strip = inspection_strip(generator.models.transformer, clip, args.every, args.frames, references)
    path = save_inspection(strip, args.output)
    print(f"wrote {path}: real lips and jaw in green, predicted in red, every {args.every}th frame")
    return 0
