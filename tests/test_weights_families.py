"""Weights folders say what they hold: lipsync.json, the released layout, and choosing a family."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lipsync.cli.main import main
from lipsync.errors import WeightsError
from lipsync.models import families
from lipsync.models.families import choose_family, families_in, load_generator
from lipsync.models.musetalk.generator import MuseTalkGenerator
from lipsync.models.weights import WEIGHTS_MANIFEST, read_weights_manifest

from conftest import REPO, media
from toy_family import ToyGenerator


@pytest.fixture
def with_toy_family(monkeypatch: pytest.MonkeyPatch) -> None:
    """The toy family registered beside MuseTalk (its package is tests/toy_family.py)."""
    monkeypatch.setitem(families.FAMILY_PACKAGES, "toy", "toy_family")
    monkeypatch.setattr(families, "FAMILY_NAMES", (*families.FAMILY_NAMES, "toy"))


def test_a_scaffold_says_what_it_holds_and_loads_without_naming_it(tiny_weights: Path) -> None:
    entry = read_weights_manifest(tiny_weights)["musetalk"]
    assert (entry.version, entry.size, entry.untrained) == ("v15", "tiny", True)
    generator = load_generator(tiny_weights, device="cpu", dtype="fp32")
    assert isinstance(generator, MuseTalkGenerator)
    assert generator.info.family == "musetalk" and generator.info.version == "v15" and generator.untrained


def test_the_released_layout_is_recognised_without_lipsync_json(tiny_weights: Path, tmp_path: Path) -> None:
    released = Path(shutil.copytree(tiny_weights, tmp_path / "released"))
    (released / WEIGHTS_MANIFEST).unlink()
    assert families_in(released) == ["musetalk"]
    generator = load_generator(released, device="cpu", dtype="fp32")
    assert generator.info.family == "musetalk" and not generator.untrained  # nothing says it is a scaffold


def test_an_empty_folder_lists_the_default_familys_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="missing") as caught:
        load_generator(tmp_path, device="cpu")
    assert "musetalkV15/unet.pth" in str(caught.value) and "TMElyralab/MuseTalk" in str(caught.value)


def test_a_folder_of_two_families_needs_a_choice(
    with_toy_family: None, tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    both = Path(shutil.copytree(tiny_weights, tmp_path / "both"))
    families.family("toy").scaffold(both)
    assert sorted(json.loads((both / WEIGHTS_MANIFEST).read_text())["models"]) == ["musetalk", "toy"]
    with pytest.raises(WeightsError, match="several model families: musetalk, toy") as caught:
        choose_family(both, None)
    assert caught.value.fix == "choose one with `model`"
    assert isinstance(load_generator(both, model="toy"), ToyGenerator)
    assert isinstance(load_generator(both, model="musetalk", device="cpu", dtype="fp32"), MuseTalkGenerator)

    # The command line names its flag where the library names the setting.
    out = tmp_path / "out.mp4"
    inputs = [str(media("talk_c.mp4")), str(media("speech_44k_stereo.wav"))]
    code = main(["dub", *inputs, "-o", str(out), "--weights", str(both)])
    assert code == 2 and not out.exists()
    assert "choose one with `model` (--model)" in capsys.readouterr().err

    # `weights check` reports each family the folder holds.
    assert main(["weights", "check", str(both)]) == 0
    report = capsys.readouterr().out
    assert "(MuseTalk v1.0, v1.5)" in report and "(toy)" in report


def test_unknown_family_and_version_name_the_known_ones(tiny_weights: Path) -> None:
    with pytest.raises(WeightsError, match="no model family 'wav2lip'") as family:
        load_generator(tiny_weights, model="wav2lip")
    assert "musetalk" in family.value.fix
    with pytest.raises(WeightsError, match="musetalk has no version 'v2'") as version:
        load_generator(tiny_weights, version="v2")
    assert "v1, v15" in version.value.fix


def test_scaffold_with_a_model_adds_its_entry(with_toy_family: None, tmp_path: Path) -> None:
    from lipsync.cli.main import build_parser, run_weights

    args = build_parser().parse_args(["weights", "scaffold", str(tmp_path / "w"), "--tiny"])
    args.model = "toy"  # the parser's choices were fixed before the toy family was registered
    assert run_weights(args) == 0
    assert families_in(tmp_path / "w") == ["toy"]


# --- what a folder's files claim is checked before it costs anything ---------------------------------

NETWORK_FILES = {"stabilized-sync": "generator.safetensors", "landmark-prior": "renderer.safetensors"}


def damaged_copy(family_scaffolds: dict[str, Path], name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(family_scaffolds[name], tmp_path / name))


@pytest.mark.parametrize("name", list(NETWORK_FILES))
def test_a_truncated_network_file_is_named_as_malformed(
    name: str, family_scaffolds: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lipsync.pipeline.dub import DubPipeline

    weights = damaged_copy(family_scaffolds, name, tmp_path)
    path = weights / name / NETWORK_FILES[name]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match=f"the {name} weights are missing or malformed") as caught:
        DubPipeline.from_pretrained(weights, device="cpu", dtype="fp32")
    assert (
        f"malformed {name}/{NETWORK_FILES[name]}" in caught.value.problem and "scaffold" in caught.value.fix
    )

    out = tmp_path / "out.mp4"
    inputs = [str(media("talk_c.mp4")), str(media("speech_44k_stereo.wav"))]
    assert main(["dub", *inputs, "-o", str(out), "--weights", str(weights)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing or malformed" in err and "\n  fix: " in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "section", "setting", "value", "message"),
    [
        ("landmark-prior", "transformer", "model_dim", 8000, "transformer.model_dim is 8000"),
        ("landmark-prior", "transformer", "model_dim", 1_000_000, "transformer.model_dim is 1000000"),
        ("landmark-prior", "transformer", "heads", 3, "not divisible by its 3 heads"),
        ("landmark-prior", "render", "half_channels", 1 << 20, "render.half_channels is 1048576"),
        ("landmark-prior", None, "references", 10**9, "references is 1000000000"),
        ("stabilized-sync", "generator", "stem_channels", 1_000_000, "generator.stem_channels is 1000000"),
        ("stabilized-sync", "generator", "face_size", 1 << 20, "generator.face_size is 1048576"),
    ],
)
def test_absurd_sizes_in_a_config_are_refused_before_a_network_is_built(
    name: str,
    section: str | None,
    setting: str,
    value: int,
    message: str,
    family_scaffolds: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    weights = damaged_copy(family_scaffolds, name, tmp_path)
    config_path = weights / name / "config.json"
    config = json.loads(config_path.read_text())
    (config[section] if section else config)[setting] = value
    config_path.write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="missing or malformed") as caught:
        load_generator(weights, device="cpu", dtype="fp32")
    assert f"malformed {name}/config.json" in caught.value.problem and message in caught.value.problem
    assert main(["weights", "check", str(weights), "--model", name]) == 1
    assert message in capsys.readouterr().out


# --- the untrained label ---------------------------------------------------------------------------


def edit_manifest(folder: Path, change: Callable[[dict[str, Any]], object]) -> None:
    manifest = json.loads((folder / WEIGHTS_MANIFEST).read_text())
    change(manifest)
    (folder / WEIGHTS_MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.update(models={}),
        lambda m: m.update(models={"stabilized-sync": m["models"]["musetalk"] | {"untrained": False}}),
    ],
    ids=["no models", "only another family"],
)
def test_a_manifest_that_does_not_list_the_family_keeps_it_untrained(
    change: Callable[[dict[str, Any]], object],
    tiny_weights: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    weights = Path(shutil.copytree(tiny_weights, tmp_path / "weights"))
    edit_manifest(weights, change)
    generator = load_generator(weights, "musetalk", device="cpu", dtype="fp32")
    assert generator.untrained
    assert main(["weights", "check", str(weights), "--model", "musetalk"]) == 0
    assert "NOTE: these count as untrained test weights" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(format_version=2), "format_version 2: this lipsync reads version 1"),
        (lambda m: m.update(format="something-else"), "its format is 'something-else'"),
        (lambda m: m["models"]["musetalk"].update(untrained="no"), "untrained is 'no', not true or false"),
        (lambda m: m.update(models=[]), "its models are not a JSON object"),
    ],
    ids=["newer format version", "another format", "untrained not a boolean", "models not an object"],
)
def test_a_manifest_this_version_cannot_read_is_an_error_never_trained_weights(
    change: Callable[[dict[str, Any]], object],
    message: str,
    tiny_weights: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    weights = Path(shutil.copytree(tiny_weights, tmp_path / "weights"))
    edit_manifest(weights, change)
    with pytest.raises(WeightsError, match=message) as caught:
        load_generator(weights, "musetalk", device="cpu", dtype="fp32")
    assert "lipsync.json" in caught.value.problem and caught.value.fix
    out = tmp_path / "out.mp4"
    inputs = [str(media("talk_c.mp4")), str(media("speech_44k_stereo.wav"))]
    assert main(["dub", *inputs, "-o", str(out), "--weights", str(weights), "--model", "musetalk"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "\n  fix: " in err, err
    assert not out.exists()


def test_the_first_manifest_keeps_the_released_layout_it_finds_trained(
    tiny_weights: Path, tmp_path: Path
) -> None:
    released = Path(shutil.copytree(tiny_weights, tmp_path / "released"))
    (released / WEIGHTS_MANIFEST).unlink()  # MuseTalk as downloaded: no lipsync.json
    families.family("stabilized-sync").scaffold(released, tiny=True)
    manifest = read_weights_manifest(released)
    assert not manifest["musetalk"].untrained and manifest["stabilized-sync"].untrained
    assert not load_generator(released, "musetalk", device="cpu", dtype="fp32").untrained


def test_sizes_within_their_bounds_cost_nothing_before_the_file_disagrees(
    family_scaffolds: dict[str, Path], tmp_path: Path
) -> None:
    """Each size in bounds, but together a 3.4 G-parameter transformer: refused with no memory spent."""
    weights = damaged_copy(family_scaffolds, "landmark-prior", tmp_path)
    config_path = weights / "landmark-prior" / "config.json"
    config = json.loads(config_path.read_text())
    config["transformer"].update(model_dim=4096, feedforward_dim=4096, layers=16, heads=16)
    config_path.write_text(json.dumps(config))
    script = (
        "import re, sys\n"
        "from lipsync.errors import WeightsError\n"
        "from lipsync.models.families import load_generator\n"
        "try:\n"
        f"    load_generator({str(weights)!r}, device='cpu', dtype='fp32')\n"
        "except WeightsError as error:\n"
        "    print('refused:', error.problem.splitlines()[0])\n"
        # VmHWM: this program's own peak (ru_maxrss would count the forked test process's pages too)
        "peak = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())\n"
        "print('peak MB', int(peak.group(1)) // 1024)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert "refused:" in result.stdout and "does not match the LandmarkTransformer" in result.stdout, result
    assert int(result.stdout.rsplit("peak MB", 1)[1]) < 2000, result.stdout  # 7 GB when built for real
