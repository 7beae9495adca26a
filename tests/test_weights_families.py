"""Weights folders say what they hold: lipsync.json, the released layout, and choosing a family."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lipsync.cli.main import main
from lipsync.errors import WeightsError
from lipsync.models import families
from lipsync.models.families import choose_family, families_in, load_generator
from lipsync.models.musetalk.generator import MuseTalkGenerator
from lipsync.models.weights import WEIGHTS_MANIFEST, read_weights_manifest

from conftest import media
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
