"""The command line: JSON logs from every process, and a progress bar only on a terminal."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from support import free_port

from {{ cookiecutter.__package_slug }}.worker.metrics import probe

PROJECT = Path(__file__).resolve().parents[1]
PREFIX = "{{ cookiecutter.__env_prefix }}"
APP = Path(__file__).with_name("worker_app.py")


def clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX) and k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(APP.parent), str(PROJECT)])
    return env | {f"{PREFIX}{name}": value for name, value in settings.items()}


def command(tmp_path: Path) -> list[str]:
    """Drain 100 items with the worker of worker_app.py, configured by the environment."""
    return [sys.executable, str(APP), str(tmp_path / "journal.tsv"), "drain"]


def test_json_logs_come_from_parent_and_worker_processes(tmp_path: Path) -> None:
    result = subprocess.run(
        command(tmp_path),
        cwd=PROJECT,
        env=clean_env(LOG_FORMAT="json", LOG_LEVEL="INFO"),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert {"time", "level", "process", "logger", "message"} <= set(entries[0])
    workers = {entry["process"] for entry in entries if entry["message"].endswith(" done")}
    assert len(workers) >= 1
    assert all("-worker-" in name for name in workers)


def test_serve_says_in_one_line_what_it_serves_and_how(tmp_path: Path) -> None:
    port = free_port()
    settings = {"NUM_PROCESSES": "3", "METRICS_PORT": str(port), "LOG_LEVEL": "INFO"}
    serve = subprocess.Popen(
        [sys.executable, str(APP), str(tmp_path / "journal.tsv"), "listen"],
        cwd=PROJECT,
        env=clean_env(**settings),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stderr is not None
        first = serve.stderr.readline()  # bounded by the test's timeout
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=30)
    assert first.rstrip().endswith(
        "[app] serving WriterSource(writer='main.<locals>.writer'): 3 processes, 16 to 5000"
        f" reader slots a process, adapting, metrics at http://127.0.0.1:{port}/metrics"
    ), first


def test_drain_without_metrics_names_the_setting_that_turns_them_on(tmp_path: Path) -> None:
    result = subprocess.run(
        command(tmp_path),
        cwd=PROJECT,
        env=clean_env(LOG_LEVEL="INFO", METRICS_PORT="0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    first = result.stderr.splitlines()[0]
    assert first.endswith(
        f"reader slots a process, adapting, no metrics ({PREFIX}METRICS_PORT is 0)"
    )


def test_help_lists_each_command_on_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.__package_slug }}.qq", "--help"],
        cwd=PROJECT,
        env=clean_env() | {"COLUMNS": "200"},  # wide enough for any command's summary
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    panel = result.stdout.split("Commands")[1].split("╰")[0]
    rows = [line for line in panel.splitlines()[1:] if line.startswith("│")]
    assert rows, result.stdout
    broken = [row for row in rows if not re.match(r"│ \w+ +\S", row)]
    assert broken == [], result.stdout


def test_each_command_says_what_its_arguments_are() -> None:
    # Each argument in a command's usage line is named in the text above its panels (typer
    # 0.25 under click 8.5 drops an argument's own help=, so the docstring must say it).
    script = "\n".join(
        [
            "import sys",
            "from {{ cookiecutter.__package_slug }}.qq import runner",
            "for words in sys.argv[1:]:",
            "    try:",
            "        runner.cli([*words.split(), '--help'])",
            "    except SystemExit:",
            "        print('\\f', flush=True)",
        ]
    )

    def helps(*commands: str) -> list[str]:
        result = subprocess.run(
            [sys.executable, "-c", script, *commands],
            cwd=PROJECT,
            env=clean_env() | {"COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.split("\f")[:-1]

    def listed(text: str) -> list[str]:
        return re.findall(r"^│ (\w+)\s", text.split("Commands")[-1], re.MULTILINE)

    [top] = helps("")
    named = listed(top)
    texts = helps(*named)
    groups = [name for name, text in zip(named, texts, strict=True) if "COMMAND" in text]
    commands = [name for name in named if name not in groups]
    for group, text in zip(groups, helps(*groups), strict=True):
        commands += [f"{group} {name}" for name in listed(text)]
    undescribed = []
    for command, text in zip(commands, helps(*commands), strict=True):
        usage, _, rest = text.partition("Usage: ")[2].partition("\n")
        above = rest.split("╭")[0]
        names = re.findall(r"[A-Z][A-Z_]+", usage.split("[OPTIONS]")[-1])
        undescribed += [f"{command} {name}" for name in names if name not in above]
    assert "serve" in commands
    assert undescribed == []


def test_no_progress_bar_in_a_pipe(tmp_path: Path) -> None:
    result = subprocess.run(
        command(tmp_path),
        cwd=PROJECT,
        env=clean_env(LOG_LEVEL="WARNING"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert result.stderr == ""


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(
        command(tmp_path),
        cwd=PROJECT,
        env=clean_env(LOG_LEVEL="WARNING"),
        stdout=subprocess.PIPE,
        stderr=terminal,
    )
    os.close(terminal)
    shown = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed: the command has exited
                break
            if not chunk:
                break
            shown += chunk
    os.close(controller)
    assert process.wait(10) == 0
    assert process.stdout is not None
    assert json.loads(process.stdout.read())["succeeded"] == 100
    assert b"100/100" in shown
    assert b"item/s" in shown


def test_health_check_follows_the_metrics_server(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(METRICS_PORT=str(port), METRICS_HOST="0.0.0.0", LOG_LEVEL="WARNING")
    journal = str(tmp_path / "journal.tsv")

    def health(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(APP), journal, "health"],
            cwd=PROJECT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )

    down = health(env)
    assert down.returncode == 1
    assert down.stderr.startswith(f"unhealthy: no answer from http://127.0.0.1:{port}/metrics")

    server = subprocess.Popen([sys.executable, str(APP), journal, "listen"], cwd=PROJECT, env=env)
    try:
        deadline = time.monotonic() + 30
        while probe("127.0.0.1", port) is not None:
            assert server.poll() is None, "the worker exited"
            assert time.monotonic() < deadline, "the metrics server never answered"
            time.sleep(0.05)
        up = health(env)
        assert (up.returncode, up.stderr) == (0, "")
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0

    off = health(clean_env(METRICS_PORT="0"))
    assert off.returncode == 1
    assert off.stderr.strip() == (
        f"unhealthy: {PREFIX}METRICS_PORT is 0: the health check needs the metrics server"
    )


def test_a_bad_setting_is_one_line_naming_the_variable_and_the_rule() -> None:
    cases = {
        "NUM_PROCESSES": ("-1", f"{PREFIX}NUM_PROCESSES='-1': Input should be greater than"),
        "LOG_LEVEL": (
            "verbose",
            f"{PREFIX}LOG_LEVEL='verbose': Input should be DEBUG, INFO, WARNING, ERROR or CRITICAL",
        ),
    }
    for name, (value, expected) in cases.items():
        result = subprocess.run(
            [sys.executable, "-m", "{{ cookiecutter.__package_slug }}.qq", "--help"],
            cwd=PROJECT,
            env=clean_env(**{name: value}),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr
        assert result.stderr.startswith(f"error: {expected}"), result.stderr


def test_usage_names_the_command_as_it_was_run() -> None:
    module = "{{ cookiecutter.__package_slug }}.qq"
    script = "; ".join(
        [
            "import sys",
            "sys.argv = ['/venv/bin/my-tool', '--help']",  # as a console script runs it
            f"from {module} import runner",
            "runner.cli()",
        ]
    )
    runs = {
        f"Usage: python -m {module}": [sys.executable, "-m", module, "--help"],
        "Usage: my-tool": [sys.executable, "-c", script],
    }
    for usage, command in runs.items():
        result = subprocess.run(
            command, cwd=PROJECT, env=clean_env(), capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert usage in result.stdout, result.stdout
