"""`lipsync --help` stays quick: building the parser imports none of the heavy libraries.

Only what is imported is checked here, never a time (timings vary with the machine's load).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

HEAVY = ("torch", "diffusers", "transformers", "mediapipe", "cv2", "av", "fastapi", "numpy")

BUILD_PARSER = """
import json, sys
import lipsync.cli.main
lipsync.cli.main.build_parser()
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in {heavy!r})))
"""


def run_python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


def test_building_the_parser_imports_no_heavy_library() -> None:
    # a fresh interpreter: this test process has torch loaded already (conftest)
    result = run_python("-c", BUILD_PARSER.format(heavy=set(HEAVY)))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("command", [[], ["dub"], ["eval"], ["data", "prepare"], ["bench-live"]])
def test_help_exits_0_with_usage(command: list[str]) -> None:
    result = run_python("-m", "lipsync.cli.main", *command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: lipsync {' '.join(command)}".rstrip())
    assert result.stderr == ""
