"""`lipsync learning-check CONFIG --out DIR`: does a generator family learn on a few clips in about an hour?

See lipsync/train/learning_check/ and docs/training.md ("Does it learn?").
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

COMMAND = "learning-check"


def register(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser(
        COMMAND,
        help="train a family's recipe on the first 80 %% of a few clips, score it on the held-out rest",
        description="Cut each clip of CONFIG at 80 %% of its frames, prepare the heads, run the family's "
        "training stages (each time-boxed), dub the held-out tails with their own audio and score them "
        "against the real tails beside three controls (shuffled audio, a copied mouth, the real tail). "
        "Writes OUT/report.md and OUT/report.json. A rerun skips finished stages (it re-scores only). "
        "A corpus recipe (one with a `corpus` section) instead trains on a controlled-sync corpus "
        "(--corpus DIR), holds out clips and one person entirely, scores the held-out clips and judges the "
        "recipe's pass lines (PASS/FAIL in the report). "
        "Exit 2: a bad config; 1: a stage failed; 3: a pass line was missed.",
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
    check.add_argument(
        "--corpus",
        type=Path,
        metavar="DIR",
        help="corpus recipes (configs/learning-check/corpus-*.yaml): the controlled-sync corpus to train and "
        "score on (a `lipsync data synth` OUT, or that layout); replaces the recipe's corpus.folder",
    )
    check.add_argument(
        "--held-out-person",
        metavar="NAME",
        help="corpus recipes: the person (sub-folder) held out entirely; replaces the recipe's",
    )
    check.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from lipsync.train.config import ConfigError
    from lipsync.train.learning_check import run_learning_check
    from lipsync.train.learning_check.corpus_config import is_corpus_recipe

    words = ["lipsync", COMMAND, str(args.config), "--out", str(args.out)]
    words += [f"--force-stage={name}" for name in args.force_stage]
    if args.budget_scale != 1.0:
        words.append(f"--budget-scale={args.budget_scale:g}")
    if is_corpus_recipe(args.config):
        return _run_corpus(args, words)
    if args.corpus is not None or args.held_out_person is not None:
        raise ConfigError(
            f"{args.config} is not a corpus recipe: --corpus and --held-out-person do not apply",
            "give a corpus recipe (configs/learning-check/corpus-*.yaml), or leave them out",
        )
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
    _print_result(result)
    return 0


def _run_corpus(args: argparse.Namespace, words: list[str]) -> int:
    """A corpus recipe: train, score, print the report; exit LINE_MISSED_EXIT when a pass line is missed."""
    from lipsync.train.learning_check.corpus_run import LINE_MISSED_EXIT, run_corpus_check

    if args.no_score:
        words.append("--no-score")
    if args.corpus is not None:
        words += ["--corpus", str(args.corpus)]
    if args.held_out_person is not None:
        words += ["--held-out-person", args.held_out_person]
    result = run_corpus_check(
        args.config,
        args.out,
        corpus=args.corpus,
        held_out_person=args.held_out_person,
        force_stages=args.force_stage,
        budget_scale=args.budget_scale,
        progress=not args.quiet,
        command=shlex.join(words),
        score=not args.no_score,
    )
    if not _print_result(result):
        return 0
    if not result.passed:
        missed = [line for line in result.lines if not line.passed]
        print(f"FAIL: {len(missed)} of {len(result.lines)} pass line(s) missed")
        return LINE_MISSED_EXIT
    print(f"PASS: all {len(result.lines)} pass line(s) met")
    return 0


def _print_result(result: Any) -> bool:
    """Each stage's status when nothing was scored (False), else the report and where it was written."""
    if result.report_md is None:
        for record in result.stages:
            print(f"{record.name}: {record.status}, {record.seconds:.0f} s")
        return False
    print(result.markdown)
    print(f"wrote {result.report_md} and {result.report_json}")
    return True
