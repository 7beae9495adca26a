"""Cut each clip into a head (training) and a tail (held out), frame-exact, each with its own audio.

The cut is at frame k = floor(fraction x N + 1/2) of the N decoded frames (round half up, in exact
fractions): the head is frames 0 .. k-1, the tail frames k .. N-1, at the source's own frame rate. The
audio (16 kHz mono) is cut at the first sample frame k shows, floor(k x 16000 / fps), counted from where
the video starts (an audio track that starts earlier is skipped up to the first frame, as `data prepare`
does); the tail keeps all the audio to the end. Each part is written as H.264 with its audio (AAC) muxed
in, and its audio is kept as a 16 kHz WAV as well (the exact samples the tail is scored with).
"""

from __future__ import annotations

import json
import math
import time
import wave
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from lipsync.config import AUDIO_SAMPLE_RATE
from lipsync.errors import InputError
from lipsync.io.audio import frame_start_sample, load_audio, to_pcm16
from lipsync.io.files import atomic_path
from lipsync.io.video import FrameReader, probe_video
from lipsync.io.writer import VideoWriter

SPLIT_FILE = "split.json"
HEADS_DIR = "heads"  # only the head videos: the folder `data prepare` reads
TAILS_DIR = "tails"
AUDIO_DIR = "audio"
SPLIT_CRF = 12  # near-lossless: the tail is the ground truth the dubs are scored against
MIN_PART_FRAMES = 1


@dataclass(frozen=True)
class SplitClip:
    """One clip cut in two."""

    name: str  # the source's file stem; labels the clip everywhere
    source: str
    fps: str  # exact, as a fraction
    frames: int  # N, decoded frames of the source
    cut: int  # k: the tail's first frame
    head: str  # head video (with audio)
    tail: str  # tail video (with audio)
    head_audio: str  # 16 kHz mono WAV of the head
    tail_audio: str  # 16 kHz mono WAV of the tail

    @property
    def head_frames(self) -> int:
        return self.cut

    @property
    def tail_frames(self) -> int:
        return self.frames - self.cut

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "head_frames": self.head_frames, "tail_frames": self.tail_frames}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SplitClip:
        return cls(**{k: v for k, v in data.items() if k not in ("head_frames", "tail_frames")})


def cut_frame(frames: int, fraction: float) -> int:
    """k = floor(fraction x frames + 1/2): round half up, with the fraction read exactly as written."""
    return math.floor(Fraction(str(fraction)) * frames + Fraction(1, 2))


def split_clips(sources: list[Path], out: Path, fraction: float) -> list[SplitClip]:
    """Cut every source into out/heads, out/tails and out/audio; write out/split.json (with the wall
    time) last."""
    started = time.monotonic()
    for folder in (HEADS_DIR, TAILS_DIR, AUDIO_DIR):
        (out / folder).mkdir(parents=True, exist_ok=True)
    clips = [split_clip(source, out, fraction) for source in sources]
    data = {"seconds": round(time.monotonic() - started, 2), "clips": [c.to_json() for c in clips]}
    with atomic_path(out / SPLIT_FILE) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return clips


def read_split(out: Path) -> tuple[list[SplitClip], float] | None:
    """The clips of a finished split and its wall time (None if there is none, or a file of it is
    missing)."""
    path = out / SPLIT_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    clips = [SplitClip.from_json(entry) for entry in data["clips"]]
    files = [Path(p) for c in clips for p in (c.head, c.tail, c.head_audio, c.tail_audio)]
    return (clips, float(data["seconds"])) if all(f.is_file() for f in files) else None


def split_clip(source: Path, out: Path, fraction: float) -> SplitClip:
    info = probe_video(source)
    if info.is_image:
        raise InputError(f"{source} is an image", "give talking-face videos with audio")
    cut = cut_frame(info.frame_count, fraction)
    if not MIN_PART_FRAMES <= cut <= info.frame_count - MIN_PART_FRAMES:
        raise InputError(
            f"{source} has {info.frame_count} frames: cutting at {cut} leaves an empty head or tail",
            "give longer clips",
        )
    samples = load_audio(source).samples[_audio_skip(source) :]
    split_sample = frame_start_sample(cut, info.fps)
    if split_sample >= len(samples):
        raise InputError(
            f"{source}: its audio ends before frame {cut}", "give clips whose audio covers the video"
        )
    name = source.stem
    head_audio = write_wav(out / AUDIO_DIR / f"{name}-head.wav", samples[:split_sample])
    tail_audio = write_wav(out / AUDIO_DIR / f"{name}-tail.wav", samples[split_sample:])
    head, tail = out / HEADS_DIR / f"{name}.mp4", out / TAILS_DIR / f"{name}.mp4"
    size = (info.fps, info.width, info.height)
    with (
        FrameReader(info) as reader,
        VideoWriter(head, *size, audio_path=head_audio, crf=SPLIT_CRF) as head_writer,
        VideoWriter(tail, *size, audio_path=tail_audio, crf=SPLIT_CRF) as tail_writer,
    ):
        for index, frame in enumerate(reader.frames()):
            (head_writer if index < cut else tail_writer).write(frame)
    if head_writer.frames_written != cut or tail_writer.frames_written != info.frame_count - cut:
        raise InputError(
            f"{source}: decoded {head_writer.frames_written + tail_writer.frames_written} frames of the "
            f"{info.frame_count} it announced",
            "re-encode the video (its end cannot be decoded)",
        )
    return SplitClip(
        name,
        str(source),
        str(info.fps),
        info.frame_count,
        cut,
        str(head),
        str(tail),
        str(head_audio),
        str(tail_audio),
    )


def _audio_skip(source: Path) -> int:
    """Samples of audio before the first video frame (0 when the audio starts with or after it)."""
    with av.open(str(source)) as container:
        video, audio = container.streams.video[0], container.streams.audio
        if not audio or video.start_time is None or video.time_base is None:
            return 0
        track = audio[0]
        audio_start = (track.start_time or 0) * Fraction(track.time_base or 0)
        video_start = video.start_time * Fraction(video.time_base)
    return max(0, round((video_start - audio_start) * AUDIO_SAMPLE_RATE))


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = AUDIO_SAMPLE_RATE) -> Path:
    """Mono float samples as a 16-bit WAV, written whole then renamed into place."""
    with atomic_path(path) as tmp, wave.open(str(tmp), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(to_pcm16(samples).tobytes())
    return path
