"""`lipsync weights download`: the released files from a Hub (a local stand-in here) into the layout.

The stand-in (tests/hub_server.py) serves tiny scaffolded weights under the real repositories' names.
Most runs are in this process with huggingface_hub's settings patched to point at it; the first and the
offline test run the command in a fresh process with only the environment variables a user would set.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hub_server import HubServer, HubState
from safetensors.torch import save as safetensors_bytes

from lipsync.cli.main import main
from lipsync.errors import WeightsError
from lipsync.models import families
from lipsync.models.hub import PARTIAL_SUFFIX, download_weights

from conftest import REPO

UNET = "TMElyralab/MuseTalk/musetalkV15/unet.pth"
V15_TARGETS = (
    "musetalkV15/musetalk.json",
    "musetalkV15/unet.pth",
    "sd-vae/config.json",
    "sd-vae/diffusion_pytorch_model.safetensors",
    "whisper/config.json",
    "whisper/preprocessor_config.json",
    "whisper/model.safetensors",
)


def _as_safetensors(path: Path) -> bytes:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return safetensors_bytes({k: v.contiguous() for k, v in state.items()})


@pytest.fixture(scope="module")
def hub_repos(tiny_weights: Path) -> dict[str, dict[str, bytes]]:
    """The three repositories as the Hub has them, with tiny untrained weights as their content."""

    def read(*parts: str) -> bytes:
        return tiny_weights.joinpath(*parts).read_bytes()

    return {
        "TMElyralab/MuseTalk": {
            "musetalkV15/musetalk.json": read("musetalkV15", "musetalk.json"),
            "musetalkV15/unet.pth": read("musetalkV15", "unet.pth"),
            "musetalk/musetalk.json": read("musetalk", "musetalk.json"),
            "musetalk/pytorch_model.bin": read("musetalk", "pytorch_model.bin"),
        },
        "stabilityai/sd-vae-ft-mse": {
            "config.json": read("sd-vae", "config.json"),
            "diffusion_pytorch_model.safetensors": _as_safetensors(
                tiny_weights / "sd-vae" / "diffusion_pytorch_model.bin"
            ),
        },
        "openai/whisper-tiny": {
            "config.json": read("whisper", "config.json"),
            "preprocessor_config.json": read("whisper", "preprocessor_config.json"),
            "model.safetensors": _as_safetensors(tiny_weights / "whisper" / "pytorch_model.bin"),
        },
    }


@pytest.fixture
def hub(hub_repos: dict[str, dict[str, bytes]]) -> Iterator[HubServer]:
    with HubServer(HubState(repos=hub_repos)) as server:
        yield server


@pytest.fixture
def hf_home(tmp_path: Path) -> Path:
    return tmp_path / "hf-home"


@pytest.fixture
def in_process(hub: HubServer, hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    """huggingface_hub in this process pointed at the stand-in, with its cache under HF_HOME. (It reads
    HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE once, when imported: its constants are patched instead.)"""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # It writes what arrives in pieces of 10 MB: smaller ones, so that a cut in these small files leaves
    # something behind to continue from.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    return hub


def run_here(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["weights", "download", *args])
    out, err = capsys.readouterr()
    return code, out, err


def run_fresh(hf_home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The command in a new process, configured by the environment alone."""
    environ = (
        {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | {"HF_HOME": str(hf_home)} | env
    )
    return subprocess.run(
        [sys.executable, "-m", "lipsync.cli.main", "weights", "download", *args],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def cache_blobs(hf_home: Path) -> list[Path]:
    return sorted(hf_home.glob("hub/models--*/blobs/*"))


def test_a_fresh_download_passes_the_check_loads_and_a_rerun_transfers_nothing(
    in_process: HubServer,
    hf_home: Path,
    tmp_path: Path,
    hub_repos: dict[str, dict[str, bytes]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    hub = in_process
    weights = tmp_path / "models"
    result = run_fresh(hf_home, str(weights), HF_ENDPOINT=hub.url)  # configured by the environment alone
    assert result.returncode == 0, result.stderr
    assert all(f"fetching    {target}" in result.stdout for target in V15_TARGETS), result.stdout
    assert "weights in" in result.stdout and "missing" not in result.stdout
    assert len(hub.state.gets()) == len(V15_TARGETS)
    # Each file is the Hub's, and the same file as the cache's copy (a hard link: no second copy on disk).
    unet = weights / "musetalkV15" / "unet.pth"
    assert unet.read_bytes() == hub_repos["TMElyralab/MuseTalk"]["musetalkV15/unet.pth"]
    blob = (
        hf_home
        / "hub"
        / "models--TMElyralab--MuseTalk"
        / "blobs"
        / hashlib.sha256(unet.read_bytes()).hexdigest()
    )
    assert os.path.samefile(unet, blob)

    generator = families.load_generator(weights, None, "v15", "cpu", "fp32")
    assert generator.info.version == "v15" and not generator.untrained

    code, out, err = run_here(capsys, str(weights))  # again, in this process (the same Hub and cache)
    assert code == 0, err
    assert len(in_process.state.gets()) == len(V15_TARGETS)  # no new transfer
    assert all(f"present     {target}" in out for target in V15_TARGETS), out


def test_an_interrupted_download_continues_where_it_stopped(
    in_process: HubServer, hf_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = in_process.state
    content = state.repos["TMElyralab/MuseTalk"]["musetalkV15/unet.pth"]
    half = len(content) // 2
    state.cut_once[UNET] = half  # the connection drops half-way, and the server then stays down
    state.refuse_after_cut.add(UNET)
    weights = tmp_path / "models"

    code, out, err = run_here(capsys, str(weights))
    assert code == 2 and "run the same command again: it continues from there" in err, err
    assert not (weights / "musetalkV15" / "unet.pth").exists()
    partial = [p for p in cache_blobs(hf_home) if p.name.endswith(PARTIAL_SUFFIX)]
    assert len(partial) == 1
    kept = partial[0].stat().st_size
    assert half // 2 < kept <= half  # what arrived before the cut (less what was still in flight)

    state.refuse.clear()  # the server is back
    code, out, err = run_here(capsys, str(weights))
    assert code == 0, err
    assert "resuming    musetalkV15/unet.pth from TMElyralab/MuseTalk" in out
    last = state.gets("musetalkV15/unet.pth")[-1]
    assert last.range == f"bytes={kept}-"  # only what was missing was asked for
    assert (weights / "musetalkV15" / "unet.pth").read_bytes() == content
    assert not [p for p in cache_blobs(hf_home) if p.name.endswith(PARTIAL_SUFFIX)]


def test_a_file_that_does_not_match_its_declared_sha256_is_refused(
    in_process: HubServer, hf_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    in_process.state.wrong_sha256.add(UNET)
    weights = tmp_path / "models"
    code, _, err = run_here(capsys, str(weights))
    assert code == 2
    assert "musetalkV15/unet.pth" in err and "does not match the SHA-256" in err and "fix:" in err, err
    assert "Traceback" not in err
    assert not (weights / "musetalkV15" / "unet.pth").exists()
    assert not any("unet" in p.name or p.name.endswith(PARTIAL_SUFFIX) for p in cache_blobs(hf_home))
    assert [p.stat().st_size for p in cache_blobs(hf_home)] == [
        len(in_process.state.repos["TMElyralab/MuseTalk"]["musetalkV15/musetalk.json"])
    ]  # only the file before it: no bad bytes kept anywhere


def test_huggingface_hub_alone_does_not_check_the_sha256(in_process: HubServer, tmp_path: Path) -> None:
    """Why the check above is ours: hf_hub_download keeps a file whose content differs from its ETag."""
    from huggingface_hub import hf_hub_download

    in_process.state.wrong_sha256.add(UNET)
    path = Path(hf_hub_download("TMElyralab/MuseTalk", "musetalkV15/unet.pth"))
    declared = os.path.basename(os.path.realpath(path))
    assert hashlib.sha256(path.read_bytes()).hexdigest() != declared


def test_files_in_the_hugging_face_cache_are_reused_without_a_transfer(
    in_process: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    assert run_here(capsys, str(first))[0] == 0
    transfers = len(in_process.state.gets())

    code, out, err = run_here(capsys, str(second))
    assert code == 0, err
    assert len(in_process.state.gets()) == transfers
    assert all(f"reusing     {target} from the Hugging Face cache" in out for target in V15_TARGETS), out
    assert all(os.path.samefile(first / target, second / target) for target in V15_TARGETS)

    code, out, err = run_here(capsys, str(second))  # and again: everything is in place
    assert code == 0 and out.count("present     ") == len(V15_TARGETS) and "1.5" in out


def test_offline_a_missing_file_is_a_clear_error_and_cached_files_still_serve(
    in_process: HubServer,
    hf_home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert run_here(capsys, str(tmp_path / "online"))[0] == 0  # the v1.5 files are now in the cache
    served = len(in_process.state.requests)

    result = run_fresh(hf_home, str(tmp_path / "v1"), "--version", "v1", HF_HUB_OFFLINE="1")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "musetalk/musetalk.json" in result.stderr and "TMElyralab/MuseTalk" in result.stderr
    assert "HF_HUB_OFFLINE" in result.stderr and "fix: go online" in result.stderr
    assert "HF_ENDPOINT" in result.stderr and "copy the file by hand" in result.stderr

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, _, err = run_here(capsys, str(tmp_path / "offline"))
    assert code == 0, err
    assert len(in_process.state.requests) == served  # not one request while offline
    assert (tmp_path / "offline" / "musetalkV15" / "unet.pth").is_file()


def test_eval_files_come_from_the_mirror_resumed_and_checked(
    in_process: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lipsync.eval.networks.inception import FID_WEIGHTS_FILE
    from lipsync.eval.networks.syncnet_v2 import SYNCNET_V2_FILE

    state = in_process.state
    syncnet = os.urandom(300_000)
    state.files = {SYNCNET_V2_FILE: syncnet, FID_WEIGHTS_FILE: os.urandom(200_000)}
    state.cut_once[SYNCNET_V2_FILE] = 100_000
    monkeypatch.setenv("LIPSYNC_EVAL_MIRROR", in_process.url + "/files")
    eval_dir = tmp_path / "eval"

    code, out, err = run_here(capsys, str(tmp_path / "models"), "--eval", "--eval-weights", str(eval_dir))
    # syncnet_v2.model: continued after the cut, whole.
    assert (eval_dir / SYNCNET_V2_FILE).read_bytes() == syncnet
    assert [r.range for r in state.gets(SYNCNET_V2_FILE)] == [None, "bytes=100000-"]
    # The Inception file's name carries the start of its SHA-256 (6726825d): this one is refused, not kept.
    assert code == 1
    assert FID_WEIGHTS_FILE in err and "6726825d" in err and "fix:" in err, err
    assert sorted(p.name for p in eval_dir.iterdir()) == [SYNCNET_V2_FILE]
    # ArcFace has no single address: where to get it is said.
    assert "backbone.pth" in out and "arcface_torch" in out


def test_a_family_without_hub_files_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(families.FAMILY_PACKAGES, "toy", "toy_family")
    with pytest.raises(WeightsError, match="no files on the Hugging Face Hub") as caught:
        download_weights(tmp_path, "toy")
    assert "by hand" in caught.value.fix


def test_an_unknown_version_is_refused_before_anything_is_fetched(
    in_process: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_here(capsys, str(tmp_path), "--version", "v2")
    assert code == 2 and "v15" in err and not in_process.state.gets()


def test_a_missing_weights_folder_names_the_download_command(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as caught:
        families.load_generator(tmp_path / "nothing", None, "v15", "cpu", "fp32")
    assert f"lipsync weights download {tmp_path / 'nothing'}" in caught.value.fix


def files_outside(tmp_path: Path, *inside: Path) -> list[Path]:
    """Every file under tmp_path that is not under one of `inside`."""
    return [p for p in tmp_path.rglob("*") if not p.is_dir() and not any(p.is_relative_to(i) for i in inside)]


@pytest.mark.parametrize(
    ("hostile", "declared"),
    [
        ("etags", "../../../../escaped"),  # the cache names a blob by its ETag
        ("commits", "../../../../escaped"),  # and a snapshot folder by its commit
        ("etags", "abc"),  # no checksum at all: nothing could be checked
    ],
)
def test_an_etag_or_commit_that_is_no_hash_is_refused_and_nothing_is_written(
    in_process: HubServer,
    hf_home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    hostile: str,
    declared: str,
) -> None:
    state = in_process.state
    for repo, files in state.repos.items():
        for name in files:
            getattr(state, hostile)[f"{repo}/{name}"] = declared
    weights = tmp_path / "models"
    code, out, err = run_here(capsys, str(weights))
    assert code == 2 and "Traceback" not in err, err
    assert f"{in_process.url} declared the" in err and repr(declared) in err, err
    assert "not a SHA-256 or git SHA-1" in err and "fix: set HF_ENDPOINT" in err, err
    assert "reusing" not in out and "fetching" not in out, out
    assert not state.gets()  # not one file was transferred
    assert files_outside(tmp_path, hf_home / "hub") == []
    assert not cache_blobs(hf_home)


def test_a_server_that_changes_its_etag_after_the_first_answer_cannot_write_outside(
    in_process: HubServer, hf_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checksum is asked for once per file: a second, different answer is never used."""
    state = in_process.state
    for repo, files in state.repos.items():
        for name in files:
            state.etags[f"{repo}/{name}"] = "../../../../escaped"
            state.honest_requests[f"{repo}/{name}"] = 1
    weights = tmp_path / "models"
    code, _, err = run_here(capsys, str(weights))
    assert code == 0, err
    assert files_outside(tmp_path, hf_home / "hub", weights) == []
    assert all((weights / target).is_file() for target in V15_TARGETS)


@pytest.mark.parametrize("where", ["a file", "under a file", "a sub-folder that is a file", "eval: a file"])
def test_a_target_that_is_a_file_is_refused_before_anything_is_fetched(
    in_process: HubServer, hf_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    weights, extra = tmp_path / "models", []
    if where == "a file":
        weights = blocker
    elif where == "under a file":
        weights = blocker / "models"
    elif where == "a sub-folder that is a file":
        weights.mkdir()
        (weights / "musetalkV15").write_text("not a folder")
        blocker = weights / "musetalkV15"
    else:
        extra = ["--eval", "--eval-weights", str(blocker)]
    code, _, err = run_here(capsys, str(weights), *extra)
    assert code == 2 and "Traceback" not in err, err
    assert f"{blocker} is a file, not a folder" in err and "fix: give a folder path" in err, err
    assert not in_process.state.requests and not cache_blobs(hf_home)  # refused before any request
    assert blocker.read_text() == "not a folder"


def test_a_folder_where_a_file_goes_is_refused_before_anything_is_fetched(
    in_process: HubServer, hf_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "models"
    (weights / "musetalkV15" / "unet.pth").mkdir(parents=True)
    code, _, err = run_here(capsys, str(weights))
    assert code == 2 and "Traceback" not in err, err
    assert f"{weights / 'musetalkV15' / 'unet.pth'} is a folder, where a file goes" in err and "fix: " in err
    assert not in_process.state.requests and not cache_blobs(hf_home)


def test_a_folder_that_cannot_be_written_is_refused_before_anything_is_fetched(
    in_process: HubServer, hf_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if os.geteuid() == 0:  # root writes through permission bits; sysfs lets no one create a file
        unwritable = Path("/sys/kernel")
    else:
        unwritable = tmp_path / "read-only"
        unwritable.mkdir(mode=0o555)
    code, _, err = run_here(capsys, str(unwritable / "lipsync-models"))
    assert code == 2 and "Traceback" not in err, err
    assert f"{unwritable} cannot be written" in err and "fix: give a folder you can write to" in err, err
    assert not in_process.state.requests and not cache_blobs(hf_home)


def test_a_download_beside_another_familys_scaffold_is_listed_as_trained(
    in_process: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder with lipsync.json counts a family it does not list as untrained: the download lists it."""
    weights = tmp_path / "models"
    families.family("stabilized-sync").scaffold(weights, tiny=True)
    code, out, err = run_here(capsys, str(weights))
    assert code == 0 and "NOTE" not in out, out + err
    generator = families.load_generator(weights, "musetalk", "v15", "cpu", "fp32")
    assert not generator.untrained
    assert families.load_generator(weights, "stabilized-sync", None, "cpu", "fp32").untrained
