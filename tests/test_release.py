"""`make release` in a clone of the template: it tags HEAD `v<version>` when CHANGELOG.md and
cookiecutter.json agree, and refuses a tag that exists, a dirty tree and versions that differ."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from conftest import TEMPLATE, run

IGNORED = shutil.ignore_patterns(".git", ".venv", "build", "__pycache__", ".*_cache")
VERSION = json.loads((TEMPLATE / "cookiecutter.json").read_text())["__template_version"]


def git(cwd: Path, *args: str) -> str:
    result = run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def make_release(clone: Path) -> tuple[int, str]:
    result = run(["make", "--no-print-directory", "release", f"PYTHON={sys.executable}"], clone)
    return result.returncode, result.stdout + result.stderr


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """The template's working tree, committed to a repository of its own, without tags."""
    clone = tmp_path / "template"
    shutil.copytree(TEMPLATE, clone, ignore=IGNORED)
    git(clone, "init", "-q", "-b", "main")
    git(clone, "add", "-A")
    git(clone, "commit", "-qm", "template")
    return clone


def test_release_tags_head_once(clone: Path) -> None:
    code, output = make_release(clone)
    assert code == 0, output
    assert f"tagged v{VERSION}" in output
    assert git(clone, "rev-parse", f"v{VERSION}^{{commit}}") == git(clone, "rev-parse", "HEAD")

    code, output = make_release(clone)
    assert code != 0
    assert f"release refused: tag v{VERSION} already exists" in output


def test_release_refuses_a_dirty_tree(clone: Path) -> None:
    (clone / "README.md").write_text((clone / "README.md").read_text() + "\nmore\n")
    code, output = make_release(clone)
    assert code != 0
    assert "release refused: the working tree has 1 uncommitted change(s)" in output
    assert git(clone, "tag", "--list") == ""


def test_release_refuses_versions_that_differ(clone: Path) -> None:
    config = clone / "cookiecutter.json"
    config.write_text(
        re.sub(
            r'"__template_version": "[^"]+"', '"__template_version": "9.9.9"', config.read_text()
        )
    )
    git(clone, "commit", "-qam", "bump one of the two")
    code, output = make_release(clone)
    assert code != 0
    assert (
        f"newest release is {VERSION} but cookiecutter.json's __template_version is 9.9.9" in output
    )
    assert git(clone, "tag", "--list") == ""
