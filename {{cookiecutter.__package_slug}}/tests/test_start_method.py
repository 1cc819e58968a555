"""Worker processes are forked whatever the interpreter's default start method is.

Python 3.14 makes forkserver the default on Linux, and a program may set spawn. The runtime
forks anyway (docs/worker.md), so a reader that cannot be pickled (a closure) still works,
and the worker processes are children of the worker, holding what it had in memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
DRAIN = """
import asyncio, json, multiprocessing, os, sys

multiprocessing.set_start_method(sys.argv[1], force=True)

from {{ cookiecutter.__package_slug }}.settings import Settings
from {{ cookiecutter.__package_slug }}.worker import Worker

parent = os.getpid()
in_memory = {"set": "after start"}  # a spawned or forkserver process would not have this


def make_reader():
    def reader(item):  # a closure: a spawned process could not unpickle it
        assert os.getppid() == parent, "not a child of the worker"
        assert in_memory == {"set": "after start"}, "not forked from the worker"

    return reader


async def writer(desired):
    for item in writer.items[:desired]:
        yield item
    del writer.items[:desired]


writer.items = list(range(20))
settings = Settings(_env_file=None, num_processes=2, log_level="WARNING")
summary = asyncio.run(Worker("t", reader=make_reader(), writer=writer, settings=settings).drain())
print(json.dumps({"default": multiprocessing.get_start_method(), "summary": summary.to_json()}))
"""


@pytest.mark.parametrize("default", ["spawn", "forkserver"])
def test_worker_processes_are_forked_whatever_the_default(default: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", DRAIN, default],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["default"] == default
    summary = json.loads(report["summary"])
    assert (summary["enqueued"], summary["succeeded"]) == (20, 20), result.stderr
