"""`lipsync train landmarks` with the tiny config on the prepared shared media: the held-out landmark error
drops, a rerun resumes, the export loads as a generator, the inspection strip, config errors; and the
training samples are what the generator reads at inference (normalisation, mel windows)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from lipsync.config import FACE_SIZE, FaceSettings
from lipsync.face.track import OVAL_POINTS, FaceTrack
from lipsync.models.families import load_generator
from lipsync.models.landmark_prior.generator import TRACK_LANDMARKS, LandmarkPriorGenerator
from lipsync.models.landmark_prior.landmark_sets import CONTENT_POINTS, POSE_POINTS
from lipsync.models.landmark_prior.landmark_transformer import LandmarkTransformer
from lipsync.models.landmark_prior.weights import WeightsLayout, read_config, scaffold_weights
from lipsync.models.weights import ModelEntry, read_weights_manifest, write_model_entry
from lipsync.train.config import ConfigError, LandmarkTrainConfig, load_config
from lipsync.train.data.format import list_clips, read_clip
from lipsync.train.landmark_data import LandmarkSamples
from lipsync.train.landmark_export import export_landmarks
from lipsync.train.landmark_inspect import PREDICTED_COLOUR, REAL_COLOUR
from lipsync.train.landmark_prior_clips import FamilyClips, family_boxes, read_family_clip
from lipsync.train.landmark_trainer import LandmarkTrainResult, train_landmarks

from conftest import REPO

CONFIG = REPO / "configs" / "train" / "landmarks-tiny.yaml"
STEPS = 12  # the tiny config's max_steps; the first run stops halfway
MIN_DROP = 0.7  # held-out L1 after training / before (measured: 0.95 -> 0.35)
STRIP_FRAMES = 4
FACE = 128


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def held_out(root: Path) -> tuple[str, ...]:
    """The last clip of each speaker."""
    last: dict[str, str] = {}
    for folder in list_clips(root):
        last[folder.name.split("__")[0]] = folder.name
    return tuple(last.values())


def tiny_config(root: Path, out: Path, **changes: Any) -> LandmarkTrainConfig:
    config = load_config(CONFIG, LandmarkTrainConfig)
    data = dataclasses.replace(config.data, root=root, val_clips=held_out(root), val_fraction=0.0)
    return dataclasses.replace(config, output_dir=out, data=data, **changes)


@pytest.fixture(scope="module")
def runs(
    prepared_media: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[LandmarkTrainResult, LandmarkTrainResult, Path]:
    """Half the steps, then a rerun with the full count (resumes)."""
    out = tmp_path_factory.mktemp("landmarks") / "run"
    config = tiny_config(prepared_media, out)
    first = train_landmarks(dataclasses.replace(config, max_steps=STEPS // 2), progress=False)
    second = train_landmarks(config, progress=False)
    return first, second, out


def test_training_lowers_the_held_out_landmark_error_and_resumes(
    runs: tuple[LandmarkTrainResult, LandmarkTrainResult, Path],
) -> None:
    first, second, out = runs
    assert (first.start_step, first.steps) == (0, STEPS // 2)
    assert (second.start_step, second.steps) == (STEPS // 2, STEPS)  # resumed from its checkpoint
    (start, before), (end, after) = first.validation_l1[0], second.validation_l1[-1]
    assert (start, end) == (0, STEPS)
    assert after < MIN_DROP * before, (first.validation_l1, second.validation_l1)

    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    validation = [entry for entry in logged if "validation/l1" in entry]
    assert [entry["step"] for entry in validation] == [0, STEPS // 2, STEPS]
    assert validation[-1]["validation/l1_px128"] == pytest.approx(validation[-1]["validation/l1"] * 128)
    train_logs = [entry for entry in logged if "loss/l1" in entry]
    assert {"loss/l1", "loss/velocity", "loss/total", "samples_per_second"} <= set(train_logs[-1])
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == [f"step-{STEPS // 2:08d}", f"step-{STEPS:08d}"]


def test_the_export_is_a_partial_folder_dub_loads(
    runs: tuple[LandmarkTrainResult, LandmarkTrainResult, Path],
) -> None:
    export = runs[1].export_dir
    assert export is not None
    entry = read_weights_manifest(export)["landmark-prior"]
    assert entry.untrained and entry.size == "tiny"  # M_a and M_r are random scaffolds
    assert entry.training["steps"] == STEPS and entry.training["untrained_parts"] == ["alignment", "renderer"]
    generator = load_generator(export, device="cpu", dtype="fp32")
    assert isinstance(generator, LandmarkPriorGenerator) and generator.untrained
    checkpoint = runs[2] / "checkpoints" / f"step-{STEPS:08d}" / "model.safetensors"
    from safetensors.torch import load_file

    trained = load_file(checkpoint)
    for name, value in generator.models.transformer.state_dict().items():
        assert torch.equal(value, trained[name]), name


def test_an_export_with_base_weights_copies_its_renderer(prepared_media: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    scaffold_weights(base, tiny=True, seed=3)
    config = tiny_config(prepared_media, tmp_path / "run", base_weights=base, max_steps=1, validate_every=1)
    result = train_landmarks(config, progress=False)
    assert result.export_dir is not None
    ours, theirs = WeightsLayout(result.export_dir), WeightsLayout(base)
    assert ours.renderer.read_bytes() == theirs.renderer.read_bytes()
    assert ours.alignment.read_bytes() == theirs.alignment.read_bytes()
    assert ours.transformer.read_bytes() != theirs.transformer.read_bytes()
    entry = read_weights_manifest(result.export_dir)["landmark-prior"]
    assert entry.training["base_weights"] == str(base)
    assert entry.untrained and entry.training["untrained_parts"] == ["alignment", "renderer"]  # a scaffold


def test_an_export_on_a_trained_renderer_is_trained(tmp_path: Path) -> None:
    """A base whose only untrained part is the transformer (a renderer run's export): a trained folder."""
    base = tmp_path / "base"
    scaffold_weights(base, tiny=True)
    info = {"untrained_parts": ["transformer"]}
    write_model_entry(base, ModelEntry("landmark-prior", "v1", "tiny", untrained=True, training=info))
    family = read_config(base)
    out = export_landmarks(
        tmp_path / "out", LandmarkTransformer(family.transformer), family, base, "tiny", {}
    )
    entry = read_weights_manifest(out)["landmark-prior"]
    assert not entry.untrained and entry.training["untrained_parts"] == []


def test_validation_strips_show_real_and_predicted_landmarks(
    runs: tuple[LandmarkTrainResult, LandmarkTrainResult, Path],
) -> None:
    strip_path = runs[2] / "validation" / f"step-{STEPS:08d}.png"
    strip = cv2.cvtColor(cv2.imread(str(strip_path)), cv2.COLOR_BGR2RGB)
    assert strip.shape == (FACE, FACE * STRIP_FRAMES, 3)
    for colour in (REAL_COLOUR, PREDICTED_COLOUR):
        assert (strip == np.array(colour, np.uint8)).all(axis=-1).sum() > 20, colour


def test_the_inspect_command_draws_a_strip(
    runs: tuple[LandmarkTrainResult, LandmarkTrainResult, Path], prepared_media: Path, tmp_path: Path
) -> None:
    from lipsync.cli.main import main

    export = runs[1].export_dir
    clip = list_clips(prepared_media)[0]
    out = tmp_path / "strip.png"
    code = main(["landmarks-inspect", str(clip), "--weights", str(export), "-o", str(out), "--frames", "3"])
    assert code == 0
    strip = cv2.imread(str(out))
    assert strip.shape == (FACE, FACE * 3, 3)


def test_training_landmarks_are_normalised_as_the_generator_normalises_them(
    prepared_media: Path, tmp_path: Path
) -> None:
    """The generator's own crop rule and normalisation on a stored frame, put in a canvas big enough that
    its box is not clipped, against the training clip's landmarks of that frame; and the same mel windows."""
    scaffold_weights(tmp_path / "weights", tiny=True)
    generator = load_generator(tmp_path / "weights", device="cpu", dtype="fp32")
    assert isinstance(generator, LandmarkPriorGenerator)
    folder = list_clips(prepared_media)[0]
    prepared, clip = read_clip(folder), read_family_clip(folder)
    frame = 30
    pad = prepared.frames.shape[1]
    points = np.asarray(prepared.landmarks[frame], np.float32) + pad
    margin = round(FaceSettings().extra_margin * FACE_SIZE / prepared.meta.face_size)
    box = generator.crop_box(points, 3 * pad, 3 * pad, FaceSettings(extra_margin=margin))
    assert box is not None
    track = FaceTrack(
        np.array([[box.x1, box.y1, box.x2, box.y2]], np.int32),
        points[None],
        np.zeros((1, OVAL_POINTS, 2), np.float32),
    )
    expected = generator.track_references(track)[TRACK_LANDMARKS][0]
    np.testing.assert_allclose(clip.landmarks[frame], expected, atol=1e-6)  # float32 rounding of the shift
    assert np.array_equal(
        family_boxes(prepared)[frame], [box.x1 - pad, box.y1 - pad, box.x2 - pad, box.y2 - pad]
    )

    audio = np.asarray(prepared.audio, np.float32)
    inference = generator.offline_audio(audio, Fraction(25), "segment").windows([frame])
    np.testing.assert_array_equal(clip.mels.windows([frame]), inference)

    samples = LandmarkSamples(FamilyClips([folder]))
    sample = samples.draw(np.random.default_rng(0))
    batch = samples.batch([sample])
    window = clip.landmarks[sample.start : sample.start + 5]
    np.testing.assert_array_equal(batch.pose[0].numpy(), window[..., POSE_POINTS])
    np.testing.assert_array_equal(batch.target[0].numpy(), window[..., CONTENT_POINTS])
    np.testing.assert_array_equal(batch.mels[0].numpy(), clip.mels.windows([sample.start + 2])[0])
    assert 2 <= sample.start <= clip.frame_count - 7
    assert not set(sample.references) & set(range(sample.start, sample.start + 5))
    assert len(set(sample.references)) == 15


@pytest.mark.parametrize(
    ("yaml", "field"),
    [
        ("batch_size: 0\n", "batch_size"),
        ("lr: 0\n", "lr"),
        ("face_size: 96\n", "face_size"),
        ("velocity_wieght: 1.0\n", "velocity_wieght"),
        ("l1_weight: fast\n", "l1_weight"),
    ],
)
def test_a_bad_config_names_its_field(prepared_media: Path, tmp_path: Path, yaml: str, field: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(CONFIG.read_text() + yaml)
    with pytest.raises(ConfigError, match=field):
        config = load_config(path, LandmarkTrainConfig)
        train_landmarks(tiny_config(prepared_media, tmp_path / "run", **_fields(config)), progress=False)


def test_missing_base_weights_are_named(prepared_media: Path, tmp_path: Path) -> None:
    config = tiny_config(prepared_media, tmp_path / "run", base_weights=tmp_path / "nothing")
    with pytest.raises(ConfigError, match="base_weights"):
        train_landmarks(config, progress=False)


def _fields(config: LandmarkTrainConfig) -> dict[str, Any]:
    """The values a test config takes from a loaded YAML (not its paths)."""
    keep = ("batch_size", "lr", "face_size", "l1_weight", "velocity_weight")
    return {name: getattr(config, name) for name in keep}
