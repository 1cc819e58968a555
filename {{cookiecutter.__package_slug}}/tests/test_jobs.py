"""Jobs in a Redis stream against a real redis-server: sharing, claims, dead letters, outages."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from servers import Server, running
from support import Journal, fast_settings, kill_session

from {{ cookiecutter.__package_slug }} import jobs as jobs_module
from {{ cookiecutter.__package_slug }}.jobs import (
    Delivery,
    Job,
    Jobs,
    JobsError,
    JobSource,
    JobsWorker,
    acked_name,
    dead_name,
)
from {{ cookiecutter.__package_slug }}.settings import Settings
from {{ cookiecutter.__package_slug }}.worker import Worker

PROJECT = Path(__file__).resolve().parents[1]
INSTANCE = PROJECT / "tests" / "jobs_instance.py"
_streams = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running("redis", tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def stream() -> str:
    return f"t{os.getpid()}-{next(_streams)}:jobs"


def settings_for(port: int, stream: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "jobs_redis_url": f"redis://127.0.0.1:{port}/0",
        "jobs_stream": stream,
        "jobs_claim_idle": 1.0,
        "retry_backoff": 0.01,
    }
    values.update(overrides)
    return fast_settings(**values)


def client_for(port: int) -> redis.Redis:
    return redis.Redis(port=port, decode_responses=True)


def acks(port: int, stream: str) -> list[dict[str, str]]:
    """Every accepted acknowledgement (JobsWorker(record_acks=True) records them)."""
    with client_for(port) as client:
        return [fields for _, fields in client.xrange(acked_name(stream))]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@contextmanager
def instances(port: int, stream: str, journal: Journal) -> Iterator[Callable[..., Any]]:
    """Start worker instances (own sessions); every one still running is killed at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(consumer: str, mode: str, *options: str) -> subprocess.Popen[str]:
        command = [sys.executable, str(INSTANCE), str(port), stream, consumer, str(journal.path)]
        process = subprocess.Popen(
            [*command, mode, *options],
            cwd=PROJECT,
            env={**os.environ, "PYTHONPATH": str(PROJECT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its worker processes share its process group
        )
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate(timeout=10)


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
    with pytest.raises(JobsError, match="move it to JOBS_PASSWORD"):
        Jobs(settings_for(1, stream, jobs_redis_url="redis://:hunter2@127.0.0.1:1/0"))
    with pytest.raises(JobsError, match="has scheme 'http'"):
        JobSource(settings_for(1, stream, jobs_redis_url="http://example"))


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
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT),
        "{{ cookiecutter.__env_prefix }}JOBS_REDIS_URL": f"redis://127.0.0.1:{server.port}/0",
        "{{ cookiecutter.__env_prefix }}JOBS_STREAM": stream,
    }
    command = [sys.executable, "-m", jobs_module.__name__]

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
    assert len(bad.stderr.strip().splitlines()) == 1
    stats = run("stats")
    assert json.loads(stats.stdout) == {"stream": stream, "waiting": 4, "pending": 0, "dead": 0}


def test_main_hands_other_commands_to_the_runner() -> None:
    seen: list[list[str]] = []

    class Recording(Worker):
        def cli(self, argv: Any = None) -> None:
            seen.append(list(argv))

    async def writer(desired: int) -> Any:
        for _ in range(0):
            yield 0

    runner = Recording("r", reader=lambda item: None, writer=writer, settings=fast_settings())
    jobs_module.main(runner, ["drain"])
    assert seen == [["drain"]]


# ---- one instance, in this process -----------------------------------------------------------
async def test_drain_runs_every_job_once_and_empties_the_stream(
    server: Server, stream: str, journal: Journal
) -> None:
    settings = settings_for(server.port, stream)
    with Jobs(settings) as jobs:
        jobs.submit_many([{"n": n} for n in range(300)])

    async def reader(item: Job, settings: Settings) -> None:
        journal.add(item.payload["n"], item.attempt, os.getpid())

    worker = JobsWorker("t", reader=reader, settings=settings, record_acks=True)
    summary = await worker.drain()

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

    summary = await JobsWorker("t", reader=reader, settings=settings).drain()

    assert (summary.succeeded, summary.failed) == (20, 3)
    poison_rows = [row for row in journal.rows() if row[0] == "poison"]
    assert [row[1:] for row in poison_rows] == [[poison, str(a), "p"] for a in (1, 2, 3)]
    with Jobs(settings) as jobs:
        [dead] = jobs.dead_letters()
        assert jobs.stats() == jobs_module.JobStats(stream, 0, 0, 1)
    assert {name: dead[name] for name in ("job", "payload", "key", "attempts", "error")} == {
        "job": poison,
        "payload": '"poison"',
        "key": "p",
        "attempts": "3",
        "error": "ValueError: cannot digest poison (attempt 3)",
    }


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
    summary = await JobsWorker("t", reader=reader, settings=settings).drain()

    assert summary.succeeded == 10
    assert time.monotonic() - started >= 0.5  # drain waited for the ghost's jobs to idle
    attempts = {int(row[0]): row[1] for row in journal.rows()}
    assert attempts == {n: "2" if n < 3 else "1" for n in range(10)}  # a claim is an attempt


async def test_a_job_whose_worker_keeps_dying_is_dead_lettered(server: Server, stream: str) -> None:
    settings = settings_for(server.port, stream, jobs_claim_idle=0.3, jobs_max_attempts=2)
    with Jobs(settings) as jobs:
        crash = jobs.submit("crash")

    def reader(item: Job) -> None:
        if item.payload == "crash":
            os._exit(17)  # the worker process dies holding the job

    summary = await JobsWorker("t", reader=reader, settings=settings).drain()

    assert (summary.succeeded, summary.failed) == (0, 2)  # two deaths, then buried unread
    with Jobs(settings) as jobs:
        [dead] = jobs.dead_letters()
        assert jobs.stats() == jobs_module.JobStats(stream, 0, 0, 1)
    assert (dead["job"], dead["attempts"]) == (crash, "2")
    assert dead["error"].startswith("the worker holding it stopped without an outcome")


async def test_a_job_is_acknowledged_once_and_renewal_drops_claimed_jobs(
    server: Server, stream: str
) -> None:
    settings = settings_for(server.port, stream)
    with Jobs(settings) as jobs:
        jobs.submit_many(["x", "y"])
    slow, fast = JobSource(settings, "slow"), JobSource(settings, "fast")
    slow.begin(draining=False)
    fast.begin(draining=False)
    try:
        mine = [Delivery._make(item) async for item in slow.writer(2)]
        assert [d.deliveries for d in mine] == [1, 1]
        # "slow" stalls: its jobs go idle, and "fast" claims one of them.
        assert fast._client is None
        await fast._open()
        assert fast._client is not None
        await fast._client.xclaim(stream, settings.jobs_group, "fast", 0, [mine[0].entry])
        await slow.renew()
        assert list(slow.leases) == [mine[1].entry]  # renewal drops the job claimed away
        slow_acker = jobs_module._Acker(settings, "slow", record_acks=True)
        fast_acker = jobs_module._Acker(settings, "fast", record_acks=True)
        try:
            # Both runs of the claimed job finish: the first acknowledgement counts, once.
            assert await fast_acker.ack(Delivery(*mine[0][:5], deliveries=2)) is True
            assert await slow_acker.ack(mine[0]) is False
            assert await slow_acker.ack(mine[1]) is True
            assert await slow_acker.ack(mine[1]) is False  # never twice
        finally:
            await slow_acker.close()
            await fast_acker.close()
    finally:
        await slow.close()
        await fast.close()
    recorded = [(ack["consumer"], ack["entry"]) for ack in acks(server.port, stream)]
    assert recorded == [("fast", mine[0].entry), ("slow", mine[1].entry)]


# ---- instances on "many machines" -------------------------------------------------------------
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

        worker = JobsWorker("t", reader=reader, settings=settings, record_acks=True)
        drain = asyncio.ensure_future(worker.drain())
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
