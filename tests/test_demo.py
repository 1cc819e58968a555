"""`make demo` renders, installs and drains the default project, as the README says."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import TEMPLATE, run
from test_python_versions import interpreter

BASE = sys._base_executable  # this Python outside the template's venv
BASE_DIR = str(Path(BASE).parent)


def test_make_demo(tmp_path: Path) -> None:
    assert shutil.which("make"), "make is needed for the README's commands"
    result = run(["make", "demo", f"DEMO_DIR={tmp_path / 'demo'}"], cwd=TEMPLATE, timeout=900)

    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"summary +100 of 100 sample jobs succeeded, 0 failed", result.stdout)
    assert (tmp_path / "demo" / "my_worker" / ".venv" / "bin" / "python").exists()


def test_rendered_readme_commands(cookies: Any) -> None:
    """The rendered README's commands, `make install`, `make test`, `make dist`, work as written
    (with `python3`, so the project's minimum Python is python3's version)."""
    python3 = run(["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], TEMPLATE)
    result = cookies.bake(extra_context={"python_version": python3.stdout.strip()})
    project = Path(result.project_path)
    installed = run(["make", "install"], cwd=project, timeout=900)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    tested = run(["make", "test"], cwd=project, timeout=900)
    assert tested.returncode == 0, tested.stdout[-5000:] + tested.stderr[-3000:]
    assert re.search(r"\d+ passed", tested.stdout)
    built = run(["make", "dist"], cwd=project, timeout=900)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert sorted(path.suffix for path in (project / "dist").iterdir()) == [".gz", ".whl"]


def path_with(tmp_path: Path, **pythons: str) -> str:
    """A PATH whose python3, python3.X are the given interpreters (and the system's tools)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, target in pythons.items():
        (folder / name.replace("_", ".")).symlink_to(target)
    return f"{folder}:/usr/local/bin:/usr/bin:/bin"


def test_make_install_names_the_python_it_needs(cookies: Any, tmp_path: Path) -> None:
    if sys.version_info >= (3, 14):
        pytest.skip("this Python is new enough for every python_version")
    project = Path(cookies.bake(extra_context={"python_version": "3.14"}).project_path)
    result = run(
        ["make", "install"], cwd=project, timeout=60, PATH=path_with(tmp_path, python3=BASE)
    )

    assert result.returncode != 0
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert (
        f"error: this project needs Python 3.14+, found: python3 ({running}) "
        "(looked for python3 python3.14): make install PYTHON=/path/to/python3.14, "
        f"or render the project with python_version {running}"
    ) in result.stderr, result.stderr
    assert not (project / ".venv").exists()


def test_make_install_finds_python3_x_and_then_keeps_the_venvs(
    cookies: Any, tmp_path: Path
) -> None:
    """python3 too old: `make install` makes .venv with python3.13 from PATH; after a change to
    pyproject.toml it reinstalls with .venv's Python, without looking for one again."""
    newer = interpreter("3.13")
    project = Path(cookies.bake(extra_context={"python_version": "3.13"}).project_path)
    found = path_with(tmp_path, python3=BASE, python3_13=newer)
    made = run(["make", "venv"], cwd=project, timeout=120, PATH=found)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("python3.13 -m venv .venv   # Python 3.13")
    version = run([str(project / ".venv" / "bin" / "python"), "--version"], cwd=project)
    assert version.stdout.startswith("Python 3.13")

    (project / "pyproject.toml").touch()
    only_python3 = f"{BASE_DIR}:/usr/local/bin:/usr/bin:/bin"
    again = run(["make", "install", "PIP_FLAGS=--dry-run"], project, timeout=600, PATH=only_python3)
    assert again.returncode == 0, again.stdout + again.stderr
    assert ".venv/bin/python -m pip install" in again.stdout
    assert "needs Python" not in again.stderr
