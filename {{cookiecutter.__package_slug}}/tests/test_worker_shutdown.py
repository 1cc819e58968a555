"""SIGTERM / SIGINT while serving: finish in-flight items, report the rest, reap, exit 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import Journal

APP = Path(__file__).with_name("worker_app.py")


@pytest.fixture
def serve(journal: Journal) -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(mode: str) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(APP.parent), os.getcwd()])}
        process = subprocess.Popen(
            [sys.executable, str(APP), str(journal.path), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        started.append(process)
        return process

    yield start
    for process in started:  # only reached with a live process if the test failed
        if process.poll() is None:
            process.kill()
            process.wait(10)


def wait_for(journal: Journal, kind: str, count: int, timeout: float = 20.0) -> None:
    """Wait until the journal holds `count` rows of `kind` (bounded)."""
    deadline = time.monotonic() + timeout
    while sum(1 for row in journal.rows() if row[0] == kind) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {count} {kind!r} rows in time: {journal.rows()}")
        time.sleep(0.01)


def rows(journal: Journal, kind: str) -> list[str]:
    return [row[1] for row in journal.rows() if row[0] == kind]


def stopped_summary(stderr: str) -> dict[str, int]:
    line = next(line for line in stderr.splitlines() if "stopped:" in line)
    summary: dict[str, int] = json.loads(line.split("stopped: ", 1)[1])
    return summary


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_in_flight_items_and_reports_the_rest(
    serve: Callable[[str], subprocess.Popen[str]], journal: Journal, signum: int
) -> None:
    process = serve("busy")
    wait_for(journal, "start", 8)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=20)

    assert process.returncode == 0, stderr
    started, ended = rows(journal, "start"), rows(journal, "end")
    assert sorted(started) == sorted(ended)  # every in-flight item finished
    summary = stopped_summary(stderr)
    unstarted = len(rows(journal, "not_started"))
    assert unstarted > 0
    assert summary["not_started"] == unstarted
    assert summary["succeeded"] == len(ended)
    assert summary["enqueued"] == summary["succeeded"] + summary["not_started"]
    assert f"{unstarted} queued item(s) were not started" in stderr
    assert sorted(rows(journal, "open")) == sorted(rows(journal, "close"))
    assert rows(journal, "children") == ["0"]


def test_an_idle_worker_stops_within_two_seconds(
    serve: Callable[[str], subprocess.Popen[str]], journal: Journal
) -> None:
    process = serve("idle")
    wait_for(journal, "open", 2)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=2)
    elapsed = time.monotonic() - sent

    assert process.returncode == 0
    assert elapsed < 2
    assert len(rows(journal, "close")) == 2
    assert rows(journal, "children") == ["0"]


def test_items_still_running_after_the_timeout_are_settled_as_lost(
    serve: Callable[[str], subprocess.Popen[str]], journal: Journal
) -> None:
    process = serve("stuck")
    wait_for(journal, "start", 6)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)

    assert process.returncode == 0, stderr
    summary = stopped_summary(stderr)
    assert sorted(rows(journal, "lost")) == sorted(rows(journal, "start"))
    assert summary["failed"] == len(rows(journal, "start"))
    assert summary["enqueued"] == summary["failed"] + summary["not_started"]
    assert "graceful_shutdown_timeout (0.5s) passed" in stderr
    assert rows(journal, "children") == ["0"]
