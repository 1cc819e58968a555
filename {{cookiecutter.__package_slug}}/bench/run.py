"""Run every benchmark in this folder: `python bench/run.py [--quick]`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def main() -> int:
    project = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(project), os.environ.get("PYTHONPATH")])),
    }
    status = 0
    for script in sorted(Path(__file__).parent.glob("bench_*.py")):
        print(f"\n## {script.stem}", flush=True)
        status |= subprocess.run([sys.executable, str(script), *sys.argv[1:]], env=env).returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
