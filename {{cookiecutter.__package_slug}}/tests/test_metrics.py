"""Prometheus metrics, scraped from the parent while a real multi-process drain runs."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from support import Journal, fast_settings, free_port, writer_over

from {{ cookiecutter.__package_slug }}.worker import Worker

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
