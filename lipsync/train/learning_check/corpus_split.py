"""The corpus split: held-out clips of the training persons, and one person held out entirely.

A corpus is a folder of person sub-folders, each holding that person's clips (OUT/<person>/clip_NNNN.mp4,
each with clip_NNNN.opening.npy beside it), as `lipsync data synth` writes it. Clips are named by their
path without suffix ("person/clip_0003"). The held-out person is the one asked for, or the last person by
name. Of every other person's clips, the held-out ones are those listed, or else the round(fraction x n)
(at least 1) whose SHA-256 of the name is lowest: the same corpus and fraction always give the same split.

Each side becomes a folder of links (OUT/sources/train/<person>/..., OUT/sources/person/<person>/...) that
`lipsync data prepare` reads, so the prepared clips keep the person as their speaker.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lipsync.io.files import atomic_path
from lipsync.train.config import ConfigError
from lipsync.train.learning_check.corpus_config import CorpusSettings

VIDEO_SUFFIX = ".mp4"
OPENING_SUFFIX = ".opening.npy"
CORPUS_SPLIT_FILE = "corpus-split.json"
SOURCES_DIR = "sources"
TRAIN_SOURCES, PERSON_SOURCES = "train", "person"


@dataclass(frozen=True)
class CorpusSplit:
    """Which clips train, which are held out, and the person held out entirely."""

    corpus: str
    persons: tuple[str, ...]  # every person of the corpus, by name
    held_out_person: str
    train: tuple[str, ...]  # clip names ("person/clip_0003") the trainers learn from
    held_out: tuple[str, ...]  # clip names of the training persons, held out
    person: tuple[str, ...]  # every clip of the held-out person
    rule: str  # how the held-out clips were chosen, for the report

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CorpusSplit:
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


def corpus_clips(corpus: Path) -> dict[str, list[str]]:
    """Each person (sub-folder) of `corpus` and its clip names, sorted; ConfigError on a wrong layout."""
    corpus = Path(corpus)
    persons: dict[str, list[str]] = {}
    for folder in sorted(p for p in corpus.iterdir() if p.is_dir() and not p.name.startswith(".")):
        clips = sorted(f"{folder.name}/{v.stem}" for v in folder.glob(f"*{VIDEO_SUFFIX}") if v.is_file())
        if clips:
            persons[folder.name] = clips
    if not persons:
        raise ConfigError(
            f"the corpus {corpus} holds no person folder with .mp4 clips",
            "give a `lipsync data synth` OUT folder (OUT/<person>/clip_NNNN.mp4)",
        )
    for clips in persons.values():
        for name in clips:
            if not (corpus / f"{name}{OPENING_SUFFIX}").is_file():
                raise ConfigError(
                    f"the corpus clip {name}{VIDEO_SUFFIX} has no {name}{OPENING_SUFFIX} beside it",
                    "give a corpus that `lipsync data synth` wrote (each clip with its mouth opening)",
                )
    return persons


def name_rank(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def split_corpus(settings: CorpusSettings, source: str = "config") -> CorpusSplit:
    """The split `settings` asks for (see the module doc)."""
    assert settings.folder is not None
    persons = corpus_clips(settings.folder)
    if len(persons) < 2:
        raise ConfigError(
            f"the corpus {settings.folder} has {len(persons)} person(s)",
            "give a corpus of at least two persons (one is held out entirely)",
        )
    person = settings.held_out_person or sorted(persons)[-1]
    if person not in persons:
        raise ConfigError(
            f"{source}: the held-out person {person!r} is not in {settings.folder}",
            f"name one of {', '.join(sorted(persons))}",
        )
    training = {name: clips for name, clips in persons.items() if name != person}
    every = [clip for clips in training.values() for clip in clips]
    if settings.held_out_clips:
        unknown = [c for c in settings.held_out_clips if c not in every]
        if unknown:
            raise ConfigError(
                f"{source}: corpus.held_out_clips names {', '.join(unknown)}, not a training person's clip",
                "name clips as person/clip_NNNN (no suffix), not of the held-out person",
            )
        held = set(settings.held_out_clips)
        rule = f"the {len(held)} clips listed in corpus.held_out_clips"
    else:
        held = set()
        for clips in training.values():
            count = max(1, round(settings.held_out_fraction * len(clips)))
            held.update(sorted(clips, key=name_rank)[:count])
        rule = (
            f"round({settings.held_out_fraction:g} x n) (at least 1) of each training person's n clips, "
            "those with the lowest SHA-256 of their name"
        )
    train = tuple(c for c in every if c not in held)
    for name, clips in training.items():
        if not any(c in train for c in clips):
            raise ConfigError(
                f"{source}: every clip of {name} is held out", "hold out fewer clips (fraction or list)"
            )
    return CorpusSplit(
        str(settings.folder),
        tuple(sorted(persons)),
        person,
        train,
        tuple(c for c in every if c in held),
        tuple(persons[person]),
        rule,
    )


def write_split(split: CorpusSplit, out: Path) -> None:
    """OUT/corpus-split.json, and the two link folders `data prepare` reads. ConfigError if OUT holds a
    different split (a new --out, or --force-stage split, redoes it)."""
    path = out / CORPUS_SPLIT_FILE
    if path.is_file():
        earlier = CorpusSplit.from_json(json.loads(path.read_text(encoding="utf-8")))
        if earlier != split:
            raise ConfigError(
                f"{out} holds a run on another corpus or split",
                "give a new --out, or --force-stage split to redo everything",
            )
    sources = out / SOURCES_DIR
    if sources.exists():
        shutil.rmtree(sources)
    corpus = Path(split.corpus).resolve()
    for folder, names in ((TRAIN_SOURCES, (*split.train, *split.held_out)), (PERSON_SOURCES, split.person)):
        for name in names:
            link = sources / folder / f"{name}{VIDEO_SUFFIX}"
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(corpus / f"{name}{VIDEO_SUFFIX}", link)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(split.to_json(), indent=2) + "\n", encoding="utf-8")


def clip_name(source: str) -> str:
    """A prepared clip's source path ("person/clip_0003.mp4") as a corpus clip name."""
    return source[: -len(VIDEO_SUFFIX)] if source.endswith(VIDEO_SUFFIX) else source
