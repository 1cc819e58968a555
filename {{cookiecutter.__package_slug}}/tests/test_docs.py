"""Every ```python block in README.md and docs/ runs, in order, one namespace per file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
DOCS = sorted([PROJECT / "README.md", *PROJECT.glob("docs/*.md")])
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_python_blocks_run(doc: Path) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{doc.stem}"}
    for number, block in enumerate(BLOCK.findall(doc.read_text()), start=1):
        code = compile(block, f"{doc.name}[block {number}]", "exec")
        exec(code, namespace)
