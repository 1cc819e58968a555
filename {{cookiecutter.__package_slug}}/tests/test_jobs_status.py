"""A job's status by id and cancelling a job that no instance holds, against a real
redis-server: through retries, dead letters and replays, delayed jobs, two operators at once,
cancels racing a worker, and jobs an instance fetched (not cancelled: they run once)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest
from jobs_support import (
    PROJECT,
    acks,
    client_for,
    jobs_worker,
    new_stream,
    settings_for,
    wait_for,
    wait_until,
)
from pydantic import ValidationError
from servers import Server, running
from support import Journal, at_once_in_two_processes

from {{ cookiecutter.__package_slug }}.settings import Settings
from {{ cookiecutter.__package_slug }}.sources.redis_jobs import (
    Cancellation,
    CancelResult,
    Delivery,
    Job,
    JobFailed,
    Jobs,
    JobsError,
    JobState,
    JobStats,
    JobStatus,
    RedisJobs,
    current_name,
    outcome_name,
    starts_name,
)
from {{ cookiecutter.__package_slug }}.worker import Failure

WAITING, RUNNING, SCHEDULED = JobState.WAITING, JobState.RUNNING, JobState.SCHEDULED
SUCCEEDED, FAILED, CANCELLED, UNKNOWN = (
    JobState.SUCCEEDED,
    JobState.FAILED,
    JobState.CANCELLED,
    JobState.UNKNOWN,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running("redis", tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def stream() -> str:
    return new_stream()


def status(settings: Settings, job_id: str) -> JobStatus:
    with Jobs(settings) as jobs:
        return jobs.status(job_id)


def cancel(settings: Settings, job_id: str) -> Cancellation:
    with Jobs(settings) as jobs:
        return jobs.cancel(job_id)


def ended_recently(moment: str | None) -> bool:
    assert moment is not None
    age = datetime.now(UTC) - datetime.fromisoformat(moment)
    return timedelta(seconds=-1) < age < timedelta(seconds=30)


async def test_status_follows_a_job_through_retry_dead_letter_and_replay(
    server: Server, stream: str
) -> None:
    settings = settings_for(server.port, stream, jobs_max_attempts=2, jobs_status_ttl=50)
    with Jobs(settings) as jobs:
        job_id = cast(str, jobs.submit({"n": 1}))
    assert status(settings, job_id) == JobStatus(job_id, WAITING, attempt=1, entry=job_id)
    source = RedisJobs(settings, consumer="c")
    await source.open(drain=False)
    try:
        async with source.session() as session:
            [item] = [item async for item in source.fetch(1, 0)]
            fetched = JobStatus(job_id, WAITING, attempt=1, entry=job_id, consumer="c")
            assert status(settings, job_id) == fetched
            [job] = await session.begin([item])
            assert isinstance(job, Job)
            running_1 = JobStatus(job_id, RUNNING, attempt=1, entry=job_id, consumer="c")
            assert status(settings, job_id) == running_1
            [put_back] = await session.commit([(item, Failure("ValueError: boom 1"))])
            assert isinstance(put_back, JobFailed)
            assert "put back for another attempt" in str(put_back)

            # A retry is a new stream entry; the job id stays, and its status follows it.
            second = status(settings, job_id)
            assert (second.state, second.attempt, second.consumer) == (WAITING, 2, None)
            assert second.entry not in (None, job_id)
            [item] = [item async for item in source.fetch(1, 0)]
            assert Delivery._make(item).entry == second.entry
            await session.begin([item])
            running_2 = JobStatus(job_id, RUNNING, attempt=2, entry=second.entry, consumer="c")
            assert status(settings, job_id) == running_2
            [buried] = await session.commit([(item, Failure("ValueError: boom 2"))])
            assert "moved to the dead letters" in str(buried)

            failed = status(settings, job_id)
            assert (failed.state, failed.attempt, failed.error) == (FAILED, 2, "ValueError: boom 2")
            assert ended_recently(failed.ended)
            with Jobs(settings) as jobs:
                [letter] = jobs.dead_list(10)
                assert (letter.job, letter.id) == (job_id, failed.dead_letter)
                ttl = jobs.client.ttl(outcome_name(stream, job_id))
                assert 0 < ttl <= 50, ttl  # JOBS_STATUS_TTL
                assert jobs.dead_replay([letter.id]) == 1

            # A replay is a new entry of the same job: waiting, attempts counted afresh.
            replayed = status(settings, job_id)
            assert (replayed.state, replayed.attempt, replayed.error) == (WAITING, 1, None)
            assert replayed.entry not in (None, job_id, second.entry)
            [item] = [item async for item in source.fetch(1, 0)]
            await session.begin([item])
            assert await session.commit([(item, None)]) == [None]
    finally:
        await source.close()
    done = status(settings, job_id)
    assert (done.state, done.attempt, done.entry, done.error) == (SUCCEEDED, 1, None, None)
    assert ended_recently(done.ended)
    with client_for(server.port) as client:
        assert not client.exists(current_name(stream))  # nothing left once it ended
        # JOBS_STATUS_TTL passes (made short here): the outcome is forgotten.
        assert client.pexpire(outcome_name(stream, job_id), 1)
    wait_until(lambda: status(settings, job_id).state is UNKNOWN, 5, "the outcome to expire")


async def test_a_delayed_job_is_scheduled_then_waits_runs_and_succeeds(
    server: Server, stream: str, journal: Journal
) -> None:
    settings = settings_for(server.port, stream)
    past = datetime.now(UTC) - timedelta(seconds=5)
    with Jobs(settings) as jobs:
        due_now = cast(str, jobs.submit("now", at=past))
        later = cast(str, jobs.submit("later", delay=3600))
    before = status(settings, due_now)
    assert (before.state, before.entry) == (SCHEDULED, None)  # only a worker moves it
    assert before.due is not None
    assert abs(datetime.fromisoformat(before.due) - past) < timedelta(milliseconds=2)
    in_an_hour = datetime.fromisoformat(cast(str, status(settings, later).due))
    assert timedelta(minutes=59) < in_an_hour - datetime.now(UTC) < timedelta(minutes=61)

    source = RedisJobs(settings, consumer="c")
    await source.open(drain=False)
    try:
        [item] = [item async for item in source.fetch(10, 0)]  # moved into the stream
        entry = Delivery._make(item).entry
        moved = JobStatus(due_now, WAITING, attempt=1, entry=entry, consumer="c")
        assert status(settings, due_now) == moved
        async with source.session() as session:
            [job] = await session.begin([item])
            assert isinstance(job, Job)
            assert job.id == due_now
            assert status(settings, due_now).state is RUNNING
            assert await session.commit([(item, None)]) == [None]
    finally:
        await source.close()
    assert status(settings, due_now).state is SUCCEEDED
    assert status(settings, later).state is SCHEDULED


def test_unknown_and_malformed_ids(server: Server, stream: str) -> None:
    settings = settings_for(server.port, stream)
    with Jobs(settings) as jobs:
        assert jobs.status("1700000000000-0") == JobStatus("1700000000000-0", UNKNOWN)
        assert jobs.status(uuid.uuid4().hex).state is UNKNOWN
        assert jobs.cancel("1700000000000-0") == Cancellation(CancelResult.UNKNOWN)
        jobs.submit("keeps the stream and its group from being empty")
        assert jobs.status("1-0").state is UNKNOWN
        for bad in ("", "abc", "1700000000000-0 ", "1700000000000", uuid.uuid4().hex.upper()):
            with pytest.raises(JobsError, match=r"is not a job id: `submit` prints them"):
                jobs.status(bad)
            with pytest.raises(JobsError, match="is not a job id"):
                jobs.cancel(bad)


def test_the_status_ttl_is_a_positive_number_of_seconds() -> None:
    assert Settings(_env_file=None).jobs_status_ttl == 86_400
    with pytest.raises(ValidationError, match="jobs_status_ttl"):
        Settings(_env_file=None, jobs_status_ttl=0)


def _cancel_all(settings: Settings, ids: list[str]) -> int:
    """Cancel `ids` in this order; how many this call cancelled (the others: already)."""
    with Jobs(settings) as jobs:
        results = [jobs.cancel(job_id).result for job_id in ids]
    assert set(results) <= {CancelResult.CANCELLED, CancelResult.ALREADY_CANCELLED}, results
    return results.count(CancelResult.CANCELLED)


async def test_two_operators_cancel_the_same_jobs_at_once_each_is_cancelled_once(
    server: Server, stream: str, journal: Journal
) -> None:
    settings = settings_for(server.port, stream)
    with Jobs(settings) as jobs:
        waiting = cast(list[str], jobs.submit_many([{"n": n} for n in range(15)]))
        scheduled = cast(list[str], jobs.submit_many(range(15), delay=3600))
        kept = cast(str, jobs.submit("kept"))
    chosen = [job for pair in zip(waiting, scheduled, strict=True) for job in pair]

    assert sum(at_once_in_two_processes(lambda: _cancel_all(settings, chosen))) == 30

    def record(item: Job) -> None:
        journal.add(item.id)

    summary = await jobs_worker(settings, record).drain()
    assert (summary.succeeded, summary.failed) == (1, 0)
    assert journal.column(0) == {kept: 1}  # none of the cancelled ones ran
    with Jobs(settings) as jobs:
        assert jobs.stats() == JobStats(stream, 0, 0, 0, 0)
        assert not jobs.client.exists(current_name(stream))
        for job_id in chosen:
            found = jobs.status(job_id)
            assert found.state is CANCELLED
            assert ended_recently(found.ended)
            assert jobs.cancel(job_id).result is CancelResult.ALREADY_CANCELLED
        assert jobs.cancel(kept).result is CancelResult.FINISHED


async def test_a_running_job_is_not_cancelled(server: Server, stream: str) -> None:
    settings = settings_for(server.port, stream)
    with Jobs(settings) as jobs:
        job_id = cast(str, jobs.submit("long"))
    source = RedisJobs(settings, consumer="c")
    await source.open(drain=False)
    try:
        [item] = [item async for item in source.fetch(1, 0)]
        async with source.session() as session:
            [job] = await session.begin([item])
            assert isinstance(job, Job)
            assert cancel(settings, job_id) == Cancellation(CancelResult.RUNNING, "c")
            assert status(settings, job_id).state is RUNNING
            assert await session.commit([(item, None)]) == [None]  # it ran to the end
    finally:
        await source.close()
    assert status(settings, job_id).state is SUCCEEDED
    assert cancel(settings, job_id) == Cancellation(CancelResult.FINISHED)


async def test_a_job_an_instance_fetched_is_not_cancelled_and_runs_once(
    server: Server, stream: str
) -> None:
    settings = settings_for(server.port, stream)
    with Jobs(settings) as jobs:
        fetched, other = cast(list[str], jobs.submit_many(["fetched", "other"]))
    source = RedisJobs(settings, consumer="c", record_acks=True)
    await source.open(drain=False)
    try:
        items = [item async for item in source.fetch(2, 0)]
        # In the instance's memory, about to start: left as it is, nothing marked.
        assert cancel(settings, fetched) == Cancellation(CancelResult.FETCHED, "c")
        held = JobStatus(fetched, WAITING, attempt=1, entry=fetched, consumer="c")
        assert status(settings, fetched) == held
        async with source.session() as session:
            started = await session.begin(items)
            assert [job.id for job in started if isinstance(job, Job)] == [fetched, other]
            assert await session.commit([(item, None) for item in items]) == [None, None]
    finally:
        await source.close()
    assert [ack["job"] for ack in acks(server.port, stream)] == [fetched, other]  # once each
    assert status(settings, fetched).state is SUCCEEDED
    assert cancel(settings, fetched) == Cancellation(CancelResult.FINISHED)


async def test_a_job_put_back_by_a_stopped_instance_is_cancellable_one_a_dead_one_holds_runs(
    server: Server, stream: str, journal: Journal
) -> None:
    settings = settings_for(server.port, stream)
    group = settings.jobs_group
    with Jobs(settings) as jobs:
        released, held = cast(list[str], jobs.submit_many(["released", "held"]))
    # An instance fetches `released` and stops before starting it: it puts the job back.
    first = RedisJobs(settings, consumer="first")
    await first.open(drain=False)
    try:
        [item] = [item async for item in first.fetch(1, 0)]
        assert Delivery._make(item).job_id == released
        assert cancel(settings, released) == Cancellation(CancelResult.FETCHED, "first")
    finally:
        await first.close()
    back = status(settings, released)
    assert (back.state, back.consumer) == (WAITING, None)  # a new entry, that nobody holds
    assert back.entry not in (None, released)
    assert cancel(settings, released) == Cancellation(CancelResult.CANCELLED)
    # A consumer that died holds `held`: not cancelled; another instance claims and runs it.
    with Jobs(settings) as jobs:
        jobs.client.xreadgroup(group, "dead", {stream: ">"}, count=1)
        jobs.client.xclaim(stream, group, "dead", 0, [held], idle=60_000)  # claimable now
    assert cancel(settings, held) == Cancellation(CancelResult.FETCHED, "dead")

    def record(item: Job) -> None:
        journal.add(item.id)

    summary = await jobs_worker(settings, record).drain()
    assert (summary.succeeded, summary.failed) == (1, 0)
    assert journal.column(0) == {held: 1}
    with Jobs(settings) as jobs:
        assert jobs.stats() == JobStats(stream, 0, 0, 0, 0)
        assert jobs.status(released).state is CANCELLED
        assert jobs.status(held).state is SUCCEEDED


async def test_a_job_fetched_by_a_busy_instance_is_not_cancelled_and_runs_once(
    server: Server, stream: str, tmp_path: Path, journal: Journal
) -> None:
    """End to end: the one reader slot is busy; the next job, already fetched by the instance,
    is not cancelled (the answer names the instance); it runs once, after the first."""
    settings = settings_for(server.port, stream, num_processes=1, concurrent_tasks_per_process=1)
    flag = tmp_path / "go"
    with Jobs(settings) as jobs:
        first, second = cast(list[str], jobs.submit_many(["first", "second"]))

    async def reader(item: Job) -> None:
        journal.add("ran", item.id)
        deadline = time.monotonic() + 30
        while not flag.exists():  # until the test tried to cancel the second job
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)

    drain = asyncio.ensure_future(jobs_worker(settings, reader, consumer="busy").drain())
    try:
        await wait_for(lambda: journal.column(0)["ran"] == 1, 30, "the first job to start")
        with Jobs(settings) as jobs:
            await wait_for(lambda: jobs.stats().pending == 2, 10, "both jobs to be fetched")
            assert jobs.cancel(second) == Cancellation(CancelResult.FETCHED, "busy")
    finally:
        flag.touch()
    summary = await asyncio.wait_for(drain, 30)
    assert (summary.succeeded, summary.failed) == (2, 0)
    assert journal.rows() == [["ran", first], ["ran", second]]
    with Jobs(settings) as jobs:
        assert jobs.status(second).state is SUCCEEDED
        assert jobs.stats() == JobStats(stream, 0, 0, 0, 0)


def _cancel_each(settings: Settings, ids: list[str]) -> dict[str, CancelResult]:
    with Jobs(settings) as jobs:
        return {job_id: jobs.cancel(job_id).result for job_id in ids}


async def test_cancels_racing_a_worker_never_cancel_a_job_that_runs(
    server: Server, stream: str, journal: Journal
) -> None:
    """Two operators cancel every job, in opposite orders, while an instance fetches and runs
    them a few at a time: each job is cancelled once and never runs, or runs once and no
    answer says it was cancelled."""
    settings = settings_for(
        server.port, stream, num_processes=1, concurrent_tasks_per_process=2, lookup_block_size=4
    )
    with Jobs(settings) as jobs:
        ids = cast(list[str], jobs.submit_many(range(300)))

    async def reader(item: Job) -> None:
        journal.add(item.id)
        await asyncio.sleep(0.005)  # a short job: fetches go on while the cancels run

    drain = asyncio.ensure_future(jobs_worker(settings, reader).drain())
    try:
        await wait_for(lambda: bool(journal.rows()), 30, "the first job to start")
        forward, backward = await asyncio.gather(
            asyncio.to_thread(_cancel_each, settings, ids),
            asyncio.to_thread(_cancel_each, settings, ids[::-1]),
        )
    finally:
        summary = await asyncio.wait_for(drain, 30)
    ran = journal.column(0)
    cancelled = {job for job in ids if CancelResult.CANCELLED in (forward[job], backward[job])}
    assert ran  # the first job ran ...
    assert cancelled  # ... and the last one was cancelled before any fetch could reach it
    assert (summary.succeeded, summary.failed) == (len(ran), 0)
    assert set(ran.values()) == {1}
    assert not set(ran) & cancelled
    assert set(ran) | cancelled == set(ids)
    kept = {CancelResult.FETCHED, CancelResult.RUNNING, CancelResult.FINISHED}
    with Jobs(settings) as jobs:
        for job in ids:
            answers = {forward[job], backward[job]}
            if job in cancelled:
                assert answers == {CancelResult.CANCELLED, CancelResult.ALREADY_CANCELLED}
                assert jobs.status(job).state is CANCELLED
            else:
                assert answers <= kept, answers
                assert jobs.status(job).state is SUCCEEDED
        assert jobs.stats() == JobStats(stream, 0, 0, 0, 0)


async def test_a_pending_entry_deleted_by_hand_is_acknowledged_and_skipped(
    server: Server, stream: str
) -> None:
    """`cancel` never deletes a pending entry, but another program may: the consumer that held
    it (reading its history again) and one that claims it acknowledge and skip it."""
    settings = settings_for(server.port, stream)
    group = settings.jobs_group
    with Jobs(settings) as jobs:
        mine, theirs, kept = cast(list[str], jobs.submit_many(["mine", "theirs", "kept"]))
        jobs.client.xgroup_create(stream, group, id="0")
        jobs.client.xreadgroup(group, "c", {stream: ">"}, count=1)  # `mine`
        jobs.client.xreadgroup(group, "dead", {stream: ">"}, count=1)  # `theirs`
        jobs.client.xclaim(stream, group, "dead", 0, [theirs], idle=60_000)  # claimable now
        assert jobs.client.xdel(stream, mine, theirs) == 2
    source = RedisJobs(settings, consumer="c")  # `c` again, as after a restart
    await source.open(drain=False)
    try:
        items = [item async for item in source.fetch(10, 0)]
        assert [Delivery._make(item).job_id for item in items] == [kept]
        with Jobs(settings) as jobs:
            [pending] = jobs.client.xpending_range(stream, group, "-", "+", 10)
            assert (pending["message_id"], pending["consumer"]) == (kept, "c")
            assert jobs.status(mine).state is UNKNOWN
    finally:
        await source.close()


def test_status_and_cancel_commands(server: Server, stream: str) -> None:
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
        job_id = cast(str, jobs.submit("waits"))
        later = cast(str, jobs.submit("later", delay=3600))
    shown = run("status", job_id)
    assert (shown.returncode, shown.stdout) == (0, f"{job_id}: waiting (attempt 1)\n")
    as_json = json.loads(run("status", later, "--json").stdout)
    assert (as_json["id"], as_json["state"], as_json["entry"]) == (later, "scheduled", None)
    assert run("status", later).stdout.startswith(f"{later}: scheduled, due 20")

    cancelled = run("cancel", job_id)
    assert (cancelled.returncode, cancelled.stdout) == (0, f"{job_id}: cancelled\n")
    again = run("cancel", job_id)
    assert (again.returncode, again.stdout) == (1, f"{job_id}: already cancelled\n")
    assert run("status", job_id).stdout.startswith(f"{job_id}: cancelled at 20")

    # A job a consumer fetched runs: not cancelled, and the answer names the consumer.
    settings = settings_for(server.port, stream)
    with Jobs(settings) as jobs:
        held = cast(str, jobs.submit("held"))
        jobs.client.xgroup_create(stream, settings.jobs_group, id="0")
        jobs.client.xreadgroup(settings.jobs_group, "someone", {stream: ">"}, count=1)
    fetched = run("cancel", held)
    told = f"{held}: not cancelled: fetched by someone, about to start\n"
    assert (fetched.returncode, fetched.stdout) == (1, told)
    with client_for(server.port) as client:
        client.hset(starts_name(stream), held, 1)  # as its worker process does at the start
    running = run("cancel", held)
    told = f"{held}: running (consumer someone), not cancelled: it is not interrupted\n"
    assert (running.returncode, running.stdout) == (1, told)
    assert run("status", held).stdout == f"{held}: running (attempt 1, consumer someone)\n"

    unknown = run("status", "1-0")
    assert unknown.returncode == 1
    ttl = f"{prefix}JOBS_STATUS_TTL 86400s"
    assert unknown.stdout == f"1-0: unknown: not submitted here, or it ended over {ttl} ago\n"
    assert run("cancel", "1-0").stdout == "1-0: unknown, not cancelled\n"
    for command in ("status", "cancel"):
        malformed = run(command, "not-an-id")
        assert (malformed.returncode, malformed.stdout) == (2, "")
        [line] = malformed.stderr.splitlines()
        assert line.startswith("error: job id 'not-an-id' is not a job id"), line
    assert {"status", "cancel"} <= set(run("--help").stdout.split())
