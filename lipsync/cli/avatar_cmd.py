"""`lipsync avatar prepare|list|remove|speak`: prepared avatars for fast and live speaking."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lipsync.cli.options import (
    add_avatars_option,
    add_face_options,
    add_image_fps_option,
    add_model_options,
    add_speech_options,
    settings_from_args,
)

if TYPE_CHECKING:
    from lipsync.pipeline.avatar_store import AvatarStore


def register(commands: argparse._SubParsersAction) -> None:
    avatar = commands.add_parser("avatar", help="prepare avatars once, then speak with them fast")
    avatar_commands = avatar.add_subparsers(dest="avatar_command", required=True)

    prepare = avatar_commands.add_parser(
        "prepare", help="compute everything that does not depend on speech, once (rebuilt when stale)"
    )
    prepare.add_argument("video", type=Path, help="video (or photo) of the person")
    prepare.add_argument("--name", required=True, help="avatar name: letters, digits, '_', '-', '.'")
    prepare.add_argument("--force", action="store_true", help="rebuild even if it is up to date")
    add_image_fps_option(prepare)
    prepare.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_avatars_option(prepare)
    add_model_options(prepare)
    add_face_options(prepare)

    listing = avatar_commands.add_parser("list", help="prepared avatars, with size and any problem")
    add_avatars_option(listing)

    remove = avatar_commands.add_parser("remove", help="delete a prepared avatar")
    remove.add_argument("name")
    add_avatars_option(remove)

    speak = avatar_commands.add_parser("speak", help="make a video of a prepared avatar saying AUDIO")
    speak.add_argument("name", help="a prepared avatar")
    speak.add_argument("audio", type=Path, help="speech track: any audio file, or a video with sound")
    speak.add_argument("-o", "--output", required=True, help="output .mp4 (H.264 + AAC)")
    speak.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_avatars_option(speak)
    add_model_options(speak)
    add_speech_options(speak)


def run(args: argparse.Namespace) -> int:
    from lipsync.pipeline.avatar_store import AvatarStore

    store = AvatarStore(args.avatars)
    if args.avatar_command == "list":
        infos = store.list()
        if not infos:
            print(f"no prepared avatars in {store.root} (lipsync avatar prepare VIDEO --name NAME)")
        for info in infos:
            print(info.format())
        for leftover in store.leftovers():
            print(
                f"{leftover.path.name}: {leftover.size / 1e6:.1f} MB left by a run that died "
                "(the next `avatar prepare` here removes it)"
            )
        return 0
    if args.avatar_command == "remove":
        print(store.remove(args.name))
        return 0
    if args.avatar_command == "prepare":
        return _prepare(args, store)
    return _speak(args, store)


def _prepare(args: argparse.Namespace, store: AvatarStore) -> int:
    from lipsync.pipeline.avatar import prepare_avatar
    from lipsync.pipeline.dub import UNTRAINED_LABEL, DubPipeline

    pipeline = DubPipeline.from_pretrained(args.weights, settings=settings_from_args(args))
    generator = pipeline.generator
    result = prepare_avatar(
        generator, store, args.name, args.video, pipeline.settings, force=args.force, show_bar=not args.quiet
    )
    verb = f"prepared ({result.reason})" if result.rebuilt else "is up to date; nothing to do"
    print(f"avatar {args.name} {verb} in {result.seconds:.1f} s")
    print(f"  {result.info.format()}")
    if generator.untrained:
        print(f"WARNING: {UNTRAINED_LABEL}", file=sys.stderr)
    return 0


def _speak(args: argparse.Namespace, store: AvatarStore) -> int:
    from lipsync.pipeline.avatar import load_fresh_avatar
    from lipsync.pipeline.dub import DubPipeline
    from lipsync.pipeline.speak import SpeakPipeline

    pipeline = DubPipeline.from_pretrained(args.weights, settings=settings_from_args(args))
    avatar, rebuilt = load_fresh_avatar(pipeline.generator, store, args.name, show_bar=not args.quiet)
    if rebuilt:
        print(f"rebuilt avatar {args.name}: {rebuilt}", file=sys.stderr)
    speak = SpeakPipeline(pipeline.generator, pipeline.settings)
    summary = speak(avatar, args.audio, args.output, progress=not args.quiet)
    print(summary.format())
    return 0
