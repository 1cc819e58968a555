"""Prometheus metrics, scraped from the parent while a real multi-process drain runs."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import Journal, fast_settings, free_port, writer_over

from {{ cookiecutter.__package_slug }}.worker import Source, Worker

ITEMS = 200


def samples(text: str) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels or sample.name.endswith("_count")
    }


async def test_counts_from_every_process(journal: Journal, tmp_path: Path) -> None:
    port = free_port()
    scraped = tmp_path / "scraped.txt"

    def scrape() -> str:
        url = f"http://127.0.0.1:{port}/metrics"
        text: str = urllib.request.urlopen(url, timeout=10).read().decode()
        return text

    async def reader(item: int) -> None:
        if item == ITEMS - 1:  # the last item: scrape mid-drain once all others have ended
            deadline = time.monotonic() + 30
            while True:
                page = await asyncio.to_thread(scrape)
                values = samples(page)
                ended = values.get("t_items_succeeded_total", 0) + values.get(
                    "t_items_failed_total", 0
                )
                if ended == ITEMS - 1:
                    break
                assert time.monotonic() < deadline, page
                await asyncio.sleep(0.01)
            # A scrape reads the processes' files one after another, so the page above may
            # have caught an item's outcome but not its duration. Every other item has ended
            # now and nothing more changes: this page is a consistent one.
            scraped.write_text(await asyncio.to_thread(scrape))
            return
        journal.add(item, os.getpid())
        if item % 10 == 0:
            raise ValueError("fails twice")

    settings = fast_settings(
        metrics_port=port, max_retries=1, retry_backoff=0.001, max_jobs_per_process=60
    )
    worker = Worker("t", reader=reader, writer=writer_over(range(ITEMS)), settings=settings)
    summary = await worker.drain()

    assert (summary.succeeded, summary.failed) == (ITEMS - 20, 20)
    values = samples(scraped.read_text())
    assert values["t_items_started_total"] == ITEMS  # the last one is running
    assert values["t_items_succeeded_total"] == ITEMS - 1 - 20
    assert values["t_items_failed_total"] == 20
    assert values["t_items_retried_total"] == 20
    assert values["t_item_duration_seconds_count"] == ITEMS - 1
    assert values["t_worker_process_restarts_total"] >= 2  # recycled every 60 items
    assert "t_queue_depth" in values
    assert len({pid for _, pid in journal.rows()}) >= 3
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ  # cleaned up after the run


class GaugedSource(Source):
    """Three items, and gauges that count what is left (or fail, as an unreachable server)."""

    def __init__(self, broken: bool) -> None:
        self.items = [0, 1, 2]
        self.broken = broken

    async def fetch(self, desired: int, wait: float) -> AsyncIterator[int]:
        while self.items and desired > 0:
            desired -= 1
            yield self.items.pop()

    async def gauges(self) -> dict[str, float]:
        if self.broken:
            raise ConnectionError("the source's server is down")
        return {"waiting": len(self.items), "dead_letters": 7}


@pytest.mark.parametrize("broken", [False, True])
async def test_the_source_gauges_are_read_at_each_scrape(broken: bool, tmp_path: Path) -> None:
    port = free_port()
    scraped = tmp_path / "scraped.txt"

    async def reader(item: int) -> None:  # runs in a worker process: the page goes to a file
        if item == 0:  # the last one handed out
            url = f"http://127.0.0.1:{port}/metrics"
            page = await asyncio.to_thread(urllib.request.urlopen, url, timeout=10)
            scraped.write_bytes(page.read())

    settings = fast_settings(metrics_port=port, num_processes=1)
    summary = await Worker("t", reader, settings=settings, source=GaugedSource(broken)).drain()

    assert summary.succeeded == 3
    values = samples(scraped.read_text())
    assert "t_items_started_total" in values  # a failing source still gets its page
    if broken:
        assert not [name for name in values if name.startswith("t_source_")]
    else:
        assert (values["t_source_waiting"], values["t_source_dead_letters"]) == (0, 7)
