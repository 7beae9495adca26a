"""`lipsync eval`: lip-sync, image-quality and identity metrics of a dubbed video, and `--compare`;
`lipsync eval-sync-robustness`: how stable sync experts are under audio shifts and face transforms."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import get_args

from lipsync.cli.options import positive_int
from lipsync.config import DEFAULT_EVAL_WEIGHTS, DeviceChoice
from lipsync.errors import InputError, WeightsError
from lipsync.eval import sync_robustness_settings as robustness

DESCRIPTION = (
    "Compute LSE-D/LSE-C/AV offset (syncnet_v2), FID (face crops and full frames), CSIM (ArcFace), LMD, "
    "PSNR, SSIM and inter-frame consistency for GENERATED, against --reference (the source video) and "
    "--audio (default: GENERATED's own audio track). Writes REPORT_DIR/report.json (every figure with its "
    "definition) and REPORT_DIR/report.html. Metrics whose weights or inputs are missing are listed as "
    "skipped, naming what they need. `lipsync eval --compare A/report.json B/report.json` prints a table."
)


def register(commands: argparse._SubParsersAction) -> None:
    ev = commands.add_parser(
        "eval",
        help="evaluate a dubbed video (LSE, FID, CSIM, LPIPS, LMD and LipLMD, PSNR/SSIM, IFC)",
        description=DESCRIPTION,
    )
    ev.add_argument("generated", type=Path, nargs="?", metavar="GENERATED", help="the video to evaluate")
    ev.add_argument("--reference", type=Path, help="the source video, frame-aligned with GENERATED")
    ev.add_argument("--audio", type=Path, help="the speech GENERATED should follow (default: its own track)")
    ev.add_argument(
        "--opening",
        type=Path,
        metavar="NPY",
        help="ground-truth mouth opening per frame for the lip-sync meter (a corpus's <clip>.opening.npy); "
        "default: the reference's own lip gap",
    )
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
    _register_sync_robustness(commands)


ROBUSTNESS_COMMAND = "eval-sync-robustness"
ROBUSTNESS_DESCRIPTION = (
    "The robustness analysis of sync experts (the stabilized-sync paper's Fig. 6): for each expert "
    "(AVSyncNet, a .safetensors file of `lipsync train syncnet` kind avsyncnet, or the Wav2Lip-style "
    "SyncNet, a .pt file), the mean and std of its similarity for windows of faces and their own audio of "
    "DATA's held-out clips, under audio shifts and under scaled, rotated and translated faces. Writes "
    "OUT/robustness.json and OUT/robustness.html. Ranges: A..B (step 1), A..B:STEP or a,b,c; a range "
    "starting with a minus sign is given with '=': --shifts=-15..15."
)


def _register_sync_robustness(commands: argparse._SubParsersAction) -> None:
    sr = commands.add_parser(
        ROBUSTNESS_COMMAND,
        help="sync experts' similarity under audio shifts, scale, rotation, translation (paper Fig. 6)",
        description=ROBUSTNESS_DESCRIPTION,
    )
    sr.add_argument("data", type=Path, metavar="DATA", help="a `lipsync data prepare` output folder")
    sr.add_argument(
        "--expert",
        action="append",
        required=True,
        metavar="NAME=CHECKPOINT",
        help="a sync expert to measure (repeat for several)",
    )
    sr.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the two files")
    sr.add_argument("--all", action="store_true", help="use every clip of DATA, not only the held-out ones")
    sr.add_argument(
        "--val-fraction",
        type=float,
        default=robustness.DEFAULT_VAL_FRACTION,
        help="held-out split as the trainers' data.val_fraction "
        f"(default {robustness.DEFAULT_VAL_FRACTION:g}, the training configs' value)",
    )
    sr.add_argument("--val-clips", nargs="+", default=[], metavar="ID", help="held-out clip ids")
    sr.add_argument("--val-speakers", nargs="+", default=[], metavar="SPEAKER", help="held-out speakers")
    sr.add_argument(
        "--clips",
        type=positive_int,
        default=robustness.DEFAULT_CLIPS,
        help=f"at most N clips, taken in turn from each speaker (default {robustness.DEFAULT_CLIPS})",
    )
    sr.add_argument(
        "--windows-per-clip",
        type=positive_int,
        default=robustness.DEFAULT_WINDOWS_PER_CLIP,
        help=f"windows per clip, evenly spread (default {robustness.DEFAULT_WINDOWS_PER_CLIP})",
    )
    ranges = robustness.Ranges()
    for flag, values, what in [
        ("--shifts", ranges.shifts, "audio shifts in frames"),
        ("--scales", ranges.scales, "face scales"),
        ("--angles", ranges.angles, "rotations in degrees"),
        ("--translations", ranges.translations, "translations in %% of the crop, applied along x and y"),
    ]:
        sr.add_argument(flag, metavar="RANGE", help=f"{what} (default {robustness.describe_values(values)})")
    sr.add_argument(
        "--device",
        choices=get_args(DeviceChoice),
        default="auto",
        help="where the experts run (default auto)",
    )
    sr.add_argument(
        "--batch-size",
        type=positive_int,
        default=robustness.DEFAULT_BATCH,
        help=f"windows per network pass (default {robustness.DEFAULT_BATCH})",
    )
    sr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run_sync_robustness(args: argparse.Namespace) -> int:
    from lipsync.eval.sync_robustness import (
        ClipChoice,
        RobustnessOptions,
        parse_expert,
        sync_robustness,
    )
    from lipsync.models.device import resolve_device

    defaults = robustness.Ranges()
    ranges = robustness.Ranges(
        *(
            robustness.parse_values(given) if given is not None else default
            for given, default in [
                (args.shifts, defaults.shifts),
                (args.scales, defaults.scales),
                (args.angles, defaults.angles),
                (args.translations, defaults.translations),
            ]
        )
    )
    ranges.validate()
    if not 0.0 <= args.val_fraction <= 1.0:
        raise InputError(f"--val-fraction {args.val_fraction} is not in 0..1", "e.g. --val-fraction 0.05")
    choice = ClipChoice(
        all_clips=args.all,
        val_clips=tuple(args.val_clips),
        val_speakers=tuple(args.val_speakers),
        val_fraction=args.val_fraction,
        max_clips=args.clips,
        windows_per_clip=args.windows_per_clip,
    )
    experts = [parse_expert(text) for text in args.expert]
    options = RobustnessOptions(ranges, choice, args.batch_size, progress=not args.quiet)
    report = sync_robustness(args.data, experts, args.out, options, resolve_device(args.device))
    if report.untrained:
        print("WARNING: some experts have UNTRAINED weights: their curves measure nothing", file=sys.stderr)
    print(report.summary())
    print(
        f"wrote {args.out / 'robustness.json'} and {args.out / 'robustness.html'} "
        f"({len(report.clips)} clips, {report.windows} windows, {report.seconds:.1f} s)"
    )
    return 0


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
        args.generated,
        args.out,
        args.reference,
        args.audio,
        weights,
        options,
        force=args.force,
        opening=args.opening,
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
