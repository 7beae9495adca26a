"""Wire format of the live-avatar WebSocket (docs/streaming-protocol.md).

Frames go out as one binary message each: `[u32 LE header length][header JSON][JPEG][PCM s16le]`.
Audio comes in as PCM s16le; control and error messages are JSON text.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from enum import IntEnum
from fractions import Fraction
from typing import Any, Final, Literal

import cv2
import numpy as np

from lipsync.config import AUDIO_SAMPLE_RATE
from lipsync.errors import LipsyncError
from lipsync.io.audio import from_pcm16, to_pcm16

HEADER_LENGTH = struct.Struct("<I")  # u32 little-endian: bytes of header JSON that follow
PCM_DTYPE = np.dtype("<i2")  # signed 16-bit little-endian samples
FRAME_MESSAGE: Final = "frame"
END_MESSAGE: Final = "end"


class CloseCode(IntEnum):
    """WebSocket close codes the server uses (1000-1015 are standard, 4000-4999 are ours)."""

    NORMAL = 1000
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    BAD_MESSAGE = 4400
    UNAUTHORIZED = 4401
    FORBIDDEN = 4403
    UNKNOWN_AVATAR = 4404
    TOO_MUCH_AUDIO = 4413
    TOO_MANY_SESSIONS = 4429


class ProtocolError(LipsyncError):
    """A message that breaks the protocol; `code` is the close code the server answers with."""

    def __init__(self, problem: str, fix: str, code: CloseCode = CloseCode.BAD_MESSAGE) -> None:
        super().__init__(problem, fix)
        self.code = code


@dataclass(frozen=True)
class FrameHeader:
    """The JSON header of a frame message."""

    index: int  # frame number in the session, idle and speech frames alike
    time: float  # index / fps, seconds on the session clock
    speech: bool
    jpeg_bytes: int
    audio_bytes: int  # PCM s16le bytes this frame shows; 0 for idle frames
    dropped: int  # frames dropped so far because the client read too slowly
    type: Literal["frame"] = FRAME_MESSAGE


@dataclass(frozen=True)
class FrameMessage:
    header: FrameHeader
    jpeg: bytes
    pcm: bytes


def encode_frame(index: int, time: float, speech: bool, jpeg: bytes, pcm: bytes, dropped: int) -> bytes:
    """One binary frame message."""
    header = FrameHeader(index, time, speech, len(jpeg), len(pcm), dropped)
    header_json = json.dumps(asdict(header), separators=(",", ":")).encode("utf-8")
    return b"".join((HEADER_LENGTH.pack(len(header_json)), header_json, jpeg, pcm))


def decode_frame(data: bytes) -> FrameMessage:
    """Parse a frame message (the client's side; used by tests and Python clients)."""
    if len(data) < HEADER_LENGTH.size:
        raise ProtocolError(
            f"frame message of {len(data)} bytes is shorter than its length prefix", _FRAME_FIX
        )
    (length,) = HEADER_LENGTH.unpack_from(data)
    start = HEADER_LENGTH.size
    try:
        fields = json.loads(data[start : start + length].decode("utf-8"))
        header = FrameHeader(**fields)
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
        raise ProtocolError(f"frame header is not valid: {exc}", _FRAME_FIX) from exc
    jpeg_start = start + length
    pcm_start = jpeg_start + header.jpeg_bytes
    if len(data) != pcm_start + header.audio_bytes:
        raise ProtocolError(
            f"frame message has {len(data)} bytes, its header announces {pcm_start + header.audio_bytes}",
            _FRAME_FIX,
        )
    return FrameMessage(header, data[jpeg_start:pcm_start], data[pcm_start:])


_FRAME_FIX = "a frame message is [u32 LE header length][header JSON][JPEG][PCM s16le]"


def pcm_to_float(data: bytes) -> np.ndarray:
    """PCM s16le bytes -> float32 samples, 1.0 = 32767."""
    if len(data) % PCM_DTYPE.itemsize:
        raise ProtocolError(
            f"audio message has {len(data)} bytes, an odd count: PCM s16le samples are 2 bytes each",
            f"send whole 16-bit samples (mono, {AUDIO_SAMPLE_RATE} Hz, little-endian)",
        )
    # The stream converts back with the same scale, so the PCM a client sends returns with its frames
    # byte for byte.
    return from_pcm16(np.frombuffer(data, dtype=PCM_DTYPE))


def float_to_pcm(samples: np.ndarray) -> bytes:
    """float samples in [-1, 1] -> PCM s16le bytes (clipped)."""
    return int16_to_pcm(to_pcm16(samples))


def int16_to_pcm(samples: np.ndarray) -> bytes:
    """int16 samples -> PCM s16le bytes."""
    return np.asarray(samples).astype(PCM_DTYPE, copy=False).tobytes()


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """RGB uint8 HxWx3 -> JPEG bytes."""
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise LipsyncError(f"JPEG encoding of a {image.shape} frame failed", "report this as a bug")
    return bytes(buffer.tobytes())


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> RGB uint8 HxWx3 (the client's side)."""
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ProtocolError("frame image is not a valid JPEG", _FRAME_FIX)
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


@dataclass(frozen=True)
class ControlMessage:
    """A JSON text message from the client; only {"type": "end"} exists."""

    type: Literal["end"]


def parse_control(text: str) -> ControlMessage:
    try:
        fields: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"text message is not JSON: {exc}", _CONTROL_FIX) from exc
    if not isinstance(fields, dict) or fields.get("type") != END_MESSAGE:
        raise ProtocolError(f"unknown text message {text[:80]!r}", _CONTROL_FIX)
    return ControlMessage(END_MESSAGE)


_CONTROL_FIX = 'send {"type": "end"} when a speech turn\'s audio is complete; send audio as binary PCM s16le'


@dataclass(frozen=True)
class ReadyMessage:
    """First message of a session: what the frames will look like."""

    avatar: str
    fps: float
    fps_num: int
    fps_den: int
    width: int
    height: int
    untrained: bool
    sample_rate: int = AUDIO_SAMPLE_RATE
    type: Literal["ready"] = "ready"

    @classmethod
    def create(cls, avatar: str, fps: Fraction, width: int, height: int, untrained: bool) -> ReadyMessage:
        return cls(avatar, float(fps), fps.numerator, fps.denominator, width, height, untrained)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass(frozen=True)
class ErrorMessage:
    """Sent before the server closes a socket because of a problem; `code` is the close code."""

    error: str
    fix: str
    code: CloseCode
    type: Literal["error"] = "error"

    @classmethod
    def from_error(cls, error: LipsyncError, code: CloseCode) -> ErrorMessage:
        return cls(error.problem, error.fix, code)

    def to_json(self) -> str:
        return json.dumps({"type": self.type, "error": self.error, "fix": self.fix})
