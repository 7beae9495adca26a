"""`lipsync eval`: lip-sync, image-quality and identity metrics of a dubbed video, and `--compare`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import get_args

from lipsync.cli.options import positive_int
from lipsync.config import DEFAULT_EVAL_WEIGHTS, DeviceChoice
from lipsync.errors import InputError, WeightsError

DESCRIPTION = (
    "Compute LSE-D/LSE-C/AV offset (syncnet_v2), FID (face crops and full frames), CSIM (ArcFace), LMD, "
    "PSNR, SSIM and inter-frame consistency for GENERATED, against --reference (the source video) and "
    "--audio (default: GENERATED's own audio track). Writes REPORT_DIR/report.json (every figure with its "
    "definition) and REPORT_DIR/report.html. Metrics whose weights or inputs are missing are listed as "
    "skipped, naming what they need. `lipsync eval --compare A/report.json B/report.json` prints a table."
)


def register(commands: argparse._SubParsersAction) -> None:
    ev = commands.add_parser(
        "eval", help="evaluate a dubbed video (LSE, FID, CSIM, LMD, PSNR/SSIM, IFC)", description=DESCRIPTION
    )
    ev.add_argument("generated", type=Path, nargs="?", metavar="GENERATED", help="the video to evaluate")
    ev.add_argument("--reference", type=Path, help="the source video, frame-aligned with GENERATED")
    ev.add_argument("--audio", type=Path, help="the speech GENERATED should follow (default: its own track)")
    ev.add_argument("--out", type=Path, metavar="REPORT_DIR", help="folder for report.json and report.html")
    ev.add_argument("--force", action="store_true", help="replace the report files in a non-empty REPORT_DIR")
    ev.add_argument(
        "--compare", type=Path, nargs="+", metavar="REPORT", help="print a table of these report.json files"
    )
    ev.add_argument(
        "--eval-weights",
        type=Path,
        default=DEFAULT_EVAL_WEIGHTS,
        help="folder of the metric networks' weight files (default: $LIPSYNC_EVAL_WEIGHTS or ./models/eval)",
    )
    ev.add_argument("--syncnet-v2", type=Path, help="syncnet_v2.model (default: in --eval-weights)")
    ev.add_argument(
        "--inception", type=Path, help="pytorch-fid InceptionV3 weights (default: in --eval-weights)"
    )
    ev.add_argument("--arcface", type=Path, help="ArcFace iresnet backbone.pth (default: in --eval-weights)")
    ev.add_argument("--syncnet", type=Path, help="our SyncNet checkpoint (`lipsync train syncnet`)")
    # Left unset, --device and --batch-size keep EvalOptions' defaults: its module imports torch, so the
    # parser neither reads them from it (`lipsync --help` stays quick) nor repeats them.
    ev.add_argument(
        "--device", choices=get_args(DeviceChoice), help="where the metric networks run (default: auto)"
    )
    ev.add_argument(
        "--batch-size", type=positive_int, help="frames per network pass (default: the evaluator's own)"
    )
    ev.add_argument("--max-frames", type=positive_int, help="evaluate only the first N frames (at 25 fps)")
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    if args.compare:
        from lipsync.eval.report import compare_reports

        if args.generated is not None or args.out is not None:
            raise InputError(
                "--compare takes report.json files only", "run the evaluation and the comparison apart"
            )
        print(compare_reports(list(args.compare)))
        return 0
    if args.generated is None or args.out is None:
        raise InputError(
            "lipsync eval needs GENERATED and --out REPORT_DIR (or --compare REPORT ...)",
            "e.g. lipsync eval out/dub.mp4 --reference source.mp4 --out out/eval",
        )
    from lipsync.eval.networks.weights import EvalWeightFiles
    from lipsync.eval.run import EvalOptions, evaluate

    for option, given in [
        ("--syncnet-v2", args.syncnet_v2),
        ("--inception", args.inception),
        ("--arcface", args.arcface),
    ]:
        if given is not None and not given.is_file():  # a file asked for by name is not silently skipped
            raise WeightsError(f"{option} {given} does not exist", "give the path of the weight file")
    weights = EvalWeightFiles.in_folder(
        args.eval_weights, args.syncnet_v2, args.inception, args.arcface, args.syncnet
    )
    chosen = {"device": args.device, "batch_size": args.batch_size}
    options = EvalOptions(
        max_frames=args.max_frames,
        progress=not args.quiet,
        **{name: value for name, value in chosen.items() if value is not None},
    )
    report = evaluate(
        args.generated, args.out, args.reference, args.audio, weights, options, force=args.force
    )
    if report.untrained:
        print(
            "WARNING: some figures come from UNTRAINED metric weights: not a measure of quality",
            file=sys.stderr,
        )
    print(report.summary())
    print(report.timing_table())
    print(f"wrote {args.out / 'report.json'} and {args.out / 'report.html'} ({report.seconds:.1f} s)")
    return 0
