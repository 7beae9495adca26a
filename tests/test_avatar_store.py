"""The avatar store trusts nothing on disk: names are whole, `remove` deletes only avatars (never through
a link), `list` reports deleted or truncated arrays and garbled manifests per avatar, and every reader gets
a manifest checked field by field."""

from __future__ import annotations

import argparse
import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lipsync.cli import avatar_cmd
from lipsync.models.generator import Generator
from lipsync.pipeline.avatar_store import (
    AVATAR_FORMAT,
    MANIFEST_NAME,
    AvatarError,
    AvatarStore,
    check_name,
    write_array,
    write_manifest,
)

from conftest import media, still_photo

FRAMES = 3


def make_avatar(
    root: Path,
    name: str,
    *,
    family: str = "musetalk",
    recipe: dict[str, Any] | None = None,
    format_version: int = 2,
) -> Path:
    """A small avatar written by hand: tiny arrays and a manifest as `prepare_avatar` writes them."""
    folder = root / name
    folder.mkdir(parents=True)
    frame_array = "latents" if family == "musetalk" else "mouth"
    arrays = {
        "frames": write_array(folder, "frames", np.zeros((FRAMES, 8, 6, 3), np.uint8)),
        "boxes": write_array(folder, "boxes", np.tile(np.array([1, 1, 5, 7], np.int32), (FRAMES, 1))),
        "masks": write_array(folder, "masks", np.ones((FRAMES, 6, 4), np.float32)),
        "cycle": write_array(folder, "cycle", np.array([0, 1, 2, 2, 1, 0], np.int32)),
        frame_array: write_array(folder, frame_array, np.zeros((FRAMES, 2, 2), np.float32)),
    }
    manifest: dict[str, Any] = {
        "format": AVATAR_FORMAT,
        "format_version": format_version,
        "lipsync_version": "0.0.0",
        "name": name,
        "created": "2026-01-01T00:00:00+00:00",
        "source": {"path": "/videos/me.mp4", "size": 10, "mtime_ns": 1, "sha256": "0" * 64},
        "recipe": recipe
        or {
            "version": "v15",
            "dtype": "float32",
            "vae": "unknown",
            "face": {
                "bbox_shift": 0,
                "extra_margin": 10,
                "face_index": 0,
                "smoothing_window": 5,
                "max_faces": 4,
            },
            "image_fps": "25",
        },
        "untrained": True,
        "video": {"fps": "25", "width": 6, "height": 8, "frame_count": FRAMES, "frames_with_face": FRAMES},
        "arrays": arrays,
    }
    if format_version >= 2:
        manifest["generator"] = {"family": family, "frame_arrays": [frame_array], "reference_arrays": []}
    write_manifest(folder, manifest)
    return folder


def edit_manifest(folder: Path, change: Callable[[dict[str, Any]], object]) -> None:
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    change(manifest)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.fixture
def store(tmp_path: Path) -> AvatarStore:
    """Two good avatars, "a" and "z", for a test to break one of."""
    root = tmp_path / "avatars"
    make_avatar(root, "a")
    make_avatar(root, "z")
    return AvatarStore(root)


def test_good_hand_made_avatars_list_and_load(store: AvatarStore) -> None:
    infos = store.list()
    assert [(i.name, i.problem, i.frame_count, i.family) for i in infos] == [
        ("a", None, FRAMES, "musetalk"),
        ("z", None, FRAMES, "musetalk"),
    ]
    assert "3 frames" in infos[0].format()
    assert store.load("a").frame_arrays["latents"].shape == (FRAMES, 2, 2)


# --- 1. remove deletes avatars only, and never through a link -------------------------------------


def test_remove_refuses_a_folder_that_is_not_an_avatar(store: AvatarStore) -> None:
    other = store.root / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"precious")
    not_ours = store.root / "other"
    not_ours.mkdir()
    (not_ours / MANIFEST_NAME).write_text(json.dumps({"format": "something-else"}))
    for name in ("photos", "other"):
        with pytest.raises(AvatarError) as caught:
            store.remove(name)
        assert "is not a prepared avatar" in caught.value.problem and caught.value.fix
    assert (other / "holiday.jpg").read_bytes() == b"precious"
    assert (not_ours / MANIFEST_NAME).is_file()
    with pytest.raises(AvatarError, match="no avatar called 'nobody'"):
        store.remove("nobody")


def test_remove_deletes_an_avatar_even_a_broken_one(store: AvatarStore) -> None:
    edit_manifest(store.path("a"), lambda m: m["video"].update(fps=0))
    assert store.remove("a") == f"removed avatar a from {store.root}"
    assert not store.path("a").exists()
    edit_manifest(store.path("z"), lambda m: m.update(format_version=99))
    store.remove("z")
    assert store.names() == []


def test_remove_of_a_linked_avatar_removes_the_link_only(store: AvatarStore, tmp_path: Path) -> None:
    elsewhere = make_avatar(tmp_path / "elsewhere", "kept")
    store.path("linked").symlink_to(elsewhere, target_is_directory=True)
    assert store.info("linked").problem is None
    message = store.remove("linked")
    assert "link" in message and "kept" in message
    assert not store.path("linked").is_symlink() and not store.path("linked").exists()
    assert sorted(p.name for p in elsewhere.iterdir()) == sorted(
        ["boxes.npy", "cycle.npy", "frames.npy", "latents.npy", "manifest.json", "masks.npy"]
    )
    assert AvatarStore(elsewhere.parent).load("kept").frame_count == FRAMES
    # A link to something that is not an avatar is refused like the folder itself.
    plain = tmp_path / "plain"
    plain.mkdir()
    store.path("to-plain").symlink_to(plain, target_is_directory=True)
    with pytest.raises(AvatarError, match="is not a prepared avatar"):
        store.remove("to-plain")
    assert plain.is_dir() and store.path("to-plain").is_symlink()


def test_the_cli_remove_says_what_it_did(store: AvatarStore, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(avatar_command="remove", avatars=store.root, name="a")
    assert avatar_cmd.run(args) == 0
    assert capsys.readouterr().out.strip() == f"removed avatar a from {store.root}"


# --- 2. whole names only ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["me\n", "me\r", "\nme", "../me", "", ".me", "a" * 65, "me/x"])
def test_names_must_match_whole(name: str, store: AvatarStore) -> None:
    with pytest.raises(AvatarError, match="not a usable avatar name"):
        check_name(name)
    with pytest.raises(AvatarError, match="not a usable avatar name"):
        store.remove(name)


def test_a_folder_named_with_a_newline_is_not_listed(store: AvatarStore) -> None:
    make_avatar(store.root, "a\n")
    assert store.names() == ["a", "z"]
    assert check_name("a" * 64) == "a" * 64


# --- 3. deleted and truncated arrays show in list --------------------------------------------------


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 4)


def _append(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"\0" * 16)


def _reshape(path: Path) -> None:
    np.save(path, np.zeros((FRAMES, 2, 3), np.float32))


def _garble_header(path: Path) -> None:
    path.write_bytes(b"not an npy file at all")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda path: path.unlink(), "latents.npy cannot be read (it is missing)"),
        (_truncate, "latents.npy is truncated"),
        (_append, "latents.npy is longer than its header says"),
        (_reshape, "latents.npy has shape (3, 2, 3)"),
        (_garble_header, "latents.npy cannot be read"),
    ],
)
def test_a_deleted_or_truncated_array_is_listed_as_broken(
    store: AvatarStore, damage: Callable[[Path], object], message: str
) -> None:
    damage(store.path("a") / "latents.npy")
    broken, good = store.list()
    assert broken.name == "a" and message in (broken.problem or "")
    assert "BROKEN" in broken.format()
    assert good.name == "z" and good.problem is None
    with pytest.raises(AvatarError) as caught:
        store.load("a", verify=False)
    assert "latents.npy" in caught.value.problem
    assert "lipsync avatar prepare" in caught.value.fix and "lipsync avatar remove a" in caught.value.fix


# --- 4. every manifest field is checked --------------------------------------------------------------


def _drop(*keys: str) -> Callable[[dict[str, Any]], None]:
    def change(manifest: dict[str, Any]) -> None:
        *path, last = keys
        target = manifest
        for key in path:
            target = target[key]
        del target[last]

    return change


def _set(value: object, *keys: str) -> Callable[[dict[str, Any]], None]:
    def change(manifest: dict[str, Any]) -> None:
        *path, last = keys
        target = manifest
        for key in path:
            target = target[key]
        target[last] = value

    return change


GARBLED = [
    (_set(0, "video", "fps"), "video.fps"),
    (_set("0", "video", "fps"), "video.fps"),
    (_set("-25", "video", "fps"), "video.fps"),
    (_set("abc", "video", "fps"), "video.fps"),
    (_set("25/0", "video", "fps"), "video.fps"),
    (_set(None, "video", "fps"), "video.fps"),
    (_drop("video", "fps"), "video.fps is missing"),
    (_set("abc", "video", "width"), "video.width"),
    (_set(0, "video", "height"), "video.height"),
    (_set(2.5, "video", "frame_count"), "video.frame_count"),
    (_set(True, "video", "frame_count"), "video.frame_count"),
    (_set(99, "video", "frames_with_face"), "video.frames_with_face"),
    (_set([], "video"), "video must be an object"),
    (_drop("recipe", "face"), "recipe.face is missing"),
    (_set("big", "recipe", "face"), "recipe.face must be an object"),
    (_set(1, "recipe", "face", "unknown_option"), "recipe.face.unknown_option is not a face option"),
    (_set("2", "recipe", "face", "bbox_shift"), "recipe.face.bbox_shift"),
    (_drop("recipe", "image_fps"), "recipe.image_fps is missing"),
    (_set("0", "recipe", "image_fps"), "recipe.image_fps"),
    (_set([1], "recipe"), "recipe must be an object"),
    (_drop("arrays", "latents"), "arrays.latents is missing"),
    (_drop("arrays"), "arrays is missing"),
    (_set("big", "arrays", "frames", "shape"), "arrays.frames.shape"),
    (_set("thing", "arrays", "masks", "dtype"), "arrays.masks.dtype"),
    (_set("O", "arrays", "masks", "dtype"), "arrays.masks.dtype"),
    (_drop("arrays", "cycle", "sha256"), "arrays.cycle.sha256 is missing"),
    (_set(["../../escape"], "generator", "frame_arrays"), "generator.frame_arrays"),
    (_set("", "generator", "family"), "generator.family"),
    (_set("yes", "untrained"), "untrained"),
    (_drop("source", "path"), "source.path is missing"),
    (_set(7, "name"), "name must be"),
    (_set("2", "format_version"), "format version 2"),
]


@pytest.mark.parametrize(("change", "field"), GARBLED)
def test_a_garbled_manifest_names_the_field_and_hides_no_other_avatar(
    store: AvatarStore, change: Callable[[dict[str, Any]], object], field: str
) -> None:
    edit_manifest(store.path("a"), change)
    with pytest.raises(AvatarError) as caught:
        store.read_manifest("a")
    assert field in caught.value.problem
    assert "lipsync avatar prepare" in caught.value.fix and "lipsync avatar remove a" in caught.value.fix
    with pytest.raises(AvatarError):
        store.load("a")
    broken, good = store.list()
    assert broken.name == "a" and field in (broken.problem or "")
    assert good.name == "z" and good.problem is None
    assert all(info.format() for info in (broken, good))  # `lipsync avatar list` prints both


def test_the_cli_lists_every_avatar_beside_a_broken_one(
    store: AvatarStore, capsys: pytest.CaptureFixture[str]
) -> None:
    edit_manifest(store.path("a"), _set("0", "video", "fps"))
    assert avatar_cmd.run(argparse.Namespace(avatar_command="list", avatars=store.root)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "BROKEN" in lines[0] and "video.fps" in lines[0]
    assert lines[1].startswith("z ") and "3 frames" in lines[1]


def test_a_manifest_without_an_avatar_format_is_not_offered_for_removal(store: AvatarStore) -> None:
    (store.path("a") / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(AvatarError) as caught:
        store.load("a")
    assert "lipsync avatar prepare" in caught.value.fix
    assert "(lipsync avatar remove a)" not in caught.value.fix and "yourself" in caught.value.fix


def test_other_families_and_format_1_still_pass(tmp_path: Path) -> None:
    root = tmp_path / "avatars"
    face = {"bbox_shift": -3}  # options added later are missing from older avatars: their defaults apply
    make_avatar(
        root, "toy", family="toy", recipe={"family": "toy", "dtype": "float32", "face": face, "image_fps": 25}
    )
    make_avatar(root, "old", format_version=1)
    store = AvatarStore(root)
    assert [(i.name, i.family, i.problem) for i in store.list()] == [
        ("old", "musetalk", None),
        ("toy", "toy", None),
    ]
    assert store.load("toy").frame_arrays["mouth"].shape == (FRAMES, 2, 2)
    assert store.load("old").family == "musetalk"


def test_a_real_prepared_avatar_passes_and_its_copy_reports_a_truncated_array(
    tiny_avatars: tuple[Path, str], tmp_path: Path
) -> None:
    root, name = tiny_avatars
    assert AvatarStore(root).info(name).problem is None
    store = AvatarStore(tmp_path / "avatars")
    shutil.copytree(root / name, store.path("copy"))
    manifest = copy.deepcopy(store.read_manifest("copy"))
    assert manifest["recipe"]["face"] and manifest["generator"]["family"] == "musetalk"
    _truncate(store.path("copy") / "latents.npy")
    assert "latents.npy is truncated" in (store.info("copy").problem or "")


# --- what runs that died left behind -------------------------------------------------------------------


def _dead_pid() -> int:
    import subprocess
    import sys

    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(finished.stdout)


def test_leftovers_of_dead_runs_are_listed_and_removed_by_the_next_prepare(
    tiny_generator: Generator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    from lipsync.cli.main import main
    from lipsync.pipeline.avatar import prepare_avatar

    store = AvatarStore(tmp_path / "avatars")
    dead = store.root / f".tmp-{_dead_pid()}-0badc0de-anna"
    live = store.root / f".tmp-{os.getpid()}-0badc0de-bert"  # a prepare still running
    for folder in (dead, live):
        folder.mkdir(parents=True)
        (folder / "frames.npy").write_bytes(bytes(2_500_000))
    assert [(leftover.path, leftover.size) for leftover in store.leftovers()] == [(dead, 2_500_000)]
    assert main(["avatar", "list", "--avatars", str(store.root)]) == 0
    assert f"{dead.name}: 2.5 MB left by a run that died" in capsys.readouterr().out

    prepare_avatar(tiny_generator, store, "photo", still_photo(tmp_path), show_bar=False)
    assert not dead.exists() and live.exists() and store.names() == ["photo"]


def test_a_killed_prepare_leaves_a_leftover_the_next_one_removes(tiny_weights: Path, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from conftest import write_clip

    store = AvatarStore(tmp_path / "avatars")
    clip = write_clip(media("talk_c.mp4"), tmp_path / "clip.mp4", 40)
    command = [sys.executable, "-m", "lipsync.cli.main", "avatar", "prepare", str(clip)]
    command += ["--name", "anna", "--avatars", str(store.root), "--weights", str(tiny_weights), "-q"]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (store.root.is_dir() and any(p.name.startswith(".tmp-") for p in store.root.iterdir())):
        assert process.poll() is None and time.monotonic() < deadline, "prepare never started writing"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # nothing can clean up after this one
    process.wait(timeout=30)
    (leftover,) = store.leftovers()
    assert leftover.path.name.startswith(f".tmp-{process.pid}-")
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert store.leftovers() == [] and not leftover.path.exists()
