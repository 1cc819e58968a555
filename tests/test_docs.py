"""Every ```python block in the template's README.md and docs/ runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import TEMPLATE

DOCS = sorted([TEMPLATE / "README.md", *TEMPLATE.glob("docs/*.md")])
CHANGELOG = (TEMPLATE / "CHANGELOG.md").read_text()
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_python_blocks_run(doc: Path) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{doc.stem}"}
    for number, block in enumerate(BLOCK.findall(doc.read_text()), start=1):
        exec(compile(block, f"{doc.name}[block {number}]", "exec"), namespace)


def test_template_version_is_the_newest_release() -> None:
    version = json.loads((TEMPLATE / "cookiecutter.json").read_text())["__template_version"]
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", CHANGELOG, re.M)
    assert releases and releases[0] == version
