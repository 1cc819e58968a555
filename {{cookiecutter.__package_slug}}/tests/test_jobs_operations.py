"""Operating Redis jobs against a real redis-server: dead letters you can act on, delayed jobs."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from jobs_support import (
    PROJECT,
    acks,
    instances,
    jobs_worker,
    new_stream,
    settings_for,
    wait_until,
)
from servers import Server, running
from support import Journal, at_once_in_two_processes, free_port

from {{ cookiecutter.__package_slug }}.settings import Settings
from {{ cookiecutter.__package_slug }}.sources.redis_jobs import (
    Job,
    Jobs,
    JobsError,
    JobStats,
)
from {{ cookiecutter.__package_slug }}.worker import Permanent


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running("redis", tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def stream() -> str:
    return new_stream()


def _replay(settings: Settings, ids: list[str]) -> int:
    """Replay `ids` with a client of this process."""
    with Jobs(settings) as jobs:
        return jobs.dead_replay(ids)


async def test_dead_letters_listed_replayed_once_from_two_processes_and_purged(
    server: Server, stream: str, journal: Journal
) -> None:
    settings = settings_for(server.port, stream)
    with Jobs(settings) as jobs:
        submitted = jobs.submit_many([{"n": n} for n in range(50)], [f"k{n}" for n in range(50)])

    def bury(item: Job) -> None:
        raise Permanent(f"no good: {item.payload['n']}")

    buried = await jobs_worker(settings, bury).drain()
    assert buried.failed == 50

    with Jobs(settings) as jobs:
        letters = jobs.dead_list(100)
        assert jobs.stats() == JobStats(stream, 0, 0, 50)
    assert {letter.job for letter in letters} == set(submitted)
    assert all("no good: " in letter.error and letter.attempts == 1 for letter in letters)
    assert all(datetime.fromisoformat(letter.when).tzinfo is not None for letter in letters)

    # Two operators replay the same 20 at once: each dead letter goes back exactly once.
    chosen = [letter.id for letter in letters[:20]]
    assert sum(at_once_in_two_processes(lambda: _replay(settings, chosen))) == 20

    def record(item: Job) -> None:
        journal.add(item.id, item.key, item.attempt)

    replayed = await jobs_worker(settings, record).drain()
    assert (replayed.succeeded, replayed.failed) == (20, 0)
    rows = journal.rows()
    assert Counter(row[0] for row in rows) == Counter({letter.job: 1 for letter in letters[:20]})
    keys = {letter.job: f"k{submitted.index(letter.job)}" for letter in letters[:20]}
    assert {row[0]: row[1] for row in rows} == keys  # job id and key kept
    assert {row[2] for row in rows} == {"1"}  # attempts reset

    with Jobs(settings) as jobs:
        assert jobs.dead_purge([letters[20].id]) == 1
        assert jobs.dead_purge(None, older_than=3600) == 0  # none is an hour old
        assert jobs.dead_purge(None) == 29
        assert jobs.stats() == JobStats(stream, 0, 0, 0)
        assert jobs.dead_replay(None) == 0
    assert len(acks(server.port, stream)) == 20


def test_commands_name_the_url_when_redis_is_down(stream: str) -> None:
    prefix = "{{ cookiecutter.__env_prefix }}"
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    env = {key: value for key, value in os.environ.items() if not key.startswith(prefix)}
    env |= {"PYTHONPATH": str(PROJECT), f"{prefix}JOBS_REDIS_URL": url}
    for args in (
        ["submit", "1"],
        ["stats"],
        ["dead", "list"],
        ["status", "1-0"],
        ["cancel", "1-0"],
    ):
        command = [sys.executable, "-m", "{{ cookiecutter.__package_slug }}.qq", *args]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, (args, result.stderr)
        [line] = result.stderr.splitlines()
        assert line.startswith("error: "), line
        assert f"Redis at {url} ({prefix}JOBS_REDIS_URL)" in line, line


def test_dead_letter_commands(server: Server, stream: str) -> None:
    prefix = "{{ cookiecutter.__env_prefix }}"
    env = {key: value for key, value in os.environ.items() if not key.startswith(prefix)}
    env |= {
        "PYTHONPATH": str(PROJECT),
        f"{prefix}JOBS_REDIS_URL": f"redis://127.0.0.1:{server.port}/0",
        f"{prefix}JOBS_STREAM": stream,
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "{{ cookiecutter.__package_slug }}.qq", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)

    with Jobs(settings_for(server.port, stream)) as jobs:
        for n in range(3):  # dead letters as the worker writes them
            jobs.client.xadd(
                jobs.dead, {"job": f"j{n}", "payload": str(n), "attempts": 3, "error": f"e{n}"}
            )

    listed = run("dead", "list", "--limit", "2")
    assert listed.returncode == 0, listed.stderr
    letters = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(x["job"], x["attempts"], x["error"]) for x in letters] == [
        ("j0", 3, "e0"),
        ("j1", 3, "e1"),
    ]
    assert run("dead", "replay", letters[0]["id"]).stdout.strip() == "replayed 1"
    again = run("dead", "replay", letters[0]["id"])  # replayed already: not a dead letter now
    assert (again.returncode, again.stdout.strip()) == (1, "replayed 0")
    assert again.stderr.strip() == "error: 1 of the ids given are not dead letters (`dead list`)"
    malformed = run("dead", "purge", "not-an-id")
    assert malformed.returncode == 2
    assert malformed.stderr.startswith("error: ")
    assert "dead-letter id 'not-an-id' is not a stream entry id" in malformed.stderr
    assert run("dead", "purge", "--all").stdout.strip() == "purged 2"
    neither = run("dead", "purge")
    assert neither.returncode == 2
    needs = "error: purge needs one of: dead-letter ids, --all, --older-than"
    assert neither.stderr.strip() == needs
    stats = json.loads(run("stats").stdout)
    assert (stats["waiting"], stats["dead"], stats["scheduled"]) == (1, 0, 0)
    delayed = run("submit", "--delay", "60", '"later"')
    assert delayed.returncode == 0, delayed.stderr
    assert json.loads(run("stats").stdout)["scheduled"] == 1
    assert {"dead", "submit", "stats"} <= set(run("--help").stdout.split())


def test_bad_delays_are_refused(server: Server, stream: str) -> None:
    with Jobs(settings_for(server.port, stream)) as jobs:
        with pytest.raises(JobsError, match=r"delay -1 must be a finite number of seconds >= 0"):
            jobs.submit(1, delay=-1)
        with pytest.raises(JobsError, match="must be a timezone-aware datetime"):
            jobs.submit(1, at=datetime(2030, 1, 1))
        with pytest.raises(JobsError, match="give one of the two"):
            jobs.submit(1, delay=1, at=datetime.now(UTC))
        assert jobs.stats().scheduled == 0


@pytest.mark.timeout(120)
def test_delayed_jobs_start_when_due_once_over_two_instances(
    server: Server, stream: str, journal: Journal
) -> None:
    rng = random.Random(7)
    with (
        instances(server.port, stream, journal) as start,
        Jobs(settings_for(server.port, stream)) as jobs,
    ):
        # Idle instances wait EMPTY_QUEUE_SLEEP_TIME (2 s) between fetches unless a job is due.
        for consumer in ("alpha", "beta"):
            start(consumer, "serve", "--idle-sleep", "2")
        wait_until(lambda: journal.column(0)["ready"] == 4, 60, "4 worker processes ready")
        due: dict[str, tuple[float, float]] = {}
        for n in range(200):
            delay = rng.uniform(0.2, 2.0)
            before = time.time()
            job_id = jobs.submit(n, delay=delay)
            assert job_id is not None
            due[job_id] = (before + delay, time.time() + delay)
        assert jobs.stats().scheduled > 0
        wait_until(lambda: journal.column(0)["ran"] >= 200, 30, "200 delayed jobs to run")
        wait_until(lambda: len(acks(server.port, stream)) >= 200, 10, "200 acknowledgements")
        stats = jobs.stats()
    runs = [row for row in journal.rows() if row[0] == "ran"]
    assert Counter(row[1] for row in runs) == Counter(dict.fromkeys(due, 1))
    assert {row[2] for row in runs} == {"alpha", "beta"}  # both instances took some
    lateness = []
    for row in runs:
        earliest, latest = due[row[1]]
        # Redis keeps due times in whole milliseconds (its clock's and the delay's, each cut).
        assert float(row[5]) >= earliest - 0.002, f"job {row[1]} started before it was due"
        lateness.append(float(row[5]) - latest)
    assert max(lateness) < 0.25, sorted(lateness)[-5:]
    assert stats == JobStats(stream, 0, 0, 0, 0)


async def test_jobs_that_fell_due_while_no_worker_ran_run_when_one_starts(
    server: Server, stream: str, journal: Journal
) -> None:
    settings = settings_for(server.port, stream)
    with Jobs(settings) as jobs:
        past = datetime.now(UTC) - timedelta(seconds=5)
        ids = jobs.submit_many(range(10), at=past)
        later = jobs.submit("later", delay=3600)
        assert jobs.stats() == JobStats(stream, 0, 0, 0, 11)  # nothing moves them but a worker

    def record(item: Job) -> None:
        journal.add(item.id)

    summary = await jobs_worker(settings, record).drain()

    assert (summary.succeeded, summary.failed) == (10, 0)
    assert journal.column(0) == Counter(dict.fromkeys(ids, 1))
    with Jobs(settings) as jobs:
        assert jobs.stats() == JobStats(stream, 0, 0, 0, 1)  # the drain does not wait for it
        [member] = cast(list[str], jobs.client.zrange(jobs.scheduled, 0, -1))
        assert json.loads(member)["job"] == later
