"""Every benchmark script runs in --quick mode and prints its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[1]
BENCHES = sorted((PROJECT / "bench").glob("bench_*.py"))


@pytest.mark.parametrize("script", BENCHES, ids=lambda path: path.stem)
def test_benchmark_runs_quick(script: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(script), "--quick"],
        cwd=PROJECT,
        env={"PYTHONPATH": str(PROJECT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "/s" in result.stdout  # a rate column: items/s or MB/s
