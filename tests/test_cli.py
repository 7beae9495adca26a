"""The command line: exit codes, messages a user can act on, nothing half-written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lipsync.cli.main import main
from lipsync.timing import Stage

from conftest import media

FAST = ["--device", "cpu", "--dtype", "fp32"]


def dub_args(out: Path, weights: Path) -> list[str]:
    """`lipsync dub` of the smallest shared clip with a 5 s speech track."""
    clip, speech = media("talk_c.mp4"), media("speech_44k_stereo.wav")
    return ["dub", str(clip), str(speech), "-o", str(out), "--weights", str(weights), *FAST]


def test_weights_check_names_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "check", str(tmp_path)]) == 1
    report = capsys.readouterr().out
    for name in ("unet.pth", "pytorch_model.bin", "musetalk.json", "config.json", "preprocessor_config.json"):
        assert name in report
    assert "TMElyralab/MuseTalk" in report and "sd-vae-ft-mse" in report and "whisper-tiny" in report


def test_scaffolded_weights_pass_the_check(tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["weights", "check", str(tiny_weights)]) == 0
    assert "untrained" in capsys.readouterr().out.lower()


def test_dub_writes_a_video_and_a_summary(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dubbed.mp4"
    code = main([*dub_args(out, tiny_weights), "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert out.stat().st_size > 0
    assert "UNTRAINED" in captured.err and "UNTRAINED" in captured.out
    assert "frames with a face: 125" in captured.out
    for stage in Stage:
        assert stage.value in captured.out


def test_dub_with_partial_weights_names_each_missing_file(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    partial = tmp_path / "weights"
    shutil.copytree(tiny_weights, partial)
    (partial / "musetalkV15" / "unet.pth").unlink()
    (partial / "whisper" / "preprocessor_config.json").unlink()
    out = tmp_path / "out.mp4"
    code = main(dub_args(out, partial))
    err = capsys.readouterr().err
    assert code == 2
    assert "unet.pth" in err and "preprocessor_config.json" in err
    assert not out.exists()


def test_dub_to_an_unwritable_place_fails_before_work(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "missing-folder" / "out.mp4"
    code = main(dub_args(out, tiny_weights))
    assert code == 2
    assert "missing-folder" in capsys.readouterr().err
    assert not out.parent.exists()


def test_bench_reports_every_stage(tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "bench",
            str(media("talk_c.mp4")),
            str(media("speech_44k_stereo.wav")),
            "--frames",
            "8",
            "--weights",
            str(tiny_weights),
            *FAST,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    for stage in Stage:
        assert stage.value in out
    assert "frames/s" in out and "UNTRAINED" in out


def test_the_installed_command_exits_non_zero_on_bad_input(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lipsync.cli.main",
            "dub",
            str(tmp_path / "none.mp4"),
            str(tmp_path / "none.wav"),
            "-o",
            str(tmp_path / "o.mp4"),
            "--weights",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error:")
    assert "fix:" in result.stderr
