"""The tested version set: what it pins, that every install uses it, and that the canary does
not (`make canary` installs the newest releases)."""

from __future__ import annotations

import json
import shutil
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from conftest import FEATURES, TEMPLATE, pinned_versions, run
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

TEMPLATE_SET = TEMPLATE / "constraints.txt"
RENDER_SET = TEMPLATE / "{{cookiecutter.__package_slug}}" / "constraints.txt"
PYTHONS = ("3.11", "3.12", "3.13", "3.14")
IGNORED = shutil.ignore_patterns(".git", ".venv*", "build", "__pycache__", ".*_cache")


def closure(requirements: list[str], python: str) -> set[str]:
    """Every distribution `requirements` need on `python` ("3.12", as in its x.y.0 release), by
    their installed metadata (the template's venv holds all of those this Python needs)."""
    environment = {
        **default_environment(),
        "python_version": python,
        "python_full_version": f"{python}.0",
    }
    seen: set[tuple[str, str]] = set()  # (distribution, extra)
    todo = [(Requirement(text), "") for text in requirements]
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({**environment, "extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        for wanted in ["", *sorted(requirement.extras)]:
            if (name, wanted) not in seen:
                seen.add((name, wanted))
                try:
                    needs = metadata.requires(name) or []
                except metadata.PackageNotFoundError:  # only for another Python: its own needs
                    needs = []  # are not known here, it is counted itself
                todo += [(Requirement(text), wanted) for text in needs]
    return {name for name, _ in seen}


def render_requirements(project: Path) -> list[str]:
    """A render's runtime and dev requirements, from its pyproject.toml."""
    spec = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    return [*spec["dependencies"], *spec["optional-dependencies"]["dev"]]


@pytest.mark.parametrize("answers", [{}, dict.fromkeys(FEATURES, True)], ids=["defaults", "all-on"])
def test_every_dependency_of_a_render_is_pinned(answers: dict[str, Any], cookies: Any) -> None:
    project = Path(cookies.bake(extra_context=answers).project_path)
    assert (project / "constraints.txt").read_text() == RENDER_SET.read_text()  # shipped whole
    for python in PYTHONS:
        needed = closure(render_requirements(project), python)
        pinned = pinned_versions(project / "constraints.txt", python)
        assert sorted(needed - set(pinned)) == [], f"not pinned for Python {python}"


def test_every_template_tool_is_pinned_and_the_render_set_agrees() -> None:
    requirements = [
        line.split("#", 1)[0].strip()
        for line in (TEMPLATE / "requirements-dev.txt").read_text().splitlines()
        if line.split("#", 1)[0].strip()
    ]
    for python in PYTHONS:
        pinned = pinned_versions(TEMPLATE_SET, python)
        assert sorted(closure(requirements, python) - set(pinned)) == [], python
        render = pinned_versions(RENDER_SET, python)
        assert {name: pinned.get(name) for name in render} == render, python


def test_the_template_tests_run_on_the_pinned_versions() -> None:
    """The venv running these tests (`make install`) holds the pinned versions."""
    pins = pinned_versions(TEMPLATE_SET)
    installed = {
        canonicalize_name(dist.metadata["Name"]): dist.version for dist in metadata.distributions()
    }
    differ = {name: (pins[name], version) for name, version in installed.items() if name in pins}
    assert {name: pair for name, pair in differ.items() if pair[0] != pair[1]} == {}


def dry_run(project: Path, target: list[str], tmp_path: Path, name: str) -> dict[str, str]:
    """Run a Makefile install step with pip's --dry-run; the versions pip chose, by name."""
    report = tmp_path / f"{name}.json"
    flags = f"PIP_FLAGS=--dry-run --ignore-installed --report {report}"
    result = run(["make", *target, flags, f"PYTHON={sys.executable}"], cwd=project, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {
        canonicalize_name(entry["metadata"]["name"]): entry["metadata"]["version"]
        for entry in json.loads(report.read_text())["install"]
    }


HELD = "typer==0.20.1"  # an old release: the canary must not install it, an install must


@pytest.mark.timeout(600)
def test_the_canary_install_step_ignores_the_constraints(tmp_path: Path, cookies: Any) -> None:
    """The canary workflows' install step (`make canary-install`, here with pip's --dry-run),
    in the template and in a render, each with constraints.txt pinning an old typer."""
    template = tmp_path / "template"
    shutil.copytree(TEMPLATE, template, ignore=IGNORED)
    render = Path(cookies.bake().project_path)
    for folder in (template, render):
        constraints = folder / "constraints.txt"
        pins = [line for line in constraints.read_text().splitlines() if "typer==" not in line]
        constraints.write_text("\n".join([*pins, HELD]) + "\n")

    for folder, name in ((template, "template"), (render, "render")):
        canary_venv = f"CANARY={tmp_path / (name + '-canary')}"
        canary = dry_run(folder, ["canary-install", canary_venv], tmp_path, f"{name}-canary")
        assert canary["typer"] != "0.20.1", name
        pinned_venv = f"VENV={tmp_path / (name + '-pinned')}"
        pinned = dry_run(folder, ["install", pinned_venv], tmp_path, f"{name}-pinned")
        assert pinned["typer"] == "0.20.1", name  # an install does follow the constraints

    report = tmp_path / "render-canary.json"
    drift = run(
        [sys.executable, "tools/version_drift.py", "--report", str(report), "constraints.txt"],
        cwd=render,
    )
    assert drift.returncode == 0, drift.stderr
    assert f"typer 0.20.1 (tested) -> {canary['typer']}" in drift.stdout
