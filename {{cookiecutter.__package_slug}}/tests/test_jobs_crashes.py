"""Redis jobs when a job kills its worker process, and when one instance runs many at once:
the crash costs that job alone, and a second instance still gets its share. Real
redis-server."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs_support import instances, jobs_worker, new_stream, settings_for, wait_until
from servers import Server, running
from support import Journal

from {{ cookiecutter.__package_slug }}.sources import redis_jobs as jobs_module
from {{ cookiecutter.__package_slug }}.sources.redis_jobs import Job, Jobs


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running("redis", tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.mark.timeout(120)
@pytest.mark.parametrize("always", [False, True], ids=["crashes once", "crashes every time"])
async def test_a_job_that_kills_its_process_costs_only_itself(
    server: Server,
    journal: Journal,
    tmp_path: Path,
    always: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)
    stream = new_stream()
    settings = settings_for(server.port, stream, jobs_max_attempts=2)
    with Jobs(settings) as jobs:
        jobs.submit_many(range(200))
    marker = tmp_path / "crashed"

    async def reader(item: Job) -> None:
        if item.payload == 7 and (always or not marker.exists()):
            marker.touch()
            os._exit(7)
        await asyncio.sleep(0.02)
        journal.add(item.payload)

    summary = await jobs_worker(settings, reader).drain()

    expected = [n for n in range(200) if not (always and n == 7)]
    assert sorted(int(row[0]) for row in journal.rows()) == expected  # each once
    # A job that crashed its process alone fails; the log names it by its id.
    lost = [record.getMessage() for record in caplog.records if " failed: " in record.getMessage()]
    assert len(lost) == (2 if always else 0), lost
    assert all(re.search(r"\] item \d+-\d+ failed: ", line) for line in lost), lost
    with Jobs(settings) as jobs:
        dead = jobs.dead_list(10)
        assert jobs.stats() == jobs_module.JobStats(stream, 0, 0, len(dead))
    if always:  # once per attempt (JOBS_MAX_ATTEMPTS=2), then it is a dead letter
        assert summary.failed == 2
        [letter] = dead
        assert letter.payload == "7"
        assert "crashes its process" in letter.error
    else:
        assert (summary.failed, dead) == (0, [])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_second_instance_started_later_gets_its_share(server: Server, journal: Journal) -> None:
    """The first instance runs 2 x 100 jobs at once and holds only a few it has not started
    (one per slot, at most 32 a process, and one fetch): the rest wait in the stream."""
    stream = new_stream()
    with Jobs(settings_for(server.port, stream)) as jobs:
        jobs.submit_many(range(3000))
    options = ("--tasks", "100", "--work-ms", "1000")
    with instances(server.port, stream, journal) as start:
        first = start("first", "drain", *options)
        wait_until(lambda: journal.column(0)["ran"] >= 1, 30, "the first job to run")
        began = time.monotonic()
        wait_until(lambda: time.monotonic() >= began + 2, 5, "2 s of the first instance")
        second = start("second", "drain", *options)
        assert first.wait(90) == 0
        assert second.wait(90) == 0
    ran = Counter(row[2] for row in journal.rows() if row[0] == "ran")
    assert sum(ran.values()) == 3000
    assert ran["second"] >= 1000, ran
