"""Ablation setup C's audio encoder (Table 2, E_a,W): wav2vec 2.0 on each frame's raw waveform → F_A.

**Window.** Video frame t reads the samples its mel window is computed from: the window starts at column
c = ⌊80·t / fps⌋ (moved back, as the mel window is, when it would run past the last column), column j is
the 800-sample STFT frame centred on sample 200·j, so columns c … c+15 read samples 200·c − 400 up to,
not including, 200·c + 3400: `WAVE_WINDOW_SAMPLES` = 3800 (0.2375 s). Samples before the start or after
the end of the audio are zeros, as the mel's centre padding. A window is therefore complete exactly when
its mel window is: streams have the same latency with either encoder.

**Encoder.** The window is normalised as Hugging Face's Wav2Vec2FeatureExtractor does (zero mean, unit
variance, eps 1e-7, when its `do_normalize` is on; preprocessor_config.json says, on when absent), goes
through Wav2Vec2Model, and the last hidden state is averaged over time, then a trained Linear (hidden size
→ 512) and a ReLU give F_A of the same shape as AVSyncNet's. The wav2vec2 weights stay frozen (eval mode)
unless fine-tuning is asked for.

`transformers` is imported only when a wav2vec2 model is built or loaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from lipsync.errors import WeightsError
from lipsync.models.stabilized_sync.mel import MEL_HOP, MEL_N_FFT, MEL_WINDOW_STEPS, mel_window_start
from lipsync.models.stabilized_sync.mel_stream import MelWindows
from lipsync.train.data.mel import mel_column_count

if TYPE_CHECKING:
    from transformers import Wav2Vec2Model

WAVE_WINDOW_LEAD = MEL_N_FFT // 2  # samples before the first column's centre: 400
WAVE_WINDOW_SAMPLES = (MEL_WINDOW_STEPS - 1) * MEL_HOP + MEL_N_FFT  # 3800
NORMALIZE_EPS = 1e-7  # Wav2Vec2FeatureExtractor's zero_mean_unit_var_norm
HF_CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WAV2VEC2_SOURCE = "huggingface.co/facebook/wav2vec2-base-960h"


def wave_window_start(start_column: int) -> int:
    """First sample of the waveform window whose mel window starts at `start_column` (may be negative)."""
    return start_column * MEL_HOP - WAVE_WINDOW_LEAD


def window_start_column(frame: int, fps: Fraction | int, total_samples: int | None) -> int:
    """The mel window start of `frame`; with the audio's length known, moved back to end at the last
    column as `mel.mel_window` does."""
    start = mel_window_start(frame, fps)
    if total_samples is not None:
        start = min(start, max(0, mel_column_count(total_samples) - MEL_WINDOW_STEPS))
    return start


def _fill(out: np.ndarray, first: int, held: np.ndarray, offset: int) -> None:
    """Copy into `out` (one window from sample `first`) the part of `held` (samples from `offset`) in it."""
    lo, hi = max(first, offset), min(first + len(out), offset + len(held))
    if hi > lo:
        out[lo - first : hi - first] = held[lo - offset : hi - offset]


def wave_windows(samples: np.ndarray, frames: Sequence[int], fps: Fraction | int) -> np.ndarray:
    """(N, 3800) float32: the waveform window of each frame in the whole audio `samples` (16 kHz mono)."""
    audio = np.asarray(samples, dtype=np.float32).reshape(-1)
    out = np.zeros((len(frames), WAVE_WINDOW_SAMPLES), dtype=np.float32)
    for row, frame in enumerate(frames):
        _fill(out[row], wave_window_start(window_start_column(frame, fps, len(audio))), audio, 0)
    return out


def silent_wave_window() -> np.ndarray:
    """(3800,) float32 digital silence: what G_S hears through this encoder."""
    return np.zeros(WAVE_WINDOW_SAMPLES, dtype=np.float32)


class WaveWindows(MelWindows):
    """Per output frame, its (3800,) waveform window (a StreamingAudio; also the offline form). Readiness
    and forgetting are MelWindows': a waveform window ends where its mel window's last frame ends."""

    def windows(self, frame_indices: Sequence[int]) -> np.ndarray:
        """(N, 3800) float32; samples not yet received are zeros (only asked for once the audio ended)."""
        total = self.samples_received if self.finished else None
        out = np.zeros((len(frame_indices), WAVE_WINDOW_SAMPLES), dtype=np.float32)
        for row, frame in enumerate(frame_indices):
            first = wave_window_start(window_start_column(frame, self.fps, total))
            _fill(out[row], first, self._raw, self._offset)
        return out


def normalize_windows(waves: Tensor) -> Tensor:
    """Zero mean, unit variance per window (last dimension), computed in float32."""
    wide = waves.float()
    mean = wide.mean(dim=-1, keepdim=True)
    var = wide.var(dim=-1, unbiased=False, keepdim=True)
    return ((wide - mean) / torch.sqrt(var + NORMALIZE_EPS)).to(waves.dtype)


class Wav2Vec2AudioEncoder(nn.Module):
    """(B, 3800) waveform windows → (B, out_dim) F_A: wav2vec2, mean over time, Linear, ReLU.
    `finetune` False: the wav2vec2 weights do not train and it stays in eval mode (no dropout, no
    SpecAugment masking); only the projection trains."""

    def __init__(
        self, wav2vec2: Wav2Vec2Model, out_dim: int, normalize: bool, finetune: bool = False
    ) -> None:
        super().__init__()
        self.wav2vec2 = wav2vec2
        self.projection = nn.Linear(int(wav2vec2.config.hidden_size), out_dim)
        self.normalize = normalize
        self.finetune = finetune
        self.wav2vec2.requires_grad_(finetune)
        self.train(self.training)

    def train(self, mode: bool = True) -> Wav2Vec2AudioEncoder:
        super().train(mode)
        if not self.finetune:
            self.wav2vec2.eval()
        return self

    def forward(self, waves: Tensor) -> Tensor:
        if waves.ndim != 2 or waves.shape[1] != WAVE_WINDOW_SAMPLES:
            shape = tuple(waves.shape)
            raise ValueError(f"expected (B, {WAVE_WINDOW_SAMPLES}) waveform windows, got {shape}")
        if self.normalize:
            waves = normalize_windows(waves)
        with torch.set_grad_enabled(self.finetune and torch.is_grad_enabled()):
            hidden = self.wav2vec2(waves).last_hidden_state
        return torch.relu(self.projection(hidden.mean(dim=1)))

    @property
    def hf_config(self) -> dict[str, Any]:
        """The wav2vec2 model's Hugging Face config, as config.json stores it."""
        config: dict[str, Any] = self.wav2vec2.config.to_dict()
        return config


def wav2vec2_folder_problem(folder: Path) -> str | None:
    """What is missing from a Hugging Face wav2vec2 folder (config.json and a weights file), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"the wav2vec2 folder {folder} does not exist"
    if not (folder / HF_CONFIG_FILE).is_file():
        return f"the wav2vec2 folder {folder} has no {HF_CONFIG_FILE}"
    if not any((folder / name).is_file() for name in HF_WEIGHT_FILES):
        return f"the wav2vec2 folder {folder} has neither {' nor '.join(HF_WEIGHT_FILES)}"
    return None


def reads_normalized(folder: Path) -> bool:
    """`do_normalize` of the folder's preprocessor_config.json (the feature extractor's default, on, when
    the file or the key is absent)."""
    path = Path(folder) / PREPROCESSOR_FILE
    if not path.is_file():
        return True
    return bool(json.loads(path.read_text(encoding="utf-8")).get("do_normalize", True))


def load_pretrained_encoder(folder: Path, out_dim: int, finetune: bool) -> Wav2Vec2AudioEncoder:
    """The encoder on a pretrained Hugging Face wav2vec2 folder (offline), with a fresh projection.
    WeightsError (saying where to get the files) when the folder is incomplete or unreadable."""
    from transformers import Wav2Vec2Model

    folder = Path(folder)
    fix = f"download it from {WAV2VEC2_SOURCE} ({HF_CONFIG_FILE} and {' or '.join(HF_WEIGHT_FILES)})"
    problem = wav2vec2_folder_problem(folder)
    if problem is not None:
        raise WeightsError(problem, fix)
    try:
        model = Wav2Vec2Model.from_pretrained(str(folder), local_files_only=True)
        normalize = reads_normalized(folder)
    except (OSError, ValueError, KeyError) as exc:
        raise WeightsError(f"the wav2vec2 folder {folder} cannot be read ({exc})", fix) from exc
    return Wav2Vec2AudioEncoder(model, out_dim, normalize, finetune)


def build_encoder(hf_config: dict[str, Any], out_dim: int, normalize: bool) -> Wav2Vec2AudioEncoder:
    """An encoder of this wav2vec2 config with untouched weights (the loader builds it on the meta device
    and assigns a weights folder's tensors)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    return Wav2Vec2AudioEncoder(Wav2Vec2Model(Wav2Vec2Config.from_dict(hf_config)), out_dim, normalize)
