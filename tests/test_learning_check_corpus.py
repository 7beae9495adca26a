"""Corpus learning checks: the split, the pass lines, and a tiny run end to end on a synthesised corpus."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lipsync.cli.main import main
from lipsync.models.landmark_prior.generator import LandmarkPriorGenerator
from lipsync.models.landmark_prior.landmark_sets import CONTENT_POINTS
from lipsync.train.config import ConfigError
from lipsync.train.data.format import list_clips
from lipsync.train.data.synth import synth_corpus
from lipsync.train.landmark_inspect import InspectionClip, predict_content
from lipsync.train.landmark_prior_clips import read_family_clip
from lipsync.train.learning_check.corpus_config import (
    CorpusSettings,
    PassLine,
    is_corpus_recipe,
    load_corpus_config,
)
from lipsync.train.learning_check.corpus_dubs import ClipReading, read_dub, split_figures
from lipsync.train.learning_check.corpus_run import LINE_MISSED_EXIT, judge_lines, predicted_landmarks, spread
from lipsync.train.learning_check.corpus_split import (
    CORPUS_SPLIT_FILE,
    PERSON_SOURCES,
    SOURCES_DIR,
    TRAIN_SOURCES,
    split_corpus,
    write_split,
)

from conftest import media

REPO = Path(__file__).resolve().parents[1]
TRAIN_CONFIGS = REPO / "configs" / "train"


def fake_corpus(root: Path, clips: dict[str, int]) -> Path:
    """A corpus layout (empty files): `clips[person]` clips per person."""
    for person, count in clips.items():
        (root / person).mkdir(parents=True)
        for index in range(count):
            (root / person / f"clip_{index:04d}.mp4").write_bytes(b"")
            (root / person / f"clip_{index:04d}.opening.npy").write_bytes(b"")
    return root


# --- the split ---------------------------------------------------------------------------------------


def test_split_holds_out_the_last_person_and_a_fraction_of_each_other(tmp_path: Path) -> None:
    corpus = fake_corpus(tmp_path / "c", {"ann": 20, "bob": 10, "cid": 7})
    split = split_corpus(CorpusSettings(folder=corpus, held_out_fraction=0.2))
    assert split.persons == ("ann", "bob", "cid")
    assert split.held_out_person == "cid"
    assert split.person == tuple(f"cid/clip_{i:04d}" for i in range(7))
    assert sum(c.startswith("ann/") for c in split.held_out) == 4  # round(0.2 x 20)
    assert sum(c.startswith("bob/") for c in split.held_out) == 2
    assert not any(c.startswith("cid/") for c in (*split.train, *split.held_out))
    assert not set(split.train) & set(split.held_out)
    assert len(split.train) + len(split.held_out) == 30


def test_split_is_deterministic_and_stable_as_a_corpus_grows(tmp_path: Path) -> None:
    small = fake_corpus(tmp_path / "a", {"ann": 10, "bob": 10})
    again = fake_corpus(tmp_path / "b", {"ann": 10, "bob": 10})
    first = split_corpus(CorpusSettings(folder=small, held_out_fraction=0.3))
    second = split_corpus(CorpusSettings(folder=again, held_out_fraction=0.3))
    assert first.held_out == second.held_out and first.train == second.train
    assert split_corpus(CorpusSettings(folder=small, held_out_fraction=0.3)) == first


def test_split_holds_out_the_person_and_clips_asked(tmp_path: Path) -> None:
    corpus = fake_corpus(tmp_path / "c", {"ann": 4, "bob": 4, "cid": 4})
    settings = CorpusSettings(
        folder=corpus, held_out_clips=("bob/clip_0001", "cid/clip_0003"), held_out_person="ann"
    )
    split = split_corpus(settings)
    assert split.held_out_person == "ann"
    assert split.held_out == ("bob/clip_0001", "cid/clip_0003")
    assert split.person == tuple(f"ann/clip_{i:04d}" for i in range(4))
    assert len(split.train) == 6 and "bob/clip_0001" not in split.train


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"held_out_person": "zed"}, "not in"),
        ({"held_out_clips": ("cid/clip_0000",)}, "not a training person's clip"),
        ({"held_out_clips": ("ann/clip_0000", "ann/clip_0001")}, "every clip of ann"),
    ],
)
def test_split_refuses_what_it_cannot_hold_out(
    tmp_path: Path, settings: dict[str, object], message: str
) -> None:
    corpus = fake_corpus(tmp_path / "c", {"ann": 2, "bob": 2, "cid": 2})
    with pytest.raises(ConfigError, match=message):
        split_corpus(CorpusSettings(folder=corpus, **settings))  # type: ignore[arg-type]


def test_split_needs_two_persons_and_openings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least two persons"):
        split_corpus(CorpusSettings(folder=fake_corpus(tmp_path / "one", {"ann": 3})))
    corpus = fake_corpus(tmp_path / "c", {"ann": 2, "bob": 2})
    (corpus / "bob" / "clip_0001.opening.npy").unlink()
    with pytest.raises(ConfigError, match=r"no bob/clip_0001\.opening\.npy"):
        split_corpus(CorpusSettings(folder=corpus))


def test_written_split_links_each_side_and_refuses_another_split(tmp_path: Path) -> None:
    corpus = fake_corpus(tmp_path / "c", {"ann": 5, "bob": 3})
    split = split_corpus(CorpusSettings(folder=corpus))
    out = tmp_path / "run"
    write_split(split, out)
    write_split(split, out)  # the same split again: fine
    links = out / SOURCES_DIR / TRAIN_SOURCES
    train = sorted(p.relative_to(links).as_posix() for p in links.rglob("*.mp4"))
    assert train == sorted(f"{c}.mp4" for c in (*split.train, *split.held_out))
    assert all(c.startswith("ann/") for c in train)
    person = sorted((out / SOURCES_DIR / PERSON_SOURCES / "bob").iterdir())
    assert [p.name for p in person] == ["clip_0000.mp4", "clip_0001.mp4", "clip_0002.mp4"]
    assert person[0].resolve() == (corpus / "bob" / "clip_0000.mp4").resolve()
    assert json.loads((out / CORPUS_SPLIT_FILE).read_text())["held_out_person"] == "bob"
    with pytest.raises(ConfigError, match="another corpus or split"):
        write_split(split_corpus(CorpusSettings(folder=corpus, held_out_person="ann")), out)


# --- recipes and pass lines --------------------------------------------------------------------------


def test_pass_lines_are_judged() -> None:
    scores = {"syncnet": {"held_out": {"accuracy": 0.9}, "person": {"accuracy": 0.5}}}
    lines = (
        PassLine("syncnet", "accuracy", "held_out", at_least=0.9),
        PassLine("syncnet", "accuracy", "held_out", at_least=0.91),
        PassLine("syncnet", "accuracy", "person", at_most=0.5),
        PassLine("syncnet", "accuracy", "person", at_most=0.49),
        PassLine("syncnet", "auc", "held_out", at_least=0.0),  # missing: fails
    )
    assert [r.passed for r in judge_lines(lines, scores)] == [True, False, True, False, False]
    nan = {"landmarks": {"held_out": {"r": math.nan}}}
    assert not judge_lines((PassLine("landmarks", "r", at_least=-1.0),), nan)[0].passed


def test_shipped_corpus_recipes_load(tmp_path: Path) -> None:
    corpus = fake_corpus(tmp_path / "c", {"ann": 2, "bob": 2})
    recipes = sorted((REPO / "configs" / "learning-check").glob("corpus-*.yaml"))
    assert {r.name for r in recipes} >= {
        "corpus-syncnet.yaml",
        "corpus-landmarks.yaml",
        "corpus-ci.yaml",
        "corpus-stabilized.yaml",
        "corpus-landmark-prior.yaml",
        "corpus-all.yaml",
    }
    for recipe in recipes:
        assert is_corpus_recipe(recipe)
        config = load_corpus_config(recipe, corpus=corpus, held_out_person="ann")
        assert config.corpus.folder == corpus and config.corpus.held_out_person == "ann"
        assert config.pass_lines
    lines = load_corpus_config(REPO / "configs/learning-check/corpus-syncnet.yaml", corpus=corpus).pass_lines
    assert lines == (PassLine("syncnet", "accuracy", "held_out", at_least=0.90),)
    assert not is_corpus_recipe(REPO / "configs" / "learning-check" / "landmark-prior.yaml")


def _recipe(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("corpus: {}\nstages: [{name: syncnet, config: CONFIG}]\n", "corpus.folder is not set"),
        ("corpus: {folder: CORPUS}\nstages: [{name: unet, config: CONFIG}]\n", "stages\\[0\\].name"),
        (
            "corpus: {folder: CORPUS}\nstages: [{name: syncnet, config: CONFIG}]\n"
            "pass_lines: [{stage: syncnet, metric: r, at_least: 0.5}]\n",
            "metric is 'r'",
        ),
        (
            "corpus: {folder: CORPUS}\nstages: [{name: syncnet, config: CONFIG}]\n"
            "pass_lines: [{stage: syncnet, metric: accuracy}]\n",
            "neither at_least and at_most",
        ),
        (
            "corpus: {folder: CORPUS}\nstages: [{name: syncnet, config: CONFIG}]\n"
            "pass_lines: [{stage: landmarks, metric: r, at_least: 0.5}]\n",
            "stage is 'landmarks'",
        ),
        (
            "corpus: {folder: CORPUS, held_out_fraction: 1.5}\nstages: [{name: syncnet, config: CONFIG}]\n",
            "1.5",
        ),
        (
            "corpus: {folder: CORPUS}\nstages: [{name: syncnet, config: CONFIG, max_seconds: -5}]\n",
            r"stages\[0\]\.max_seconds is -5",
        ),
        (
            "corpus: {folder: CORPUS}\nstages: [{name: syncnet, config: CONFIG, max_steps: 0}]\n",
            "max_steps is 0",
        ),
        (
            "corpus: {folder: CORPUS}\nstages: [{name: avsyncnet, config: CONFIG}, "
            "{name: talking, config: CONFIG}, {name: silent, config: CONFIG}]\n",
            r"stages\[1\]: stage talking reads the output of silent, not before it",
        ),
        (
            "corpus: {folder: CORPUS}\nstages: [{name: renderer, config: CONFIG}]\n",
            "give the stages landmarks earlier",
        ),
        (
            "corpus: {folder: CORPUS}\nstages: [{name: syncnet, config: CONFIG}]\nscoring: {dub_clips: 0}\n",
            "dub_clips is 0",
        ),
    ],
)
def test_bad_corpus_recipes_are_refused(tmp_path: Path, body: str, message: str) -> None:
    corpus = fake_corpus(tmp_path / "c", {"ann": 2, "bob": 2})
    text = body.replace("CORPUS", str(corpus)).replace("CONFIG", str(TRAIN_CONFIGS / "syncnet-tiny.yaml"))
    with pytest.raises(ConfigError, match=message):
        load_corpus_config(_recipe(tmp_path / "r.yaml", text))


def test_a_split_figure_is_the_mean_over_its_clips() -> None:
    readings = {
        "model": [
            ClipReading(0.9, 0, 0.9),
            ClipReading(0.7, 1, 0.75),
            ClipReading(math.nan, math.nan, math.nan),
        ],
        "shuffled": [ClipReading(-0.3, 2, 0.1), ClipReading(0.1, 0, 0.1)],
    }
    figures = split_figures(readings)
    assert figures["r"] == pytest.approx(0.8) and figures["abs_r"] == pytest.approx(0.8)
    assert figures["r_min"] == pytest.approx(0.7) and figures["r_max"] == pytest.approx(0.9)
    assert figures["best_lag"] == pytest.approx(0.5) and figures["clips"] == 2
    assert figures["r_shuffled"] == pytest.approx(-0.1) and figures["abs_r_shuffled"] == pytest.approx(0.1)
    assert math.isnan(split_figures({"copied": []})["r_copied"])


def test_dubbed_clips_are_spread_over_the_persons() -> None:
    clips = [Path(f"{person}__{i}") for person in ("ann", "bob", "cy") for i in range(5)]
    assert [c.name for c in spread(clips, 3)] == ["ann__0", "bob__0", "cy__0"]
    assert spread(clips[:2], 4) == clips[:2]


def test_corpus_options_need_a_corpus_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = REPO / "configs" / "learning-check" / "landmark-prior.yaml"
    assert main(["learning-check", str(recipe), "--out", str(tmp_path / "o"), "--corpus", str(tmp_path)]) == 2
    assert "not a corpus recipe" in capsys.readouterr().err


# --- end to end --------------------------------------------------------------------------------------

TINY_RECIPE = """
corpus: {{held_out_fraction: 0.3}}
prepare: {{clip_seconds: 12.0, min_face_size: 0, jobs: 1}}
stages:
  - {{name: syncnet, config: {syncnet}, max_seconds: 60, max_steps: 3}}
  - {{name: landmarks, config: {landmarks}, max_seconds: 60, max_steps: 2}}
  - {{name: avsyncnet, config: {avsyncnet}, max_seconds: 60, max_steps: 2}}
scoring: {{eval_pairs: 16}}
pass_lines:
  - {{stage: syncnet, split: held_out, metric: accuracy, at_least: {line}}}
  - {{stage: landmarks, split: held_out, metric: abs_r_shuffled, at_most: 1.0}}
"""


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "corpus"
    synth_corpus(out, [media("talk_b.mp4"), media("talk_c.mp4")], minutes=0.25, seed=7, progress=False)
    return out


def test_tiny_corpus_check_end_to_end(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configs = {name: TRAIN_CONFIGS / f"{name}-tiny.yaml" for name in ("syncnet", "landmarks", "avsyncnet")}
    missed = _recipe(tmp_path / "missed.yaml", TINY_RECIPE.format(line=1.5, **configs))
    out = tmp_path / "run"
    args = ["learning-check", str(missed), "--corpus", str(tiny_corpus), "--out", str(out), "-q"]
    assert main(args) == LINE_MISSED_EXIT
    printed = capsys.readouterr().out
    assert "| syncnet | held-out clips | accuracy | >= 1.5 |" in printed and "FAIL: 1 of 2" in printed

    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False
    assert report["corpus"]["held_out_person"] == "talk_c"
    names = ["split", "prepare", "syncnet", "landmarks", "avsyncnet", "scoring"]
    assert [s["name"] for s in report["stages"]] == names
    for stage in ("syncnet", "landmarks", "avsyncnet"):
        assert set(report["scores"][stage]) == {"held_out", "person"}
    assert report["scores"]["syncnet"]["person"]["clips"] == len(report["corpus"]["person"])
    held = report["corpus"]["held_out"]
    assert held and all(c.startswith("talk_b/") for c in held)
    assert report["val_clips"] and all(v.startswith("talk_b__") for v in report["val_clips"])
    landmarks = report["scores"]["landmarks"]["held_out"]
    assert math.isfinite(landmarks["r"]) and landmarks["abs_r"] == abs(landmarks["r"])
    assert landmarks["r_real"] > 0.8  # the prepared landmarks follow the corpus's opening: aligned

    # A rerun with a line the run meets: the stages are skipped, only the scoring runs again.
    met = _recipe(tmp_path / "met.yaml", TINY_RECIPE.format(line=0.0, **configs))
    args[1] = str(met)
    assert main(args) == 0
    assert "PASS: all 2 pass line(s) met" in capsys.readouterr().out
    again = json.loads((out / "report.json").read_text())
    assert [s["status"] for s in again["stages"][2:5]] == ["skipped (done earlier)"] * 3

    # The scored landmarks: one pass predicts frames c - 2 .. c + 2; its centre rows are what `dub` predicts.
    export = out / "stages" / "landmarks" / "export"
    generator = LandmarkPriorGenerator.from_pretrained(export, torch.device("cpu"), torch.float32)
    clip = read_family_clip(list_clips(out / "dataset")[0])
    points = predicted_landmarks(generator, np.asarray(clip.landmarks), clip.mels)
    assert not np.isnan(points).any()
    centres = list(range(2, len(points), 5))
    with torch.no_grad():
        expected = predict_content(
            generator.models.transformer,
            InspectionClip(np.zeros(0, np.uint8), clip.landmarks, clip.mels),
            centres,
            generator.config.landmark_references,
        )
    np.testing.assert_allclose(points[centres][..., CONTENT_POINTS], expected, atol=1e-5)


GENERATOR_RECIPE = """
corpus: {{held_out_fraction: 0.3}}
prepare: {{clip_seconds: 12.0, min_face_size: 0, jobs: 1}}
stages:
  - {{name: avsyncnet, config: {avsyncnet}, max_seconds: 60, max_steps: 1}}
  - {{name: silent, config: {silent}, max_seconds: 60, max_steps: 1}}
  - {{name: talking, config: {talking}, max_seconds: 60, max_steps: 1}}
  - {{name: landmarks, config: {landmarks}, max_seconds: 60, max_steps: 1}}
  - {{name: renderer, config: {renderer}, max_seconds: 60, max_steps: 1}}
scoring: {{eval_pairs: 16, max_clips: 1, dub_clips: 1}}
pass_lines:
  - {{stage: talking, split: held_out, metric: abs_r_copied, at_most: 1.0}}
  - {{stage: renderer, split: person, metric: r_real_landmarks, at_least: -1.0}}
"""


def test_tiny_corpus_generators_are_scored_by_their_dubs(tiny_corpus: Path, tmp_path: Path) -> None:
    configs = {
        "avsyncnet": TRAIN_CONFIGS / "avsyncnet-tiny.yaml",
        "silent": TRAIN_CONFIGS / "stabilized-silent-tiny.yaml",
        "talking": TRAIN_CONFIGS / "stabilized-talking-tiny.yaml",
        "landmarks": TRAIN_CONFIGS / "landmarks-tiny.yaml",
        "renderer": TRAIN_CONFIGS / "renderer-tiny.yaml",
    }
    recipe = _recipe(tmp_path / "generators.yaml", GENERATOR_RECIPE.format(**configs))
    out = tmp_path / "run"
    args = ["learning-check", str(recipe), "--corpus", str(tiny_corpus), "--out", str(out), "-q"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert [line["passed"] for line in report["pass_lines"]] == [True, True]
    for stage, rows in (("silent", 3), ("talking", 3), ("renderer", 4)):
        for split in ("held_out", "person"):
            figures = report["scores"][stage][split]
            assert figures["clips"] <= 1
            for metric in ("r", "r_shuffled", "r_copied"):
                assert metric in figures and f"abs_{metric}" in figures
            # every row's dub is kept beside the run, one clip per split
            dubs = sorted((out / "dubs" / stage / split).glob("*/*.mp4"))
            assert len(dubs) == rows, dubs
    assert "r_real_landmarks" in report["scores"]["renderer"]["held_out"]
    assert "r_real_landmarks" not in report["scores"]["talking"]["held_out"]

    # The meter reads the corpus clip itself (no dub) as following its own opening.
    source = sorted((tiny_corpus / "talk_b").glob("clip_*.mp4"))[0]
    opening = np.load(source.with_name(source.stem + ".opening.npy"))
    assert read_dub(source, opening).r > 0.8
