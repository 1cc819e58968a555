"""`make demo`: render the default project, install it in its own venv, drain its sample jobs.

Usage: python tools/demo.py [--output-dir build/demo]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import venv
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
    # The defaults, but supporting the Python running the demo when it is older than the
    # default minimum (the demo installs the project with this Python).
    config = json.loads((TEMPLATE / "cookiecutter.json").read_text())
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    versions = config["python_version"]
    older = [int(part) for part in running.split(".")] < [int(p) for p in versions[0].split(".")]
    answers = {"python_version": running} if running in versions and older else {}
    project = Path(
        cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(output), extra_context=answers)
    )
    print(f"rendered   {project}")

    environment = project / ".venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--quiet", str(project)], check=True)
    print(f"installed  {project.name} into {environment}")

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
