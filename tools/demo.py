"""`make demo`: render the default project, install it in its own venv, drain its sample jobs.

It installs as the next steps it prints say (`make install` in the project: `.venv` with the
dev tools), so `make install` and `make test` there work as written afterwards.

Usage: python tools/demo.py [--output-dir build/demo]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[1]


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a command, failing loudly with its output."""
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode not in (0, 1) or not result.stdout.strip():
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", type=Path, default=TEMPLATE / "build" / "demo")
    args = parser.parse_args()
    output: Path = args.output_dir.resolve()

    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    project = Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(output)))
    print(f"rendered   {project}")

    environment = project / ".venv"
    subprocess.run(["make", "install"], cwd=project, check=True, stdout=subprocess.DEVNULL)
    python = environment / "bin" / "python"
    print(f"installed  {project.name} and its dev tools into {environment} (make install)")

    package = project.name
    result = run([str(python), "-m", f"{package}.qq", "drain"], cwd=project)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"drained    python -m {package}.qq drain  ->  {result.stdout.strip()}")
    print(
        f"summary    {summary['succeeded']} of {summary['enqueued']} sample jobs succeeded, "
        f"{summary['failed']} failed, in {summary['seconds']:.2f} s across worker processes"
    )
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
