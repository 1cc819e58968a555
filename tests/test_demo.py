"""`make demo` renders, installs and drains the default project, as the README says."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from conftest import TEMPLATE, run


def test_make_demo(tmp_path: Path) -> None:
    assert shutil.which("make"), "make is needed for the README's commands"
    result = run(["make", "demo", f"DEMO_DIR={tmp_path / 'demo'}"], cwd=TEMPLATE, timeout=900)

    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"summary +100 of 100 sample jobs succeeded, 0 failed", result.stdout)
    assert (tmp_path / "demo" / "my_worker" / ".venv" / "bin" / "python").exists()
