"""Shared helpers for the template's tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FEATURES = tuple(
    key
    for key in json.loads((TEMPLATE / "cookiecutter.json").read_text())
    if key.startswith("include_")
)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without variables a rendered project would read as settings."""
    env = {key: value for key, value in os.environ.items() if not key.endswith("_LOG_LEVEL")}
    env.update(extra)
    return env


def run(
    command: list[str], cwd: Path, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run a command; return it (the caller asserts on the return code and output)."""
    return subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(**env),
    )
