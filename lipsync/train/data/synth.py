"""`lipsync data synth`: a controlled-sync corpus, to test whether a training setup can learn lip sync.

Each person's clips show one still face whose mouth opening is a fixed function of the frame's own
audio (synth_mouth), speaking eSpeak NG sentences or the user's recordings (synth_speech). It is a test
corpus with a known answer, not training data for real use: the mouths are drawn, not filmed.

Layout, as `lipsync data prepare` reads it (a sub-folder per person):

    OUT/synth.json                    the settings and the list of clips
    OUT/<person>/clip_0000.mp4        25 fps H.264 + AAC, FRAME_SIZE square
    OUT/<person>/clip_0000.opening.npy  float32 (frames,): the mouth opening of each frame, in [0, 1]
"""

from __future__ import annotations

import json
import os
import wave
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lipsync.config import AUDIO_SAMPLE_RATE, PCM16_FULL_SCALE
from lipsync.errors import InputError
from lipsync.face.landmarks import FaceMeshDetector
from lipsync.io.files import atomic_path
from lipsync.io.writer import VideoWriter
from lipsync.train.data.prepare import safe_name
from lipsync.train.data.synth_mouth import (
    FPS,
    FRAME_SIZE,
    SAMPLES_PER_FRAME,
    MouthRig,
    face_canvas,
    find_still,
    frame_openings,
    jitter_path,
)
from lipsync.train.data.synth_speech import (
    USER_MIN_PIECE_SECONDS,
    Utterance,
    audio_files,
    espeak_utterances,
    user_utterances,
)

MANIFEST = "synth.json"
OPENING_SUFFIX = ".opening.npy"
NOTE = (
    "A controlled-sync test corpus made by `lipsync data synth`: the mouth opening of every frame is a fixed "
    "function of that frame's audio. It tests whether a training setup can learn sync; it is not training "
    "data for real use."
)


@dataclass(frozen=True)
class SynthClip:
    """One written clip."""

    person: str
    video: str  # path relative to the corpus folder
    frames: int
    source: str  # the sentence, or the audio file and offset
    voice: str | None
    rate_wpm: int | None


@dataclass(frozen=True)
class SynthReport:
    out: Path
    persons: list[str]
    clips: list[SynthClip]

    @property
    def seconds(self) -> float:
        return sum(clip.frames for clip in self.clips) / FPS

    def format(self) -> str:
        clips = f"{len(self.clips)} clip{'s' if len(self.clips) != 1 else ''}"
        return f"wrote {clips} ({self.seconds:.1f} s) of {len(self.persons)} person(s) to {self.out}"


def persons_of(faces: Sequence[Path]) -> list[str]:
    """The person (folder) name of each face file: its stem, file-system safe; InputError on a repeat."""
    if not faces:
        raise InputError("No face files were given.", "Give at least one video or photo with --faces.")
    names = [safe_name(Path(face).stem) for face in faces]
    for name in names:
        if names.count(name) > 1:
            clash = [str(face) for face, other in zip(faces, names, strict=True) if other == name]
            raise InputError(
                f"The face files {', '.join(clash)} would share the person folder {name!r}.",
                "Rename one of them: each face file's name (without suffix) names its person.",
            )
    return names


def check_output_folder(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder.", "Give a new folder for the corpus.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(
            f"{out} exists and is not empty.", "Give a new folder, or add --force to replace this one whole."
        )
    if not out.parent.is_dir():
        raise InputError(
            f"The folder {out.parent} does not exist.", f"Create it first: mkdir -p {out.parent}"
        )
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise InputError(f"The folder {out.parent} is not writable.", "Give a folder you can write to.")


def synth_corpus(
    out: Path,
    faces: Sequence[Path],
    speech: Path | None = None,
    *,
    minutes: float = 2.0,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
) -> SynthReport:
    """Write the corpus to `out` (built beside it, then renamed into place; replaced whole with `force`).

    `speech`: a folder of audio files to speak (cut into pieces of at most 10 s), or None for eSpeak NG
    sentences. `minutes` bounds the total speech. The same arguments give the same clips.
    """
    out, faces = Path(out), [Path(face) for face in faces]
    persons = persons_of(faces)
    if not minutes > 0:
        raise InputError(f"--minutes is {minutes}.", "Give a length of speech above 0, e.g. --minutes 2.")
    check_output_folder(out, force)
    files = audio_files(speech) if speech is not None else None
    with FaceMeshDetector(max_faces=4, video_mode=False) as detector:
        canvases = [face_canvas(find_still(face, detector)) for face in faces]
    rng = np.random.default_rng(seed)
    seconds = minutes * 60
    utterances = user_utterances(files, seconds) if files is not None else espeak_utterances(rng, seconds)
    bar = tqdm(total=round(seconds * FPS), desc="synthesising", unit="frame", disable=not progress)
    clips: list[SynthClip] = []
    with bar, atomic_path(out) as building:
        building.mkdir()
        for person in persons:
            (building / person).mkdir()
        for index, utterance in enumerate(utterances):
            person = persons[index % len(persons)]
            rig = MouthRig(canvases[index % len(canvases)])
            clips.append(_write_clip(building, person, index, utterance, rig, seed, bar))
        if not clips:
            raise InputError(
                f"The speech in {speech} gave no piece of at least {USER_MIN_PIECE_SECONDS:g} s.",
                "Give longer recordings, or a larger --minutes.",
            )
        manifest = {"note": NOTE, "seed": seed, "minutes": minutes, "faces": [str(face) for face in faces]}
        manifest["speech"] = str(speech) if speech is not None else "eSpeak NG"
        manifest["clips"] = [asdict(clip) for clip in clips]
        (building / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return SynthReport(out, persons, clips)


def _write_clip(
    folder: Path, person: str, index: int, utterance: Utterance, rig: MouthRig, seed: int, bar: tqdm
) -> SynthClip:
    """Clip `index`: the mp4 and its opening.npy, frames written as they are made."""
    name = f"clip_{index:04d}"
    samples = np.pad(utterance.samples, (0, -utterance.samples.size % SAMPLES_PER_FRAME))
    openings = frame_openings(samples)
    jitter = jitter_path(np.random.default_rng([seed, index]), openings.size)
    video = folder / person / f"{name}.mp4"
    wav = folder / person / f".{name}.wav"
    _write_wav(wav, samples)
    try:
        with VideoWriter(video, Fraction(FPS), FRAME_SIZE, FRAME_SIZE, audio_path=wav) as writer:
            for frame in _frames(rig, openings, jitter):
                writer.write(frame)
                bar.update(1)
    finally:
        wav.unlink(missing_ok=True)
    np.save(folder / person / f"{name}{OPENING_SUFFIX}", openings)
    return SynthClip(
        person=person,
        video=f"{person}/{name}.mp4",
        frames=int(openings.size),
        source=utterance.source,
        voice=utterance.voice,
        rate_wpm=utterance.rate_wpm,
    )


def _frames(rig: MouthRig, openings: np.ndarray, jitter: np.ndarray) -> Iterator[np.ndarray]:
    for opening, motion in zip(openings, jitter, strict=True):
        yield rig.render(float(opening), motion)


def _write_wav(path: Path, samples: np.ndarray) -> None:
    pcm = np.round(np.clip(samples, -1, 1) * PCM16_FULL_SCALE).astype("<i2")
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(AUDIO_SAMPLE_RATE)
        file.writeframes(pcm.tobytes())
