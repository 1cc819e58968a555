"""Every ```python block in README.md and docs/ runs, in order, one namespace per file, and
passes ruff's async rules (no blocking call in async code), as the project's code must."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
DOCS = sorted([PROJECT / "README.md", *PROJECT.glob("docs/*.md")])
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)
FENCE = re.compile(r"^```[A-Za-z]*$")


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_code_fences_stand_alone(doc: Path) -> None:
    lines = doc.read_text().splitlines()
    bad = [n for n, line in enumerate(lines, 1) if line.startswith("```") and not FENCE.match(line)]
    assert not bad, f"{doc.name}: text after a code fence on line(s) {bad}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_python_blocks_run(doc: Path) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{doc.stem}"}
    for number, block in enumerate(BLOCK.findall(doc.read_text()), start=1):
        code = compile(block, f"{doc.name}[block {number}]", "exec")
        exec(code, namespace)


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_python_blocks_pass_the_async_rules(doc: Path) -> None:
    for number, block in enumerate(BLOCK.findall(doc.read_text()), start=1):
        name = f"docs/{doc.stem}_block{number}.py"  # in the project: its ruff configuration
        ruff = [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "ASYNC"]
        result = subprocess.run(
            [*ruff, "--stdin-filename", name, "-"],
            input=block,
            cwd=PROJECT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"{doc.name} block {number}:\n{result.stdout}"
