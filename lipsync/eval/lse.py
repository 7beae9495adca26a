"""LSE-D / LSE-C: lip-sync error distance and confidence with SyncNet v2 (joonson/syncnet_python).

The scoring reproduces `SyncNetInstance.evaluate` of the reference:

* Audio: 16 kHz mono as 16-bit PCM values (not scaled to [-1, 1]) -> `python_speech_features.mfcc` with
  its defaults (13 coefficients, 25 ms window, 10 ms hop): 100 columns per second, 4 per 25 fps frame.
* Window t: video frames t..t+4 and MFCC columns 4t..4t+20 (0.2 s each). With
  `min_length = min(frames, floor(samples / 640))` there are `min_length - 5` windows (the reference
  drops the last possible window too; kept).
* For video window i, the Euclidean distance (`pairwise_distance`, with its eps) to the audio embeddings
  i - vshift .. i + vshift, the audio zero-padded by vshift rows at both ends: 2 * vshift + 1 distances.
  `mdist[k]` is their mean over windows; `minidx = argmin mdist`.
* AV offset = vshift - minidx; LSE-D = min mdist; LSE-C = median(mdist) - min mdist.
  Framewise confidence = median(mdist) - dist_i[minidx], median-filtered (kernel 9).

Sign of the offset: entry k compares video window i with audio window i + k - vshift = i - offset. At
the best offset d, the video at frame i shows what the audio had at frame i - d: a positive AV offset
means the video lags the audio (the audio leads) by d frames; a negative one, that the audio lags.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import python_speech_features
import torch
import torch.nn.functional as F
from scipy.signal import medfilt
from torch import Tensor

from lipsync.errors import InputError
from lipsync.eval.networks.syncnet_v2 import (
    SYNCNET_V2_CHANNELS,
    SYNCNET_V2_EMBED_DIM,
    SYNCNET_V2_FRAMES,
    SYNCNET_V2_IMAGE_SIZE,
    SYNCNET_V2_MFCC_COEFFICIENTS,
    SYNCNET_V2_MFCC_COLUMNS,
    SyncEmbedder,
)
from lipsync.eval.windows import SlidingWindowEmbedder
from lipsync.io.audio import to_pcm16

VSHIFT = 15  # run_syncnet.py's default (calc_pdist's own default is 10)
MFCC_COLUMNS_PER_FRAME = 4
LSE_FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_VIDEO_FRAME = SAMPLE_RATE // LSE_FPS  # 640
FRAMEWISE_MEDIAN_KERNEL = 9
DEFAULT_BATCH_SIZE = 20  # run_syncnet.py's --batch_size
# min_length - WINDOW_MARGIN windows: one more than the frames a window needs beyond its first (4).
WINDOW_MARGIN = SYNCNET_V2_FRAMES
MIN_FRAMES = WINDOW_MARGIN + 1  # 6 frames, 0.24 s, give the first window

SHORT_CLIP_FIX = (
    f"LSE needs at least 1 window: give a clip of at least {MIN_FRAMES} frames at {LSE_FPS} fps "
    f"({MIN_FRAMES / LSE_FPS:.2f} s) with at least as much audio"
)


def syncnet_mfcc(samples: np.ndarray) -> np.ndarray:
    """(13, T) float32 MFCCs of float mono 16 kHz samples in [-1, 1], 100 columns per second.

    The samples are first rounded to the int16 values a 16-bit WAV holds (as the reference reads it).
    """
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"expected mono samples of shape (n,), got {samples.shape}")
    coefficients = python_speech_features.mfcc(to_pcm16(samples), SAMPLE_RATE)
    return np.ascontiguousarray(coefficients.T, dtype=np.float32)


def window_count(frame_count: int, sample_count: int) -> int:
    """Number of scored windows, min(frames, floor(samples / 640)) - 5, or 0 when negative."""
    min_length = min(frame_count, sample_count // SAMPLES_PER_VIDEO_FRAME)
    return max(0, min_length - WINDOW_MARGIN)


def audio_windows(mfcc: np.ndarray, count: int) -> np.ndarray:
    """(count, 1, 13, 20) float32: window t is MFCC columns 4t .. 4t+20 (exclusive)."""
    if mfcc.ndim != 2 or mfcc.shape[0] != SYNCNET_V2_MFCC_COEFFICIENTS:
        raise ValueError(f"expected MFCCs of shape (13, T), got {mfcc.shape}")
    needed = MFCC_COLUMNS_PER_FRAME * (count - 1) + SYNCNET_V2_MFCC_COLUMNS if count > 0 else 0
    if count < 0 or needed > mfcc.shape[1]:
        raise ValueError(f"{count} windows need {needed} MFCC columns, there are {mfcc.shape[1]}")
    starts = np.arange(count) * MFCC_COLUMNS_PER_FRAME
    columns = starts[:, None] + np.arange(SYNCNET_V2_MFCC_COLUMNS)[None, :]  # (count, 20)
    windows = np.asarray(mfcc, dtype=np.float32)[:, columns]  # (13, count, 20)
    return np.ascontiguousarray(windows.transpose(1, 0, 2)[:, None])


def _batches(total: int, batch_size: int) -> range:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return range(0, total, batch_size)


def audio_embeddings(
    model: SyncEmbedder, windows: np.ndarray, device: torch.device | str, batch_size: int = DEFAULT_BATCH_SIZE
) -> Tensor:
    """(count, D) float32 CPU embeddings of (count, 1, 13, 20) MFCC windows, `batch_size` at a time."""
    count = len(windows)
    pieces: list[Tensor] = []
    with torch.inference_mode():
        for start in _batches(count, batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(windows[start : start + batch_size], np.float32))
            pieces.append(model.forward_aud(batch.to(device)).float().cpu())
    return torch.cat(pieces) if pieces else torch.zeros((0, SYNCNET_V2_EMBED_DIM))


class VideoWindowEmbedder:
    """Embeds the 5-frame lip windows of face crops given one at a time, with bounded memory.

    At most `batch_size + 4` frames are held: whenever that many are buffered, the `batch_size` windows
    starting at the first of them are embedded and the last 4 frames kept for the next windows.
    """

    def __init__(self, model: SyncEmbedder, device: torch.device | str, batch_size: int = DEFAULT_BATCH_SIZE):
        _batches(0, batch_size)  # validates
        self.model = model
        self.device = device
        self._windows = SlidingWindowEmbedder(SYNCNET_V2_FRAMES, batch_size, self._embed)

    @property
    def frames_added(self) -> int:
        return self._windows.frames_added

    @property
    def frames_held(self) -> int:
        """Frames buffered now (at most batch_size + 4)."""
        return self._windows.frames_held

    def add(self, crop_bgr: np.ndarray) -> None:
        """Append one (224, 224, 3) uint8 BGR face crop."""
        size = SYNCNET_V2_IMAGE_SIZE
        if crop_bgr.shape != (size, size, SYNCNET_V2_CHANNELS) or crop_bgr.dtype != np.uint8:
            raise ValueError(
                f"expected a ({size}, {size}, 3) uint8 crop, got {crop_bgr.shape} {crop_bgr.dtype}"
            )
        self._windows.add(torch.from_numpy(np.ascontiguousarray(crop_bgr)).permute(2, 0, 1).contiguous())

    def _embed(self, windows: Tensor) -> Tensor:
        """(windows, 5, 3, H, W) uint8 BGR -> (windows, 3, 5, H, W) floats 0..255 -> embeddings."""
        return self.model.forward_lip(windows.permute(0, 2, 1, 3, 4).float().to(self.device))

    def finish(self, count: int) -> Tensor:
        """(count, D) embeddings of windows t..t+4 for t < count; needs count + 4 frames added."""
        embeddings = self._windows.finish(count)
        return embeddings if embeddings is not None else torch.zeros((0, SYNCNET_V2_EMBED_DIM))


@dataclass(frozen=True)
class LseResult:
    """LSE scores of one clip (distances in embedding units, offsets in 25 fps frames)."""

    av_offset: int  # > 0: the video lags the audio (the audio leads) by this many frames
    lse_d: float  # mean distance at the best offset (lower is better)
    lse_c: float  # median over offsets minus lse_d (higher is better)
    windows: int
    distance_by_offset: list[float]  # mdist, 2 * vshift + 1 entries
    framewise_confidence: list[float]  # one per window, median-filtered (kernel 9)
    offsets: list[int]  # the AV offset of each entry of distance_by_offset: vshift - k


def lse_from_embeddings(video: Tensor, audio: Tensor, vshift: int = VSHIFT) -> LseResult:
    """The reference's offset, LSE-D, LSE-C and framewise confidence from (count, D) embeddings."""
    if video.ndim != 2 or audio.ndim != 2 or video.shape != audio.shape:
        raise ValueError(
            f"expected two (count, D) embeddings, got {tuple(video.shape)}, {tuple(audio.shape)}"
        )
    if vshift < 0:
        raise ValueError(f"vshift must be >= 0, got {vshift}")
    count = video.shape[0]
    if count < 1:
        raise InputError("the clip is too short for LSE: it gives no SyncNet window", SHORT_CLIP_FIX)
    video = video.detach().float().cpu()
    padded = F.pad(audio.detach().float().cpu(), (0, 0, vshift, vshift))
    offsets_total = 2 * vshift + 1
    # dists[k, i]: video window i against padded audio row i + k (audio window i + k - vshift)
    dists = torch.stack([F.pairwise_distance(video, padded[k : k + count]) for k in range(offsets_total)])
    mdist = dists.mean(dim=1)
    minval, minidx = torch.min(mdist, 0)
    median = torch.median(mdist)
    framewise = (median - dists[int(minidx)]).numpy()
    with warnings.catch_warnings():  # fewer windows than the kernel: scipy zero-pads, and warns
        warnings.simplefilter("ignore", UserWarning)
        smoothed = medfilt(framewise, kernel_size=FRAMEWISE_MEDIAN_KERNEL)
    return LseResult(
        av_offset=vshift - int(minidx),
        lse_d=float(minval),
        lse_c=float(median - minval),
        windows=count,
        distance_by_offset=[float(v) for v in mdist],
        framewise_confidence=[float(v) for v in smoothed],
        offsets=[vshift - k for k in range(offsets_total)],
    )
