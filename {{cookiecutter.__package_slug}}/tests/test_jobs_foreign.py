"""Entries other programs XADD to the stream, whatever bytes they hold, cost one job each:
the good jobs around them run exactly once, the bad ones go to the dead letters with their
reason and their bytes, and no worker stops. Against a real redis-server."""

from __future__ import annotations

import asyncio
import base64
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings, strategies
from jobs_support import instances, jobs_worker, new_stream, settings_for, wait_for, wait_until
from servers import Server, running
from support import Journal

from {{ cookiecutter.__package_slug }}.settings import Settings
from {{ cookiecutter.__package_slug }}.sources import redis_jobs as jobs_module
from {{ cookiecutter.__package_slug }}.sources.redis_jobs import (
    Job,
    Jobs,
    JobsError,
    RedisJobs,
)
from {{ cookiecutter.__package_slug }}.worker import Failure, Outcome, Worker

TEN_MB = 10 * 1024 * 1024
# Entries as another program could write them: fields, and the start of the dead letter's
# error (None: not a bad entry, its job runs).
FOREIGN: dict[str, tuple[dict[bytes, bytes], str | None]] = {
    "not UTF-8": ({b"payload": b'"\xff\xfe"'}, "its payload is not UTF-8 text (4 bytes)"),
    "nested too deep": (
        {b"payload": b"[" * 100_000 + b"]" * 100_000},
        "its payload '[[[[",  # ... is not JSON (RecursionError: ...)
    ),
    "no payload": ({b"data": b"{}"}, "the entry has no payload field"),
    "junk job id": ({b"payload": b"1", b"job": b"\xc3\x28"}, "its field 'job' is not UTF-8"),
    "junk key": ({b"payload": b"1", b"key": b"\xff"}, "its field 'key' is not UTF-8 text"),
    "10 MB of junk": ({b"payload": b"\x80" * TEN_MB}, "its payload is not UTF-8 text"),
    "10 MB of JSON": ({b"payload": b'"' + b"x" * TEN_MB + b'"'}, None),
    "junk elsewhere": ({b"payload": b"2", b"\xff\xfe": b"\x00", b"attempt": b"x"}, None),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running("redis", tmp_path_factory.mktemp("redis")) as server:
        yield server


def raw_client(port: int) -> redis.Redis:
    return redis.Redis(port=port)  # bytes in, bytes out


def add_around(port: int, stream: str, entries: list[dict[bytes, bytes]]) -> list[str]:
    """10 good jobs, the entries, 10 more good jobs; return the entries' ids."""
    with Jobs(settings_for(port, stream)) as jobs:
        jobs.submit_many([{"good": n} for n in range(10)])
        with raw_client(port) as client:
            ids = [client.xadd(stream, fields).decode() for fields in entries]
        jobs.submit_many([{"good": n} for n in range(10, 20)])
    return ids


def dead_by_entry(port: int, stream: str) -> dict[str, dict[str, Any]]:
    """The dead letters by the stream entry named in their error, as `dead list` shows them."""
    with Jobs(settings_for(port, stream)) as jobs:
        letters = jobs.dead_list(100)
    return {letter.error.split()[2]: letter.__dict__ for letter in letters}


async def test_each_foreign_entry_is_one_job_and_the_drain_runs_every_good_job_once(
    server: Server, journal: Journal
) -> None:
    stream = new_stream()
    ids = add_around(server.port, stream, [fields for fields, _ in FOREIGN.values()])
    settings = settings_for(server.port, stream)

    async def reader(item: Job) -> None:
        payload = item.payload
        journal.add(payload["good"] if isinstance(payload, dict) else f"other:{len(str(payload))}")

    summary = await jobs_worker(settings, reader).drain()

    bad = {entry: reason for entry, (_, reason) in zip(ids, FOREIGN.values(), strict=True)}
    assert journal.column(0) == Counter(
        [*map(str, range(20)), f"other:{TEN_MB}", "other:1"]  # the good, then the other two
    )
    assert summary.failed == sum(reason is not None for reason in bad.values())
    dead = dead_by_entry(server.port, stream)
    assert set(dead) == {entry for entry, reason in bad.items() if reason is not None}
    for entry, letter in dead.items():
        reason = bad[entry]
        assert reason is not None
        assert letter["error"].startswith(f"MalformedJob: entry {entry} is not a job: {reason}")
        assert letter["attempts"] == 1  # at once: another attempt would fail the same way
    assert dead[ids[0]]["payload"] == "base64:" + base64.b64encode(b'"\xff\xfe"').decode()
    assert dead[ids[5]]["payload"].endswith(f"... ({TEN_MB} bytes)")
    with Jobs(settings) as jobs:
        assert jobs.stats() == jobs_module.JobStats(stream, 0, 0, len(dead))


async def test_a_dead_letter_keeps_its_bytes_and_is_replayed_as_it_was(
    server: Server, journal: Journal
) -> None:
    stream = new_stream()
    [entry] = add_around(server.port, stream, [{b"payload": b'"\xff\xfe"', b"key": b"k"}])
    settings = settings_for(server.port, stream)

    async def reader(item: Job) -> None:
        journal.add(item.id)

    await jobs_worker(settings, reader).drain()
    with Jobs(settings) as jobs:
        [letter] = jobs.dead_list(10)
        assert jobs.dead_replay([letter.id]) == 1
    with raw_client(server.port) as client:
        [(_, fields)] = client.xrange(stream, "-", "+")
    assert (fields[b"payload"], fields[b"key"]) == (b'"\xff\xfe"', b"k")
    assert fields[b"job"] == entry.encode()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_serving_instance_keeps_serving_past_every_foreign_entry(
    server: Server, journal: Journal
) -> None:
    stream = new_stream()
    with instances(server.port, stream, journal) as start:
        serving = start("alpha", "serve")
        wait_until(lambda: journal.column(0)["ready"] == 2, 60, "2 worker processes ready")
        # Added while it waits on a blocking read: the entries come through that read.
        ids = add_around(server.port, stream, [fields for fields, _ in FOREIGN.values()])
        good = 20 + sum(reason is None for _, reason in FOREIGN.values())
        wait_until(lambda: journal.column(0)["ran"] >= good, 60, f"{good} jobs to run")
        bad = [entry for entry, (_, r) in zip(ids, FOREIGN.values(), strict=True) if r]
        wait_until(
            lambda: len(dead_by_entry(server.port, stream)) == len(bad), 30, "the dead letters"
        )
        assert serving.poll() is None  # still serving
        with Jobs(settings_for(server.port, stream)) as jobs:
            wait_until(lambda: jobs.stats().pending == 0, 30, "nothing pending")
            assert jobs.stats() == jobs_module.JobStats(stream, 0, 0, len(bad))
    ran = Counter(row[1] for row in journal.rows() if row[0] == "ran")
    assert len(ran) == good
    assert set(ran.values()) == {1}
    assert set(dead_by_entry(server.port, stream)) == set(bad)


FIELDS = strategies.dictionaries(
    strategies.sampled_from([b"payload", b"job", b"key", b"attempt", b"traceparent"])
    | strategies.binary(min_size=1, max_size=8),
    strategies.binary(max_size=64)
    | strategies.sampled_from([b"1", b'"x"', b"{}", b"[[[[[[", b"null", b"\xff\xfe"]),
    min_size=1,
    max_size=5,
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(entries=strategies.lists(FIELDS, min_size=1, max_size=4))
def test_any_field_map_ends_as_one_outcome_and_costs_no_good_job(
    server: Server, entries: list[dict[bytes, bytes]]
) -> None:
    stream = new_stream()
    add_around(server.port, stream, entries)
    settings_ = settings_for(server.port, stream, num_processes=1)
    with tempfile.TemporaryDirectory() as folder:
        ran = Journal(Path(folder) / "journal.tsv")

        async def reader(item: Job) -> None:
            if isinstance(item.payload, dict) and "good" in item.payload:
                ran.add("good", item.payload["good"])
            else:
                ran.add("other", "")

        summary = asyncio.run(jobs_worker(settings_, reader).drain())
        rows = ran.rows()
    good = sorted(int(row[1]) for row in rows if row[0] == "good")
    assert good == list(range(20))  # each good job exactly once
    with Jobs(settings_) as jobs:
        dead = len(jobs.dead_list(100))
        assert jobs.stats() == jobs_module.JobStats(stream, 0, 0, dead)
    others = sum(row[0] == "other" for row in rows)
    assert others + dead == len(entries)  # each foreign entry: ran once, or a dead letter
    assert summary.failed == dead


def test_submit_refuses_what_it_cannot_store_with_jobs_error(server: Server) -> None:
    with Jobs(settings_for(server.port, new_stream())) as jobs:
        with pytest.raises(JobsError, match=r"key '\\udc80' cannot be stored: it is not valid"):
            jobs.submit(1, key="\udc80")
        deep: Any = []
        for _ in range(100_000):  # past every supported Python's JSON encoder depth
            deep = [deep]
        with pytest.raises(JobsError, match=r"cannot be stored as JSON \(maximum recursion"):
            jobs.submit(deep)
        assert jobs.stats().waiting == 0


@pytest.mark.timeout(60)
class SettledJobs(RedisJobs):
    """`RedisJobs` keeping how each job was settled (in the parent)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, consumer="c")
        self.settled: list[tuple[Outcome, Failure | None]] = []

    def settle(self, item: Any, outcome: Outcome, error: Failure | None) -> None:
        self.settled.append((outcome, error))
        super().settle(item, outcome, error)


async def test_a_run_whose_entry_vanished_with_a_redis_restart_says_so(
    tmp_path: Path, journal: Journal
) -> None:
    flag = tmp_path / "go"
    for folder in ("r1", "r2"):
        (tmp_path / folder).mkdir()
    with running("redis", tmp_path / "r1") as first:
        port = first.port
        stream = new_stream()
        settings = settings_for(port, stream, num_processes=1)
        with Jobs(settings) as jobs:
            jobs.submit("held")

        async def reader(item: Job) -> None:
            journal.add("started", item.id)
            deadline = time.monotonic() + 30
            while not flag.exists():  # until the test restarted Redis
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)

        source = SettledJobs(settings)
        worker = Worker("t", reader, settings=settings, source=source)
        drain = asyncio.ensure_future(worker.drain())
        await wait_for(lambda: journal.column(0)["started"] == 1, 30, "the job to start")
    with running("redis", tmp_path / "r2", port=port):  # no persistence: the stream is gone
        flag.touch()
        summary = await asyncio.wait_for(drain, 30)
    assert (summary.succeeded, summary.failed) == (0, 1)
    [(outcome, error)] = source.settled
    assert outcome is Outcome.FAILED
    assert "ran, but its stream entry is gone: deleted, or lost when Redis restarted" in str(error)
    assert "another consumer" not in str(error)
