"""The oldest supported Python and the newest this machine has (3.13; the rendered CI covers
3.14) run a render with every feature on (its tests not marked slow: those run on the
default Python in the render matrix).

The Python running these tests is used as it is; each other interpreter gets its own virtual
environment under build/venvs/ (installed with constraints.txt), reused while
requirements-dev.txt and constraints.txt are unchanged, and those of
Pythons no longer tested are removed. Under CI=true a missing interpreter fails the run;
elsewhere it is skipped.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import FEATURES, TEMPLATE, run

VERSIONS = ("3.11", "3.13")
VENVS = TEMPLATE / "build" / "venvs"


def interpreter(version: str) -> str:
    """The path of Python `version`: pyenv's build, or one on PATH (pyenv shims excluded)."""
    candidates = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python")))
    on_path = shutil.which(f"python{version}")
    if on_path and "/shims/" not in on_path:
        candidates.append(on_path)
    if not candidates:
        message = f"Python {version} is not installed (pyenv install {version})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return candidates[0]


def environment(version: str) -> Path:
    """This Python if it is `version`; else a venv for `version` with requirements-dev.txt
    installed at the tested versions, made once per change of either file."""
    for stale in VENVS.glob("py*"):  # venvs of Pythons no longer tested: 350 MB each
        if stale.name.removeprefix("py") not in VERSIONS:
            shutil.rmtree(stale, ignore_errors=True)
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return Path(sys.executable)
    requirements, constraints = TEMPLATE / "requirements-dev.txt", TEMPLATE / "constraints.txt"
    digest = hashlib.sha256(requirements.read_bytes() + constraints.read_bytes())
    venv = VENVS / f"py{version}"
    marker = venv / f".installed-{digest.hexdigest()[:12]}"
    if not marker.exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([interpreter(version), "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        tested = ["--constraint", str(constraints)]  # the versions tested together
        subprocess.run([*pip, *tested, "-r", str(requirements)], check=True, timeout=900)
        marker.touch()
    return venv / "bin" / "python"


@pytest.mark.parametrize("version", VERSIONS)
def test_all_features_on_python(version: str, cookies: Any) -> None:
    interpreter(version)  # skip (or fail under CI) first if it is missing
    python = environment(version)
    answers = {**dict.fromkeys(FEATURES, True), "python_version": version}
    project = Path(cookies.bake(extra_context=answers).project_path)

    typed = run([str(python), "-m", "mypy", "--strict", "."], cwd=project)
    assert typed.returncode == 0, typed.stdout
    # The slow tests (several instances, benchmarks) run on the default Python in the matrix.
    pytest_args = ["-q", "-p", "no:cacheprovider", "-m", "not slow"]
    tested = run([str(python), "-m", "pytest", *pytest_args], cwd=project)
    assert tested.returncode == 0, tested.stdout[-6000:] + tested.stderr[-3000:]
    assert f"Python {version}" in run([str(python), "--version"], cwd=project).stdout
