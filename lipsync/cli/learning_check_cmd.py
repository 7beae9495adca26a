"""`lipsync learning-check CONFIG --out DIR`: does a generator family learn on a few clips in about an hour?

See lipsync/train/learning_check/ and docs/training.md ("Does it learn?").
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

COMMAND = "learning-check"


def register(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser(
        COMMAND,
        help="train a family's recipe on the first 80 %% of a few clips, score it on the held-out rest",
        description="Cut each clip of CONFIG at 80 %% of its frames, prepare the heads, run the family's "
        "training stages (each time-boxed), dub the held-out tails with their own audio and score them "
        "against the real tails beside three controls (shuffled audio, a copied mouth, the real tail). "
        "Writes OUT/report.md and OUT/report.json. A rerun skips finished stages (it re-scores only). "
        "Exit 2: a bad config; 1: a stage failed.",
    )
    check.add_argument("config", type=Path, help="learning-check YAML (configs/learning-check/)")
    check.add_argument("--out", type=Path, required=True, help="run folder (created, or resumed)")
    check.add_argument(
        "--force-stage",
        action="append",
        default=[],
        metavar="NAME",
        help="redo this stage (split, prepare, or a recipe stage) and the stages that use it; repeatable",
    )
    check.add_argument(
        "--budget-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="multiply every stage's time box by X (0.02: a smoke run of the full-size path)",
    )
    check.add_argument(
        "--no-score", action="store_true", help="stop after the training stages (a later run scores)"
    )
    check.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from lipsync.train.learning_check import run_learning_check

    words = ["lipsync", COMMAND, str(args.config), "--out", str(args.out)]
    words += [f"--force-stage={name}" for name in args.force_stage]
    if args.budget_scale != 1.0:
        words.append(f"--budget-scale={args.budget_scale:g}")
    if args.no_score:
        words.append("--no-score")
    result = run_learning_check(
        args.config,
        args.out,
        force_stages=args.force_stage,
        budget_scale=args.budget_scale,
        progress=not args.quiet,
        command=shlex.join(words),
        score=not args.no_score,
    )
    if result.report_md is None:
        for record in result.stages:
            print(f"{record.name}: {record.status}, {record.seconds:.0f} s")
        return 0
    print(result.markdown)
    print(f"wrote {result.report_md} and {result.report_json}")
    return 0
