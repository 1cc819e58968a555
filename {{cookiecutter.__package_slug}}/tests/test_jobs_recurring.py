"""Recurring jobs (`Every`): periods and DST at fixed times, the rules a schedule keeps, each
period claimed once in a real redis-server (with a clock the test sets), the missed-period
policies, `qq stats` and the metrics page, and instances that start, stop and crash."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis
from jobs_support import client_for, instances, new_stream, settings_for, wait_until
from prometheus_client.parser import text_string_to_metric_families
from servers import Server, running
from support import Journal, free_port, kill_session

from {{ cookiecutter.__package_slug }}.sources.redis_jobs import (
    Every,
    RedisJobs,
    ScheduleError,
    every_name,
)
from {{ cookiecutter.__package_slug }}.sources.redis_jobs.every import check_schedules
from {{ cookiecutter.__package_slug }}.sources.redis_jobs.recurring import Ticker
from {{ cookiecutter.__package_slug }}.worker import LabeledGauges, Worker

NIGHTLY = Every("nightly", cron="0 3 * * *", tz="Europe/Paris", payload={"report": "daily"})


def at(text: str) -> float:
    """An ISO 8601 time with its offset, as Unix seconds."""
    return datetime.fromisoformat(text).timestamp()


def runs(schedule: Every, start: str, count: int) -> list[str]:
    """The next `count` periods after `start`, as ISO times in the schedule's zone."""
    moment, found = at(start), []
    for _ in range(count):
        moment = schedule.after(moment)
        found.append(schedule.when(int(moment)).isoformat())
    return found


# ---- periods, time zones and DST (cronsim's rules, Debian cron's) ------------------------------
def test_a_daily_job_in_the_skipped_hour_runs_once_when_the_gap_ends() -> None:
    """Europe/Paris, 30 March 2025: 02:00 becomes 03:00; 02:30 does not exist."""
    daily = Every("daily", cron="30 2 * * *", tz="Europe/Paris")
    assert runs(daily, "2025-03-29T12:00:00+01:00", 2) == [
        "2025-03-30T03:00:00+02:00",
        "2025-03-31T02:30:00+02:00",
    ]
    assert daily.latest(at("2025-03-30T03:00:00+02:00")) == at("2025-03-30T03:00:00+02:00")


def test_a_daily_job_in_the_repeated_hour_runs_the_first_time_only() -> None:
    """Europe/Paris, 26 October 2025: 03:00 becomes 02:00; 02:30 comes twice."""
    daily = Every("daily", cron="30 2 * * *", tz="Europe/Paris")
    assert runs(daily, "2025-10-25T12:00:00+02:00", 2) == [
        "2025-10-26T02:30:00+02:00",
        "2025-10-27T02:30:00+01:00",
    ]
    first = at("2025-10-26T02:30:00+02:00")
    for moment in ("2025-10-26T02:10:00+01:00", "2025-10-26T02:40:00+01:00"):  # second pass
        assert daily.latest(at(moment)) == first  # the period is the first pass's
        assert daily.when(daily.after(at(moment))).isoformat() == "2025-10-27T02:30:00+01:00"


def test_an_hourly_job_follows_real_time_across_dst() -> None:
    hourly = Every("hourly", cron="30 * * * *", tz="Europe/Paris")
    assert runs(hourly, "2025-03-30T01:00:00+01:00", 2) == [
        "2025-03-30T01:30:00+01:00",
        "2025-03-30T03:30:00+02:00",  # no 02:30 that day
    ]
    assert runs(hourly, "2025-10-26T02:00:00+02:00", 3) == [
        "2025-10-26T02:30:00+02:00",
        "2025-10-26T02:30:00+01:00",  # 02:30 twice: an hour apart
        "2025-10-26T03:30:00+01:00",
    ]


def test_cron_reads_utc_by_default_and_intervals_follow_the_epoch() -> None:
    assert runs(Every("u", cron="0 3 * * *"), "2025-06-01T12:00:00+00:00", 1) == [
        "2025-06-02T03:00:00+00:00"
    ]
    hourly = Every("h", seconds=3600)
    assert hourly.latest(at("2025-06-01T12:34:56+00:00")) == at("2025-06-01T12:00:00+00:00")
    assert hourly.after(at("2025-06-01T12:00:00+00:00")) == at("2025-06-01T13:00:00+00:00")
    assert Every("s", cron="*/15 * * * * *").after(at("2025-06-01T00:00:01+00:00")) == at(
        "2025-06-01T00:00:15+00:00"
    )  # 6 fields: seconds first


# ---- bad schedules ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("schedule", "rule"),
    [
        (Every("n", cron="0 25 * * *"), "schedule 'n': cron='0 25 * * *' is not a cron expression"),
        (Every("n", cron="0 3 * * *", tz="Mars/Olympus"), "tz='Mars/Olympus' is not a time zone"),
        (Every("n", cron="0 3 * * *", seconds=60), "give cron= (e.g. '0 3 * * *') or seconds="),
        (Every("n"), "give cron= (e.g. '0 3 * * *') or seconds="),
        (Every("n", seconds=0), "seconds=0 must be a whole number >= 1"),
        (Every("n", seconds=-5), "seconds=-5 must be a whole number >= 1"),
        (Every("n", seconds=2.5), "seconds=2.5 must be a whole number >= 1"),  # type: ignore[arg-type]
        (Every("n", seconds=60, missed="later"), "missed='later' must be 'run-once' or 'skip'"),
        (Every("n", seconds=60, tz="Europe/Paris"), "tz='Europe/Paris' is for cron="),
        (Every("n", seconds=60, payload={1, 2}), "payload {1, 2} cannot be stored as JSON"),
        (Every("a b", seconds=60), "schedule 'a b': the name must be 1 to 100 letters"),
    ],
)
def test_a_bad_schedule_is_refused_naming_it_and_the_rule(schedule: Every, rule: str) -> None:
    with pytest.raises(ScheduleError, match=r"^schedule '") as caught:
        check_schedules([NIGHTLY, schedule])
    assert rule in str(caught.value)
    assert "\n" not in str(caught.value)


def test_two_schedules_with_one_name_are_refused() -> None:
    with pytest.raises(ScheduleError) as caught:
        check_schedules([NIGHTLY, Every("nightly", seconds=60)])
    assert str(caught.value) == "schedule 'nightly' is declared twice: names are unique"


@pytest.mark.parametrize("command", ["serve", "drain", "stats"])
def test_serve_drain_and_stats_stop_on_a_bad_schedule_with_one_line(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(1, new_stream())  # refused before connecting
    source = RedisJobs(settings, schedules=[Every("nightly", cron="0 3 * * 8")])
    with pytest.raises(SystemExit) as exited:
        Worker("t", lambda item: None, settings=settings, source=source).cli([command])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "error: schedule 'nightly': cron='0 3 * * 8' is not a cron expression (Bad day-of-week)\n"
    )


# ---- each period once, in Redis, with a clock the test sets ------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running("redis", tmp_path_factory.mktemp("redis")) as server:
        yield server


def jobs_in(port: int, stream: str) -> list[dict[str, str]]:
    with client_for(port) as client:
        return [fields for _, fields in client.xrange(stream)]


async def test_a_new_schedule_starts_with_its_next_period_and_one_instance_submits_it(
    server: Server,
) -> None:
    stream = new_stream()
    instances_ = [Ticker([NIGHTLY], stream), Ticker([NIGHTLY], stream)]
    client = aioredis.Redis(port=server.port, decode_responses=True)
    try:
        first = at("2025-06-01T14:00:00+02:00")  # the schedule's first start, mid-afternoon
        for ticker in instances_:
            await ticker.tick(client, first)
        assert jobs_in(server.port, stream) == []  # 03:00 that day was before it existed
        assert all(t.next_tick(first) == at("2025-06-02T03:00:00+02:00") for t in instances_)

        due = at("2025-06-02T03:00:00.002+02:00")
        [first_claim], [second_claim] = [await t.tick(client, due) for t in instances_]
        assert [await t.tick(client, due + 1) for t in instances_] == [[], []]  # known claimed
    finally:
        await client.aclose()
    period = int(at("2025-06-02T03:00:00+02:00"))
    [(claimed, job)] = first_claim.jobs
    assert (claimed, first_claim.period, first_claim.missed) == (period, period, "")
    assert (second_claim.before, second_claim.jobs) == (period, [])  # found it claimed
    with client_for(server.port) as sync:
        assert sync.xrange(stream) == [
            (job, {"payload": '{"report":"daily"}', "key": f"every:nightly:{period}"})
        ]
    assert instances_[1].known == {"nightly": period}


@pytest.mark.parametrize(
    ("missed", "now", "submitted"),
    [
        ("run-once", "2025-06-05T14:00:00+02:00", ["2025-06-05T03:00:00+02:00"]),
        ("skip", "2025-06-05T14:00:00+02:00", []),
        # At 03:00:30 the period of 03:00 is on time: it runs whatever the policy.
        (
            "run-once",
            "2025-06-05T03:00:30+02:00",
            ["2025-06-04T03:00:00+02:00", "2025-06-05T03:00:00+02:00"],
        ),
        ("skip", "2025-06-05T03:00:30+02:00", ["2025-06-05T03:00:00+02:00"]),
    ],
    ids=["run-once", "skip", "run-once, one on time", "skip, one on time"],
)
async def test_periods_missed_while_no_instance_ran(
    server: Server, missed: str, now: str, submitted: list[str]
) -> None:
    """The last instance claimed 1 June's period and stopped; the next starts on 5 June."""
    stream = new_stream()
    schedule = Every("nightly", cron="0 3 * * *", tz="Europe/Paris", missed=missed)
    last = int(at("2025-06-01T03:00:00+02:00"))
    with client_for(server.port) as sync:
        sync.hset(every_name(stream), "nightly", last)
    client = aioredis.Redis(port=server.port, decode_responses=True)
    try:
        ticker = Ticker([schedule], stream)
        [claim] = await ticker.tick(client, at(now))
        assert await ticker.tick(client, at(now) + 5) == []  # nothing more for those periods
        [following] = await ticker.tick(client, at("2025-06-06T03:00:01+02:00"))
    finally:
        await client.aclose()
    assert (claim.before, claim.period) == (last, int(at("2025-06-05T03:00:00+02:00")))
    assert (claim.missed == "skipped") == (missed == "skip")
    keys = [job["key"] for job in jobs_in(server.port, stream)]
    expected = [f"every:nightly:{int(at(moment))}" for moment in submitted]
    assert keys == [*expected, f"every:nightly:{following.period}"]  # then on time again
    assert following.missed == ""


@pytest.mark.parametrize("missed", ["run-once", "skip"])
async def test_after_a_stall_each_period_on_time_gets_its_job(server: Server, missed: str) -> None:
    """Every instance stalled (or Redis was away) for 30 s of a per-second schedule: the
    latest CATCH_UP periods, on time still, get one job each; the 20 before were missed."""
    stream = new_stream()
    schedule = Every("tick", seconds=1, missed=missed)
    now = at("2025-06-05T12:00:30.5+00:00")
    last = int(now) - 30
    with client_for(server.port) as sync:
        sync.hset(every_name(stream), "tick", last)
    client = aioredis.Redis(port=server.port, decode_responses=True)
    try:
        [claim] = await Ticker([schedule], stream).tick(client, now)
    finally:
        await client.aclose()
    on_time = list(range(int(now) - 9, int(now) + 1))
    assert [period for period, _ in claim.jobs] == on_time
    keys = [job["key"] for job in jobs_in(server.port, stream)]
    stands_for_missed = [f"every:tick:{int(now) - 10}"] if missed == "run-once" else []
    assert keys == [*stands_for_missed, *(f"every:tick:{period}" for period in on_time)]


async def test_stats_show_each_schedules_last_and_next_period(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = new_stream()
    settings = settings_for(server.port, stream)
    hourly = Every("hourly", seconds=3600)
    period = int(at("2025-06-01T03:00:00+02:00"))
    with client_for(server.port) as client:
        client.hset(every_name(stream), "nightly", period)
    source = RedisJobs(settings, schedules=[NIGHTLY, hourly])
    with pytest.raises(SystemExit) as exited:
        Worker("t", lambda item: None, settings=settings, source=source).cli(["stats"])
    assert exited.value.code == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["schedules"]["nightly"] == {
        "last": "2025-06-01T03:00:00+02:00",
        "next": "2025-06-02T03:00:00+02:00",  # overdue: no instance claimed it yet
    }
    hourly_next = datetime.fromisoformat(stats["schedules"]["hourly"]["next"])
    assert stats["schedules"]["hourly"]["last"] is None  # no instance ran it yet
    assert 0 < hourly_next.timestamp() - time.time() <= 3600
    assert hourly_next.utcoffset() == UTC.utcoffset(None)

    gauge = (await source.gauges())["schedule_next_run_timestamp_seconds"]
    assert isinstance(gauge, LabeledGauges)
    assert (gauge.label, gauge.values["nightly"]) == ("schedule", at("2025-06-02T03:00:00+02:00"))


# ---- real instances: start, stop and crash ---------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_one_job_per_period_across_instances_that_start_stop_and_crash(
    server: Server, journal: Journal
) -> None:
    """Three instances serve a per-second schedule for 20 s; one is killed -9 after 7 s,
    another stops (SIGTERM) after 12 s and a fourth starts after 14 s. Every second from the
    first period on gets exactly one job, and each job runs."""
    stream = new_stream()
    port = free_port()
    options = ("--every", "1", "--processes", "1")
    with instances(server.port, stream, journal) as start:
        began = time.monotonic()
        crashing = start("crashing", "serve", *options)
        stopping = start("stopping", "serve", *options)
        start("staying", "serve", *options, "--metrics-port", str(port))

        def after(seconds: float) -> None:
            wait_until(lambda: time.monotonic() >= began + seconds, seconds + 1, f"{seconds} s")

        after(7)
        kill_session(crashing)  # as if its machine died, mid-schedule
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        scraped = time.time()
        after(12)
        stopping.send_signal(signal.SIGTERM)
        assert stopping.wait(30) == 0
        after(14)
        start("late", "serve", *options)
        after(20)
        with client_for(server.port) as client:
            last = int(client.hget(every_name(stream), "tick") or 0)

        def ran_keys() -> set[str]:
            return {row[6] for row in journal.rows() if row[0] == "ran"}

        wait_until(lambda: f"every:tick:{last}" in ran_keys(), 10, "the last period's job to run")

    ran = [row for row in journal.rows() if row[0] == "ran"]
    jobs_of = defaultdict(set)
    for row in ran:
        jobs_of[int(row[6].rpartition(":")[2])].add(row[1])  # period -> job ids
    periods = sorted(jobs_of)
    assert all(len(jobs) == 1 for jobs in jobs_of.values()), jobs_of  # one job per period
    assert periods == list(range(periods[0], last + 1))  # and one for every second
    assert len(periods) >= 15, periods
    assert Counter(row[1] for row in ran).most_common(1)[0][1] <= 2  # reruns: the crash only
    assert {row[2] for row in ran} >= {"stopping", "staying"}  # not one leader

    [family] = [
        family
        for family in text_string_to_metric_families(page.decode())
        if family.name == "instance_source_schedule_next_run_timestamp_seconds"
    ]
    [sample] = family.samples
    assert sample.labels == {"schedule": "tick"}
    assert scraped - 1 <= sample.value <= scraped + 2  # the next second's period
