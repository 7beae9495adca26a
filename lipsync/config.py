"""Configuration in one place.

Constants named here come from the MuseTalk paper and its public reference implementation (each fact,
with its source, in lipsync/models/musetalk/README.md); settings are the user's choices, with defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from lipsync.errors import LoadBenchError

# --- MuseTalk model geometry (lipsync/models/musetalk/README.md: Latents, UNet) --------------------
FACE_SIZE = 256  # face crop side fed to the VAE
LATENT_SIZE = 32  # VAE latent side (FACE_SIZE / 8)
LATENT_CHANNELS = 4
IMAGE_CHANNELS = 3  # RGB in and out of the VAE
UNET_IN_CHANNELS = 8  # masked-frame latent (4) + reference latent (4)
VAE_SCALING_FACTOR = 0.18215  # sd-vae-ft-mse latent scaling
UNET_TIMESTEP = 0  # the UNet runs once, at this fixed timestep

# --- Audio features (lipsync/models/musetalk/README.md: Audio features and windows) ----------------
AUDIO_SAMPLE_RATE = 16_000  # whisper input rate
WHISPER_FRAMES_PER_SECOND = 50  # encoder output: one frame per 20 ms
WHISPER_SEGMENT_SECONDS = 30  # whisper encodes fixed 30 s windows
WHISPER_HIDDEN_LAYERS = 5  # embedding output + 4 encoder layers of whisper-tiny
WHISPER_HIDDEN_SIZE = 384  # whisper-tiny d_model == UNet cross_attention_dim
AUDIO_CONTEXT_VIDEO_FRAMES = 2  # audio_padding_length_left/right: context in 25 fps video frames
TRAINING_FPS = 25  # the rate the window convention is defined at
# Whisper frames per 25 fps video frame (2), times (left + own + right) = 10 frames = 200 ms.
WHISPER_FRAMES_PER_TRAINING_FRAME = WHISPER_FRAMES_PER_SECOND // TRAINING_FPS
AUDIO_WINDOW_FRAMES = WHISPER_FRAMES_PER_TRAINING_FRAME * (2 * AUDIO_CONTEXT_VIDEO_FRAMES + 1)
AUDIO_WINDOW_LEFT_FRAMES = WHISPER_FRAMES_PER_TRAINING_FRAME * AUDIO_CONTEXT_VIDEO_FRAMES  # 4 = 80 ms
AUDIO_TOKENS = AUDIO_WINDOW_FRAMES * WHISPER_HIDDEN_LAYERS  # 50 cross-attention tokens per frame
# Adaptive audio modulation (MuseTalk paper §3.3): T video frames of audio per frame, centred on it. The
# released weights use T = 5 (the window above); T is stored with trained weights so inference uses it.
REFERENCE_AUDIO_WINDOW = 2 * AUDIO_CONTEXT_VIDEO_FRAMES + 1  # 5
AUDIO_WINDOW_CHOICES = (1, 3, 5, 7, 9)  # the MuseTalk paper's Table 4 studies these
POSITIONAL_ENCODING_MAX_LEN = 5000
POSITIONAL_ENCODING_BASE = 10_000  # sinusoidal PE wavelength base
WHISPER_MEL_BINS = 80  # log-mel bins fed to the whisper encoder
WHISPER_ENCODER_LAYERS = WHISPER_HIDDEN_LAYERS - 1  # hidden states = embedding output + one per layer
WHISPER_SEGMENT_SAMPLES = AUDIO_SAMPLE_RATE * WHISPER_SEGMENT_SECONDS  # 480 000
WHISPER_SEGMENT_FRAMES = WHISPER_FRAMES_PER_SECOND * WHISPER_SEGMENT_SECONDS  # 1500 encoder frames
SAMPLES_PER_WHISPER_FRAME = AUDIO_SAMPLE_RATE // WHISPER_FRAMES_PER_SECOND  # 320 samples = 20 ms
PCM16_FULL_SCALE = 32767  # float 1.0 <-> this int16 value, both ways (so int16 audio round-trips exactly)

# --- Sliding-window audio features (streaming; not in the reference, which encodes whole files) ------
# Whisper attends across its whole 30 s input, so features depend on future audio. For streaming, the
# whisper frames are computed in fixed blocks on the audio timeline; each block comes from one encoder pass
# over the (up to) 30 s of audio that ends a fixed lookahead after the block. Offline runs can use the same
# blocks, so streamed frames equal offline frames for the same audio, whatever the chunking.
SLIDING_BLOCK_FRAMES = 10  # whisper frames per encoder pass: 200 ms
SLIDING_LOOKAHEAD_FRAMES = 10  # audio seen after a block before it is final: 200 ms

# --- Face crop and blend (lipsync/models/musetalk/README.md: Crop box, Blend and paste back) -------
DEFAULT_EXTRA_MARGIN_V15 = 10  # px added below the chin (v1.5)
BLEND_FEATHER_RATIO = 0.05  # Gaussian feather width as a fraction of the crop width
MASK_UPPER_BOUNDARY_RATIO = 0.5  # only rows below this fraction of the box height are replaced

# --- Video ----------------------------------------------------------------------------------------
DEFAULT_IMAGE_FPS = Fraction(25)  # frame rate given to a photo input
OUTPUT_CRF = 18  # x264 quality used by the reference re-encode
# Media limits, checked from a file's header before it is decoded: a small file may claim a huge picture
# (a few hundred bytes of PNG can decode to gigabytes) or more frames than memory holds.
MAX_FRAME_PIXELS = 50_000_000  # width x height of a photo or a video frame: 8K video and 48 MP photos fit
MAX_VIDEO_FRAMES = 500_000  # frames of an input video: over 5 hours at 25 fps, 2.3 hours at 60 fps
MAX_AUDIO_SECONDS = 3 * 3600  # length of an audio input (3 hours: 0.7 GB as 16 kHz float samples)
# Containers a video output may be written as, by its file suffix (the name says what the file is).
VIDEO_OUTPUT_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov"}

ModelVersion = Literal["v1", "v15"]
SilenceMode = Literal["keep", "generate"]
DeviceChoice = Literal["auto", "cpu", "cuda"]
DtypeChoice = Literal["auto", "fp32", "bf16", "fp16"]
AudioFeatureMode = Literal["segment", "sliding"]  # segment: the reference's whole-file 30 s segments


def audio_window_frames(audio_window: int) -> int:
    """Whisper frames in the window of T video frames: 2T (10 for the reference's T = 5)."""
    return WHISPER_FRAMES_PER_TRAINING_FRAME * audio_window


def audio_window_left_frames(audio_window: int) -> int:
    """Whisper frames before the frame's own: T - 1 (4 for T = 5), as many as after it."""
    return WHISPER_FRAMES_PER_TRAINING_FRAME * (audio_window - 1) // 2


def audio_tokens(audio_window: int) -> int:
    """Cross-attention tokens per frame: whisper frames x hidden layers (50 for T = 5)."""
    return audio_window_frames(audio_window) * WHISPER_HIDDEN_LAYERS


def default_extra_margin(version: str | None) -> int:
    """Px added below the chin when the user gives none: MuseTalk v1.5 (the default) was trained with it,
    v1 without."""
    return 0 if version == "v1" else DEFAULT_EXTRA_MARGIN_V15


@dataclass(frozen=True)
class FaceSettings:
    """How the face is found, followed and cropped."""

    bbox_shift: int = 0  # px; moves the crop centre down (+) or up (-): more or less mouth opening
    extra_margin: int = DEFAULT_EXTRA_MARGIN_V15  # px below the chin; v1.5 only
    face_index: int = 0  # 0 = the largest face, 1 = the second largest, ...
    smoothing_window: int = 5  # frames in the centred moving average of crop boxes
    max_faces: int = 4  # faces FaceMesh looks for in each frame


@dataclass(frozen=True)
class RuntimeSettings:
    """Where and how fast the networks run."""

    device: DeviceChoice = "auto"
    dtype: DtypeChoice = "auto"
    batch_size: int = 8


@dataclass(frozen=True)
class DubSettings:
    """Everything `lipsync dub` needs besides the input and output paths."""

    model: str | None = None  # model family; None: the one the weights folder holds
    version: str | None = None  # the weights' version (MuseTalk: v15 or v1); None: the folder's, else v15
    face: FaceSettings = FaceSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    silence: SilenceMode = "keep"  # keep: the source mouth where the speech is silent; generate: always new
    image_fps: Fraction = DEFAULT_IMAGE_FPS  # frame rate given to a photo input
    audio_features: AudioFeatureMode = "segment"  # segment: whole-file, as trained; sliding: as a stream

    def with_options(self, **options: Any) -> DubSettings:
        """A copy with options changed by name: any field here or of `face` and `runtime` (bbox_shift=5,
        batch_size=4, silence="generate", ...). An unknown name raises TypeError listing the known ones."""
        top, face, runtime = {}, {}, {}
        for name, value in options.items():
            if name in _FIELDS[FaceSettings]:
                face[name] = value
            elif name in _FIELDS[RuntimeSettings]:
                runtime[name] = value
            elif name in _FIELDS[DubSettings] - {"face", "runtime"}:
                top[name] = value
            else:
                known = sorted(
                    (_FIELDS[DubSettings] - {"face", "runtime"})
                    | _FIELDS[FaceSettings]
                    | _FIELDS[RuntimeSettings]
                )
                raise TypeError(f"unknown dubbing option {name!r}; the options are: {', '.join(known)}")
        if (
            "version" in top
            and "extra_margin" not in face
            and self.face.extra_margin == default_extra_margin(self.version)
        ):
            face["extra_margin"] = default_extra_margin(top["version"])
        return replace(self, face=replace(self.face, **face), runtime=replace(self.runtime, **runtime), **top)


_FIELDS: dict[type, set[str]] = {
    cls: {f.name for f in fields(cls)} for cls in (FaceSettings, RuntimeSettings, DubSettings)
}


@dataclass(frozen=True)
class StreamSettings:
    """How a live session turns audio chunks into frames."""

    batch_size: int = 4  # frames per UNet call; batches start at fixed frame numbers (multiples of this)
    feature_block_frames: int = SLIDING_BLOCK_FRAMES
    feature_lookahead_frames: int = SLIDING_LOOKAHEAD_FRAMES
    stage_queue_batches: int = 2  # batches waiting between pipeline stages
    max_buffered_frames: int = 50  # finished frames waiting for the consumer (2 s at 25 fps)
    drop_when_full: bool = False  # a full frame buffer drops its oldest frame instead of waiting


# --- Folders ---------------------------------------------------------------------------------------
WEIGHTS_ENV, DEFAULT_WEIGHTS_DIR = "LIPSYNC_WEIGHTS", "models"
AVATARS_ENV, DEFAULT_AVATARS_DIR = "LIPSYNC_AVATARS", "avatars"
EVAL_WEIGHTS_ENV = "LIPSYNC_EVAL_WEIGHTS"
# Folder of the metric networks' weight files for `lipsync eval`: $LIPSYNC_EVAL_WEIGHTS, else ./models/eval.
DEFAULT_EVAL_WEIGHTS = Path(os.environ.get(EVAL_WEIGHTS_ENV, "models/eval"))


def default_weights_dir() -> Path:
    """$LIPSYNC_WEIGHTS, else ./models."""
    return Path(os.environ.get(WEIGHTS_ENV, DEFAULT_WEIGHTS_DIR))


def default_avatars_dir() -> Path:
    """$LIPSYNC_AVATARS, else ./avatars."""
    return Path(os.environ.get(AVATARS_ENV, DEFAULT_AVATARS_DIR))


# --- Server ----------------------------------------------------------------------------------------
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
TOKEN_ENV = "LIPSYNC_TOKEN"  # the server's token, when --token is not given
# An uploaded file's name (its stem names a dub's output, which must fit a file system's 255-byte names)
UPLOAD_NAME_MAX_BYTES = 200


@dataclass(frozen=True)
class ServerSettings:
    """Limits and defaults of `lipsync serve`."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None  # required on every request when bound to anything but loopback
    # Host names (besides loopback ones) the server answers to and whose pages may call it: a reverse
    # proxy's public name, say (`serve --allow-host NAME`)
    allowed_hosts: tuple[str, ...] = ()
    max_sessions: int = 4  # concurrent WebSocket sessions
    max_message_bytes: int = 1 << 20  # one audio message: 1 MiB = 32 s of 16-bit PCM
    max_pending_audio_seconds: float = 60.0  # audio received but not yet turned into frames
    max_buffered_frames: int = 50  # frames waiting to be sent; beyond this the oldest are dropped
    jpeg_quality: int = 85
    stream: StreamSettings = StreamSettings(drop_when_full=True)
    media_dir: Path | None = None  # prepare sources are read from here only (None: uploads only)
    max_upload_bytes: int = 200 * 1024 * 1024  # one uploaded video or photo
    max_upload_total_bytes: int = 1024 * 1024 * 1024  # all uploads on disk at once (held or being used)
    upload_ttl_seconds: float = 600.0  # an upload no job has used is removed after this long
    upload_idle_seconds: float = 30.0  # an upload that sends no bytes for this long is dropped
    upload_max_seconds: float = 1800.0  # and one that takes longer than this in all
    max_jobs: int = 100  # prepare jobs queued or running at once
    job_ttl_seconds: float = 3600.0  # a finished job is forgotten after this long


# --- Live load benchmark (`lipsync bench-live`) ----------------------------------------------------
LoadBenchPace = Literal["realtime", "fast"]  # realtime: chunks sent as a live speaker would


@dataclass(frozen=True)
class LoadBenchSettings:
    """What to run: the same speech, streamed by 1, 2, 4 ... sessions at once."""

    sessions: tuple[int, ...] = (1, 2, 4)
    chunk_ms: float = 40.0
    pace: LoadBenchPace = "realtime"
    seconds: float | None = None  # audio per session is cut to this
    timeout_s: float = 300.0  # per concurrency level
    warmup: bool = True

    def __post_init__(self) -> None:
        if not self.sessions or min(self.sessions) < 1:
            raise LoadBenchError(
                f"sessions {self.sessions} must be whole numbers >= 1", "e.g. --sessions 1,2,4"
            )
        if self.chunk_ms <= 0:
            raise LoadBenchError(f"chunk length {self.chunk_ms} ms must be positive", "e.g. --chunk-ms 40")
        if self.seconds is not None and self.seconds <= 0:
            raise LoadBenchError(f"--seconds {self.seconds} must be positive", "e.g. --seconds 5")
        if self.timeout_s <= 0:
            raise LoadBenchError(f"--timeout {self.timeout_s} must be positive", "e.g. --timeout 120")

    @property
    def chunk_samples(self) -> int:
        return max(1, round(self.chunk_ms * AUDIO_SAMPLE_RATE / 1000))


# --- Batch dubbing (`lipsync dub-batch`) -----------------------------------------------------------
BATCH_REPORT_SUFFIX = ".report.json"  # default report: TASKS.yaml -> TASKS.yaml.report.json beside it
BATCH_PATH_KEYS = ("video", "audio", "output")  # what every task names; every other key is an option
# Options that change the loaded model: set once for the whole batch, on the command line.
BATCH_COMMAND_LEVEL_OPTIONS = ("model", "version", "device", "dtype")
# The smallest value that works for the whole-number options a task may set (a frame rate must be above 0).
BATCH_OPTION_MINIMUMS = {"batch_size": 1, "smoothing_window": 1, "max_faces": 1, "face_index": 0}
# Under several processes the main one waits this long for the slowest to finish its share of the tasks.
BATCH_GATHER_TIMEOUT_S = 7 * 24 * 3600.0


# --- Downloads (`lipsync weights download`) ---------------------------------------------------------
# The model files come from the Hugging Face Hub through huggingface_hub, which reads HF_ENDPOINT (a mirror),
# HF_HOME / HF_HUB_CACHE (its cache) and HF_HUB_OFFLINE itself.
EVAL_MIRROR_ENV = "LIPSYNC_EVAL_MIRROR"  # a base URL serving the metric weight files as MIRROR/NAME
EVAL_DOWNLOAD_ATTEMPTS = 5  # requests per metric file in one run before it stops (a rerun continues)
EVAL_DOWNLOAD_TIMEOUT_S = 60.0  # seconds without an answer before a request counts as cut
