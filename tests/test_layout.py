"""The project's package as a newcomer reads it: no module over about 600 lines, and each
one says in its first line what it is."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "{{cookiecutter.__package_slug}}"
MODULES = sorted((PACKAGE / "{{cookiecutter.__package_slug}}").rglob("*.py"))
MOST_LINES = 600


def test_the_package_is_there() -> None:
    names = {path.relative_to(PACKAGE).as_posix() for path in MODULES}
    assert "{{cookiecutter.__package_slug}}/worker/source.py" in names
    assert "{{cookiecutter.__package_slug}}/sources/redis_jobs/feed.py" in names


def test_no_module_is_over_600_lines() -> None:
    long = {
        path.relative_to(PACKAGE).as_posix(): lines
        for path in MODULES
        if (lines := len(path.read_text().splitlines())) > MOST_LINES
    }
    assert long == {}


def test_every_module_opens_with_a_docstring() -> None:
    missing = []
    for path in MODULES:
        lines = path.read_text().splitlines()
        while lines and lines[0].startswith("{%"):  # Jinja's set-up, gone once rendered
            lines.pop(0)
        text = "\n".join(lines)
        if "{%" in text or "{{" in text:  # rendered by Jinja: look at the opening only
            opening = text.split('"""', 2)
            if not text.startswith('"""') or len(opening) < 3 or not opening[1].strip():
                missing.append(path.relative_to(PACKAGE).as_posix())
            continue
        if ast.get_docstring(ast.parse(text)) is None:
            missing.append(path.relative_to(PACKAGE).as_posix())
    assert missing == []


def test_no_file_names_a_hook_the_runtime_does_not_have() -> None:
    # QuasiQueue's on_success / on_failure / on_unstarted are `Source.settle` here.
    gone = ("on_success", "on_failure", "on_unstarted")
    named = []
    for path in sorted(PACKAGE.rglob("*")):
        if path.is_file() and path.suffix not in (".pyc", ".lua"):
            text = path.read_text(encoding="utf-8", errors="replace")
            named += [f"{path.relative_to(PACKAGE)}: {hook}" for hook in gone if hook in text]
    assert named == []
