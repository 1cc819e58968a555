"""A worker served in a subprocess by test_worker_shutdown.py: `python worker_app.py JOURNAL MODE`.

MODE is `busy` (endless items, each taking a while), `idle` (no items), `stuck` (items that
never finish), `drain` (drain 100 quick items and print the summary), `listen` (serve no
items) or `health` (check a listening one). The last three take their settings from the
environment, like the real command. Everything the worker does is written to the journal.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
from support import Journal, fast_settings

from {{ cookiecutter.__package_slug }}.settings import Settings
from {{ cookiecutter.__package_slug }}.worker import Outcome, Worker, WriterSource


def main(journal: Journal, mode: str) -> None:
    numbers: Iterator[int] = iter(range(100)) if mode == "drain" else itertools.count()

    async def writer(desired: int) -> AsyncIterator[int]:
        if mode not in ("idle", "listen"):
            for number in itertools.islice(numbers, desired):
                yield number

    async def context() -> AsyncIterator[None]:
        journal.add("open", os.getpid())
        yield
        journal.add("close", os.getpid())

    async def reader(item: int) -> None:
        if mode == "drain":
            logging.getLogger("app").info("item %d done", item)
            return
        journal.add("start", item)
        await asyncio.sleep(0.2 if mode == "busy" else 3600)
        journal.add("end", item)

    class AppSource(WriterSource):
        def settle(self, item: Any, outcome: Outcome, error: str | None) -> None:
            if outcome is not Outcome.SUCCEEDED:
                journal.add(outcome.value, item)

    if mode in ("drain", "listen", "health"):  # configured by the environment
        worker = Worker("app", reader=reader, writer=writer, settings=Settings())
        worker.cli(["serve" if mode == "listen" else mode])
    settings = fast_settings(
        max_queue_size=40,
        lookup_block_size=10,
        concurrent_tasks_per_process=3,
        graceful_shutdown_timeout=0.5 if mode == "stuck" else 10.0,
        log_level="INFO",
    )
    source = AppSource(writer, settings)
    worker = Worker("app", reader=reader, context=context, settings=settings, source=source)
    worker.cli(["serve"])


if __name__ == "__main__":
    try:
        main(Journal(Path(sys.argv[1])), sys.argv[2])
    finally:
        me = psutil.Process()
        Journal(Path(sys.argv[1])).add("children", len(me.children(recursive=True)))
