{%- set source = cookiecutter.__source -%}
"""Tests of the sample code in qq.py: rewrite this file when you replace the sample.

They call the sample reader and context exactly as the worker (and QuasiQueue) calls them,
with the sample's items, and run its commands end to end. What must hold for any qq.py is
in test_qq_contract.py, which stays as it is.
"""

from __future__ import annotations

import hashlib
{%- if source == "writer" %}
import importlib
import inspect
{%- endif %}
import json
import os
import re
import subprocess
import sys
{%- if source == "redis" %}
import tokenize
from collections.abc import Iterator
{%- endif %}
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
{%- if source == "redis" %}
from servers import Server, running
{%- endif %}

from {{ cookiecutter.__package_slug }} import qq
from {{ cookiecutter.__package_slug }}.settings import Settings
{%- if source == "redis" %}
from {{ cookiecutter.__package_slug }}.sources.redis_jobs import Every, Job, RedisJobs
from {{ cookiecutter.__package_slug }}.sources.redis_jobs.every import check_schedules
{%- elif source == "spool" %}
from {{ cookiecutter.__package_slug }}.sources.spool import SpoolItem, SpoolSource
{%- endif %}
from {{ cookiecutter.__package_slug }}.worker import Worker

PROJECT = Path(__file__).resolve().parents[1]
PREFIX = "{{ cookiecutter.__env_prefix }}"
MODULE = "{{ cookiecutter.__package_slug }}.qq"
{%- if source == "redis" %}
SAMPLE = {"text": "hello"}
SAMPLE_NAME = "1-0"
SAMPLE_DIGEST = hashlib.sha256(json.dumps(SAMPLE, sort_keys=True).encode()).hexdigest()
SAMPLE_ITEM = Job(id=SAMPLE_NAME, payload=SAMPLE)
{%- elif source == "spool" %}
SAMPLE_NAME = "order-7"
SAMPLE_DIGEST = hashlib.sha256(b"order 7").hexdigest()
SAMPLE_ITEM = SpoolItem("batch", 1, 0, SAMPLE_NAME, "order 7")
{%- else %}
SAMPLE_NAME = "job-007"
SAMPLE_DIGEST = hashlib.sha256(b"job-007").hexdigest()
SAMPLE_ITEM = SAMPLE_NAME
{%- endif %}


def environment(**settings: str) -> dict[str, str]:
    """The environment without this project's settings, plus `settings` (names unprefixed)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(PREFIX)}
    return env | {f"{PREFIX}LOG_LEVEL": "INFO"} | {PREFIX + k: v for k, v in settings.items()}


def qq_command(
    *args: str, env: dict[str, str], stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", MODULE, *args],
        input=stdin,
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_context_and_reader_as_the_worker_calls_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(_env_file=None)
    caplog.set_level("INFO")
    async with asynccontextmanager(qq.context)(settings=settings) as ctx:
        await qq.reader(item=SAMPLE_ITEM, ctx=ctx, settings=settings)
        assert ctx.processed == 1
{%- if cookiecutter.include_aiocache %}
        assert await ctx.cache.get(SAMPLE_NAME) == SAMPLE_DIGEST
{%- endif %}

    assert f"{SAMPLE_NAME} sha256={SAMPLE_DIGEST}" in caplog.text
    assert "this process handled 1 job(s)" in caplog.text


def test_help_lists_every_command() -> None:
    result = qq_command("--help", env=environment())
    assert result.returncode == 0, result.stderr
    listed = set(re.findall(r"^│ (\w+)\s", result.stdout, re.MULTILINE))
{%- if source == "writer" %}
    assert listed == {"serve", "drain", "health"}
{%- else %}
    assert {"serve", "drain", "health", "submit", "stats"} <= listed  # and the source's others
{%- endif %}
{%- if source == "writer" %}


@pytest.fixture
def fresh_qq() -> object:
    """qq with its sample job set not yet consumed."""
    return importlib.reload(qq)


async def test_writer_yields_at_most_desired_then_nothing(fresh_qq: object) -> None:
    settings = Settings(_env_file=None)
    batches = []
    while True:
        batch = [job async for job in qq.writer(desired=30, settings=settings)]
        if not batch:
            break
        batches.append(batch)
    jobs = [job for batch in batches for job in batch]

    assert [len(batch) for batch in batches] == [30, 30, 30, 10]
    assert jobs == list(qq.SAMPLE_JOBS)
    assert len(set(jobs)) == 100


def test_runner_is_a_worker_over_these_functions() -> None:
    assert isinstance(qq.runner, Worker)
    assert (qq.runner.reader, qq.runner.writer, qq.runner.context) == (
        qq.reader,
        qq.writer,
        qq.context,
    )
    assert inspect.isasyncgenfunction(qq.writer)


def test_drain_command_processes_every_sample_job_in_worker_processes() -> None:
    result = qq_command("drain", env=environment())

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["enqueued"] == summary["succeeded"] == 100
    assert summary["failed"] == summary["not_started"] == 0
    logged = dict(re.findall(r"\S+-worker-\d+ \S+: (job-\d+) sha256=([0-9a-f]{64})", result.stderr))
    assert sorted(logged) == sorted(qq.SAMPLE_JOBS)
    assert all(digest == hashlib.sha256(job.encode()).hexdigest() for job, digest in logged.items())
{%- else %}


def test_runner_is_a_worker_over_these_functions() -> None:
    assert isinstance(qq.runner, Worker)
    runner = qq.runner
    assert (runner.reader, runner.writer, runner.context) == (qq.reader, None, qq.context)
{%- if source == "redis" %}
    assert isinstance(qq.runner.source, RedisJobs)


def test_the_sample_declares_no_schedule_and_its_commented_example_is_valid() -> None:
    assert qq.SCHEDULES == []
    assert isinstance(qq.runner.source, RedisJobs)
    assert qq.runner.source.schedules == ()
    with tokenize.open(qq.__file__) as source:
        comments = [
            token.string.lstrip("#").strip()
            for token in tokenize.generate_tokens(source.readline)
            if token.type == tokenize.COMMENT
        ]
    [example] = [comment for comment in comments if comment.startswith("Every(")]
    schedule = eval(example, {"Every": Every})
    assert check_schedules([schedule]) == (schedule,)


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running("redis", tmp_path_factory.mktemp("redis")) as server:
        yield server


def test_submit_then_drain_processes_every_job(redis: Server) -> None:
    env = environment(JOBS_REDIS_URL=f"redis://127.0.0.1:{redis.port}/0", JOBS_STREAM="qq-test")
    payloads = [{"n": n} for n in range(50)]
    lines = "".join(json.dumps(payload) + "\n" for payload in payloads)
    submitted = qq_command("submit", "-", env=env, stdin=lines)
    assert submitted.returncode == 0, submitted.stderr
    ids = submitted.stdout.split()
    assert len(ids) == 50

    drained = qq_command("drain", env=env)
    assert drained.returncode == 0, drained.stderr
    summary = json.loads(drained.stdout.splitlines()[-1])
    assert summary["succeeded"] == summary["enqueued"] == 50
    logged = dict(re.findall(r"-worker-\d+ \S+: (\S+) sha256=([0-9a-f]{64})", drained.stderr))
    assert sorted(logged) == sorted(ids)
    digests = [json.dumps(payload, sort_keys=True).encode() for payload in payloads]
    assert sorted(logged.values()) == sorted(hashlib.sha256(d).hexdigest() for d in digests)
{%- else %}
    assert isinstance(qq.runner.source, SpoolSource)


def test_submit_then_drain_processes_every_record(tmp_path: Path) -> None:
    env = environment(SPOOL_ROOT=str(tmp_path / "spool"))
    records = [f"order {n}" for n in range(50)]
    submitted = qq_command("submit", "-", env=env, stdin="\n".join(records) + "\n")
    assert submitted.returncode == 0, submitted.stderr

    drained = qq_command("drain", env=env)
    assert drained.returncode == 0, drained.stderr
    summary = json.loads(drained.stdout.splitlines()[-1])
    assert summary["succeeded"] == summary["enqueued"] == 50
    logged = re.findall(r"-worker-\d+ \S+: (\S+) sha256=([0-9a-f]{64})", drained.stderr)
    assert sorted(digest for _, digest in logged) == sorted(
        hashlib.sha256(record.encode()).hexdigest() for record in records
    )
    stats = qq_command("stats", env=env)
    counts = json.loads(stats.stdout)
    assert (counts["ready"], counts["claimed"], counts["dead"]) == (0, 0, 0)
{%- endif %}
{%- endif %}
