"""Render the supported option combinations and check each one as a user would get it:
no leftover Jinja, configs parse, ruff and format clean, mypy --strict clean, and the
rendered project's own test suite passes."""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import BIN, FEATURES, TEMPLATE, run

ALL_ON = dict.fromkeys(FEATURES, True)
ALL_OFF = dict.fromkeys(FEATURES, False)
COMBOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "all-on": {
        **ALL_ON,
        "project_name": "Billing-Sync Worker",
        "license": "Apache-2.0",
        "python_version": "3.13",
    },
    "all-off": {
        **ALL_OFF,
        "project_name": "ACME Jobs",
        "license": "Proprietary",
        "python_version": "3.11",
    },
    "aiocache-only": {
        **ALL_OFF,
        "include_aiocache": True,
        "project_name": "cache warmer",
        "license": "GPL-3.0-only",
        "python_version": "3.12",
    },
    "redis-jobs": {
        **ALL_OFF,
        "include_redis_jobs": True,
        "project_name": "fan-out",
        "license": "MIT",
    },
    "spool-and-queue": {
        **ALL_OFF,
        "include_spool": True,
        "include_bounded_queue": True,
        "project_name": "orders",
        "python_version": "3.12",
    },
    "longest-name": {"project_name": "Fmt Probe As Long As The Longest Name Xx"},
    "odd-text": {
        "project_name": "Quote Worker",
        "description": "Says \"hi\" \\ and 'bye' {not jinja} <b>&",
        "author_name": 'O\'Brien "Bob" \\',
        "license": "BSD-3-Clause",
    },
}
LEFTOVER = re.compile(r"\{\{\s*cookiecutter|\{%-?\s*(if|for|endif|endfor|raw)\b|cookiecutter\.")


@pytest.fixture(scope="module", params=list(COMBOS))
def baked(request: pytest.FixtureRequest, cookies_session: Any) -> tuple[dict[str, Any], Path]:
    answers = COMBOS[request.param]
    result = cookies_session.bake(extra_context=answers)
    assert result.exit_code == 0, result.exception
    return answers, Path(result.project_path)


def files(project: Path) -> list[Path]:
    return [path for path in project.rglob("*") if path.is_file()]


def test_no_leftover_jinja(baked: tuple[dict[str, Any], Path]) -> None:
    _, project = baked
    leftovers = [
        str(path.relative_to(project))
        for path in files(project)
        if LEFTOVER.search(path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert leftovers == []


def test_configs_parse_and_carry_the_answers(baked: tuple[dict[str, Any], Path]) -> None:
    answers, project = baked
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    defaults = json.loads((TEMPLATE / "cookiecutter.json").read_text())
    expect = {key: answers.get(key, value) for key, value in defaults.items()}
    if isinstance(expect["license"], list):
        expect["license"] = expect["license"][0]
    if isinstance(expect["python_version"], list):
        expect["python_version"] = expect["python_version"][0]
    assert pyproject["project"]["description"] == expect["description"]
    assert pyproject["project"]["authors"] == [
        {"name": expect["author_name"], "email": expect["author_email"]}
    ]
    assert pyproject["project"]["requires-python"] == f">={expect['python_version']}"
    assert "quasiqueue>=0.7,<0.8" in pyproject["project"]["dependencies"]
    slug = project.name
    assert pyproject["project"]["name"] == slug.replace("_", "-")
    package_doc = (project / slug / "__init__.py").read_text()
    namespace: dict[str, Any] = {}
    exec(compile(package_doc, "__init__.py", "exec"), namespace)
    assert namespace["__doc__"].startswith(expect["project_name"])
    for path in files(project):
        if path.suffix in (".yaml", ".yml"):
            list(yaml.safe_load_all(path.read_text()))
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".toml":
            tomllib.loads(path.read_text())


def test_feature_files_follow_the_flags(baked: tuple[dict[str, Any], Path]) -> None:
    answers, project = baked
    slug = project.name
    package = TEMPLATE / "{{cookiecutter.__package_slug}}" / "{{cookiecutter.__package_slug}}"
    modules = {
        "include_aiocache": "cache.py",
        "include_streaming_io": "streaming.py",
        "include_bounded_queue": "bounded_queue.py",
        "include_spool": "spool.py",
        "include_redis_jobs": "jobs.py",
    }
    for feature, module in modules.items():
        if (package / module).exists():  # the template has this feature's module
            assert (project / slug / module).exists() == answers.get(feature, False), feature
    assert not (project / "licenses").exists()
    prefix = slug.upper() + "_"
    env_example = (project / ".env.example").read_text()
    assert all(
        line.startswith(prefix) for line in env_example.splitlines() if line and line[0] != "#"
    )


def test_ruff_check(baked: tuple[dict[str, Any], Path]) -> None:
    _, project = baked
    result = run([str(BIN / "ruff"), "check", "--no-cache", "."], cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format(baked: tuple[dict[str, Any], Path]) -> None:
    _, project = baked
    result = run([str(BIN / "ruff"), "format", "--no-cache", "--check", "."], cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict(baked: tuple[dict[str, Any], Path], tmp_path_factory: Any) -> None:
    _, project = baked
    cache = tmp_path_factory.getbasetemp() / "mypy-cache"
    result = run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache), "."], cwd=project
    )
    assert result.returncode == 0, result.stdout + result.stderr


# The name- and text-only combinations have the defaults' features: the checks above cover
# what differs in them (names, text), so their test suites are not run again.
SUITES = [name for name in COMBOS if name not in ("longest-name", "odd-text")]


@pytest.mark.parametrize("baked", SUITES, indirect=True)
def test_rendered_test_suite_passes(baked: tuple[dict[str, Any], Path]) -> None:
    _, project = baked
    result = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x"], cwd=project
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert re.search(r"\d+ passed", result.stdout)
