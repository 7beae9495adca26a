"""Fetch a family's released weight files from the Hugging Face Hub into its weights folder.

A family package that has files on the Hub offers `hub_files(version) -> list[HubFile]`: which file of
which repository goes where under the weights folder. Everything else is here and knows no family.

Each file comes through the Hugging Face cache (`HF_HOME`, `HF_HUB_CACHE`; `HF_ENDPOINT` for a mirror;
`HF_HUB_OFFLINE` to stay offline: huggingface_hub reads them all) and is then put into the folder by
hard link, else symlink, else copy, so a file already in the cache is never transferred twice.

What this adds to `hf_hub_download`:

- the checksum and commit the server declares are refused unless they are a SHA-256 or git SHA-1 (64 or
  40 hex digits) and a git commit: the cache names files by them, so anything else (`../` steps, a
  path, a word) could put a file outside the cache or leave it unchecked.
- every file is checked against that checksum (the SHA-256 for LFS files, the git blob hash for small
  ones); huggingface_hub checks only the size. A mismatch is refused and the bad bytes are removed,
  from the folder and from the cache.
- every file is transferred into `<cache>/blobs/<checksum>.incomplete`, which survives an interruption
  (a cut connection, Ctrl-C, a killed process), and the next run continues it with an HTTP Range
  request. (huggingface_hub 1.x and later writes each download to a fresh temporary file and deletes it
  on failure, so on its own a rerun starts from zero.) The finished, verified file becomes the cache
  blob, linked into its snapshot as huggingface_hub does it. Online, `hf_hub_download` is not called:
  it would ask the server for the checksum again and trust the second answer.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lipsync.errors import WeightsError
from lipsync.io.files import HASH_CHUNK_BYTES, atomic_path, file_sha256

if TYPE_CHECKING:
    from lipsync.models.weights import WeightsReport

Log = Callable[[str], None]
Action = Literal["present", "from cache", "downloaded", "resumed", "satisfied"]

PARTIAL_SUFFIX = ".incomplete"  # <cache>/blobs/<sha256>.incomplete: an unfinished transfer, continued
_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1 = re.compile(r"[0-9a-f]{40}")
_OFFLINE_FIX = (
    "go online (unset HF_HUB_OFFLINE), or set HF_ENDPOINT to a Hub mirror you can reach, "
    "or copy the file by hand to the path above"
)


@dataclass(frozen=True)
class HubFile:
    """One file of a Hub repository and where it goes under the weights folder."""

    repo_id: str  # e.g. "openai/whisper-tiny"
    filename: str  # its path in the repository
    target: str  # its path under the weights folder ("/"-separated)
    revision: str = "main"
    satisfied_by: tuple[str, ...] = ()  # other targets that serve instead (a .bin for a .safetensors)


@dataclass(frozen=True)
class Fetched:
    """What became of one file."""

    file: HubFile
    path: Path  # in the weights folder
    action: Action
    placed_by: str = ""  # "hard link", "symlink" or "copy" when the file was put there now


def download_weights(
    root: Path, model: str, version: str | None = None, log: Log = print
) -> tuple[list[Fetched], WeightsReport]:
    """Fetch the Hub files of family `model` (`version`, else its default) into ROOT, then check ROOT.

    Returns what became of each file and the family's check of the folder; raises WeightsError for a
    family without Hub files, a folder of untrained test weights, a folder that is a file or cannot be
    written (before anything is fetched), or a file that cannot be fetched or checked.
    """
    from lipsync.models.families import family
    from lipsync.models.weights import (
        WEIGHTS_MANIFEST,
        ModelEntry,
        is_untrained,
        read_weights_manifest,
        write_model_entry,
    )

    root = Path(root)
    known = family(model)
    declare: Callable[[str], Sequence[HubFile]] | None = getattr(known, "hub_files", None)
    if declare is None:
        raise WeightsError(
            f"the model family {model!r} has no files on the Hugging Face Hub to download",
            f"put its weights into {root} by hand; `lipsync weights check {root} --model {model}` "
            "lists what it needs",
        )
    chosen = version or known.DEFAULT_VERSION
    if chosen not in known.VERSIONS:
        raise WeightsError(
            f"{model} has no version {chosen!r}", f"give --version one of: {', '.join(known.VERSIONS)}"
        )
    files = declare(chosen)
    require_writable_folder(root, [root / file.target for file in files])
    entries = read_weights_manifest(root)
    if model in entries and is_untrained(root, model):
        raise WeightsError(
            f"{root} holds untrained {model} test weights (its lipsync.json says so); released weights "
            "downloaded beside them would be labelled untrained too",
            "download into another folder, or delete that one first",
        )
    fetched = download_files(files, root, log)
    if (root / WEIGHTS_MANIFEST).exists() and model not in entries:
        # A folder with lipsync.json counts a family it does not list as untrained: list these files.
        write_model_entry(root, ModelEntry(model))
    return fetched, known.check(root, chosen)


def require_writable_folder(root: Path, files: Sequence[Path] = ()) -> None:
    """A WeightsError, before anything is fetched, when ROOT (or the folder of one of `files` under it)
    is a file, lies under a file, or cannot be written, or when one of `files` is a folder."""
    root = Path(root)
    for path in files:
        if Path(path).is_dir():
            raise WeightsError(
                f"cannot download into {root}: {path} is a folder, where a file goes",
                f"move {path} out of the way",
            )
    for folder in dict.fromkeys([root, *(Path(f).parent for f in files)]):
        existing = folder
        while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            what = "a file" if existing.exists() else "a link to nothing"
            raise WeightsError(
                f"cannot download into {folder}: {existing} is {what}, not a folder",
                "give a folder path for the weights (one that does not exist yet is made), "
                f"or move {existing} out of the way",
            )
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as exc:
            raise WeightsError(
                f"cannot download into {folder}: {existing} cannot be written ({_reason(exc)})",
                f"give a folder you can write to, or make {existing} writable",
            ) from exc


def download_files(files: Sequence[HubFile], root: Path, log: Log = print) -> list[Fetched]:
    """Fetch each file into ROOT (see the module's docstring); idempotent."""
    return [fetch(file, Path(root), log) for file in files]


def fetch(file: HubFile, root: Path, log: Log = print) -> Fetched:
    """One file into ROOT: left alone when it is there and matches the Hub's checksum, else linked from
    the cache, else downloaded (or continued) into the cache first."""

    dest = root / file.target
    where = f"{file.repo_id}: {file.filename}"
    others = [root / t for t in file.satisfied_by if (root / t).is_file()]
    if others and not dest.exists():
        log(f"present     {file.target}: {others[0].relative_to(root)} serves instead (not fetched)")
        return Fetched(file, others[0], "satisfied")
    if _offline():
        return _fetch_offline(file, dest, where, log)

    etag, size, commit = _metadata(file, dest, where)
    blob = _blob_path(file, etag)
    if dest.is_file() and _same_file(dest, blob):
        log(f"present     {file.target}")
        return Fetched(file, dest, "present")
    if dest.is_file() and dest.stat().st_size == size and _matches(dest, etag):
        log(f"present     {file.target} (matches the Hub's checksum)")
        return Fetched(file, dest, "present")
    if dest.is_file():
        log(f"replacing   {file.target}: it differs from the Hub's file")

    action: Action = "from cache"
    try:
        if blob.is_file():
            _verify_cached(blob, etag, file)
        else:
            action = _transfer(file, commit, blob, etag, size, log)
        cached = _link_snapshot(file, commit, blob)
    except OSError as exc:  # the cache's folders: not writable, or full
        raise WeightsError(
            f"cannot write {file.target} into the Hugging Face cache ({blob.parent.parent}): {_reason(exc)}",
            "make the cache writable and give it room, or set HF_HOME (or HF_HUB_CACHE) to a folder that is",
        ) from exc
    if action == "from cache":
        log(f"reusing     {file.target} from the Hugging Face cache")
    how = place(cached, dest)
    return Fetched(file, dest, action, how)


def place(source: Path, dest: Path) -> str:
    """Put `source` (its real file, through symlinks) at `dest`, replacing what is there in one rename:
    by hard link, else symlink, else copy. Returns which it used."""
    real = Path(os.path.realpath(source))
    dest.parent.mkdir(parents=True, exist_ok=True)
    makers: list[tuple[str, Callable[[Path, Path], Any]]] = [
        ("hard link", os.link),
        ("symlink", os.symlink),
    ]
    for how, make in makers:
        try:
            with atomic_path(dest) as tmp:
                make(real, tmp)
            return how
        except OSError:
            continue
    try:
        with atomic_path(dest) as tmp:
            shutil.copyfile(real, tmp)
    except OSError as exc:
        raise WeightsError(
            f"could not put {real} at {dest}: {exc}", f"check that {dest.parent} is writable and has room"
        ) from exc
    return "copy"


# --- the Hub ----------------------------------------------------------------------------------------


def _metadata(file: HubFile, dest: Path, where: str) -> tuple[str, int | None, str]:
    """(checksum, size, commit) that the Hub declares for the file."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    url = hf_hub_url(file.repo_id, file.filename, revision=file.revision)
    try:
        meta = get_hf_file_metadata(url)
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as exc:
        raise WeightsError(
            f"{constants.ENDPOINT} has no {where} (revision {file.revision}): {type(exc).__name__}",
            "if HF_ENDPOINT points to a mirror, check that it mirrors this repository; "
            f"or copy the file by hand to {dest}",
        ) from exc
    except Exception as exc:  # no connection, a proxy, a server error: whatever the HTTP client raises
        raise WeightsError(
            f"cannot reach {constants.ENDPOINT} for {where}: {_reason(exc)}",
            "check the connection (or set HF_ENDPOINT to a Hub mirror you can reach), or copy the file "
            f"by hand to {dest}",
        ) from exc
    if not meta.etag or not meta.commit_hash:
        raise WeightsError(
            f"{url} did not say the file's checksum and commit: it is not a Hugging Face Hub endpoint",
            "set HF_ENDPOINT to a Hub or a Hub mirror",
        )
    checksum_ok = _SHA256.fullmatch(meta.etag) or _GIT_SHA1.fullmatch(meta.etag)
    if not checksum_ok or not _GIT_SHA1.fullmatch(meta.commit_hash):
        what = (
            f"checksum (ETag) {meta.etag[:80]!r}" if not checksum_ok else f"commit {meta.commit_hash[:80]!r}"
        )
        raise WeightsError(
            f"{constants.ENDPOINT} declared the {what} for {where}, which is not a SHA-256 or git SHA-1 "
            "(64 or 40 hex digits): the file cannot be checked, and is not fetched",
            "set HF_ENDPOINT to the Hugging Face Hub or a mirror that declares each file's checksum, "
            f"or copy the file by hand to {dest}",
        )
    return meta.etag, meta.size, meta.commit_hash


def _offline() -> bool:
    """HF_HUB_OFFLINE, as huggingface_hub read it (a function in recent versions, a constant in older)."""
    from huggingface_hub import constants

    is_offline: Callable[[], bool] | None = getattr(constants, "is_offline_mode", None)
    return is_offline() if is_offline is not None else bool(constants.HF_HUB_OFFLINE)


def _link_snapshot(file: HubFile, commit: str, blob: Path) -> Path:
    """Link the verified `blob` into the cache's snapshot of `commit` and point the revision at it, in the
    Hugging Face cache's layout (snapshots/COMMIT/FILE -> ../../blobs/HASH, refs/REVISION holds COMMIT), so
    later runs (offline ones too) and other tools find it. Returns the link."""
    storage = blob.parent.parent
    snapshot = storage / "snapshots" / commit
    pointer = snapshot.joinpath(*file.filename.split("/"))
    normal = Path(os.path.normpath(pointer))  # without following links: the pointer may be one already
    if normal == snapshot or not normal.is_relative_to(snapshot):
        raise WeightsError(
            f"the file name {file.filename!r} of {file.repo_id} leads outside the Hugging Face cache",
            "download from the official repository, or copy the files in by hand",
        )
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if not _same_file(pointer, blob):
        pointer.unlink(missing_ok=True)
        try:
            pointer.symlink_to(os.path.relpath(blob, pointer.parent))
        except OSError:  # a file system without links (as huggingface_hub, copy the blob)
            shutil.copyfile(blob, pointer)
    if file.revision != commit:
        ref = storage / "refs" / file.revision
        if not ref.is_file() or ref.read_text().strip() != commit:
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(commit)
    return pointer


def _fetch_offline(file: HubFile, dest: Path, where: str, log: Log) -> Fetched:
    """HF_HUB_OFFLINE: the folder's file as it is, else the cached one, else a clear error."""
    from huggingface_hub import constants, hf_hub_download

    if dest.is_file():
        log(f"present     {file.target} (offline: not compared with the Hub)")
        return Fetched(file, dest, "present")
    try:
        cached = Path(hf_hub_download(file.repo_id, file.filename, revision=file.revision))
    except Exception as exc:  # LocalEntryNotFoundError, or any other reason it is not usable
        raise WeightsError(
            f"{dest} is missing and HF_HUB_OFFLINE is set, so it cannot be downloaded: {where} "
            f"(revision {file.revision}) is not in the Hugging Face cache ({constants.HF_HUB_CACHE})",
            _OFFLINE_FIX,
        ) from exc
    name = Path(os.path.realpath(cached)).name
    if not (_SHA256.fullmatch(name) or _GIT_SHA1.fullmatch(name)):
        raise WeightsError(
            f"{cached} in the Hugging Face cache is not named by its checksum ({name!r}), so it cannot be "
            f"checked offline; {dest} is missing",
            _OFFLINE_FIX,
        )
    _verify_cached(cached, name, file)
    log(f"reusing     {file.target} from the Hugging Face cache (offline)")
    return Fetched(file, dest, "from cache", place(cached, dest))


def _blob_path(file: HubFile, etag: str) -> Path:
    """Where the Hugging Face cache keeps the file's content: blobs are named by their checksum."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    folder = repo_folder_name(repo_id=file.repo_id, repo_type="model")
    return Path(constants.HF_HUB_CACHE) / folder / "blobs" / etag


def _transfer(file: HubFile, commit: str, blob: Path, checksum: str, size: int | None, log: Log) -> Action:
    """Download (or continue) a file into `blob`, verified against `checksum` before it appears."""
    from filelock import FileLock
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.file_download import http_get, repo_folder_name
    from huggingface_hub.utils import build_hf_headers

    where = f"{file.repo_id}: {file.filename}"
    partial = blob.with_name(blob.name + PARTIAL_SUFFIX)
    blob.parent.mkdir(parents=True, exist_ok=True)
    # The lock huggingface_hub takes for this blob: two runs never append to one partial file.
    lock = Path(constants.HF_HUB_CACHE) / ".locks" / repo_folder_name(repo_id=file.repo_id, repo_type="model")
    lock.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock / f"{checksum}.lock")):
        if blob.is_file():  # another run finished it while we waited
            return "from cache"
        done = partial.stat().st_size if partial.is_file() else 0
        if size is not None and done > size:
            partial.unlink()
            done = 0
        action: Action = "resumed" if done else "downloaded"
        if done:
            log(f"resuming    {file.target} from {where} at {_size_text(done)} of {_size_text(size)}")
        else:
            log(f"fetching    {file.target} from {where} ({_size_text(size)})")
        url = hf_hub_url(file.repo_id, file.filename, revision=commit)
        try:
            with partial.open("ab") as out:
                http_get(
                    url,
                    out,
                    resume_size=done,
                    headers=build_hf_headers(),
                    expected_size=size,
                    displayed_filename=file.target,
                )
        except KeyboardInterrupt:
            log(f"stopped: {_kept(partial)} of {file.target} are kept; run the command again to continue")
            raise
        except Exception as exc:  # a connection that stayed down, a server error, a full disk
            raise WeightsError(
                f"the download of {where} stopped at {_kept(partial)} of {_size_text(size)}: {_reason(exc)}",
                "run the same command again: it continues from there",
            ) from exc
        kind, actual = _checksum_of(partial, checksum)
        if actual != checksum:
            partial.unlink()
            raise WeightsError(
                f"{file.target} downloaded from {where} does not match the {kind} the server declared "
                f"for it (declared {checksum}, got {actual}); it was removed",
                "run the command again; if it fails again, the server (or the mirror in HF_ENDPOINT) "
                "serves a file other than it declares: use another mirror or copy the file by hand",
            )
        os.replace(partial, blob)
    return action


# --- checksums ---------------------------------------------------------------------------------------


def _checksum_of(path: Path, etag: str) -> tuple[str, str]:
    """(kind, value) of the file's checksum of the kind `etag` is: SHA-256 or git blob hash."""
    if _SHA256.fullmatch(etag):
        return "SHA-256", file_sha256(path)
    return "git blob hash", _git_blob_sha1(path)


def _matches(path: Path, etag: str) -> bool:
    """Whether the file's content has the checksum `etag` (never for a checksum of no known kind)."""
    if not (_SHA256.fullmatch(etag) or _GIT_SHA1.fullmatch(etag)):
        return False
    return _checksum_of(path, etag)[1] == etag


def _verify_cached(cached: Path, etag: str, file: HubFile) -> None:
    """Refuse a cached file whose content is not what the Hub declared, and remove it from the cache."""
    if _matches(cached, etag):
        return
    real = Path(os.path.realpath(cached))
    real.unlink(missing_ok=True)
    if cached.is_symlink():
        cached.unlink(missing_ok=True)
    raise WeightsError(
        f"{file.target} from {file.repo_id} ({file.filename}) does not match the checksum the server "
        f"declared for it ({etag}); the bad copy in the Hugging Face cache ({real}) was removed",
        "run the command again to download it afresh; if it fails again, the server (or the mirror in "
        "HF_ENDPOINT) serves a file other than it declares",
    )


def _git_blob_sha1(path: Path) -> str:
    """The hash git gives the file (what the Hub declares for a file that is not in LFS)."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# --- words -----------------------------------------------------------------------------------------


def _size_text(size: int | None) -> str:
    if size is None:
        return "size unknown"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _kept(partial: Path) -> str:
    return _size_text(partial.stat().st_size if partial.is_file() else 0)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def summary(fetched: Sequence[Fetched]) -> str:
    """One line: how many files were downloaded, continued, reused or already there."""
    counts: dict[str, int] = {}
    for item in fetched:
        counts[item.action] = counts.get(item.action, 0) + 1
    order: tuple[Action, ...] = ("downloaded", "resumed", "from cache", "present", "satisfied")
    words = {"from cache": "reused from the Hugging Face cache", "satisfied": "served by another file"}
    return ", ".join(f"{counts[a]} {words.get(a, a)}" for a in order if a in counts)
