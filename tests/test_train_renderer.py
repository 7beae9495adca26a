"""`lipsync train renderer`: the landmark-prior family's M_a and M_r with the tiny 128 px config on the
prepared shared media — each stage lowers a held-out loss, resume, the export dubs, an ablation, config
errors."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lipsync.cli.main import main
from lipsync.config import DubSettings, RuntimeSettings
from lipsync.io.video import probe_video
from lipsync.models.families import load_generator
from lipsync.models.landmark_prior.generator import LandmarkPriorGenerator
from lipsync.models.landmark_prior.weights import (
    DEFAULT_VERSION,
    FAMILY,
    WeightsLayout,
    read_config,
    scaffold_weights,
)
from lipsync.models.weights import ModelEntry, read_weights_manifest, write_model_entry
from lipsync.pipeline.dub import DubPipeline
from lipsync.train.config import ConfigError, RendererTrainConfig, load_config
from lipsync.train.data.format import list_clips
from lipsync.train.renderer_config import loss_weights, validate_renderer_config
from lipsync.train.renderer_trainer import RendererTrainResult, train_renderer

from conftest import REPO, media, write_clip

# The tiny config trains with an untrained, narrow VGG (no downloads): its warning is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::lipsync.train.losses.perceptual.UntrainedPerceptualWarning")
CONFIGS = REPO / "configs" / "train"
ABLATION = CONFIGS / "ablation"
# On one thread (deterministic), the held-out perceptual loss of the output (L_r's VGG term) falls from
# ~0.52 to ~0.25 in 6 joint steps and from ~0.43 to ~0.24 in 6 rendering steps: a clear drop. M_a alone
# moves L_w by ~2 % in 6 steps (0.109 -> 0.107: Ī^r starts as a blend of real faces, already close), the
# same at learning rates from 2e-3 to 2e-2.
STEPS = 6
MIN_DROP = 0.8  # held-out loss after training / before (joint, rendering)
MIN_WARP_DROP = 0.995  # the same for L_w (stage alignment)
DUB_FRAMES = 6


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def renderer_config(path: Path, root: Path, out: Path, **changes: Any) -> RendererTrainConfig:
    """A config on the test dataset, holding out the last clip of each speaker; tiny (as renderer-tiny)."""
    config = load_config(path, RendererTrainConfig)
    last: dict[str, str] = {}
    for folder in list_clips(root):
        last[folder.name.split("__")[0]] = folder.name
    data = dataclasses.replace(config.data, root=root, val_clips=tuple(last.values()), val_fraction=0.0)
    return dataclasses.replace(config, output_dir=out, data=data, **changes)


def tiny(root: Path, out: Path, **changes: Any) -> RendererTrainConfig:
    return renderer_config(CONFIGS / "renderer-tiny.yaml", root, out, **changes)


def losses(result: RendererTrainResult) -> tuple[float, float]:
    return result.validation[0]["validation/loss"], result.validation[-1]["validation/loss"]


@pytest.fixture(scope="module")
def joint_runs(
    prepared_media: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[RendererTrainResult, RendererTrainResult, Path]:
    """Stage joint: half the steps, then a rerun with the full count (resumes)."""
    out = tmp_path_factory.mktemp("joint") / "run"
    half = STEPS // 2
    config = tiny(prepared_media, out, max_steps=half, checkpoint_every=half, validate_every=STEPS)
    first = train_renderer(config, progress=False)
    second = train_renderer(dataclasses.replace(config, max_steps=STEPS), progress=False)
    return first, second, out


@pytest.fixture(scope="module")
def landmarks_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder as `lipsync train landmarks` exports one without a base: a trained transformer (here
    random) beside scaffolded M_a and M_r, marked so in `untrained_parts`."""
    root = tmp_path_factory.mktemp("landmarks") / "export"
    scaffold_weights(root, tiny=True, seed=3)
    parts = {"trained_by": "lipsync train landmarks", "untrained_parts": ["alignment", "renderer"]}
    write_model_entry(root, ModelEntry(FAMILY, DEFAULT_VERSION, "tiny", untrained=True, training=parts))
    return root


@pytest.fixture(scope="module")
def alignment_run(
    prepared_media: Path, landmarks_export: Path, tmp_path_factory: pytest.TempPathFactory
) -> RendererTrainResult:
    out = tmp_path_factory.mktemp("alignment") / "run"
    config = tiny(
        prepared_media,
        out,
        stage="alignment",
        landmark_transformer=landmarks_export,
        max_steps=STEPS,
        validate_every=STEPS,
    )
    return train_renderer(config, progress=False)


def test_joint_lowers_its_held_out_loss_resumes_and_logs(
    joint_runs: tuple[RendererTrainResult, RendererTrainResult, Path],
) -> None:
    first, second, out = joint_runs
    assert (first.start_step, first.steps) == (0, STEPS // 2)
    assert (second.start_step, second.steps) == (STEPS // 2, STEPS)  # resumed from its state
    before, after = first.validation[0], second.validation[-1]
    assert (before["step"], after["step"]) == (0, STEPS)
    assert after["validation/loss"] < MIN_DROP * before["validation/loss"], (before, after)
    assert 0 < after["validation/l1"] < 1 and after["validation/psnr"] > 0

    assert (out / "validation" / f"step-{STEPS:08d}.png").is_file()
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    terms = {"loss/warp", "loss/reconstruction", "loss/style", "loss/gan", "loss/feature_matching"}
    assert terms | {"loss/discriminator"} <= set(next(e for e in logged if "loss/total" in e))
    assert any("validation/psnr" in entry for entry in logged)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        f"step-{STEPS // 2:08d}",
        f"step-{STEPS:08d}",
    ]


def test_the_joint_export_loads_and_dubs(
    joint_runs: tuple[RendererTrainResult, RendererTrainResult, Path], tmp_path: Path
) -> None:
    export = joint_runs[1].export_dir
    assert export is not None
    entry = _entry(export)
    assert entry.training["stage"] == "joint" and entry.training["steps"] == STEPS
    assert entry.untrained and entry.training["untrained_parts"] == ["transformer"]  # no transformer given
    family = read_config(export)
    assert (family.references, family.lip_references) == (3, 3)  # renderer-tiny's inference counts

    generator = load_generator(export, device="cpu", dtype="fp32")
    assert isinstance(generator, LandmarkPriorGenerator)
    clip = write_clip(media("talk_c.mp4"), tmp_path / "clip.mp4", DUB_FRAMES)
    settings = DubSettings(runtime=RuntimeSettings(device="cpu", dtype="fp32", batch_size=DUB_FRAMES))
    out = tmp_path / "dubbed.mp4"
    summary = DubPipeline(generator, settings)(
        clip, media("speech_16k_stereo.wav"), out, progress=False, max_frames=DUB_FRAMES
    )
    assert summary.frames == probe_video(out).frame_count == DUB_FRAMES


def test_alignment_lowers_l_w_and_rendering_trains_on_its_frozen_m_a(
    alignment_run: RendererTrainResult, landmarks_export: Path, prepared_media: Path, tmp_path: Path
) -> None:
    before, after = losses(alignment_run)
    assert after < MIN_WARP_DROP * before, alignment_run.validation
    export = alignment_run.export_dir
    assert export is not None
    assert _entry(export).training["untrained_parts"] == [
        "renderer"
    ]  # the transformer is the landmarks run's
    transformer = WeightsLayout(landmarks_export).transformer.read_bytes()
    assert WeightsLayout(export).transformer.read_bytes() == transformer

    # Stage rendering: M_a frozen from that export, the transformer carried over; nothing untrained is left.
    config = tiny(
        prepared_media, tmp_path / "run", stage="rendering", alignment_weights=export, max_steps=STEPS
    )
    result = train_renderer(dataclasses.replace(config, validate_every=STEPS), progress=False)
    before, after = losses(result)
    assert after < MIN_DROP * before, result.validation
    assert result.export_dir is not None
    layout = WeightsLayout(result.export_dir)
    assert layout.alignment.read_bytes() == WeightsLayout(export).alignment.read_bytes()
    assert layout.transformer.read_bytes() == transformer
    entry = _entry(result.export_dir)
    assert not entry.untrained and entry.training["untrained_parts"] == []


def _entry(folder: Path) -> ModelEntry:
    return read_weights_manifest(folder)[FAMILY]


def test_an_ablation_config_runs_and_its_export_loads(prepared_media: Path, tmp_path: Path) -> None:
    config = renderer_config(
        ABLATION / "landmark-prior-no-alignment.yaml",
        prepared_media,
        tmp_path / "run",
        tiny=True,
        batch_size=2,
        max_steps=1,
        validation_samples=2,
        landmark_transformer=None,
    )
    loss = dataclasses.replace(config.loss, vgg19_weights=None, vgg_width_divisor=16)
    config = dataclasses.replace(config, loss=loss, data=dataclasses.replace(config.data, num_workers=0))
    result = train_renderer(config, progress=False)
    assert result.steps == 1 and result.export_dir is not None
    assert read_config(result.export_dir).render.without_alignment
    generator = load_generator(result.export_dir, device="cpu", dtype="fp32")
    assert isinstance(generator, LandmarkPriorGenerator)
    assert generator.config.render.without_alignment
    assert not any(
        name.startswith("reference_encoder") for name, _ in generator.models.alignment.named_parameters()
    )


def test_the_ablation_configs_differ_from_the_full_one_by_their_switch() -> None:
    full = load_config(CONFIGS / "renderer.yaml", RendererTrainConfig)
    assert validate_renderer_config(full) == loss_weights(full)
    assert (full.stage, full.face_size, full.references, full.lip_references, full.lr) == (
        "joint",
        128,
        3,
        5,
        1e-4,
    )
    for name in ("alignment", "lip_module", "audio_attention"):
        path = ABLATION / f"landmark-prior-no-{name.replace('_', '-')}.yaml"
        config = load_config(path, RendererTrainConfig)
        validate_renderer_config(config)
        assert getattr(config, f"without_{name}")
        as_full = dataclasses.replace(
            config,
            output_dir=full.output_dir,
            without_alignment=False,
            without_lip_module=False,
            without_audio_attention=False,
        )
        assert as_full == full


@pytest.mark.parametrize(
    ("yaml", "field"),
    [
        ("stage: sideways\n", "stage"),
        ("stage: rendering\n", "alignment_weights"),
        ("stage: alignment\nwithout_alignment: true\n", "without_alignment"),
        ("warmup_steps: 2\nwithout_alignment: true\n", "warmup_steps"),
        ("face_size: 96\n", "face_size"),
        ("width_divisor: 3\n", "width_divisor"),
        ("tiny: true\nwidth_divisor: 2\n", "tiny"),
        ("references: 0\n", "references"),
        ("loss:\n  style: -1\n", r"loss\.style"),
        ("loss:\n  l2: 1.0\n", r"loss\.l2"),
    ],
)
def test_a_bad_renderer_config_names_the_field(yaml: str, field: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml + f"output_dir: {tmp_path / 'run'}\n")
    with pytest.raises(ConfigError, match=field):
        train_renderer(load_config(path, RendererTrainConfig), progress=False)
    assert main(["train", "renderer", "--config", str(path), "-q"]) == 2
