"""`lipsync` command line: dub, weights, bench, avatar, serve, bench-live, data, train, eval."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from lipsync import __version__
from lipsync.cli import (
    avatar_cmd,
    batch_cmd,
    data_cmd,
    eval_cmd,
    landmarks_inspect_cmd,
    learning_check_cmd,
    loadbench_cmd,
    serve_cmd,
    train_cmd,
)
from lipsync.cli.options import (
    add_face_options,
    add_image_fps_option,
    add_model_options,
    add_speech_options,
    positive_int,
    settings_from_args,
    with_flags,
)
from lipsync.config import DEFAULT_EVAL_WEIGHTS, EVAL_MIRROR_ENV, default_weights_dir
from lipsync.errors import LipsyncError
from lipsync.models.families import DEFAULT_FAMILY, FAMILY_NAMES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lipsync", description="Lip synchronisation (visual dubbing).")
    parser.add_argument("--version", action="version", version=f"lipsync {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    dub = commands.add_parser("dub", help="re-render the lips of a video or photo to follow a speech track")
    dub.add_argument("source", type=Path, help="video (.mp4 .mov .mkv ...) or photo (.jpg .png ...)")
    dub.add_argument("audio", type=Path, help="speech track: any audio file, or a video with an audio track")
    dub.add_argument("-o", "--output", required=True, help="output .mp4 (H.264 + AAC)")
    add_model_options(dub)
    add_face_options(dub)
    add_speech_options(dub)
    add_image_fps_option(dub)
    dub.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    weights = commands.add_parser("weights", help="download, check or scaffold a weights folder")
    weights_commands = weights.add_subparsers(dest="weights_command", required=True)
    check = weights_commands.add_parser("check", help="which expected files are present, missing, malformed")
    check.add_argument("dir", type=Path, nargs="?", default=default_weights_dir())
    check.add_argument(
        "--model", choices=FAMILY_NAMES, help="check one family only (default: those it holds)"
    )
    check.add_argument("--version", dest="model_version", default=None, help="check one version only")
    scaffold = weights_commands.add_parser(
        "scaffold", help="write randomly initialised (UNTRAINED) weights in the expected layout"
    )
    scaffold.add_argument("dir", type=Path)
    scaffold.add_argument("--tiny", action="store_true", help="tiny models for tests and CI")
    scaffold.add_argument(
        "--face-size",
        type=int,
        help="the size configuration, where the family has several (stabilized-sync: 96, 128 or 256 px; "
        "default 96)",
    )
    scaffold.add_argument(
        "--model",
        choices=FAMILY_NAMES,
        default=DEFAULT_FAMILY,
        help=f"model family (default {DEFAULT_FAMILY})",
    )
    scaffold_eval = weights_commands.add_parser(
        "scaffold-eval",
        help="write randomly initialised (UNTRAINED) syncnet_v2, InceptionV3, ArcFace and LPIPS "
        "(AlexNet and linear layers) files for `lipsync eval`",
    )
    scaffold_eval.add_argument("dir", type=Path)
    scaffold_eval.add_argument(  # unset: scaffold_eval_weights' own default depth
        "--arcface", choices=["r18", "r34", "r50", "r100"], help="iresnet depth (default: the smallest)"
    )
    _add_download_parser(weights_commands)

    bench = commands.add_parser("bench", help="milliseconds per frame for every stage, and frames per second")
    bench.add_argument("source", type=Path, help="video or photo to dub")
    bench.add_argument("audio", type=Path, help="speech track")
    bench.add_argument("--frames", type=int, default=32, help="frames to time (default 32)")
    add_model_options(bench)
    add_face_options(bench)

    batch_cmd.register(commands)
    silent = commands.add_parser(
        "silent-lips",
        help="stabilized-sync: face crops of a video before and after the silent-lip generator G_S",
        description="Writes a PNG: the face crops of frames spread over VIDEO (top row) and the identity "
        "references G_S makes of them, lips closed (bottom row), as the stabilized-sync model gives them to "
        "its talking-face generator.",
    )
    silent.add_argument("source", type=Path, help="video or photo")
    silent.add_argument("-o", "--output", required=True, type=Path, help="output .png")
    silent.add_argument(
        "--frames", type=positive_int, default=8, help="frames to show, spread over the video (default 8)"
    )
    add_model_options(silent, batch=False)
    add_face_options(silent)

    avatar_cmd.register(commands)
    serve_cmd.register(commands)
    loadbench_cmd.register(commands)
    data_cmd.register(commands)
    train_cmd.register(commands)
    eval_cmd.register(commands)
    learning_check_cmd.register(commands)
    landmarks_inspect_cmd.register(commands)
    return parser


def run_dub(args: argparse.Namespace) -> int:
    from lipsync.io.writer import check_video_output, output_file
    from lipsync.pipeline.dub import UNTRAINED_LABEL, DubPipeline

    # A bad output path (or suffix) is refused before the (slow) model load, not after it.
    check_video_output(output_file(args.output), {"video": args.source, "audio": args.audio})
    pipeline = DubPipeline.from_pretrained(args.weights, settings=settings_from_args(args))
    if pipeline.generator.untrained:
        print(f"WARNING: {UNTRAINED_LABEL}", file=sys.stderr)
    summary = pipeline(args.source, args.audio, args.output, progress=not args.quiet)
    print(summary.format())
    return 0


DOWNLOAD_EPILOG = f"""\
what it fetches (MuseTalk): the UNet of the version (TMElyralab/MuseTalk), the VAE
(stabilityai/sd-vae-ft-mse) and whisper-tiny (openai/whisper-tiny), into DIR's layout.
Each file goes through the Hugging Face cache and is hard-linked (else symlinked, else copied)
into DIR; files already there or in the cache are not transferred again; an interrupted
download continues when the command is run again; every file is checked against the SHA-256
(or git hash) the server declares for it. At the end `lipsync weights check` runs.

environment:
  HF_ENDPOINT       a Hugging Face Hub mirror to download from (default https://huggingface.co)
  HF_HOME           where the Hugging Face cache lives (HF_HUB_CACHE for the hub part alone)
  HF_HUB_OFFLINE=1  use only what is in DIR or the cache; a missing file is an error naming it
  {EVAL_MIRROR_ENV}  a base URL serving the --eval files as URL/NAME, instead of their own sites
"""


def _add_download_parser(weights_commands: argparse._SubParsersAction) -> None:
    download = weights_commands.add_parser(
        "download",
        help="fetch the released weights from the Hugging Face Hub into the expected layout",
        description="Fetch a model family's released weights from the Hugging Face Hub into DIR.",
        epilog=DOWNLOAD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    download.add_argument(
        "dir",
        type=Path,
        nargs="?",
        default=default_weights_dir(),
        metavar="DIR",
        help="weights folder (default $LIPSYNC_WEIGHTS, else ./models)",
    )
    download.add_argument(
        "--model",
        choices=FAMILY_NAMES,
        default=DEFAULT_FAMILY,
        help=f"model family (default {DEFAULT_FAMILY})",
    )
    download.add_argument(
        "--version",
        dest="model_version",
        default=None,
        metavar="VERSION",
        help="e.g. v15 or v1 (default: the family's, v15)",
    )
    download.add_argument(
        "--eval",
        action="store_true",
        help="also fetch the metric weight files of `lipsync eval` that have a public address "
        "(syncnet_v2.model, pytorch-fid's Inception) and say where to get ArcFace's",
    )
    download.add_argument(
        "--eval-weights",
        type=Path,
        default=DEFAULT_EVAL_WEIGHTS,
        help=f"folder for the --eval files (default {DEFAULT_EVAL_WEIGHTS})",
    )


def run_weights_download(args: argparse.Namespace) -> int:
    from lipsync.models.hub import download_weights, require_writable_folder, summary

    if args.eval:  # both folders are checked before anything is fetched
        require_writable_folder(args.eval_weights)
    fetched, report = download_weights(args.dir, args.model, args.model_version)
    print(f"{args.model} files: {summary(fetched)}")
    print(report.format())
    status = 0 if report.ok else 1
    if args.eval:
        from lipsync.eval.networks.download import download_eval_weights, not_downloadable

        results = download_eval_weights(args.eval_weights)
        for result in results:
            if result.problem:
                print(f"error: {with_flags(result.problem)}", file=sys.stderr)
        print(not_downloadable())
        status = status or int(any(result.problem for result in results))
    return status


def run_weights(args: argparse.Namespace) -> int:
    from lipsync.models.families import families_in, family

    if args.weights_command == "download":
        return run_weights_download(args)
    if args.weights_command == "scaffold-eval":
        from lipsync.eval.networks.weights import scaffold_eval_weights

        written = scaffold_eval_weights(args.dir, *([args.arcface] if args.arcface else []))
        print(f"wrote UNTRAINED metric weights to {args.dir}: {', '.join(p.name for p in written)}")
        print("figures computed with them are labelled untrained; they only show that `lipsync eval` runs")
        return 0
    if args.weights_command == "check":
        names = [args.model] if args.model else families_in(args.dir) or [DEFAULT_FAMILY]
        reports = [family(name).check(args.dir, args.model_version) for name in names]
        print("\n".join(report.format() for report in reports))
        return 0 if all(report.ok for report in reports) else 1
    family(args.model).scaffold(args.dir, tiny=args.tiny, face_size=args.face_size)
    size = "tiny" if args.tiny else "full-size"
    print(
        f"wrote {size} UNTRAINED {args.model} weights to {args.dir} "
        "(outputs made with them are labelled as such)"
    )
    return 0


def run_silent_lips(args: argparse.Namespace) -> int:
    from lipsync.io.writer import check_output_path
    from lipsync.models.families import load_generator
    from lipsync.pipeline.dub import UNTRAINED_LABEL
    from lipsync.pipeline.silent_lips import silent_lip_strip, write_png

    check_output_path(args.output, {"video": args.source})
    settings = settings_from_args(args)
    runtime = settings.runtime
    generator = load_generator(args.weights, settings.model, settings.version, runtime.device, runtime.dtype)
    if generator.untrained:
        print(f"WARNING: {UNTRAINED_LABEL}", file=sys.stderr)
    strip = silent_lip_strip(generator, args.source, args.frames, settings.face, settings.image_fps)
    write_png(strip, args.output)
    print(f"wrote {args.output}: {strip.shape[1] // generator.face_size} faces before (top) and after G_S")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from lipsync.pipeline.bench import run_benchmark

    print(run_benchmark(args.weights, settings_from_args(args), args.source, args.audio, args.frames))
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: stop as Ctrl-C does, so every temporary output is removed on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_TERMINATED_BY: list[int] = []  # the signal that asked us to stop, once one did


def _raise_terminated(signum: int, frame: object) -> None:
    _TERMINATED_BY.append(signum)
    raise Terminated(signum)


def _stop_on_termination() -> None:
    """Handle SIGTERM and SIGHUP like SIGINT (only the main thread may set handlers)."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _raise_terminated)


INTERRUPTED = "interrupted: stopped; nothing half-written was kept"


def main(argv: Sequence[str] | None = None) -> int:
    _stop_on_termination()
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:  # Ctrl-C in the first moment, while the parser is built
        print(INTERRUPTED, file=sys.stderr)
        return 128 + signal.SIGINT
    handlers = {
        "dub": run_dub,
        "weights": run_weights,
        "bench": run_bench,
        "silent-lips": run_silent_lips,
        "dub-batch": batch_cmd.run,
        "avatar": avatar_cmd.run,
        "serve": serve_cmd.run,
        "bench-live": loadbench_cmd.run,
        "data": data_cmd.run,
        "train": train_cmd.run,
        "eval": eval_cmd.run,
        eval_cmd.ROBUSTNESS_COMMAND: eval_cmd.run_sync_robustness,
        learning_check_cmd.COMMAND: learning_check_cmd.run,
        landmarks_inspect_cmd.COMMAND: landmarks_inspect_cmd.run,
    }
    try:
        return handlers[args.command](args)
    except LipsyncError as error:
        print(f"error: {with_flags(str(error))}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as stop:
        print(INTERRUPTED, file=sys.stderr)
        return 128 + (stop.signum if isinstance(stop, Terminated) else signal.SIGINT)
    except Exception:
        if not _TERMINATED_BY:
            raise
        # The stop was raised inside a library (a C extension's import, say) that re-raised it as its own
        # error; the output was cleaned up on the way out all the same.
        print(INTERRUPTED, file=sys.stderr)
        return 128 + _TERMINATED_BY[0]


if __name__ == "__main__":
    sys.exit(main())
