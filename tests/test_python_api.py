"""docs/python-api.md: every example runs as written, and `import lipsync` stays light."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lipsync.config import AUDIO_SAMPLE_RATE
from lipsync.io.audio import load_audio
from lipsync.io.video import probe_video

from conftest import REPO, media, write_clip, write_wav

EXAMPLES = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "python-api.md").read_text(), re.S)


def test_importing_lipsync_loads_no_heavy_library() -> None:
    code = (
        "import sys, lipsync; "
        "names = ('torch', 'diffusers', 'transformers', 'mediapipe', 'cv2'); "
        "heavy = [m for m in names if m in sys.modules]; "
        "print(','.join(heavy)); print(lipsync.DubSettings.__doc__)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    heavy, doc = out.splitlines()[:2]
    assert heavy == "" and "dub" in doc


def test_unknown_options_name_the_known_ones(tiny_weights: Path) -> None:
    from lipsync import DubPipeline

    with pytest.raises(TypeError, match=r"unknown dubbing option 'bbox'.*bbox_shift"):
        DubPipeline.from_pretrained(tiny_weights, bbox=3)


@pytest.fixture(scope="module")
def workdir(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("api")
    (folder / "models").symlink_to(tiny_weights, target_is_directory=True)
    write_clip(media("talk_c.mp4"), folder / "face.mp4", 20)
    speech = load_audio(media("speech_44k_stereo.wav")).samples[:AUDIO_SAMPLE_RATE]  # 1 s: 25 frames
    write_wav(folder / "speech.wav", speech)
    return folder


def test_the_documented_examples_run_as_written(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert len(EXAMPLES) == 4
    here = Path.cwd()
    os.chdir(workdir)
    try:
        for example in EXAMPLES:
            exec(compile(example, "docs/python-api.md", "exec"), {})
    finally:
        os.chdir(here)
    assert probe_video(workdir / "out.mp4").frame_count == probe_video(workdir / "anna.mp4").frame_count == 25
    assert (workdir / "avatars" / "anna" / "manifest.json").is_file()
    out = capsys.readouterr().out
    assert "wrote out.mp4" in out and "frames; the first shows 0.0 s" in out


def test_settings_given_whole_are_kept_and_options_apply_over_them(tiny_weights: Path) -> None:
    import torch

    from lipsync import DubPipeline, DubSettings, RuntimeSettings

    settings = DubSettings(runtime=RuntimeSettings(device="cpu", dtype="fp32", batch_size=3))
    kept = DubPipeline.from_pretrained(tiny_weights, settings=settings)
    assert kept.settings == settings and kept.generator.dtype == torch.float32
    changed = DubPipeline.from_pretrained(tiny_weights, dtype="bf16", settings=settings, bbox_shift=4)
    assert changed.settings.runtime == RuntimeSettings(device="cpu", dtype="bf16", batch_size=3)
    assert changed.settings.face.bbox_shift == 4 and changed.generator.dtype == torch.bfloat16
