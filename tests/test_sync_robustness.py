"""`lipsync eval-sync-robustness`: sync experts' similarity under audio shifts and face transforms (the
stabilized-sync paper's Fig. 6), on the shared prepared media with tiny random experts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lipsync.cli.main import main
from lipsync.errors import InputError, WeightsError
from lipsync.eval.sync_robustness import (
    JSON_FILE,
    ClipChoice,
    RobustnessOptions,
    load_expert,
    sync_robustness,
    warp_crop,
)
from lipsync.eval.sync_robustness_settings import (
    IDENTITY,
    TRANSFORMS,
    Ranges,
    describe_values,
    parse_values,
)
from lipsync.models.syncnet import SyncNetSpec, build_syncnet, save_syncnet, sync_probability
from lipsync.models.weights import UNTRAINED_MARKER
from lipsync.train.stabilized_avsync import AVSyncSpec, avsync_faces, build_avsyncnet, save_avsyncnet
from lipsync.train.syncnet_data import PairIndex, SyncPairSource

HELD_OUT_SPEAKER = "talk_c"  # prepared_media: talk_b and talk_c, two clips of 62-63 frames each
WINDOWS_PER_CLIP = 2
WAV2LIP_SPEC = SyncNetSpec("wav2lip", frames=5, image_size=32, width_divisor=8)  # tiny_syncnet_config's size
AVSYNC_SPEC = AVSyncSpec(tiny=True)  # four-conv lip encoder, the real ResNetSE-34 audio encoder


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def experts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Wav2Lip-style SyncNet (.pt) and a tiny AVSyncNet (.safetensors), random weights."""
    folder = tmp_path_factory.mktemp("experts")
    torch.manual_seed(0)
    wav2lip = save_syncnet(build_syncnet(WAV2LIP_SPEC), WAV2LIP_SPEC, folder / "syncnet-last.pt")
    avsync = save_avsyncnet(build_avsyncnet(AVSYNC_SPEC), AVSYNC_SPEC, folder / "avsyncnet-last.safetensors")
    return {"w2l": wav2lip, "avsync": avsync}


@pytest.fixture(scope="module")
def cli_run(prepared_media: Path, experts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The command on the held-out speaker's clips, with the default ranges (shifts as --shifts=-15..15)."""
    out = tmp_path_factory.mktemp("robustness") / "out"
    args = [
        "eval-sync-robustness",
        str(prepared_media),
        "--expert",
        f"w2l={experts['w2l']}",
        "--expert",
        f"avsync={experts['avsync']}",
        "--out",
        str(out),
        "--val-speakers",
        HELD_OUT_SPEAKER,
        "--windows-per-clip",
        str(WINDOWS_PER_CLIP),
        "--shifts=-15..15",
        "--device",
        "cpu",
        "-q",
    ]
    assert main(args) == 0
    return out


def report_of(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / JSON_FILE).read_text(encoding="utf-8"))
    return data


def test_json_has_every_transform_and_value_for_both_experts(cli_run: Path) -> None:
    report = report_of(cli_run)
    clips = report["clips"]
    assert {c["speaker"] for c in clips} == {HELD_OUT_SPEAKER} and len(clips) == 2  # the held-out split
    assert all(len(c["starts"]) == WINDOWS_PER_CLIP for c in clips)
    windows = report["windows"]
    assert windows == 2 * WINDOWS_PER_CLIP
    ranges = Ranges()
    assert [e["name"] for e in report["experts"]] == ["w2l", "avsync"]
    assert [e["kind"] for e in report["experts"]] == ["wav2lip", "avsyncnet"]
    for expert in report["experts"]:
        assert set(expert["curves"]) == set(TRANSFORMS)
        for transform in TRANSFORMS:
            curve = expert["curves"][transform]
            assert [p["value"] for p in curve] == list(ranges.values(transform))
            assert report["transforms"][transform]["values"] == list(ranges.values(transform))
            for point in curve:
                assert point["count"] == windows
                assert 0.0 <= point["mean"] <= 1.0 and point["std"] >= 0.0
    assert [p["value"] for p in report["experts"][0]["curves"]["shift"]] == list(map(float, range(-15, 16)))


def _reference(
    source: SyncPairSource, expert: str, model: torch.nn.Module, clips: list[dict[str, Any]], shift: int
) -> list[float]:
    """Per window, the similarity as the syncnet trainer scores a pair (its own pair pipeline)."""
    ids = [c.clip_id for c in source.clips]
    pairs = [PairIndex(ids.index(c["clip_id"]), start, start + shift) for c in clips for start in c["starts"]]
    batch = source.batch(pairs)
    with torch.inference_mode():
        if expert == "avsync":
            return [float(v) for v in model.similarity(batch.faces, batch.mels)]  # type: ignore[operator]
        return [float(v) for v in sync_probability(*model(batch.faces, batch.mels))]


@pytest.mark.parametrize("expert", ["w2l", "avsync"])
def test_untransformed_values_equal_the_experts_own_similarity(
    cli_run: Path, prepared_media: Path, experts: dict[str, Path], expert: str
) -> None:
    report = report_of(cli_run)
    result = next(e for e in report["experts"] if e["name"] == expert)
    loaded = load_expert(expert, experts[expert])
    folders = [prepared_media / "clips" / c["clip_id"] for c in report["clips"]]
    if expert == "avsync":
        source = SyncPairSource(folders, AVSYNC_SPEC, 5, faces=avsync_faces(AVSYNC_SPEC))
    else:
        source = SyncPairSource(folders, WAV2LIP_SPEC, 1)
    plain = np.asarray(_reference(source, expert, loaded.model, report["clips"], 0))
    for transform in TRANSFORMS:
        point = next(p for p in result["curves"][transform] if p["value"] == IDENTITY[transform])
        assert point["count"] == len(plain)
        assert point["mean"] == pytest.approx(plain.mean(), rel=1e-5, abs=1e-6), transform
        assert point["std"] == pytest.approx(plain.std(), rel=1e-4, abs=1e-6), transform
    # a shifted window is the trainer's pair of these faces with the audio 3 frames later
    shifted = np.asarray(_reference(source, expert, loaded.model, report["clips"], 3))
    point = next(p for p in result["curves"]["shift"] if p["value"] == 3.0)
    assert point["mean"] == pytest.approx(shifted.mean(), rel=1e-5, abs=1e-6)


def test_html_has_one_plot_per_transform_and_names_both_experts(cli_run: Path) -> None:
    page = (cli_run / "robustness.html").read_text(encoding="utf-8")
    assert page.count("<svg") == len(TRANSFORMS)
    assert "w2l" in page and "avsync" in page
    for transform in TRANSFORMS:
        assert f"<h2>{transform}</h2>" in page
    assert "src=" not in page and "href=" not in page and "<link" not in page  # self-contained
    assert "UNTRAINED" not in page  # the experts' folder has no untrained marker
    assert not list(cli_run.glob(".*"))  # no temporaries left by the atomic writes


def test_untrained_experts_are_labelled(
    prepared_media: Path, experts: dict[str, Path], tmp_path: Path
) -> None:
    folder = experts["w2l"].parent
    marker = folder / UNTRAINED_MARKER
    marker.write_text(json.dumps({"untrained": True, "files": [experts["avsync"].name]}), encoding="utf-8")
    try:
        options = RobustnessOptions(
            Ranges(shifts=(0.0, 1.0), scales=(1.1,), angles=(5.0,), translations=(5.0,)),
            ClipChoice(all_clips=True, max_clips=1, windows_per_clip=1),
            progress=False,
        )
        report = sync_robustness(
            prepared_media, [("plain", experts["w2l"]), ("scaffold", experts["avsync"])], tmp_path, options
        )
    finally:
        marker.unlink()
    assert [e.untrained for e in report.experts] == [False, True]
    page = (tmp_path / "robustness.html").read_text(encoding="utf-8")
    assert "scaffold: UNTRAINED" in page and "scaffold (UNTRAINED)" in page
    assert "plain (UNTRAINED)" not in page
    assert report_of(tmp_path)["experts"][1]["untrained"] is True


def test_errors(
    prepared_media: Path,
    experts: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def run(data: Path, *expert_args: str, extra: tuple[str, ...] = ()) -> str:
        args = ["eval-sync-robustness", str(data), "--out", str(tmp_path / "out"), "-q", *extra]
        for expert in expert_args:
            args += ["--expert", expert]
        assert main(args) == 2
        return capsys.readouterr().err

    good = f"w2l={experts['w2l']}"
    missing = tmp_path / "nowhere.pt"
    assert f"expert gone: checkpoint {missing} does not exist" in run(
        prepared_media, good, f"gone={missing}", extra=("--all",)
    )
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint")
    assert "expert bad:" in run(prepared_media, f"bad={garbage}", extra=("--all",))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"data folder {empty} is empty" in run(empty, good)
    assert "is held out" in run(prepared_media, good)  # 4 clips, val_fraction 0.05: none held out
    too_long = run(prepared_media, good, extra=("--all", "--shifts=-40..40"))
    assert "every clip is too short" in too_long and "needs 85 frames" in too_long
    assert "NAME=CHECKPOINT" in run(prepared_media, str(experts["w2l"]), extra=("--all",))
    assert not (tmp_path / "out").exists()
    with pytest.raises(WeightsError, match="does not exist"):
        load_expert("x", missing)
    with pytest.raises(InputError, match="cannot read the values"):
        parse_values("1..x")


def test_ranges_and_warps() -> None:
    assert parse_values("-2..2") == (-2.0, -1.0, 0.0, 1.0, 2.0)
    assert parse_values("0.8..1.2:0.1") == (0.8, 0.9, 1.0, 1.1, 1.2)
    assert parse_values("5,-5") == (-5.0, 5.0)
    assert Ranges(scales=(0.9, 1.1)).values("scale") == (0.9, 1.0, 1.1)  # the identity is always measured
    assert describe_values(Ranges().shifts) == "-15..15"
    assert describe_values(Ranges().scales) == "0.8..1.2:0.05"
    crop = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    assert warp_crop(crop, "rotation", 0.0) is crop
    moved = warp_crop(crop, "translation_x", 10.0)  # 4 px to the right, the left edge replicated
    assert np.array_equal(moved[:, 4:], crop[:, :-4])
    assert np.array_equal(moved[:, 0], crop[:, 0])
    down = warp_crop(crop, "translation_y", -10.0)  # 4 px up
    assert np.array_equal(down[:-4], crop[4:])
