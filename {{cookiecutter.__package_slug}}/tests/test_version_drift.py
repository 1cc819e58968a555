"""tools/version_drift.py: which releases differ from constraints.txt (the canary's report)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
SCRIPT = PROJECT / "tools" / "version_drift.py"


def drift(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )


def test_this_environment_against_the_shipped_constraints() -> None:
    """Whatever installed this venv, the report counts what it lists, one release a line."""
    result = drift(str(PROJECT / "constraints.txt"))
    assert result.returncode == 0, result.stderr
    head, *releases = result.stdout.splitlines()
    if releases:
        assert (
            head == f"{len(releases)} release(s) differ from {PROJECT / 'constraints.txt'}"
            " (the tested set):"
        )
        assert all(
            re.fullmatch(r"  \S+ \S+ \((tested\) -> \S+|not in the tested set\))", line)
            for line in releases
        ), releases
    else:
        assert head.startswith("every release is the one in")


def test_a_report_names_each_newer_release_and_each_one_not_pinned(tmp_path: Path) -> None:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(
        "# tested\n"
        "redis==8.1.0          # via pyproject.toml\n"
        "typer==0.25.1\n"
        "async-timeout==5.0.1 ; python_full_version < '3.0'\n"
    )
    report = tmp_path / "report.json"
    chosen = {"redis": "8.2.0", "typer": "0.25.1", "fresh_dep": "1.0", "my-worker": "0.1.0"}
    install: list[dict[str, dict[str, Any]]] = [
        {
            "metadata": {"name": name, "version": version},
            "download_info": {"dir_info": {}} if name == "my-worker" else {"url": "x"},
        }
        for name, version in chosen.items()
    ]
    report.write_text(json.dumps({"install": install}))

    result = drift("--failed", "--report", str(report), str(constraints))

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"failed with 2 release(s) that differ from {constraints} (the tested set):",
        "  fresh-dep 1.0 (not in the tested set)",
        "  redis 8.1.0 (tested) -> 8.2.0",
    ]


def test_a_missing_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = drift(str(tmp_path / "nowhere.txt"))
    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path / 'nowhere.txt'}: No such file or directory\n"
