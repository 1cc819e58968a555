"""`make demo` renders, installs and drains the default project, as the README says."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import TEMPLATE, run


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


def test_make_install_names_the_python_it_needs(cookies: Any) -> None:
    if sys.version_info >= (3, 14):
        pytest.skip("this Python is new enough for every python_version")
    project = Path(cookies.bake(extra_context={"python_version": "3.14"}).project_path)
    result = run(["make", "install", f"PYTHON={sys.executable}"], cwd=project, timeout=60)

    assert result.returncode != 0
    assert "this project needs 3.14+: make install PYTHON=python3.14" in result.stderr
    assert not (project / ".venv").exists()
