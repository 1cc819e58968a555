"""`make demo` renders, installs and drains the default project, as the README says."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, TEMPLATE, run
from test_python_versions import interpreter

BASE = sys._base_executable  # this Python outside the template's venv
BASE_DIR = str(Path(BASE).parent)


def test_make_demo(tmp_path: Path) -> None:
    assert shutil.which("make"), "make is needed for the README's commands"
    result = run(["make", "demo", f"DEMO_DIR={tmp_path / 'demo'}"], cwd=TEMPLATE, timeout=900)

    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"summary +100 of 100 sample jobs succeeded, 0 failed", result.stdout)
    project = tmp_path / "demo" / "my_worker"
    # The next steps it printed work from there: `make install` is done, `make test`'s tools
    # are installed.
    assert run(["make", "-q", "install"], cwd=project).returncode == 0
    tools = ("python", "ruff", "mypy", "hadolint", "zizmor", "cruft")
    assert [tool for tool in tools if not (project / ".venv" / "bin" / tool).exists()] == []


def test_the_readme_renders_your_project_from_the_clone(tmp_path: Path) -> None:
    """The README's commands that render from a clone, run in its root as written (answers
    given with --no-input, into a temporary folder in place of `..`), with the tools that
    `make demo` installs in .venv."""
    readme = (TEMPLATE / "README.md").read_text()
    commands = re.findall(r"^\.venv/bin/(cruft create .*|cookiecutter .*)$", readme, re.MULTILINE)
    assert len(commands) == 2, commands
    installed = (TEMPLATE / "requirements-dev.txt").read_text()
    assert re.search(r"^cookiecutter\b", installed, re.M) and re.search(
        r"^cruft\b", installed, re.M
    )
    assert re.search(r"^demo: \$\(BIN\)/\.installed$", (TEMPLATE / "Makefile").read_text(), re.M)

    for number, command in enumerate(commands):
        words = command.split("#")[0].split()
        out = tmp_path / str(number)
        words[words.index("..")] = str(out)
        made = run([str(BIN / words[0]), *words[1:], "--no-input"], cwd=TEMPLATE)
        assert made.returncode == 0, f"{command}\n{made.stdout}{made.stderr}"
        assert (out / "my_worker" / "my_worker" / "qq.py").exists()
        assert (out / "my_worker" / ".cruft.json").exists() == (words[0] == "cruft")

    state = json.loads((tmp_path / "0" / "my_worker" / ".cruft.json").read_text())
    head = run(["git", "rev-parse", "HEAD"], cwd=TEMPLATE).stdout.strip()
    assert (state["template"], state["commit"]) == (str(TEMPLATE), head)


def test_rendered_readme_commands(cookies: Any) -> None:
    """The rendered README's commands, `make install`, `make test`, `make dist`, work as written
    (with `python3`, so the project's minimum Python is python3's version)."""
    python3 = run(["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], TEMPLATE)
    result = cookies.bake(extra_context={"python_version": python3.stdout.strip()})
    project = Path(result.project_path)
    installed = run(["make", "install"], cwd=project, timeout=900)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    tested = run(["make", "test"], cwd=project, timeout=900)
    assert tested.returncode == 0, tested.stdout[-5000:] + tested.stderr[-3000:]
    assert re.search(r"\d+ passed", tested.stdout)
    built = run(["make", "dist"], cwd=project, timeout=900)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert sorted(path.suffix for path in (project / "dist").iterdir()) == [".gz", ".whl"]


def redis_server() -> str:
    """redis-server's path; a missing one fails under CI=true and skips elsewhere."""
    path = shutil.which("redis-server")
    if path is None:
        message = "redis-server is not installed: sudo apt-get install redis-server"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message} (CI=true requires it)")
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"redis-server exited with {process.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            assert time.monotonic() < deadline, f"redis-server not listening after {timeout}s"
            time.sleep(0.01)


def test_the_printed_next_steps_work_in_the_order_printed(tmp_path: Path) -> None:
    """A Redis render's next steps, run one by one as printed, in the folder the render was
    made from. Their Redis step starts a redis-server on a free port, which the render's
    JOBS_REDIS_URL names from the first step on: a step that needs Redis before that fails.
    `make test` runs its linters and only tests/test_qq.py (the whole suite takes minutes;
    test_rendered_readme_commands runs it)."""
    redis = redis_server()
    port = free_port()
    here = tmp_path / "here"
    here.mkdir()
    python3 = run(["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], here)
    answers = ["include_redis_jobs=yes", f"python_version={python3.stdout.strip()}"]
    rendered = run(
        [str(BIN / "cookiecutter"), "--no-input", str(TEMPLATE), *answers], here, PWD=str(here)
    )
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    printed = rendered.stdout.splitlines()
    first = next(i for i, line in enumerate(printed) if line.startswith("Created "))
    steps = [line.strip() for line in printed[first + 1 :] if line.startswith("  ")]
    settings = {
        "MY_WORKER_JOBS_REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "PYTEST_ADDOPTS": "tests/test_qq.py",
    }

    folder, server, ran = here, None, []
    try:
        for step in steps:
            if step.startswith("cd "):
                folder = folder / step.removeprefix("cd ")
            elif step.startswith("docker compose up -d redis"):
                command = [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
                server = subprocess.Popen(
                    [*command, "--appendonly", "no", "--dir", str(tmp_path)],
                    stdout=subprocess.DEVNULL,
                )
                wait_listening(port, server)
            else:
                result = run(["bash", "-c", step], folder, timeout=900, **settings)
                assert result.returncode == 0, (
                    f"{step}\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
                )
                ran.append((step, result.stdout))
    finally:
        if server is not None:
            server.kill()
            server.wait(10)

    assert [step.split()[0] for step, _ in ran] == [
        "git",
        "make",
        "make",
        ".venv/bin/python",
        "make",
    ]
    summary = json.loads(ran[-1][1].strip().splitlines()[-1])
    assert (summary["enqueued"], summary["succeeded"], summary["failed"]) == (1, 1, 0)


def path_with(tmp_path: Path, **pythons: str) -> str:
    """A PATH whose python3, python3.X are the given interpreters (and the system's tools)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, target in pythons.items():
        (folder / name.replace("_", ".")).symlink_to(target)
    return f"{folder}:/usr/local/bin:/usr/bin:/bin"


def test_make_install_names_the_python_it_needs(cookies: Any, tmp_path: Path) -> None:
    if sys.version_info >= (3, 14):
        pytest.skip("this Python is new enough for every python_version")
    project = Path(cookies.bake(extra_context={"python_version": "3.14"}).project_path)
    result = run(
        ["make", "install"], cwd=project, timeout=60, PATH=path_with(tmp_path, python3=BASE)
    )

    assert result.returncode != 0
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert (
        f"error: this project needs Python 3.14+, found: python3 ({running}) "
        "(looked for python3 python3.14): make install PYTHON=/path/to/python3.14, "
        f"or render the project with python_version {running}"
    ) in result.stderr, result.stderr
    assert not (project / ".venv").exists()


def test_make_install_finds_python3_x_and_then_keeps_the_venvs(
    cookies: Any, tmp_path: Path
) -> None:
    """python3 too old: `make install` makes .venv with python3.13 from PATH; after a change to
    pyproject.toml it reinstalls with .venv's Python, without looking for one again."""
    newer = interpreter("3.13")
    project = Path(cookies.bake(extra_context={"python_version": "3.13"}).project_path)
    found = path_with(tmp_path, python3=BASE, python3_13=newer)
    made = run(["make", "venv"], cwd=project, timeout=120, PATH=found)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("python3.13 -m venv .venv   # Python 3.13")
    version = run([str(project / ".venv" / "bin" / "python"), "--version"], cwd=project)
    assert version.stdout.startswith("Python 3.13")

    (project / "pyproject.toml").touch()
    only_python3 = f"{BASE_DIR}:/usr/local/bin:/usr/bin:/bin"
    again = run(["make", "install", "PIP_FLAGS=--dry-run"], project, timeout=600, PATH=only_python3)
    assert again.returncode == 0, again.stdout + again.stderr
    assert ".venv/bin/python -m pip install" in again.stdout
    assert "needs Python" not in again.stderr
