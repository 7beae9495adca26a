"""`lipsync data prepare`: turn a folder of talking-face videos into a training dataset.
`lipsync data synth`: write a controlled-sync test corpus for it."""

from __future__ import annotations

import argparse
from pathlib import Path

from lipsync.cli.options import positive_int
from lipsync.train.data.format import DatasetSettings

DEFAULTS = DatasetSettings()


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def register(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="prepare training data, or synthesise a sync test corpus")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    prepare = data_commands.add_parser(
        "prepare",
        help="cut talking-face videos into 25 fps face clips with audio, landmarks and mel (resumable)",
        description="Find the videos under SRC_DIR (sub-folders too; the first sub-folder names the "
        "speaker), follow the face, and write clips to OUT_DIR. Run it again to resume or to add new "
        "videos: finished videos are skipped. SRC_DIR is never modified.",
    )
    prepare.add_argument("src", type=Path, metavar="SRC_DIR", help="folder of videos (searched recursively)")
    prepare.add_argument("out", type=Path, metavar="OUT_DIR", help="dataset folder (created, or resumed)")
    prepare.add_argument(
        "--clip-seconds",
        type=positive_float,
        default=DEFAULTS.clip_seconds,
        help=f"longest clip (default {DEFAULTS.clip_seconds:g}); longer runs of face frames are split",
    )
    prepare.add_argument(
        "--min-clip-seconds",
        type=positive_float,
        default=DEFAULTS.min_clip_seconds,
        help=f"shorter pieces are rejected (default {DEFAULTS.min_clip_seconds:g})",
    )
    prepare.add_argument(
        "--min-face-size",
        type=positive_int,
        default=DEFAULTS.min_face_size,
        help=f"px: runs whose median face width is smaller are rejected (default {DEFAULTS.min_face_size})",
    )
    prepare.add_argument(
        "--jobs", type=positive_int, default=None, help="worker processes (default: min(4, CPU cores))"
    )
    prepare.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="MuseTalk weights folder: also compute the whisper features of every clip (whisper.npy)",
    )
    prepare.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _register_synth(data_commands)


def _register_synth(data_commands: argparse._SubParsersAction) -> None:
    synth = data_commands.add_parser(
        "synth",
        help="synthesise a controlled-sync test corpus: faces whose mouth opening is a known function of "
        "the audio",
        description="Write talking-face clips that `data prepare` reads (OUT/<person>/clip_NNNN.mp4, 25 fps) "
        "and, beside each, the mouth opening of every frame (clip_NNNN.opening.npy, in [0, 1]), a fixed "
        "function of that frame's audio. A test of whether a training setup can learn sync, not training "
        "data for real use. The same arguments give the same clips.",
    )
    synth.add_argument(
        "out", type=Path, metavar="OUT", help="corpus folder (new, empty, or replaced with --force)"
    )
    synth.add_argument(
        "--faces",
        type=Path,
        nargs="+",
        required=True,
        metavar="VIDEO_OR_PHOTO",
        help="one per person (the file name names the person); its frame with the most closed mouth is used",
    )
    synth.add_argument(
        "--speech",
        type=Path,
        default=None,
        metavar="AUDIO_DIR",
        help="a folder of recordings to speak (cut into pieces of at most 10 s); default: eSpeak NG speech",
    )
    synth.add_argument(
        "--minutes", type=positive_float, default=2.0, help="total length of speech, at most (default 2)"
    )
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--force", action="store_true", help="replace OUT whole if it exists and is not empty")
    synth.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.data_command == "synth":
        return _synth(args)
    return _prepare(args)


def _synth(args: argparse.Namespace) -> int:
    from lipsync.train.data.synth import synth_corpus

    report = synth_corpus(
        args.out,
        args.faces,
        args.speech,
        minutes=args.minutes,
        seed=args.seed,
        force=args.force,
        progress=not args.quiet,
    )
    print(report.format())
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from lipsync.train.data.prepare import prepare_dataset

    settings = DatasetSettings(
        clip_seconds=args.clip_seconds,
        min_clip_seconds=args.min_clip_seconds,
        min_face_size=args.min_face_size,
    )
    report = prepare_dataset(args.src, args.out, settings, jobs=args.jobs, progress=not args.quiet)
    print(report.format())
    if args.weights is not None:
        import torch

        from lipsync.models.musetalk.loading import load_models
        from lipsync.train.data.features import ensure_whisper_features, whisper_weights_id

        weights_id = whisper_weights_id(args.weights)
        models = load_models(args.weights, "v15", torch.device("cpu"), torch.float32)
        computed = ensure_whisper_features(args.out, models, weights_id, progress=not args.quiet)
        print(f"  whisper features: {computed} clips computed, the rest were up to date")
    return 0
