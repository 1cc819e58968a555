"""The spool-fed worker: every record processed, batches acked only when all succeeded."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from support import Journal, fast_settings, kill_session

from {{ cookiecutter.__package_slug }}.spool import Consumer, Producer
from {{ cookiecutter.__package_slug }}.spool_source import SpoolItem, SpoolWorker

KEYS = [f"k-{n:03d}" for n in range(400)]


def fill(root: Path) -> None:
    with Producer(root, max_records=10) as producer:
        for key in KEYS:
            producer.put(f"payload of {key}", key=key)


def spool_is_empty(root: Path) -> bool:
    with Consumer(root) as consumer:
        return consumer.claim(timeout=0) is None


async def test_every_record_is_processed_and_every_batch_acked(
    tmp_path: Path, journal: Journal
) -> None:
    fill(tmp_path / "spool")

    async def reader(item: SpoolItem) -> None:
        assert item.data == f"payload of {item.key}"
        journal.add(item.key)

    worker = SpoolWorker("t", reader, tmp_path / "spool", settings=fast_settings())
    summary = await worker.drain()

    assert journal.column(0) == Counter(KEYS)
    assert summary.succeeded == 400
    assert spool_is_empty(tmp_path / "spool")


async def test_a_failed_record_redelivers_its_batch(tmp_path: Path, journal: Journal) -> None:
    fill(tmp_path / "spool")
    marker = tmp_path / "failed-once"

    async def reader(item: SpoolItem) -> None:
        journal.add(item.key, item.attempt)
        if item.key == "k-013" and not marker.exists():
            marker.touch()
            raise RuntimeError("first try fails")

    worker = SpoolWorker("t", reader, tmp_path / "spool", settings=fast_settings())
    summary = await worker.drain()

    seen = journal.column(0)
    batch = {f"k-{n:03d}" for n in range(10, 20)}  # the batch of k-013, 10 records a batch
    assert {key for key, count in seen.items() if count == 2} == batch
    assert all(seen[key] == 1 for key in KEYS if key not in batch)
    assert ["k-013", "1"] in journal.rows()  # delivered again, as attempt 1
    assert (summary.failed, summary.succeeded) == (1, 409)
    assert spool_is_empty(tmp_path / "spool")


SERVE = """
import asyncio, os, sys, time
sys.path[:0] = [sys.argv[3], sys.argv[4]]
from support import Journal, fast_settings, kill_session
from {{ cookiecutter.__package_slug }}.spool_source import SpoolWorker

journal = Journal(__import__("pathlib").Path(sys.argv[2]))

async def reader(item):
    journal.add(item.key)
    await asyncio.sleep(0.01)

worker = SpoolWorker("t", reader, sys.argv[1], settings=fast_settings(num_processes=2))
asyncio.run(worker.drain())
"""


def test_a_killed_worker_loses_nothing(tmp_path: Path, journal: Journal) -> None:
    root = tmp_path / "spool"
    fill(root)
    tests = Path(__file__).parent
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(root), str(journal.path), str(tests), os.getcwd()],
        start_new_session=True,  # its worker processes share its process group
    )
    deadline = time.monotonic() + 30
    while sum(journal.column(0).values()) < 100:
        assert time.monotonic() < deadline
        assert process.poll() is None
        time.sleep(0.01)
    kill_session(process)  # the parent holds claimed batches, its children items in flight
    first = Counter(journal.column(0))

    async def reader(item: SpoolItem) -> None:
        journal.add(item.key)

    worker = SpoolWorker("t", reader, root, settings=fast_settings())  # recovers first
    asyncio.run(worker.drain())

    seen = journal.column(0)
    assert set(seen) == set(KEYS)  # nothing lost
    again = {key for key in KEYS if seen[key] > first[key] > 0}
    assert again  # the killed worker's unfinished batches were delivered again
    assert all(seen[key] - first[key] <= 1 for key in KEYS)
    assert spool_is_empty(root)
