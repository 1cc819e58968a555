"""Smoke test: the benchmark script runs with --quick and prints its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_spool.py"


def test_bench_quick_prints_the_table(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--records", "2000", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for row in ("spool, fsync on", "spool, fsync off", "mp.Queue, item by item"):
        assert f"| {row}" in done.stdout
    assert "target: spool with fsync" in done.stdout
    assert os.listdir(tmp_path) == []  # the bench removes its spool folders
