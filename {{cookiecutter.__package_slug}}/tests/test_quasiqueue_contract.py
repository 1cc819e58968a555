"""What this project relies on in quasiqueue: fails loudly when an upgrade changes it.

The worker runtime replaces quasiqueue's process loop but keeps its Settings, its constructor
and the way it calls writer, reader and context. If one of these tests fails after upgrading
quasiqueue, read its changelog before widening the `quasiqueue>=0.7,<0.8` pin.
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
from typing import Any

import quasiqueue
from packaging.version import Version
from quasiqueue.reader import reader_runner

from {{ cookiecutter.__package_slug }}.settings import Settings
from {{ cookiecutter.__package_slug }}.worker import Worker

QUASIQUEUE_FIELDS = {
    "num_processes",
    "max_queue_size",
    "prevent_requeuing_time",
    "empty_queue_sleep_time",
    "full_queue_sleep_time",
    "full_queue_sleep_min",
    "full_queue_sleep_max",
    "queue_interaction_timeout",
    "graceful_shutdown_timeout",
    "lookup_block_size",
    "max_jobs_per_process",
    "concurrent_tasks_per_process",
}


def test_version_is_in_the_tested_range() -> None:
    assert Version("0.7") <= Version(quasiqueue.__version__) < Version("0.8")


def test_settings_fields_are_the_ones_documented() -> None:
    assert set(quasiqueue.Settings.model_fields) == QUASIQUEUE_FIELDS
    assert issubclass(Settings, quasiqueue.Settings)


def test_worker_takes_the_quasiqueue_constructor() -> None:
    ours = inspect.signature(Worker).parameters.values()
    positional = [p.name for p in ours if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    theirs = list(inspect.signature(quasiqueue.QuasiQueue).parameters)
    assert positional == theirs == ["name", "reader", "writer", "context", "settings"]
    # Our additions are keyword-only, so calls written for QuasiQueue keep their meaning.
    added = [p.name for p in ours if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert added == ["source", "tracing"]


def _run_stock_reader(results: Any) -> None:
    queue: Any = multiprocessing.get_context("fork").Queue()
    for item in ("job-1", "close"):
        queue.put(item)

    def context(settings: dict[str, Any]) -> dict[str, str]:
        return {"made": "in context"}

    def reader(item: str, ctx: dict[str, str], settings: dict[str, Any]) -> None:
        results.put((item, ctx, settings["queue_interaction_timeout"]))

    event = multiprocessing.get_context("fork").Event()
    stock_reader: Any = reader  # quasiqueue annotates a narrower signature than it calls
    stock_context: Any = context
    settings = {"queue_interaction_timeout": 1.0}
    asyncio.run(reader_runner(queue, event, stock_reader, stock_context, settings))


def test_stock_quasiqueue_passes_item_ctx_and_settings_to_the_reader() -> None:
    fork = multiprocessing.get_context("fork")
    results: Any = fork.Queue()
    process = fork.Process(target=_run_stock_reader, args=(results,))
    process.start()
    try:
        assert results.get(timeout=10) == ("job-1", {"made": "in context"}, 1.0)
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
    assert process.exitcode == 0
