"""What holds for any `qq.py`: keep this file when you rewrite `qq.py` (rewrite test_qq.py).

The runtime accepts the functions `qq.runner` was built from, the command line starts, and a
small drain runs the reader and the context in real worker processes on items from an
in-memory test source: the context opens and closes in each process, and every item ends
exactly once. The items are probes, not yours, so whether the reader succeeds on them is not
checked here; tests/test_qq.py checks what the reader does with real items.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from support import Journal

from {{ cookiecutter.__package_slug }} import qq
from {{ cookiecutter.__package_slug }}.worker import Outcome, Source, Worker
from {{ cookiecutter.__package_slug }}.worker.calls import open_context

PROJECT = Path(__file__).resolve().parents[1]
PREFIX = "{{ cookiecutter.__env_prefix }}"
PROBES = [f"probe-{number}" for number in range(6)]


class Probes(Source):
    """A few items from memory, keeping the outcome the runtime settles for each."""

    def __init__(self, items: list[str]) -> None:
        self.unsent = list(items)
        self.outcomes: list[tuple[Any, Outcome]] = []

    async def fetch(self, desired: int, wait: float) -> AsyncIterator[str]:
        while self.unsent and desired > 0:
            desired -= 1
            yield self.unsent.pop(0)

    def settle(self, item: Any, outcome: Outcome, error: str | None) -> None:
        self.outcomes.append((item, outcome))


def test_the_runtime_accepts_the_functions_of_qq() -> None:
    runner = qq.runner
    assert isinstance(runner, Worker)
    assert callable(runner.reader)
    assert isinstance(runner.source, Source)
    # Building a Worker checks each function's parameters: these are accepted.
    Worker("contract", reader=runner.reader, context=runner.context, source=Probes([]))


async def test_a_drain_runs_the_reader_and_context_in_worker_processes(tmp_path: Path) -> None:
    runner = qq.runner
    journal = Journal(tmp_path / "contexts.tsv")

    async def context(settings: Any) -> AsyncIterator[Any]:
        """qq's context, noting in the journal when it opened and closed, and where."""
        async with AsyncExitStack() as stack:
            ctx = await open_context(stack, runner.context, settings)
            journal.add("opened", os.getpid())
            yield ctx
        journal.add("closed", os.getpid())

    settings = runner.settings.model_copy(
        update={
            "num_processes": 2,
            "max_retries": 0,
            "reader_timeout": 30.0,
            "empty_queue_sleep_time": 0.05,
            "metrics_port": 0,
        }
    )
    probes = Probes(PROBES)
    worker = Worker(
        "contract", reader=runner.reader, context=context, settings=settings, source=probes
    )
    summary = await worker.drain()

    assert summary.enqueued == len(PROBES)
    assert summary.succeeded + summary.failed == len(PROBES)
    assert sorted(item for item, _ in probes.outcomes) == sorted(PROBES)  # each ended once
    assert {outcome for _, outcome in probes.outcomes} <= {Outcome.SUCCEEDED, Outcome.FAILED}
    opened, closed = journal.column(0)["opened"], journal.column(0)["closed"]
    assert opened >= 1
    assert opened == closed
    assert str(os.getpid()) not in journal.column(1)  # in worker processes, not this one


def test_the_command_line_starts() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(PREFIX)}
    result = subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.__package_slug }}.qq", "--help"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    listed = set(re.findall(r"^│ (\w+)\s", result.stdout, re.MULTILINE))
    assert {"serve", "drain", "health"} <= listed
