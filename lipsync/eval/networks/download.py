"""Fetch the metric networks' public weight files that have a stable address (`lipsync weights download
--eval`): syncnet_v2.model from the VGG site, pytorch-fid's Inception file from its GitHub release and
torchvision's AlexNet (the LPIPS backbone) from download.pytorch.org.

A transfer goes to `NAME.part` beside its target and continues from there (an HTTP Range request) after a
cut connection, in the same run or the next one. The finished file is checked (its length against what
the server declared; pytorch-fid's and torchvision's against the first 8 hex digits of its SHA-256, which
its name carries) before it replaces the target. ArcFace's backbone.pth has no single stable address, and
LPIPS' linear layers ship inside the lpips package: where to get them is printed instead.

`$LIPSYNC_EVAL_MIRROR` (a base URL) replaces each file's own address by `MIRROR/NAME`.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lipsync.config import EVAL_DOWNLOAD_ATTEMPTS, EVAL_DOWNLOAD_TIMEOUT_S, EVAL_MIRROR_ENV
from lipsync.errors import LipsyncError, WeightsError
from lipsync.eval.networks.arcface import ARCFACE_SOURCE, ZOO_EXAMPLE
from lipsync.eval.networks.inception import FID_WEIGHTS_FILE, FID_WEIGHTS_SOURCE
from lipsync.eval.networks.lpips_net import ALEXNET_FILE, ALEXNET_URL, LPIPS_LINEAR_FILE, LPIPS_LINEAR_SOURCE
from lipsync.eval.networks.syncnet_v2 import SYNCNET_V2_FILE, SYNCNET_V2_URL
from lipsync.eval.networks.weights import ARCFACE_FILE, is_untrained_file
from lipsync.io.files import atomic_path, file_sha256
from lipsync.models.weights import UNTRAINED_MARKER

Log = Callable[[str], None]
PART_SUFFIX = ".part"
_CHUNK = 1 << 20
_HASH_PREFIX_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.[a-z]+$")  # pytorch-fid's (and torch hub's) naming
_RETRY_PAUSE_S = 1.0
ADDRESSES = {  # each file's own public address
    SYNCNET_V2_FILE: SYNCNET_V2_URL,
    FID_WEIGHTS_FILE: FID_WEIGHTS_SOURCE,
    ALEXNET_FILE: ALEXNET_URL,
}


@dataclass(frozen=True)
class EvalFile:
    """One metric weight file with a public address."""

    name: str
    url: str

    @property
    def sha256_prefix(self) -> str | None:
        """The start of its SHA-256 when its name carries one."""
        match = _HASH_PREFIX_IN_NAME.search(self.name)
        return match.group(1) if match else None


@dataclass(frozen=True)
class EvalFetched:
    name: str
    path: Path
    action: str  # "downloaded", "resumed", "present", or "failed"
    problem: str = ""  # the error (with its fix) when it failed


def eval_files(mirror: str | None = None) -> list[EvalFile]:
    """The files to fetch: from their own addresses, or from MIRROR/NAME ($LIPSYNC_EVAL_MIRROR)."""
    mirror = mirror if mirror is not None else os.environ.get(EVAL_MIRROR_ENV) or None
    return [
        EvalFile(name, f"{mirror.rstrip('/')}/{name}" if mirror else url) for name, url in ADDRESSES.items()
    ]


def not_downloadable() -> str:
    """What to say about the files this command cannot fetch."""
    return (
        f"{ARCFACE_FILE} (CSIM) has no single stable address: get the {ARCFACE_SOURCE} ({ZOO_EXAMPLE}) "
        f"and put it in the eval weights folder under that name; {LPIPS_LINEAR_FILE} (LPIPS) is "
        f"{LPIPS_LINEAR_SOURCE}: put it there under that name (an installed lpips package's own file is "
        "also found)"
    )


def download_eval_weights(folder: Path, mirror: str | None = None, log: Log = print) -> list[EvalFetched]:
    """Fetch every file of `eval_files` into FOLDER; one that fails is reported and the others still come."""
    folder = Path(folder)
    results = []
    for file in eval_files(mirror):
        try:
            results.append(fetch_eval_file(file, folder, log))
        except LipsyncError as error:
            results.append(EvalFetched(file.name, folder / file.name, "failed", str(error)))
    return results


def fetch_eval_file(file: EvalFile, folder: Path, log: Log = print) -> EvalFetched:
    """One file into FOLDER: left alone when it is there (and real), else downloaded or continued."""
    dest = folder / file.name
    if dest.is_file() and not is_untrained_file(dest) and _prefix_ok(dest, file):
        log(f"present     {dest}")
        return EvalFetched(file.name, dest, "present")
    folder.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + PART_SUFFIX)
    resumed = part.is_file() and part.stat().st_size > 0
    if resumed:
        log(f"resuming    {file.name} from {file.url} at {part.stat().st_size} bytes")
    else:
        log(f"fetching    {file.name} from {file.url}")
    _download(file, part)
    prefix = file.sha256_prefix
    if prefix is not None:
        actual = file_sha256(part)
        if not actual.startswith(prefix):
            part.unlink()
            raise WeightsError(
                f"{file.name} from {file.url} is not the expected file: its SHA-256 is {actual}, the name "
                f"says it starts with {prefix}; it was removed",
                f"run the command again; if it fails again, get the file from {ADDRESSES.get(file.name)} "
                "by hand"
                + (
                    f" (${EVAL_MIRROR_ENV} is set: check that mirror)"
                    if os.environ.get(EVAL_MIRROR_ENV)
                    else ""
                ),
            )
    os.replace(part, dest)
    _forget_untrained(dest)
    log(f"saved       {dest}")
    return EvalFetched(file.name, dest, "resumed" if resumed else "downloaded")


def _download(file: EvalFile, part: Path) -> None:
    """Append the rest of the file to `part`, retrying a cut connection with a Range request."""
    problem: BaseException | None = None
    for attempt in range(EVAL_DOWNLOAD_ATTEMPTS):
        if attempt:
            time.sleep(_RETRY_PAUSE_S)
        try:
            if _download_once(file.url, part):
                return
        except (urllib.error.HTTPError, ValueError) as exc:  # the server refuses: retrying will not help
            raise WeightsError(
                f"cannot download {file.name} from {file.url}: {exc}",
                f"check the address (${EVAL_MIRROR_ENV} replaces it) or put the file in the folder by hand",
            ) from exc
        except (OSError, http.client.HTTPException) as exc:  # no connection, a reset, a timeout
            problem = exc
    kept = part.stat().st_size if part.is_file() else 0
    raise WeightsError(
        f"the download of {file.name} from {file.url} stopped at {kept} bytes ({problem})",
        "run the same command again: it continues from there",
    )


def _download_once(url: str, part: Path) -> bool:
    """One request for what `part` lacks; True when the file is complete."""
    done = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        response = urllib.request.urlopen(request, timeout=EVAL_DOWNLOAD_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and done:  # nothing after `done`: the partial file is whole, or too long
            total = _total_from_range(exc.headers.get("Content-Range"))
            if total == done:
                return True
            part.unlink()
            return False
        raise
    with response:
        if done and response.status != 206:  # the server ignored the Range: start again
            done = 0
        total = _total_from_range(response.headers.get("Content-Range"))
        if total is None and response.headers.get("Content-Length") is not None:
            total = done + int(response.headers["Content-Length"])
        with part.open("r+b" if done else "wb") as out:
            out.seek(done)
            out.truncate()
            while chunk := response.read(_CHUNK):
                out.write(chunk)
    size = part.stat().st_size
    if total is not None and size < total:
        raise ConnectionError(f"the connection closed after {size} of {total} bytes")
    if total is not None and size > total:
        part.unlink()
        raise ValueError(f"the server sent {size} bytes for a file it said has {total}")
    return True


def _total_from_range(content_range: str | None) -> int | None:
    """The whole length from `bytes A-B/TOTAL` (or `bytes */TOTAL`)."""
    if not content_range or "/" not in content_range:
        return None
    total = content_range.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def _prefix_ok(path: Path, file: EvalFile) -> bool:
    prefix = file.sha256_prefix
    return prefix is None or file_sha256(path).startswith(prefix)


def _forget_untrained(path: Path) -> None:
    """A real file replaced a scaffolded one: drop it from the folder's UNTRAINED list."""
    marker = path.parent / UNTRAINED_MARKER
    if not marker.is_file():
        return
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        files = [name for name in data.get("files", []) if name != path.name]
    except (OSError, ValueError, AttributeError):
        return
    data["files"] = files
    with atomic_path(marker) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
