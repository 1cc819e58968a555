"""Shared helpers for the template's tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

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


SHA_PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
MAKE_CALL = re.compile(r"\bmake\s+([a-z][\w-]*)")


def make_targets(makefile: Path) -> set[str]:
    """The targets a Makefile defines."""
    return set(re.findall(r"^([A-Za-z][\w.-]*):(?!=)", makefile.read_text(), re.MULTILINE))


def workflow_problems(workflows: dict[str, Any], targets: set[str]) -> list[str]:
    """What is wrong in parsed GitHub workflows: no top-level permissions, an empty matrix
    axis, an action not pinned by commit SHA, a `make` target the Makefile lacks."""
    problems = []
    for name, workflow in workflows.items():
        if "permissions" not in workflow:
            problems.append(f"{name}: no top-level permissions")
        for job_name, job in workflow["jobs"].items():
            for axis, values in job.get("strategy", {}).get("matrix", {}).items():
                if not values:
                    problems.append(f"{name}: {job_name}: empty matrix axis {axis}")
            for step in job["steps"]:
                if "uses" in step and not SHA_PINNED.match(step["uses"]):
                    problems.append(f"{name}: {job_name}: not pinned: {step['uses']}")
                for target in MAKE_CALL.findall(step.get("run", "")):
                    if target not in targets:
                        problems.append(f"{name}: {job_name}: no make target {target}")
    return problems
