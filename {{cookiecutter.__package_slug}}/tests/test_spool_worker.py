"""The spool-fed worker: every record processed, batches acked only when all succeeded."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from support import Journal, fast_settings, kill_session

from {{ cookiecutter.__package_slug }}.sources.spool import SpoolItem, SpoolSource
from {{ cookiecutter.__package_slug }}.spool import (
    Consumer,
    Producer,
    dead_batches,
    replay_dead,
)
from {{ cookiecutter.__package_slug }}.worker import Permanent, Worker

KEYS = [f"k-{n:03d}" for n in range(400)]


def fill(root: Path) -> None:
    with Producer(root, max_records=10) as producer:
        for key in KEYS:
            producer.put(f"payload of {key}", key=key)


def spool_worker(reader: Any, root: Path, **settings: Any) -> Worker:
    """A worker over the spool folder `root`."""
    values = fast_settings(spool_root=str(root), **settings)
    return Worker("t", reader=reader, source=SpoolSource(values), settings=values)


def spool_worker_with(reader: Any, settings: Any) -> Worker:
    return Worker("t", reader=reader, source=SpoolSource(settings), settings=settings)


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

    worker = spool_worker(reader, tmp_path / "spool")
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

    worker = spool_worker(reader, tmp_path / "spool")
    summary = await worker.drain()

    seen = journal.column(0)
    batch = {f"k-{n:03d}" for n in range(10, 20)}  # the batch of k-013, 10 records a batch
    assert {key for key, count in seen.items() if count == 2} == batch
    assert all(seen[key] == 1 for key in KEYS if key not in batch)
    assert ["k-013", "1"] in journal.rows()  # delivered again, as attempt 1
    assert (summary.failed, summary.succeeded) == (1, 409)
    assert spool_is_empty(tmp_path / "spool")


async def test_a_permanent_failure_dead_letters_its_record_alone_at_once(
    tmp_path: Path, journal: Journal
) -> None:
    """A reader that raises `worker.Permanent` on one record: that record goes to dead/ at once
    (a batch of its own, with its error); its batch-mates succeeded and are acked, not run
    again."""
    root = tmp_path / "spool"
    with Producer(root, max_records=3) as producer:
        for key in ("ok1", "bad", "ok2"):
            producer.put(f"record {key}", key=key)

    async def reader(item: SpoolItem) -> None:
        journal.add(item.key)
        if item.key == "bad":
            raise Permanent("bad cannot be parsed")

    settings = fast_settings(spool_root=str(root), spool_max_attempts=5)
    summary = await spool_worker_with(reader, settings).drain()

    assert journal.column(0) == Counter(["ok1", "bad", "ok2"])  # each ran once
    assert (summary.succeeded, summary.failed) == (2, 1)
    [dead] = dead_batches(root)
    assert dead.failures == 1
    assert "bad: Permanent: bad cannot be parsed" in dead.error
    with Consumer(root, fsync=False) as consumer:  # the dead batch holds the bad record only
        assert consumer.claim(timeout=0) is None
    assert replay_dead(root, [dead.name]) == 1
    with Consumer(root, fsync=False) as consumer:
        batch = consumer.claim(timeout=0)
        assert batch is not None
        assert [(r.key, r.data) for r in batch] == [("bad", "record bad")]
        batch.ack()


async def test_a_corrupt_record_costs_only_itself_and_is_counted_and_logged(
    tmp_path: Path, journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    """A record whose bytes no longer match its checksum (a disk error, a foreign writer):
    its batch-mates run once; it is set aside in corrupt/, logged, and `stats` counts it."""
    root = tmp_path / "spool"
    with Producer(root, max_records=3) as producer:
        for key in ("ok1", "bad", "ok2"):
            producer.put(f"record {key}", key=key)
    [batch] = (root / "ready").iterdir()
    data = batch.read_bytes()
    at = data.index(b"record bad")
    batch.write_bytes(data[:at] + b"RECORD" + data[at + 6 :])  # its crc no longer matches

    async def reader(item: SpoolItem) -> None:
        journal.add(item.key, item.attempt)

    source = SpoolSource(fast_settings(spool_root=str(root)))
    summary = await Worker("t", reader, settings=fast_settings(), source=source).drain()

    assert sorted(journal.rows()) == [["ok1", "0"], ["ok2", "0"]]  # once, no failure before
    assert (summary.succeeded, summary.failed) == (2, 0)
    [set_aside] = (root / "corrupt").iterdir()
    assert b"RECORD bad" in set_aside.read_bytes()
    assert (await source.gauges())["corrupt"] == 1
    warnings = [r.getMessage() for r in caplog.records if "set aside in corrupt/" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"spool batch {batch.name.partition('.')[0]}: ")


SERVE = """
import asyncio, os, sys, time
sys.path[:0] = [sys.argv[3], sys.argv[4]]
from support import Journal, fast_settings, kill_session
from {{ cookiecutter.__package_slug }}.sources.spool import SpoolSource
from {{ cookiecutter.__package_slug }}.worker import Worker

journal = Journal(__import__("pathlib").Path(sys.argv[2]))

async def reader(item):
    journal.add(item.key)
    await asyncio.sleep(0.01)

settings = fast_settings(num_processes=2, spool_root=sys.argv[1])
worker = Worker("t", reader=reader, source=SpoolSource(settings), settings=settings)
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

    worker = spool_worker(reader, root)  # recovers first
    asyncio.run(worker.drain())

    seen = journal.column(0)
    assert set(seen) == set(KEYS)  # nothing lost
    again = {key for key in KEYS if seen[key] > first[key] > 0}
    assert again  # the killed worker's unfinished batches were delivered again
    assert all(seen[key] - first[key] <= 1 for key in KEYS)
    assert spool_is_empty(root)


async def test_drain_waits_for_a_batch_a_live_consumer_holds(
    tmp_path: Path, journal: Journal
) -> None:
    root = tmp_path / "spool"
    fill(root)
    held = Consumer(root)
    batch = held.claim(timeout=0)  # another live worker holds this batch
    assert batch is not None

    async def reader(item: SpoolItem) -> None:
        journal.add(item.key)

    drain = asyncio.ensure_future(spool_worker(reader, root).drain())
    deadline = time.monotonic() + 30
    while sum(journal.column(0).values()) < len(KEYS) - len(batch):
        assert time.monotonic() < deadline
        assert not drain.done()
        await asyncio.sleep(0.01)
    # Nothing is ready, but a live consumer holds a batch: the drain must not end (a drain
    # that did would end within a few milliseconds of the last record).
    done, _ = await asyncio.wait({drain}, timeout=0.5)
    assert not done
    batch.release()  # that worker stops before finishing it: the batch is ready again
    held.close()
    summary = await asyncio.wait_for(drain, 30)

    assert summary.succeeded == len(KEYS)
    assert journal.column(0) == Counter(KEYS)
    assert spool_is_empty(root)
