"""Whisper features of prepared clips (whisper.npy), computed once per clip and per whisper weight file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lipsync.config import SAMPLES_PER_WHISPER_FRAME, WHISPER_SEGMENT_SAMPLES, ModelVersion
from lipsync.errors import WeightsError
from lipsync.io.files import atomic_path, file_sha256
from lipsync.models.musetalk.audio_features import encode_whisper_segment
from lipsync.models.musetalk.loading import MuseTalkModels
from lipsync.models.musetalk.weights import WeightsLayout
from lipsync.train.data.format import (
    CLIP_FILE,
    WHISPER_FILE,
    ClipMeta,
    list_clips,
    read_json,
    write_clip_meta,
)

AUDIO_FILE = "audio.npy"
# The whisper folder does not depend on the MuseTalk version; any version's layout finds it.
WHISPER_LAYOUT_VERSION: ModelVersion = "v15"


def whisper_weights_id(weights_dir: Path) -> str:
    """sha256 (hex) of the whisper weight file in a MuseTalk weights folder: which whisper made features."""
    path = WeightsLayout(Path(weights_dir), WHISPER_LAYOUT_VERSION).whisper_weights
    if not path.is_file():
        raise WeightsError(
            f"no whisper weights at {path}", "give a weights folder with whisper/ (lipsync weights check DIR)"
        )
    return file_sha256(path)


def whisper_features(models: MuseTalkModels, audio: np.ndarray) -> np.ndarray:
    """(len // 320, 5, 384) float32 hidden states: 30 s segments encoded one by one and concatenated."""
    samples = np.ascontiguousarray(audio, dtype=np.float32)
    valid = len(samples) // SAMPLES_PER_WHISPER_FRAME
    pieces = [
        encode_whisper_segment(models, samples[start : start + WHISPER_SEGMENT_SAMPLES]).to(torch.float32)
        for start in range(0, max(len(samples), 1), WHISPER_SEGMENT_SAMPLES)
    ]
    return torch.cat(pieces)[:valid].cpu().numpy()


def _clip_meta(folder: Path) -> ClipMeta:
    return ClipMeta(**read_json(folder / CLIP_FILE))


def _needs_whisper(folder: Path, weights_id: str) -> bool:
    return not (folder / WHISPER_FILE).is_file() or _clip_meta(folder).whisper_weights != weights_id


def stale_whisper_clips(root: Path, weights_id: str) -> list[Path]:
    """Clip folders lacking whisper.npy, or whose whisper.npy came from other weights."""
    return [folder for folder in list_clips(Path(root)) if _needs_whisper(folder, weights_id)]


def ensure_whisper_features(
    root: Path, models: MuseTalkModels, weights_id: str, progress: bool = True
) -> int:
    """Compute whisper.npy for every clip lacking it or made with other weights; returns how many."""
    stale = stale_whisper_clips(root, weights_id)
    computed = 0
    for folder in tqdm(stale, desc="whisper features", unit="clip", disable=not progress or not stale):
        meta = _clip_meta(folder)
        audio = np.load(folder / AUDIO_FILE, mmap_mode="r", allow_pickle=False)
        features = whisper_features(models, np.asarray(audio))
        with atomic_path(folder / WHISPER_FILE) as tmp:
            np.save(tmp, features)  # tmp ends in .npy, so np.save adds no suffix
        write_clip_meta(folder, replace(meta, whisper_weights=weights_id))
        computed += 1
    return computed
