"""Shared fixtures: real media from ../shared/media and tiny scaffolded weights."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"


def media(name: str) -> Path:
    path = MEDIA / name
    if not path.exists():
        pytest.skip(f"shared media {path} is not available")
    return path


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of tiny, randomly initialised MuseTalk-layout weights (v1 and v1.5)."""
    from lipsync.models.weights import scaffold_weights

    root = tmp_path_factory.mktemp("tiny-weights")
    scaffold_weights(root, tiny=True)
    return root
