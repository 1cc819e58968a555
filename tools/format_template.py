"""Format the template's Python files with ruff, through a render.

Renders the project with every feature on, runs `ruff format` and `ruff check --fix` on it,
and writes each result back to the template file it came from when that file's only Jinja is
the package name or the environment prefix. Files with `{% ... %}` blocks are listed for a
manual edit. Usage: python tools/format_template.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[1]
ROOT = "{{cookiecutter.__package_slug}}"
FEATURES = [
    key
    for key in json.loads((TEMPLATE / "cookiecutter.json").read_text())
    if key.startswith("include_")
]
NAME = "fmt_probe_as_long_as_the_longest_name_xx"  # 40 characters, the limit
SWAPS = (
    ("{{ cookiecutter.__env_prefix }}", NAME.upper() + "_"),
    ("{{ cookiecutter.__package_slug }}", NAME),
)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        answers = {"project_name": NAME, **dict.fromkeys(FEATURES, True)}
        project = Path(
            cookiecutter(str(TEMPLATE), no_input=True, output_dir=tmp, extra_context=answers)
        )
        before = {path: path.read_text() for path in project.rglob("*.py")}
        ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or "ruff"
        subprocess.run([ruff, "check", "--fix", "-q", "."], cwd=project, check=False)
        subprocess.run([ruff, "format", "-q", "."], cwd=project, check=True)
        manual = []
        for source in sorted((TEMPLATE / ROOT).rglob("*.py")):
            relative = source.relative_to(TEMPLATE / ROOT).as_posix().replace(ROOT, NAME)
            rendered = project / relative
            if not rendered.exists() or before[rendered] == rendered.read_text():
                continue
            text = source.read_text()
            if "{%" in text or "{{" in _render(text):
                manual.append(relative)
                continue
            formatted = rendered.read_text()
            for jinja, value in SWAPS:
                formatted = formatted.replace(value, jinja)
            if formatted != text:
                source.write_text(formatted)
                print(f"formatted {source.relative_to(TEMPLATE)}")
        for relative in manual:
            print(f"needs a manual edit (has Jinja blocks): {relative}")
    return 1 if manual else 0


def _render(text: str) -> str:
    for jinja, value in SWAPS:
        text = text.replace(jinja, value)
    return text


if __name__ == "__main__":
    sys.exit(main())
