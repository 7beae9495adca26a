"""`lipsync train unet|syncnet --config FILE`: train the generator or the SyncNet expert."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train the UNet generator or a SyncNet")
    train.add_subparsers(dest="train_command", required=True)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError
