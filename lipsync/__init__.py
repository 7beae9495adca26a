"""lipsync: real-time, high-fidelity lip synchronisation (visual dubbing).

    from lipsync import DubPipeline
    pipe = DubPipeline.from_pretrained("models", bbox_shift=5)
    summary = pipe("face.mp4", "speech.wav", "out.mp4")

The names below are imported on first use, so `import lipsync` stays light (no torch, diffusers,
transformers or mediapipe until a pipeline is touched). docs/python-api.md has more examples.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "DubPipeline": "lipsync.pipeline.dub",
    "DubSummary": "lipsync.pipeline.dub",
    "OutputFrame": "lipsync.pipeline.dub",
    "SpeakPipeline": "lipsync.pipeline.speak",
    "StreamSession": "lipsync.pipeline.stream",
    "StreamFrame": "lipsync.pipeline.stream",
    "Avatar": "lipsync.pipeline.avatar_store",
    "AvatarStore": "lipsync.pipeline.avatar_store",
    "AvatarInfo": "lipsync.pipeline.avatar_store",
    "prepare_avatar": "lipsync.pipeline.avatar",
    "load_fresh_avatar": "lipsync.pipeline.avatar",
    "load_tasks": "lipsync.pipeline.batch_tasks",
    "run_batch": "lipsync.pipeline.batch",
    "BatchTask": "lipsync.pipeline.batch_tasks",
    "BatchReport": "lipsync.pipeline.batch",
    "preview_first_frame": "lipsync.pipeline.preview",
    "Generator": "lipsync.models.generator",
    "load_generator": "lipsync.models.families",
    "load_audio": "lipsync.io.audio",
    "DubSettings": "lipsync.config",
    "FaceSettings": "lipsync.config",
    "RuntimeSettings": "lipsync.config",
    "StreamSettings": "lipsync.config",
    "ServerSettings": "lipsync.config",
    "LipsyncError": "lipsync.errors",
}

__all__ = [
    "Avatar",
    "AvatarInfo",
    "AvatarStore",
    "BatchReport",
    "BatchTask",
    "DubPipeline",
    "DubSettings",
    "DubSummary",
    "FaceSettings",
    "Generator",
    "LipsyncError",
    "OutputFrame",
    "RuntimeSettings",
    "ServerSettings",
    "SpeakPipeline",
    "StreamFrame",
    "StreamSession",
    "StreamSettings",
    "__version__",
    "load_audio",
    "load_fresh_avatar",
    "load_generator",
    "load_tasks",
    "prepare_avatar",
    "preview_first_frame",
    "run_batch",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lipsync' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from lipsync.config import DubSettings, FaceSettings, RuntimeSettings, ServerSettings, StreamSettings
    from lipsync.errors import LipsyncError
    from lipsync.io.audio import load_audio
    from lipsync.models.families import load_generator
    from lipsync.models.generator import Generator
    from lipsync.pipeline.avatar import load_fresh_avatar, prepare_avatar
    from lipsync.pipeline.avatar_store import Avatar, AvatarInfo, AvatarStore
    from lipsync.pipeline.dub import DubPipeline, DubSummary, OutputFrame
    from lipsync.pipeline.speak import SpeakPipeline
    from lipsync.pipeline.stream import StreamFrame, StreamSession
