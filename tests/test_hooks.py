"""The hooks: every rejected answer, injection safety, pruning, and validation."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import tempfile
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from conftest import TEMPLATE
from cookiecutter.environment import StrictEnvironment
from cookiecutter.generate import generate_context


def default_context(**answers: Any) -> dict[str, Any]:
    """The context cookiecutter builds from cookiecutter.json and `answers`, fully rendered."""
    from cookiecutter.prompt import prompt_for_config

    context = generate_context(str(TEMPLATE / "cookiecutter.json"), extra_context=answers)
    return dict(prompt_for_config(context, no_input=True))


def load_hook(name: str, context: dict[str, Any], tmp_path: Path) -> ModuleType:
    """Render a hook as cookiecutter does and import it as a module."""
    source = (TEMPLATE / "hooks" / f"{name}.py").read_text()
    env = StrictEnvironment(context={"cookiecutter": context}, keep_trailing_newline=True)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.py"
    path.write_text(env.from_string(source).render(cookiecutter=context))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REJECTED = [
    ({"project_name": "class"}, "gives the package name 'class', a Python keyword"),
    ({"project_name": "Queue"}, "would shadow the standard-library module"),
    ({"project_name": "asyncio"}, "would shadow the standard-library module"),
    ({"project_name": "QuasiQueue"}, "would shadow a package the project depends on"),
    ({"project_name": "pydantic"}, "would shadow a package the project depends on"),
    ({"project_name": "9 Lives"}, "'9_lives', which is not a Python identifier: use ASCII"),
    ({"project_name": "Café Worker"}, "'café_worker', which is not ASCII: use ASCII letters"),
    ({"project_name": "_private"}, "'_private', which does not start with a letter"),
    ({"project_name": "My Worker!"}, "'my_worker!', which is not a Python identifier"),
    ({"project_name": "../escape"}, "project_name '../escape' contains a slash"),
    ({"project_name": "a\\b"}, "contains a slash"),
    ({"project_name": "   "}, "project_name is empty"),
    ({"project_name": "x" * 41}, "is 41 characters long: the limit is 40"),
    ({"author_email": "not-an-email"}, "author_email 'not-an-email' is not an email address"),
    ({"author_email": "a@b"}, "author_email 'a@b' is not an email address"),
    ({"description": "two\nlines"}, "description 'two\\nlines' spans several lines"),
]
# Valid answers that do not go together, as cookiecutter-django lists them: each refused before
# anything is written, with a one-line reason. The same name without the feature renders.
UNSUPPORTED = [
    ({"project_name": "aiocache", "include_aiocache": True}, "a package include_aiocache needs"),
    ({"project_name": "moto", "include_streaming_io": True}, "a package include_streaming_io"),
    ({"project_name": "OpenTelemetry", "include_tracing": True}, "package include_tracing needs"),
]
REJECTED += UNSUPPORTED


@pytest.mark.parametrize(("answers", "message"), UNSUPPORTED)
def test_an_unsupported_combination_is_supported_without_its_feature(
    cookies: Any, answers: dict[str, Any], message: str
) -> None:
    without = {key: value if key == "project_name" else False for key, value in answers.items()}
    result = cookies.bake(extra_context=without)
    assert result.exit_code == 0, result.exception


@pytest.mark.parametrize(("answers", "message"), REJECTED)
def test_rejected_answers_leave_nothing_behind(
    cookies: Any,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
    answers: dict[str, str],
    message: str,
) -> None:
    result = cookies.bake(extra_context=answers)

    assert result.exit_code != 0
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("ERROR: ")]
    assert message in errors[0]
    assert len(errors[0]) < 300
    output = tmp_path / "cookies" / "bake00"  # where pytest-cookies rendered this bake
    assert list(output.iterdir()) == []


def test_unrendered_private_variable_says_upgrade(tmp_path: Path) -> None:
    context = default_context()
    context["__package_slug"] = "{{ cookiecutter.project_name|lower }}"
    hook = load_hook("pre_gen_project", default_context(), tmp_path)
    with pytest.raises(hook.Rejected, match=r"__package_slug was not rendered .* upgrade it"):
        hook.check(context)


def test_python_versions_are_3_11_to_3_14_with_3_11_the_default(tmp_path: Path) -> None:
    hook = load_hook("pre_gen_project", default_context(), tmp_path)
    assert default_context()["python_version"] == "3.11"  # where `make demo` runs
    config = json.loads((TEMPLATE / "cookiecutter.json").read_text())
    assert sorted(config["python_version"]) == sorted(hook.PYTHON_VERSIONS)
    assert hook.PYTHON_VERSIONS == ("3.11", "3.12", "3.13", "3.14")
    with pytest.raises(hook.Rejected, match=r"python_version '3.10' is not one of 3.11, "):
        hook.check({**default_context(), "python_version": "3.10"})


def test_every_rule_accepts_the_defaults(tmp_path: Path) -> None:
    hook = load_hook("pre_gen_project", default_context(), tmp_path)
    hook.check(default_context())
    assert hook.main() == 0


def test_a_name_crafted_to_run_code_does_not_run(cookies: Any, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = f'x"""); import os; os.system("touch {marker}"); ("""'
    for field in ("project_name", "author_name", "description"):
        cookies.bake(extra_context={field: payload})
        assert not marker.exists(), field


def test_crafted_text_renders_as_data(cookies: Any, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = f'"""); __import__("os").system("touch {marker}"); ("""'
    result = cookies.bake(extra_context={"description": payload, "author_name": payload})

    assert result.exit_code == 0, result.exception
    project = Path(result.project_path)
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["description"] == payload
    assert pyproject["project"]["authors"][0]["name"] == payload
    readme = (project / "README.md").read_text()
    assert payload in readme
    assert not marker.exists()


def test_post_gen_hook_is_safe_to_run_twice(cookies: Any, tmp_path: Path) -> None:
    result = cookies.bake()
    project = Path(result.project_path)
    before = sorted(str(p.relative_to(project)) for p in project.rglob("*"))
    context = default_context()
    hook = load_hook("post_gen_project", context, tmp_path)
    cwd = os.getcwd()
    os.chdir(project)
    try:
        assert hook.main() == 0
    finally:
        os.chdir(cwd)
    after = sorted(str(p.relative_to(project)) for p in project.rglob("*"))
    assert after == before


def test_pruning_removes_disabled_feature_files_and_empty_folders(tmp_path: Path) -> None:
    context = default_context(include_aiocache=False)
    hook = load_hook("post_gen_project", context, tmp_path)
    root = tmp_path / "project"
    (root / "my_worker").mkdir(parents=True)
    (root / "my_worker" / "cache.py").write_text("")
    (root / "docs").mkdir()
    (root / "docs" / "cache.md").write_text("")
    (root / "my_worker" / "qq.py").write_text("")

    removed = hook.prune(root, context)

    assert sorted(p.relative_to(root).as_posix() for p in removed) == [
        "docs",
        "docs/cache.md",
        "my_worker/cache.py",
    ]
    assert (root / "my_worker" / "qq.py").exists()
    assert hook.prune(root, context) == []


def test_a_file_shared_by_features_stays_while_one_of_them_is_on(tmp_path: Path) -> None:
    context = default_context(include_aiocache=False, include_redis_jobs=True)
    hook = load_hook("post_gen_project", context, tmp_path)
    root = tmp_path / "project"
    (root / "tests").mkdir(parents=True)
    for name in ("servers.py", "test_cache.py", "test_jobs.py"):
        (root / "tests" / name).write_text("")

    hook.prune(root, context)

    assert sorted(p.name for p in (root / "tests").iterdir()) == ["servers.py", "test_jobs.py"]


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("a.py", "def broken(:\n", "a.py: does not parse: SyntaxError"),
        ("b.yaml", "key: [unclosed\n", "b.yaml: does not parse"),
        ("c.json", "{nope}", "c.json: does not parse: JSONDecodeError"),
        ("d.toml", "x = = 1", "d.toml: does not parse"),
        ("e.md", "text\n{{ cookiecutter.project_name }}\n", "e.md:2: leftover Jinja"),
        ("f.py", "# {% if cookiecutter.x %}\n", "f.py:1: leftover Jinja"),
    ],
)
def test_validation_reports_each_broken_file(
    tmp_path: Path, name: str, text: str, problem: str
) -> None:
    hook = load_hook("post_gen_project", default_context(), tmp_path / "hook")
    root = tmp_path / "project"
    root.mkdir()
    (root / name).write_text(text)
    problems = hook.validate(root)
    assert len(problems) == 1
    assert problems[0].startswith(problem)


def test_cookiecutter_json_prompts_cover_every_question() -> None:
    config = json.loads((TEMPLATE / "cookiecutter.json").read_text())
    questions = {key for key in config if not key.startswith("_")}
    assert questions == set(config["__prompts__"])


def test_the_name_is_used_without_the_spaces_around_it(cookies: Any) -> None:
    result = cookies.bake(extra_context={"project_name": "  spaces  "})

    assert result.exit_code == 0, result.exception
    project = Path(result.project_path)
    assert project.name == "spaces"
    assert (project / "README.md").read_text().startswith("# spaces\n")
    assert (project / ".env.example").read_text().startswith("# Settings of spaces: ")
    namespace: dict[str, Any] = {}
    exec(
        compile((project / "spaces" / "__init__.py").read_text(), "__init__.py", "exec"), namespace
    )
    assert namespace["__doc__"].startswith("spaces: ")
    rendered = "".join(path.read_text() for path in project.rglob("*") if path.is_file())
    assert "  spaces" not in rendered
    assert not re.search(r"spaces  (?!# )", rendered)  # two spaces before a comment are YAML's


def next_steps(capfd: pytest.CaptureFixture[str]) -> list[str]:
    """The lines the post-gen hook printed, from the first ("Created ...") on."""
    out = capfd.readouterr().out.splitlines()
    return out[next(i for i, line in enumerate(out) if line.startswith("Created ")) :]


def test_next_steps_are_printed_in_order(
    cookies: Any, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    result = cookies.bake()
    assert result.exit_code == 0, result.exception
    steps = [line.split("#")[0].strip() for line in next_steps(capfd)]

    project = Path(result.project_path)
    hook = load_hook("post_gen_project", default_context(), tmp_path)
    assert steps[1] == f"cd {hook.where(project, os.environ.get('PWD'))}"
    assert steps[2:6] == ["git init", "make install", "make test", "make drain"]
    assert not any("redis" in step for step in steps)
    assert len(steps) <= 8
    assert hook.where(project, str(project.parent)) == "my_worker"
    assert hook.where(project, str(tmp_path / "elsewhere")) == str(project)


@pytest.mark.parametrize("feature", ["include_redis_jobs", "include_spool"])
def test_next_steps_submit_with_the_projects_python_once_the_source_is_up(
    cookies: Any, capfd: pytest.CaptureFixture[str], feature: str
) -> None:
    result = cookies.bake(extra_context={feature: True})
    assert result.exit_code == 0, result.exception
    commands = [line.split("#")[0].strip() for line in next_steps(capfd) if line.startswith("  ")]

    submit = next(i for i, command in enumerate(commands) if " submit " in command)
    assert commands[submit].startswith(".venv/bin/python -m my_worker.qq submit '")
    assert commands.index("make install") < submit < commands.index("make drain")
    assert not [command for command in commands if command.startswith("python")]
    redis = [i for i, command in enumerate(commands) if command == "docker compose up -d redis"]
    assert redis == ([submit - 1] if feature == "include_redis_jobs" else [])


def test_a_render_again_by_cruft_is_told_from_a_first_one(tmp_path: Path) -> None:
    hook = load_hook("post_gen_project", default_context(), tmp_path)
    cruft = {**default_context(), "_commit": "0" * 40}
    again = Path(tempfile.gettempdir()).resolve() / "tmpab_c1234" / "my_worker"

    assert hook.rendered_again(again, cruft)  # where cruft diff and cruft update render
    assert not hook.rendered_again(again, default_context())  # plain cookiecutter: no commit
    assert not hook.rendered_again(tmp_path / "out" / "my_worker", cruft)  # cruft create
    assert not hook.rendered_again(again.parent.parent / "tmp.Xy12AbCd" / "my_worker", cruft)


@pytest.mark.parametrize("feature", ["include_redis_jobs", "include_aiocache"])
def test_next_steps_say_how_to_get_a_local_redis(
    cookies: Any, capfd: pytest.CaptureFixture[str], feature: str
) -> None:
    result = cookies.bake(extra_context={feature: True})
    assert result.exit_code == 0, result.exception
    steps = "\n".join(next_steps(capfd))

    assert "docker compose up -d redis" in steps
    assert "or redis-server" in steps
    compose = yaml.safe_load((Path(result.project_path) / "compose.yaml").read_text())
    assert compose["services"]["redis"]["ports"] == ["127.0.0.1:6379:6379"]
