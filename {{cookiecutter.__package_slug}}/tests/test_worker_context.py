"""The context: opened once per worker process after the fork, closed when it ends."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from support import Journal, fast_settings, writer_over

from {{ cookiecutter.__package_slug }}.worker import Worker


@pytest.mark.parametrize("recycle_every", [None, 40])
async def test_context_opens_once_per_process_and_closes_with_it(
    journal: Journal, recycle_every: int | None
) -> None:
    async def context() -> AsyncIterator[dict[str, int]]:
        journal.add("open", os.getpid())
        yield {"pid": os.getpid()}
        journal.add("close", os.getpid())

    async def reader(item: int, ctx: dict[str, int]) -> None:
        journal.add("item", os.getpid(), ctx["pid"])

    settings = fast_settings(max_jobs_per_process=recycle_every)
    worker = Worker(
        "t", reader=reader, writer=writer_over(range(400)), context=context, settings=settings
    )
    summary = await worker.drain()

    rows = journal.rows()
    opened = Counter(pid for kind, pid, *_ in rows if kind == "open")
    closed = Counter(pid for kind, pid, *_ in rows if kind == "close")
    used = {(pid, ctx_pid) for kind, pid, *rest in rows if kind == "item" for ctx_pid in rest}
    assert summary.succeeded == 400
    assert set(opened.values()) == {1}  # once per process
    assert opened == closed  # and closed in that same process
    assert all(pid == ctx_pid for pid, ctx_pid in used)  # made in the process that uses it
    assert str(os.getpid()) not in opened  # never in the parent
    if recycle_every:
        assert len(opened) >= 400 // recycle_every


async def test_plain_sync_generator_and_async_contexts_all_work(journal: Journal) -> None:
    def plain(settings: Any) -> dict[str, str]:
        return {"kind": "plain"}

    def generator() -> Iterator[dict[str, str]]:
        yield {"kind": "generator"}
        journal.add("closed", "generator")

    async def coroutine() -> dict[str, str]:
        return {"kind": "coroutine"}

    async def reader(item: int, ctx: dict[str, str]) -> None:
        journal.add("used", ctx["kind"])

    for context in (plain, generator, coroutine):
        worker = Worker(
            "t",
            reader=reader,
            writer=writer_over(range(10)),
            context=context,
            settings=fast_settings(num_processes=1),
        )
        assert (await worker.drain()).succeeded == 10

    assert journal.column(1) == Counter({"plain": 10, "generator": 11, "coroutine": 10})


async def test_reader_gets_the_settings_object(journal: Journal) -> None:
    async def reader(item: int, settings: Any) -> None:
        journal.add(type(settings).__name__, settings.max_queue_size)

    settings = fast_settings(max_queue_size=77)
    worker = Worker("t", reader=reader, writer=writer_over(range(5)), settings=settings)
    await worker.drain()

    assert journal.rows() == [["Settings", "77"]] * 5
