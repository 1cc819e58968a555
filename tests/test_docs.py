"""Every ```python block in the template's README.md and docs/ runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import TEMPLATE

DOCS = sorted([TEMPLATE / "README.md", *TEMPLATE.glob("docs/*.md")])
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_python_blocks_run(doc: Path) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{doc.stem}"}
    for number, block in enumerate(BLOCK.findall(doc.read_text()), start=1):
        exec(compile(block, f"{doc.name}[block {number}]", "exec"), namespace)
