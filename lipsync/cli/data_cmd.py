"""`lipsync data prepare`: turn a folder of talking-face videos into a training dataset."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="prepare training data")
    data.add_subparsers(dest="data_command", required=True)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError
