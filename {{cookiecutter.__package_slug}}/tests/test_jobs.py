"""Jobs in a Redis stream against a real redis-server: sharing, claims, dead letters, outages,
bounded leases and pick-up time."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from jobs_support import (
    INSTANCE,
    PROJECT,
    acks,
    client_for,
    instances,
    jobs_worker,
    new_stream,
    settings_for,
    wait_for,
    wait_until,
)
from pydantic import ValidationError
from servers import Server, running
from support import Journal, fast_settings, free_port, kill_session

from {{ cookiecutter.__package_slug }}.settings import Settings
from {{ cookiecutter.__package_slug }}.sources import redis_jobs as jobs_module
from {{ cookiecutter.__package_slug }}.sources.redis_jobs import (
    Delivery,
    Job,
    JobLost,
    Jobs,
    JobsError,
    RedisJobs,
    dead_name,
    starts_name,
)
from {{ cookiecutter.__package_slug }}.worker import Permanent


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running("redis", tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def stream() -> str:
    return new_stream()


# ---- clients ---------------------------------------------------------------------------------
def test_both_clients_are_built_without_a_warning() -> None:
    """redis-py 8.2 warns when an asyncio client gets a sync `Retry`: each gets its own kind."""
    settings = settings_for(free_port(), new_stream())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sync_client = jobs_module.connect(settings)
        async_client = jobs_module.connect_async(settings)
    sync_client.close()
    asyncio.run(async_client.aclose())


# ---- submitting -------------------------------------------------------------------------------
def test_submit_keys_counts_and_bad_input(server: Server, stream: str) -> None:
    settings = settings_for(server.port, stream)
    with Jobs(settings) as jobs:
        first = jobs.submit({"order": 1}, key="order-1")
        assert first is not None
        assert jobs.submit({"order": 1}, key="order-1") is None  # same key: not added again
        ids = jobs.submit_many(["a", "b", "a"], keys=[None, "k", "k"])
        assert [job_id is None for job_id in ids] == [False, False, True]
        assert jobs.stats() == jobs_module.JobStats(stream, waiting=3, pending=0, dead=0)
        with client_for(server.port) as client:
            fields = client.xrange(stream, first, first)[0][1]
        assert fields == {"payload": '{"order":1}', "key": "order-1"}

        with pytest.raises(JobsError, match=r"payload <object .*> cannot be stored as JSON"):
            jobs.submit(object())
        with pytest.raises(JobsError, match="key '' must be a non-empty str"):
            jobs.submit(1, key="")
        with pytest.raises(JobsError, match="2 keys for 1 payloads"):
            jobs.submit_many([1], keys=["a", "b"])
    assert jobs_module.submit("module-level", settings=settings) is not None
    secret = settings_for(server.port, stream, jobs_password="hunter2")
    assert "hunter2" not in repr(secret)
    refused = {
        "redis://:hunter2@127.0.0.1:1/0": "move it to JOBS_PASSWORD",
        "redis://127.0.0.1:1/0?password=hunter2": "move it to JOBS_PASSWORD",
        "ftp://user:hunter2@example/": "move it to JOBS_PASSWORD",
        "http://example": "has scheme 'http'",
        "redis://127.0.0.1:99999/0": "is not a valid URL",
        "redis://127.0.0.1:6379/x": "names database 'x': use a number",
    }
    for url, rule in refused.items():
        with pytest.raises(ValidationError, match=rule) as info:
            settings_for(1, stream, jobs_redis_url=url)
        assert "hunter2" not in str(info.value.errors()[0]["msg"])
    with pytest.raises(ValidationError, match="has a 'cache' part"):
        settings_for(1, "shop:cache:jobs")
    with pytest.raises(ValidationError, match="'cache:jobs' has a 'cache' part"):
        settings_for(1, "x", jobs_stream=None, project_name="cache")  # its default stream


def test_stats_count_what_waits_whatever_the_stream_still_holds(
    server: Server, stream: str
) -> None:
    settings = settings_for(server.port, stream)
    with Jobs(settings) as jobs:
        assert jobs.stats() == jobs_module.JobStats(stream, 0, 0, 0)  # no stream yet
        ids = jobs.submit_many(range(5))
        group = settings.jobs_group
        jobs.client.xgroup_create(stream, group, id="0")
        jobs.client.xreadgroup(group, "c", {stream: ">"}, count=2)
        jobs.client.xack(stream, group, cast(str, ids[0]))  # acknowledged, not trimmed yet
        assert jobs.client.xlen(stream) == 5
        assert jobs.stats() == jobs_module.JobStats(stream, 3, 1, 0)
        jobs.client.xdel(stream, cast(str, ids[4]))  # by hand: Redis no longer knows the lag
        assert jobs.stats() == jobs_module.JobStats(stream, 2, 1, 0)


def test_default_stream_is_named_after_the_project() -> None:
    settings = fast_settings(project_name="shop")
    assert jobs_module.stream_name(settings) == "shop:jobs"
    assert dead_name("shop:jobs") == "shop:jobs:dead"


def test_command_line_submits_and_counts(server: Server, stream: str) -> None:
    prefix = "{{ cookiecutter.__env_prefix }}"
    env = {key: value for key, value in os.environ.items() if not key.startswith(prefix)}
    env |= {
        "PYTHONPATH": str(PROJECT),
        f"{prefix}JOBS_REDIS_URL": f"redis://127.0.0.1:{server.port}/0",
        f"{prefix}JOBS_STREAM": stream,
    }
    command = [sys.executable, "-m", "{{ cookiecutter.__package_slug }}.qq"]

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *args], env=env, input=stdin, capture_output=True, text=True, timeout=30
        )

    submitted = run("submit", '{"n": 1}', "-", stdin='"two"\n3\n')
    assert submitted.returncode == 0, submitted.stderr
    assert len(submitted.stdout.split()) == 3
    keyed = run("submit", "4", "--key", "four")
    again = run("submit", "4", "--key", "four")
    assert "already submitted" in again.stdout
    assert keyed.stdout != again.stdout
    bad = run("submit", "not json")
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: payload 'not json' is not JSON")
    assert bad.stderr.strip().endswith("""a string is quoted in JSON: '"not json"'""")
    assert len(bad.stderr.strip().splitlines()) == 1
    broken = run("submit", '{"a": 1')  # no hint to quote what is meant as an object
    assert broken.returncode == 2
    assert "quoted" not in broken.stderr
    stats = run("stats")
    counts = {"stream": stream, "waiting": 4, "pending": 0, "dead": 0, "scheduled": 0}
    assert json.loads(stats.stdout) == counts
    listed = run("--help")
    assert listed.returncode == 0, listed.stderr
    assert {"serve", "drain", "health", "submit", "stats"} <= set(listed.stdout.split())


# ---- one instance, in this process -----------------------------------------------------------
async def test_drain_runs_every_job_once_and_empties_the_stream(
    server: Server, stream: str, journal: Journal
) -> None:
    settings = settings_for(server.port, stream)
    with Jobs(settings) as jobs:
        jobs.submit_many([{"n": n} for n in range(300)])

    async def reader(item: Job, settings: Settings) -> None:
        journal.add(item.payload["n"], item.attempt, os.getpid())

    summary = await jobs_worker(settings, reader).drain()

    assert (summary.succeeded, summary.failed, summary.not_started) == (300, 0, 0)
    assert journal.column(0) == Counter(str(n) for n in range(300))
    assert set(journal.column(1)) == {"1"}
    assert len({ack["job"] for ack in acks(server.port, stream)}) == 300
    with Jobs(settings) as jobs:
        assert jobs.stats() == jobs_module.JobStats(stream, 0, 0, 0)
        assert jobs.client.xlen(stream) == 0  # acknowledged jobs are trimmed


async def test_failing_job_is_retried_then_dead_lettered_with_its_error(
    server: Server, stream: str, journal: Journal
) -> None:
    settings = settings_for(server.port, stream, jobs_max_attempts=3)
    with Jobs(settings) as jobs:
        poison = jobs.submit("poison", key="p")
        jobs.submit_many(["fine"] * 20)

    async def reader(item: Job) -> None:
        journal.add(item.payload, item.id, item.attempt, item.key)
        if item.payload == "poison":
            raise ValueError(f"cannot digest {item.payload} (attempt {item.attempt})")

    summary = await jobs_worker(settings, reader).drain()

    assert (summary.succeeded, summary.failed) == (20, 3)
    poison_rows = [row for row in journal.rows() if row[0] == "poison"]
    assert [row[1:] for row in poison_rows] == [[poison, str(a), "p"] for a in (1, 2, 3)]
    with Jobs(settings) as jobs:
        [dead] = jobs.dead_list(10)
        assert jobs.stats() == jobs_module.JobStats(stream, 0, 0, 1)
    assert (dead.job, dead.payload, dead.attempts, dead.error) == (
        poison,
        '"poison"',
        3,
        "ValueError: cannot digest poison (attempt 3)",
    )
    with client_for(server.port) as client:  # the key stays with it, for a replay
        [(_, fields)] = client.xrange(dead_name(stream))
    assert fields["key"] == "p"


async def test_a_permanent_failure_goes_to_the_dead_letters_at_once(
    server: Server, stream: str, journal: Journal
) -> None:
    settings = settings_for(server.port, stream, jobs_max_attempts=3, max_retries=2)
    with Jobs(settings) as jobs:
        bad = jobs.submit({"bad": True})
        jobs.submit_many([{"bad": False}] * 5)
    assert bad is not None

    async def reader(item: Job) -> None:
        journal.add(item.id, item.attempt)
        if item.payload["bad"]:
            raise Permanent("malformed order")

    summary = await jobs_worker(settings, reader).drain()

    assert (summary.succeeded, summary.failed) == (5, 1)
    assert journal.column(0)[bad] == 1  # neither retried in the process nor put back
    with Jobs(settings) as jobs:
        [dead] = jobs.dead_list(10)
    assert (dead.job, dead.attempts) == (bad, 1)
    assert dead.error == "Permanent: malformed order"


async def test_drain_claims_the_jobs_a_dead_consumer_left_pending(
    server: Server, stream: str, journal: Journal
) -> None:
    settings = settings_for(server.port, stream, jobs_claim_idle=0.5)
    with Jobs(settings) as jobs:
        jobs.submit_many(range(10))
        jobs.client.xgroup_create(stream, settings.jobs_group, id="0")
        # A consumer takes three jobs and dies without acknowledging them.
        jobs.client.xreadgroup(settings.jobs_group, "ghost", {stream: ">"}, count=3)

    async def reader(item: Job) -> None:
        journal.add(item.payload, item.attempt)

    started = time.monotonic()
    summary = await jobs_worker(settings, reader).drain()

    assert summary.succeeded == 10
    assert time.monotonic() - started >= 0.5  # drain waited for the ghost's jobs to idle
    attempts = {int(row[0]): row[1] for row in journal.rows()}
    # The ghost never started its jobs: claiming them counts no attempt, starting one does.
    assert attempts == dict.fromkeys(range(10), "1")


async def test_a_job_that_is_not_json_goes_to_the_dead_letters_at_once(
    server: Server, stream: str, journal: Journal
) -> None:
    settings = settings_for(server.port, stream, jobs_max_attempts=2)
    with Jobs(settings) as jobs:
        jobs.submit_many(["fine", "also fine"])
        entry = cast(str, jobs.client.xadd(stream, {"payload": "{not json"}))  # another program

    async def reader(item: Job) -> None:
        journal.add(item.payload)

    summary = await jobs_worker(settings, reader).drain()

    # Its reader never runs; it fails once, for good: another attempt would fail the same way.
    assert (summary.succeeded, summary.failed) == (2, 1)
    assert journal.column(0) == Counter(["fine", "also fine"])
    with Jobs(settings) as jobs:
        [dead] = jobs.dead_list(10)
        assert jobs.stats() == jobs_module.JobStats(stream, 0, 0, 1)
    assert (dead.payload, dead.attempts) == ("{not json", 1)
    reason = f"MalformedJob: entry {entry} is not a job: its payload {'{not json'!r} is not JSON"
    assert dead.error.startswith(reason)


async def test_a_job_whose_worker_keeps_dying_is_dead_lettered(server: Server, stream: str) -> None:
    settings = settings_for(server.port, stream, jobs_claim_idle=0.3, jobs_max_attempts=2)
    with Jobs(settings) as jobs:
        crash = jobs.submit("crash")

    def reader(item: Job) -> None:
        if item.payload == "crash":
            os._exit(17)  # the worker process dies holding the job

    summary = await jobs_worker(settings, reader).drain()

    # Each attempt: a death beside others, then one alone, which is the job's; then buried.
    assert (summary.succeeded, summary.failed) == (0, 2)
    with Jobs(settings) as jobs:
        [dead] = jobs.dead_list(10)
        assert jobs.stats() == jobs_module.JobStats(stream, 0, 0, 1)
    assert (dead.job, dead.attempts) == (crash, 2)
    assert dead.error.startswith("worker process t-alone-")
    assert dead.error.endswith(
        "(code 17) while running it alone, 1 time(s): the item crashes its process"
    )


async def test_a_job_is_acknowledged_once_and_renewal_drops_claimed_jobs(
    server: Server, stream: str
) -> None:
    settings = settings_for(server.port, stream)
    with Jobs(settings) as jobs:
        jobs.submit_many(["x", "y"])
    slow = RedisJobs(settings, consumer="slow", record_acks=True)
    fast = RedisJobs(settings, consumer="fast", record_acks=True)
    await slow.open(drain=False)
    await fast.open(drain=False)
    try:
        mine = [Delivery._make(item) async for item in slow.fetch(2, 0)]
        assert [d.deliveries for d in mine] == [1, 1]
        assert list(slow.leases) == [d.entry for d in mine]
        # "slow" stalls: its jobs go idle, and "fast" claims one of them.
        with client_for(server.port) as client:
            client.xclaim(stream, settings.jobs_group, "fast", 0, [mine[0].entry])
        await slow.renew()
        assert list(slow.leases) == [mine[1].entry]  # renewal drops the job claimed away
        async with slow.session() as slow_session, fast.session() as fast_session:
            # Both runs of the claimed job finish: the first acknowledgement counts, once.
            claimed = mine[0]._replace(deliveries=2)
            assert await fast_session.acknowledge([claimed]) == ["acked"]
            lost, acked = await slow_session.commit([(tuple(d), None) for d in mine])
            assert isinstance(lost, JobLost)
            assert str(lost).startswith(f"job {mine[0].job_id} was acknowledged by")
            assert acked is None
            assert await slow_session.acknowledge([mine[1]]) == ["not held"]  # never twice
    finally:
        await slow.close()
        await fast.close()
    recorded = [(ack["consumer"], ack["entry"]) for ack in acks(server.port, stream)]
    assert recorded == [("fast", mine[0].entry), ("slow", mine[1].entry)]


async def test_close_puts_jobs_back_counting_an_attempt_only_for_started_ones(
    server: Server, stream: str
) -> None:
    settings = settings_for(server.port, stream)
    with Jobs(settings) as jobs:
        ids = cast(list[str], jobs.submit_many(["started", "fetched", "also fetched"]))
    source = RedisJobs(settings, consumer="c")
    await source.open(drain=False)
    try:
        held = [item async for item in source.fetch(3, 0)]
        async with source.session() as session:
            [job] = await session.begin(held[:1])  # its worker dies here: no outcome
        assert isinstance(job, Job)
        assert (job.id, job.attempt) == (ids[0], 1)
        # The start mark was written without waiting for its reply; it is in Redis.
        with client_for(server.port) as client:
            assert client.hgetall(starts_name(stream)) == {held[0][0]: "1"}
    finally:
        await source.close()
    with Jobs(settings) as jobs:
        assert jobs.stats() == jobs_module.JobStats(stream, 3, 0, 0)
        entries = cast(list[tuple[str, dict[str, str]]], jobs.client.xrange(stream))
        back = {fields["job"]: fields for _, fields in entries if "job" in fields}
        assert not jobs.client.exists(starts_name(stream))
    assert {job_id: back[job_id]["attempt"] for job_id in back} == {
        ids[0]: "2",
        ids[1]: "1",
        ids[2]: "1",
    }
    assert back[ids[0]]["error"] == "the worker holding it stopped without an outcome"
    assert "error" not in back[ids[1]]


async def test_drain_goes_on_past_fetches_whose_jobs_are_all_buried(
    server: Server, stream: str, journal: Journal
) -> None:
    settings = settings_for(server.port, stream, jobs_claim_idle=0.5, jobs_max_attempts=2)
    group = settings.jobs_group
    with Jobs(settings) as jobs:
        # 20 normal jobs held by a consumer that died; their runs never started.
        ghost = set(jobs.submit_many([{"normal": n} for n in range(20)]))
        jobs.client.xgroup_create(stream, group, id="0")
        jobs.client.xreadgroup(group, "ghost", {stream: ">"}, count=20)
        # 200 jobs whose earlier runs used every attempt (their workers died), held too.
        doomed = cast(list[str], jobs.submit_many([{"doomed": n} for n in range(200)]))
        jobs.client.xreadgroup(group, "ghost", {stream: ">"}, count=200)
        jobs.client.hset(starts_name(stream), mapping=dict.fromkeys(doomed, 2))
        waiting = set(jobs.submit_many([{"normal": n} for n in range(20, 70)]))

    async def reader(item: Job) -> None:
        journal.add(item.id, item.attempt)

    summary = await jobs_worker(settings, reader).drain()

    assert (summary.succeeded, summary.failed) == (70, 200)  # the doomed, buried at fetch
    assert journal.column(0) == Counter(ghost | waiting)  # every normal job, once
    assert set(journal.column(1)) == {"1"}
    with Jobs(settings) as jobs:
        assert jobs.stats() == jobs_module.JobStats(stream, 0, 0, 200)
        dead = jobs.dead_list(300)
    assert {letter.job for letter in dead} == set(doomed)
    assert {letter.attempts for letter in dead} == {2}


# ---- instances on "many machines" -------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_instances_share_5000_jobs_exactly_once(
    server: Server, stream: str, journal: Journal
) -> None:
    with instances(server.port, stream, journal) as start:
        first, second = start("alpha", "serve", "--work-ms", "1"), start("beta", "serve")
        wait_until(lambda: journal.column(0)["ready"] == 4, 90, "4 worker processes ready")
        with Jobs(settings_for(server.port, stream)) as jobs:
            submitted = set(jobs.submit_many(range(5000)))
            wait_until(lambda: jobs.stats().waiting + jobs.stats().pending == 0, 120, "drained")
        for process in (first, second):
            process.send_signal(signal.SIGTERM)
        for process in (first, second):
            assert process.wait(60) == 0, process.communicate()[1][-2000:]

    recorded = acks(server.port, stream)
    assert Counter(ack["job"] for ack in recorded) == Counter(submitted)  # one success each
    by_consumer = Counter(ack["consumer"] for ack in recorded)
    assert min(by_consumer["alpha"], by_consumer["beta"]) > 0
    ran = Counter(row[1] for row in journal.rows() if row[0] == "ran")
    assert ran == Counter(submitted)  # nobody died: one run each


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_9_one_instance_the_other_claims_its_jobs(
    server: Server, stream: str, journal: Journal
) -> None:
    with Jobs(settings_for(server.port, stream)) as jobs:
        submitted = set(jobs.submit_many(range(3000)))

    def acked_by(consumer: str) -> int:
        return sum(ack["consumer"] == consumer for ack in acks(server.port, stream))

    with instances(server.port, stream, journal) as start:
        # "doomed" is slow: 1 process, 8 jobs at a time, 20 ms each, and it buffers many jobs.
        doomed = start("doomed", "serve", "--work-ms", "20", "--processes", "1", "--tasks", "8")
        wait_until(lambda: acked_by("doomed") >= 50, 90, "the first instance at work")
        survivor = start("survivor", "drain", "--work-ms", "2")
        wait_until(lambda: acked_by("survivor") >= 1, 90, "the second instance at work")
        with client_for(server.port) as client:
            held = client.xpending_range(stream, "workers", "-", "+", 5000, "doomed")
        assert held, "the first instance holds no job: nothing to claim"
        kill_session(doomed)
        out, err = survivor.communicate(timeout=120)
        assert survivor.returncode == 0, err[-2000:]

    summary = json.loads(out)
    recorded = acks(server.port, stream)
    assert Counter(ack["job"] for ack in recorded) == Counter(submitted)  # exactly one success
    assert {ack["deliveries"] for ack in recorded if ack["consumer"] == "doomed"} == {"1"}
    claimed = [ack for ack in recorded if ack["deliveries"] != "1"]
    assert claimed
    assert {ack["consumer"] for ack in claimed} == {"survivor"}
    by_doomed = {ack["job"] for ack in recorded if ack["consumer"] == "doomed"}
    # Everything it held (less what it acked before the kill landed) was claimed.
    assert {entry["message_id"] for entry in held} - by_doomed <= {ack["job"] for ack in claimed}
    assert summary["succeeded"] == acked_by("survivor")
    with Jobs(settings_for(server.port, stream)) as jobs:
        assert jobs.stats() == jobs_module.JobStats(stream, 0, 0, 0)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_workers_reconnect_when_redis_restarts_mid_drain(
    tmp_path: Path, stream: str, journal: Journal
) -> None:
    persist = ["--appendonly", "yes", "--appendfsync", "always"]
    with running("redis", tmp_path, extra_args=persist) as first:
        port = first.port
        settings = settings_for(port, stream, jobs_claim_idle=5.0)
        with Jobs(settings) as jobs:
            submitted = set(jobs.submit_many(range(1000)))

        async def reader(item: Job) -> None:
            journal.add(item.id)
            await asyncio.sleep(0.01)

        drain = asyncio.ensure_future(jobs_worker(settings, reader).drain())
        await wait_for(lambda: len(journal.rows()) >= 200, 90, "200 jobs run")
        acked_before = len(acks(port, stream))
        assert not drain.done()
        assert acked_before < 900  # most acknowledgements have to wait for the restart
    # The server was killed (-9) on leaving the block; start it again on the same port.
    with running("redis", tmp_path, port=port, extra_args=persist):
        done, _ = await asyncio.wait({drain}, timeout=120)
        assert done, "drain did not finish after Redis came back"
        summary = drain.result()
        recorded = acks(port, stream)
        with Jobs(settings) as jobs:
            stats = jobs.stats()
    assert Counter(ack["job"] for ack in recorded) == Counter(submitted)
    assert stats == jobs_module.JobStats(stream, 0, 0, 0)
    assert summary.succeeded + summary.failed == summary.enqueued


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_puts_fetched_but_unstarted_jobs_back_at_once(
    server: Server, stream: str, journal: Journal
) -> None:
    with Jobs(settings_for(server.port, stream)) as jobs:
        jobs.submit_many(range(200))
    with instances(server.port, stream, journal) as start:
        slow = start("slow", "serve", "--work-ms", "50", "--processes", "1", "--tasks", "2")
        wait_until(lambda: len(acks(server.port, stream)) >= 2, 90, "the instance at work")
        slow.send_signal(signal.SIGTERM)
        assert slow.wait(20) == 0

    done = len(acks(server.port, stream))
    with Jobs(settings_for(server.port, stream)) as jobs:
        # Nothing is left pending with the stopped consumer, so nothing waits for a claim.
        assert jobs.stats() == jobs_module.JobStats(stream, 200 - done, 0, 0)
        entries = cast(list[tuple[str, dict[str, str]]], jobs.client.xrange(stream))
    assert {fields.get("attempt", "1") for _, fields in entries} == {"1"}  # not an attempt


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_9_restarts_under_one_name_bury_only_jobs_that_started_every_attempt(
    server: Server, stream: str, journal: Journal
) -> None:
    max_attempts = 3
    with Jobs(settings_for(server.port, stream)) as jobs:
        submitted = set(jobs.submit_many(range(24)))
    options = ["--work-ms", "300", "--processes", "1", "--tasks", "4", "--claim-idle", "60"]
    options += ["--max-attempts", str(max_attempts)]

    def ran() -> int:
        return journal.column(0)["ran"]

    with instances(server.port, stream, journal) as start:
        for _ in range(3):  # the same machine, killed mid-run three times
            running_from = ran() + 4
            phoenix = start("phoenix", "serve", *options)
            wait_until(lambda: ran() >= running_from, 90, "4 jobs running")  # noqa: B023
            kill_session(phoenix)
        last = start("phoenix", "drain", *options)
        out, err = last.communicate(timeout=120)
        assert last.returncode in (0, 1), err[-2000:]

    rows = journal.rows()
    runs = Counter(row[1] for row in rows if row[0] == "begin")
    with Jobs(settings_for(server.port, stream)) as jobs:
        dead = jobs.dead_list(100)
        assert jobs.stats() == jobs_module.JobStats(stream, 0, 0, len(dead))
    assert dead, "no job was in flight at every kill: the restarts tested nothing"
    for letter in dead:  # every dead letter started in JOBS_MAX_ATTEMPTS runs
        assert runs[letter.job] >= max_attempts, (letter, runs[letter.job])
        assert letter.attempts == max_attempts
    acked = Counter(ack["job"] for ack in acks(server.port, stream))
    assert set(acked) | {letter.job for letter in dead} == submitted
    assert max(acked.values()) == 1
    assert json.loads(out)["failed"] == len(dead)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_leases_are_bounded_so_a_later_instance_gets_its_share(
    server: Server, stream: str, journal: Journal
) -> None:
    with Jobs(settings_for(server.port, stream)) as jobs:
        submitted = set(jobs.submit_many(range(3000)))
    # 1 process x 2 tasks x 10 ms: about 200 jobs/s per instance, 15 s of work for one.
    options = ("--work-ms", "10", "--processes", "1", "--tasks", "2")
    with instances(server.port, stream, journal) as start, client_for(server.port) as client:
        first = start("first", "drain", *options)
        wait_until(lambda: journal.column(0)["ran"] >= 1, 90, "the first instance at work")
        held = len(client.xpending_range(stream, "workers", "-", "+", 5000, "first"))
        time.sleep(2.0)  # the scenario: the second instance comes up 2 s later
        second = start("second", "drain", *options)
        for process in (first, second):
            _, err = process.communicate(timeout=120)
            assert process.returncode == 0, err[-2000:]

    recorded = acks(server.port, stream)
    assert Counter(ack["job"] for ack in recorded) == Counter(submitted)
    by_consumer = Counter(ack["consumer"] for ack in recorded)
    # Its read-ahead (2 per reader slot) plus one fetch (LOOKUP_BLOCK_SIZE, 250), plus those
    # running and acknowledging: not MAX_QUEUE_SIZE (1,000).
    assert held <= 270, f"the first instance held {held} jobs"
    assert by_consumer["second"] >= 1000, by_consumer


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_drain_exits_2_with_one_line_when_redis_is_unreachable_and_health_says_so(
    tmp_path: Path, stream: str, journal: Journal
) -> None:
    port = free_port()  # nothing listens there
    url = f"redis://127.0.0.1:{port}/0"
    prefix = "{{ cookiecutter.__env_prefix }}"
    with instances(port, stream, journal) as start:
        begun = time.monotonic()
        drain = start("c", "drain", "--connect-timeout", "3")
        assert drain.stderr is not None
        # At once, while it waits: that it waits, for what and how long.
        first = drain.stderr.readline()
        assert drain.poll() is None, first
        assert (
            f"WARNING MainProcess {jobs_module.__name__}.feed: Redis at {url}"
            f" ({prefix}JOBS_REDIS_URL) unreachable, waiting up to 3s"
            f" ({prefix}SOURCE_CONNECT_TIMEOUT): "
        ) in first, first
        out, err = drain.communicate(timeout=60)
        took = time.monotonic() - begun
        assert drain.returncode == 2, err
        assert len(err.strip().splitlines()) == 1, err  # then one line, the error
        assert err.startswith(f"error: Redis at {url} ({prefix}JOBS_REDIS_URL) unreachable for 3s")
        assert 3 <= took < 3 + 8, took  # the timeout, plus starting Python
        assert out == ""

        metrics = free_port()
        serving = start("c", "serve", "--metrics-port", str(metrics))  # rides out the outage
        assert serving.stderr is not None
        warned = serving.stderr.readline()  # bounded by the test's timeout
        assert (
            f"Redis at {url} ({prefix}JOBS_REDIS_URL), consumer c: unreachable, retrying:"
            " ConnectionError: "
        ) in warned, warned
        health = [sys.executable, str(INSTANCE), str(port), stream, "c", str(journal.path)]
        health += ["health", "--metrics-port", str(metrics)]

        def check() -> subprocess.CompletedProcess[str]:
            env = {**os.environ, "PYTHONPATH": str(PROJECT)}
            return subprocess.run(health, env=env, capture_output=True, text=True, timeout=30)

        # Until the instance's metrics server is up, health blames that; then it blames Redis.
        deadline = time.monotonic() + 60
        while not (answer := check()).stderr.startswith(f"unhealthy: Redis at {url} "):
            assert time.monotonic() < deadline, f"health never blamed Redis: {answer.stderr}"
            time.sleep(0.2)
        assert answer.returncode == 1
        assert len(answer.stderr.strip().splitlines()) == 1, answer.stderr
        with running("redis", tmp_path, port=port):
            assert check().returncode == 0  # Redis is back: healthy


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_an_idle_serving_instance_picks_a_new_job_up_at_once(
    server: Server, stream: str, journal: Journal
) -> None:
    # Between fetches an idle instance may wait EMPTY_QUEUE_SLEEP_TIME (2 s here): it must
    # block on the stream instead, and start a new job as soon as it is submitted.
    with (
        instances(server.port, stream, journal) as start,
        Jobs(settings_for(server.port, stream)) as jobs,
    ):
        start("idle", "serve", "--idle-sleep", "2", "--processes", "1")
        wait_until(lambda: journal.column(0)["ready"] == 1, 60, "the worker process ready")
        latencies = []
        for n in range(10):
            time.sleep(0.1)  # idle again: the parent waits on the stream
            submitted = time.time()
            job_id = jobs.submit(n)

            def started(job_id: str | None = job_id) -> list[list[str]]:
                return [row for row in journal.rows() if row[0] == "ran" and row[1] == job_id]

            wait_until(lambda: bool(started()), 10, f"job {n} to start")
            latencies.append(float(started()[0][5]) - submitted)
    assert statistics.median(latencies) < 0.25, latencies
