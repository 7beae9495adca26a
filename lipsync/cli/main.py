"""`lipsync` command line: dub, weights check|scaffold, bench."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

from lipsync import __version__
from lipsync.config import DEFAULT_EXTRA_MARGIN_V15, DubSettings, FaceSettings, RuntimeSettings
from lipsync.errors import LipsyncError

DEFAULT_WEIGHTS = Path(os.environ.get("LIPSYNC_WEIGHTS", "models"))
WEIGHTS_HELP = "weights folder in MuseTalk's models/ layout (default: $LIPSYNC_WEIGHTS or ./models)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lipsync", description="Lip synchronisation (visual dubbing).")
    parser.add_argument("--version", action="version", version=f"lipsync {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    dub = commands.add_parser("dub", help="re-render the lips of a video or photo to follow a speech track")
    dub.add_argument("source", type=Path, help="video (.mp4 .mov .mkv ...) or photo (.jpg .png ...)")
    dub.add_argument("audio", type=Path, help="speech track: any audio file, or a video with an audio track")
    dub.add_argument("-o", "--output", type=Path, required=True, help="output .mp4 (H.264 + AAC)")
    _add_model_options(dub)
    _add_face_options(dub)
    dub.add_argument(
        "--silence",
        choices=["keep", "generate"],
        default="keep",
        help="where the speech is silent: keep the source mouth (default) or generate anyway",
    )
    dub.add_argument("--image-fps", type=Fraction, default=Fraction(25), help="frame rate for a photo input")
    dub.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    weights = commands.add_parser("weights", help="check or scaffold a weights folder")
    weights_commands = weights.add_subparsers(dest="weights_command", required=True)
    check = weights_commands.add_parser("check", help="which expected files are present, missing, malformed")
    check.add_argument("dir", type=Path, nargs="?", default=DEFAULT_WEIGHTS)
    check.add_argument(
        "--version", dest="model_version", choices=["v1", "v15"], default=None, help="check one version only"
    )
    scaffold = weights_commands.add_parser(
        "scaffold", help="write randomly initialised (UNTRAINED) weights in the expected layout"
    )
    scaffold.add_argument("dir", type=Path)
    scaffold.add_argument("--tiny", action="store_true", help="tiny models for tests and CI")

    bench = commands.add_parser("bench", help="milliseconds per frame for every stage, and frames per second")
    bench.add_argument("source", type=Path, help="video or photo to dub")
    bench.add_argument("audio", type=Path, help="speech track")
    bench.add_argument("--frames", type=int, default=32, help="frames to time (default 32)")
    _add_model_options(bench)
    _add_face_options(bench)
    return parser


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help=WEIGHTS_HELP)
    parser.add_argument(
        "--version", dest="model_version", choices=["v15", "v1"], default="v15", help="MuseTalk weights"
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto", help="auto: fp16 GPU, bf16 CPU"
    )
    parser.add_argument("--batch-size", type=_positive_int, default=8, help="frames per network pass")


def _add_face_options(parser: argparse.ArgumentParser) -> None:
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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def settings_from_args(args: argparse.Namespace) -> DubSettings:
    extra_margin = args.extra_margin
    if extra_margin is None:
        extra_margin = DEFAULT_EXTRA_MARGIN_V15 if args.model_version == "v15" else 0
    return DubSettings(
        version=args.model_version,
        face=FaceSettings(bbox_shift=args.bbox_shift, extra_margin=extra_margin, face_index=args.face),
        runtime=RuntimeSettings(device=args.device, dtype=args.dtype, batch_size=args.batch_size),
        silence=getattr(args, "silence", "keep"),
        image_fps=getattr(args, "image_fps", Fraction(25)),
    )


def run_dub(args: argparse.Namespace) -> int:
    from lipsync.pipeline.dub import UNTRAINED_LABEL, DubPipeline

    pipeline = DubPipeline.from_weights(args.weights, settings_from_args(args))
    if pipeline.models.untrained:
        print(f"WARNING: {UNTRAINED_LABEL}", file=sys.stderr)
    summary = pipeline(args.source, args.audio, args.output, progress=not args.quiet)
    print(summary.format())
    return 0


def run_weights(args: argparse.Namespace) -> int:
    from lipsync.models.weights import check_weights, scaffold_weights

    if args.weights_command == "check":
        report = check_weights(args.dir, args.model_version)
        print(report.format())
        return 0 if report.ok else 1
    scaffold_weights(args.dir, tiny=args.tiny)
    size = "tiny" if args.tiny else "full-size"
    print(f"wrote {size} UNTRAINED weights to {args.dir} (outputs made with them are labelled as such)")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from lipsync.pipeline.bench import run_benchmark

    print(run_benchmark(args.weights, settings_from_args(args), args.source, args.audio, args.frames))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"dub": run_dub, "weights": run_weights, "bench": run_bench}
    try:
        return handlers[args.command](args)
    except LipsyncError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted: no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
