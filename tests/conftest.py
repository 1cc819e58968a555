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


MAKE_VARIABLES = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")  # of `make test`


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without variables a rendered project would read as settings, nor those
    of the `make` running these tests: each command runs as from a user's shell."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.endswith("_LOG_LEVEL") and key not in MAKE_VARIABLES
    }
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


PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)\s*(?:;\s*([^#]+?))?\s*(?:#.*)?$")


def pinned_versions(path: Path, python: str | None = None) -> dict[str, str]:
    """The pins of a constraints file whose markers hold for `python` ("3.13"; default: this
    one): version by lower-case name."""
    from packaging.markers import Marker, default_environment

    environment: dict[str, str] = dict(default_environment())
    if python is not None:
        environment.update(python_version=python, python_full_version=f"{python}.0")
    pins = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line)
        if match and (not match.group(3) or Marker(match.group(3)).evaluate(environment)):
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins
