"""`lipsync eval` end to end on real media: a dubbed clip, a clip against itself, skips, --compare."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lipsync.cli.main import main
from lipsync.config import DubSettings, RuntimeSettings
from lipsync.errors import InputError, OutputError, WeightsError
from lipsync.eval.networks.inception import FID_WEIGHTS_FILE
from lipsync.eval.networks.syncnet_v2 import SYNCNET_V2_FILE
from lipsync.eval.networks.weights import EvalWeightFiles, scaffold_eval_weights
from lipsync.eval.report import compare_reports
from lipsync.eval.run import EvalOptions, evaluate
from lipsync.models.syncnet import SyncNetSpec, build_syncnet, save_syncnet
from lipsync.pipeline.dub import DubPipeline

from conftest import media, tiny_syncnet_config, write_clip

OPTIONS = EvalOptions(device="cpu", progress=False)
ALL_KEYS = [
    "lse_d", "lse_c", "av_offset", "own_sync_confidence", "own_sync_offset", "fid_face", "fid_frame", "csim",
    "lpips", "lmd", "lmd_pixels", "lip_lmd", "psnr", "ssim", "ifc", "flicker", "lip_sync_r",
]  # fmt: skip
NEEDS_WEIGHTS = {"lse_d", "lse_c", "av_offset", "fid_face", "fid_frame", "csim", "lpips"}
DUB_FRAMES = 30
SELF_FRAMES = 20


@pytest.fixture(scope="module")
def eval_weights(tmp_path_factory: pytest.TempPathFactory) -> EvalWeightFiles:
    folder = tmp_path_factory.mktemp("eval-weights")
    scaffold_eval_weights(folder)
    return EvalWeightFiles.in_folder(folder)


@pytest.fixture(scope="module")
def dubbed(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """talk_c re-dubbed with its own speech by the tiny untrained models (the mouth becomes noise)."""
    settings = DubSettings(runtime=RuntimeSettings(device="cpu", dtype="fp32"), silence="generate")
    out = tmp_path_factory.mktemp("dubbed") / "talk_c_dub.mp4"
    DubPipeline.from_pretrained(tiny_weights, settings=settings)(
        media("talk_c.mp4"), media("talk_c.mp4"), out, progress=False
    )
    return out


def read_json(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def by_key(data: dict) -> dict[str, dict]:
    return {m["key"]: m for m in data["metrics"]}


def test_report_of_a_dubbed_clip(dubbed: Path, eval_weights: EvalWeightFiles, tmp_path: Path) -> None:
    options = EvalOptions(device="cpu", progress=False, max_frames=DUB_FRAMES)
    out = tmp_path / "report"
    evaluate(dubbed, out, reference=media("talk_c.mp4"), weights=eval_weights, options=options)
    data = read_json(out)
    metrics = by_key(data)
    assert list(metrics) == ALL_KEYS
    for key, metric in metrics.items():
        assert metric["definition"], key
        if key.startswith("own_sync"):
            assert metric["status"] == "skipped" and "--syncnet" in metric["skipped_reason"]
            assert metric["value"] is None
            continue
        assert metric["status"] == "ok", (key, metric["skipped_reason"])
        assert metric["value"] is not None and math.isfinite(metric["value"]), key
        # figures from the scaffold networks say so; weight-free ones are real measurements
        assert metric["untrained_weights"] == (key in NEEDS_WEIGHTS), key
    assert metrics["lse_d"]["samples"] == DUB_FRAMES - 5  # syncnet_python drops the last 5 frames' windows
    assert metrics["psnr"]["samples"] == DUB_FRAMES
    # the tiny model rewrote the mouth: the lower face differs, the rest does not
    assert 5 < metrics["psnr"]["value"] < 35
    assert 0.2 < metrics["ssim"]["value"] < 0.95
    assert metrics["lmd"]["value"] > 0 and metrics["ifc"]["value"] > 0
    assert metrics["flicker"]["value"] > metrics["flicker"]["extra"]["reference"]
    assert metrics["lip_sync_r"]["extra"]["target"] == "reference lip gap"
    assert metrics["lip_sync_r"]["samples"] == DUB_FRAMES

    per_frame = data["per_frame"]
    assert per_frame["fps"] == 25
    for curve in ("audio_envelope", "mouth_opening_generated", "mouth_opening_reference", "psnr", "ssim"):
        assert len(per_frame[curve]) == DUB_FRAMES, curve
    assert len(per_frame["sync_confidence_v2"]) == DUB_FRAMES - 5
    inputs = {i["role"]: i for i in data["inputs"]}
    assert inputs["generated"]["frames"] == inputs["reference"]["frames"] == DUB_FRAMES
    assert "its audio track" in inputs["audio"]["path"]

    page = (out / "report.html").read_text()
    assert page.count("<svg") == 3 and page.count("<img") == 8
    assert "UNTRAINED" in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]


def test_a_clip_against_itself_scores_perfectly(eval_weights: EvalWeightFiles, tmp_path: Path) -> None:
    options = EvalOptions(device="cpu", progress=False, max_frames=SELF_FRAMES)
    clip = media("talk_b.mp4")
    report = evaluate(clip, tmp_path / "self", reference=clip, weights=eval_weights, options=options)
    value = {m.key: m.value for m in report.metrics}
    assert value["psnr"] == math.inf and by_key(read_json(tmp_path / "self"))["psnr"]["value"] is None
    assert value["ssim"] == pytest.approx(1.0)
    assert value["lmd"] == 0 and value["lmd_pixels"] == 0 and value["ifc"] == 0
    assert value["csim"] == pytest.approx(1.0, abs=1e-6)
    assert abs(value["fid_face"]) < 1e-6 and abs(value["fid_frame"]) < 1e-6  # type: ignore[arg-type]
    assert value["lip_sync_r"] == pytest.approx(1.0) and report.metric("lip_sync_r").extra["best_lag"] == 0


def test_missing_weights_and_inputs_give_skipped_entries(tmp_path: Path) -> None:
    empty = EvalWeightFiles.in_folder(tmp_path / "no-weights")
    options = EvalOptions(device="cpu", progress=False, max_frames=10)
    clip = media("talk_b.mp4")
    alone = evaluate(clip, tmp_path / "alone", weights=empty, options=options)
    metrics = by_key(read_json(tmp_path / "alone"))
    assert metrics["lse_d"]["status"] == "skipped" and metrics["lse_d"]["value"] is None
    assert (
        SYNCNET_V2_FILE in metrics["lse_d"]["needs"]
        and "syncnet_python" in metrics["lse_d"]["skipped_reason"]
    )
    for key in ("fid_face", "csim", "psnr", "lmd", "ifc"):
        assert metrics[key]["status"] == "skipped" and metrics[key]["needs"] == "--reference", key
    assert metrics["flicker"]["status"] == "ok"  # needs nothing
    assert metrics["lip_sync_r"]["status"] == "skipped" and metrics["lip_sync_r"]["needs"] == "--opening"
    assert not alone.untrained

    evaluate(clip, tmp_path / "paired", reference=clip, weights=empty, options=options)
    paired = by_key(read_json(tmp_path / "paired"))
    assert FID_WEIGHTS_FILE in paired["fid_face"]["needs"] and paired["fid_face"]["value"] is None
    assert "backbone.pth" in paired["csim"]["needs"]
    assert paired["ssim"]["status"] == "ok"


def test_the_lip_sync_meter_follows_a_ground_truth_opening(tmp_path: Path) -> None:
    """--opening: a series that follows the clip's real mouth reads high; reversed, it does not."""
    empty = EvalWeightFiles.in_folder(tmp_path / "no-weights")
    options = EvalOptions(device="cpu", progress=False, max_frames=SELF_FRAMES)
    clip = media("talk_b.mp4")
    evaluate(clip, tmp_path / "seen", weights=empty, options=options)
    # The mouth opening over the inter-ocular distance: the same lips, another normalisation.
    truth = np.array(read_json(tmp_path / "seen")["per_frame"]["mouth_opening_generated"], dtype=np.float64)
    np.save(tmp_path / "truth.npy", truth)
    np.save(tmp_path / "reversed.npy", truth[::-1].copy())
    follows = evaluate(clip, tmp_path / "a", weights=empty, options=options, opening=tmp_path / "truth.npy")
    metric = follows.metric("lip_sync_r")
    assert metric.value is not None and metric.value > 0.9 and metric.extra["target"] == "opening file"
    reversed_ = evaluate(
        clip, tmp_path / "b", weights=empty, options=options, opening=tmp_path / "reversed.npy"
    )
    assert reversed_.metric("lip_sync_r").value < 0.5  # type: ignore[operator]

    np.save(tmp_path / "table.npy", np.zeros((4, 3)))
    for name, message in [("missing.npy", "does not exist"), ("table.npy", "not one number per frame")]:
        with pytest.raises(InputError, match=message):
            evaluate(clip, tmp_path / f"out-{name}", weights=empty, options=options, opening=tmp_path / name)
        assert not (tmp_path / f"out-{name}" / "report.json").exists()


def test_a_silent_video_needs_audio_for_sync_metrics(eval_weights: EvalWeightFiles, tmp_path: Path) -> None:
    silent = write_clip(media("talk_b.mp4"), tmp_path / "silent.mp4", 12)
    options = EvalOptions(device="cpu", progress=False)
    evaluate(silent, tmp_path / "a", weights=eval_weights, options=options)
    assert "no speech" in by_key(read_json(tmp_path / "a"))["lse_c"]["skipped_reason"]
    evaluate(
        silent, tmp_path / "b", audio=media("speech_16k_stereo.wav"), weights=eval_weights, options=options
    )
    lse = by_key(read_json(tmp_path / "b"))["lse_c"]
    assert lse["status"] == "ok" and lse["samples"] == 12 - 5


def test_our_syncnet_confidence_per_window(tmp_path: Path) -> None:
    spec = SyncNetSpec(kind="wav2lip", frames=5, image_size=64, width_divisor=8)
    checkpoint = save_syncnet(build_syncnet(spec), spec, tmp_path / "syncnet.pt")
    weights = EvalWeightFiles.in_folder(tmp_path / "none", syncnet=checkpoint)
    options = EvalOptions(device="cpu", progress=False, max_frames=24)
    report = evaluate(media("talk_b.mp4"), tmp_path / "own", weights=weights, options=options)
    confidence = report.metric("own_sync_confidence")
    assert confidence.status == "ok" and 0 <= (confidence.value or 0) <= 1
    assert confidence.samples == 24 - 5 + 1
    assert len(report.per_frame.sync_confidence_own) == 24 - 5 + 1
    assert -15 <= (report.metric("own_sync_offset").value or 0) <= 15


@pytest.fixture(scope="module")
def trained_syncnet(syncnet_media: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SyncNet of configs/train/syncnet-tiny.yaml trained on the four shared clips (seconds)."""
    from lipsync.train.syncnet_trainer import train_syncnet

    config = tiny_syncnet_config(syncnet_media, tmp_path_factory.mktemp("syncnet-run"), ())
    return train_syncnet(config, progress=False).checkpoint


def shifted_speech(source: Path, frames: int, out: Path) -> Path:
    """The source's audio moved `frames` video frames later (silence before) or earlier (cut)."""
    import numpy as np
    import scipy.io.wavfile

    from lipsync.io.audio import load_audio, to_pcm16

    samples = load_audio(source).samples
    step = frames * 640
    moved = np.concatenate([np.zeros(step, np.float32), samples]) if frames >= 0 else samples[-step:]
    scipy.io.wavfile.write(out, 16000, to_pcm16(moved))
    return out


@pytest.mark.parametrize("audio_delay", [0, 5, -5])
def test_our_syncnet_finds_a_planted_audio_shift(
    audio_delay: int, trained_syncnet: Path, tmp_path: Path
) -> None:
    """With the speech delayed by d frames the video leads it: the offset is -d (positive = video lags)."""
    clip = media("talk_b.mp4")
    speech = shifted_speech(clip, audio_delay, tmp_path / "speech.wav")
    weights = EvalWeightFiles.in_folder(tmp_path / "none", syncnet=trained_syncnet)
    report = evaluate(clip, tmp_path / "eval", audio=speech, weights=weights, options=OPTIONS)
    offset = report.metric("own_sync_offset").value
    assert offset is not None and abs(offset - (-audio_delay)) <= 1, offset


def test_reports_are_never_mixed_or_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        evaluate(media("talk_b.mp4"), out, options=OPTIONS)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    with pytest.raises(InputError, match="image"):
        evaluate(Path(__file__).with_name("nope.png"), tmp_path / "x", options=OPTIONS)


def test_scaffold_never_replaces_real_weights(tmp_path: Path) -> None:
    (tmp_path / SYNCNET_V2_FILE).write_bytes(b"real weights")
    with pytest.raises(WeightsError, match="not overwriting"):
        scaffold_eval_weights(tmp_path)
    assert (tmp_path / SYNCNET_V2_FILE).read_bytes() == b"real weights"


def test_cli_eval_and_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = str(media("talk_b.mp4"))
    common = ["--eval-weights", str(tmp_path / "none"), "--device", "cpu", "-q"]
    assert main(["eval", clip, "--out", str(tmp_path / "a"), "--max-frames", "8", *common]) == 0
    assert (
        main(["eval", clip, "--reference", clip, "--out", str(tmp_path / "b"), "--max-frames", "8", *common])
        == 0
    )
    printed = capsys.readouterr().out
    assert "LSE-D" in printed and "skipped" in printed and "report.html" in printed

    assert main(["eval", "--compare", str(tmp_path / "a/report.json"), str(tmp_path / "b/report.json")]) == 0
    table = capsys.readouterr().out
    assert "[1] a: talk_b.mp4" in table and "[2] b: talk_b.mp4" in table
    ssim_row = next(line for line in table.splitlines() if line.startswith("SSIM"))
    assert ssim_row.split()[2:] == ["skipped", "1"]

    assert main(["eval", clip, "--out", str(tmp_path / "a"), *common]) == 2  # not empty
    assert "not empty" in capsys.readouterr().err
    assert main(["eval", clip]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["eval", clip, "--out", str(tmp_path / "c"), "--inception", str(tmp_path / "typo.pth")]) == 2
    assert "--inception" in capsys.readouterr().err and not (tmp_path / "c").exists()
    (tmp_path / "bad.json").write_text("{}")
    assert main(["eval", "--compare", str(tmp_path / "bad.json")]) == 2
    assert "not a lipsync evaluation report" in capsys.readouterr().err


def test_compare_marks_untrained_figures(tmp_path: Path) -> None:
    report = {
        "format": 1,
        "inputs": [{"role": "generated", "path": "x/dub.mp4"}],
        "metrics": [
            {"key": "lse_c", "name": "LSE-C", "better": "higher", "status": "ok", "value": 7.25,
             "untrained_weights": True},
        ],
    }  # fmt: skip
    path = tmp_path / "run" / "report.json"
    path.parent.mkdir()
    path.write_text(json.dumps(report))
    table = compare_reports([path])
    assert "7.25*" in table and "UNTRAINED" in table
