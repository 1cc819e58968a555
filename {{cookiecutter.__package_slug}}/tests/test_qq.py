"""qq.py's writer, reader and context, called exactly as the worker (and QuasiQueue) calls them."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from {{ cookiecutter.__package_slug }} import qq
from {{ cookiecutter.__package_slug }}.settings import Settings
from {{ cookiecutter.__package_slug }}.worker import Worker

PROJECT = Path(__file__).resolve().parents[1]
PREFIX = "{{ cookiecutter.__env_prefix }}"
MODULE = "{{ cookiecutter.__package_slug }}.qq"


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


async def test_context_and_reader_as_the_worker_calls_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(_env_file=None)
    caplog.set_level("INFO")
    async with asynccontextmanager(qq.context)(settings=settings) as ctx:
        await qq.reader(item="job-007", ctx=ctx, settings=settings)
        await qq.reader(item="job-008", ctx=ctx, settings=settings)
        assert ctx.processed == 2
{%- if cookiecutter.include_aiocache %}
        assert await ctx.cache.get("job-007") == hashlib.sha256(b"job-007").hexdigest()
{%- endif %}

    digest = hashlib.sha256(b"job-007").hexdigest()
    assert f"job-007 sha256={digest}" in caplog.text
    assert "this process handled 2 job(s)" in caplog.text


def test_runner_is_a_worker_over_these_functions() -> None:
    assert isinstance(qq.runner, Worker)
    assert (qq.runner.reader, qq.runner.writer, qq.runner.context) == (
        qq.reader,
        qq.writer,
        qq.context,
    )
    assert inspect.isasyncgenfunction(qq.writer)


def test_drain_command_processes_every_sample_job_in_worker_processes() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(PREFIX)}
    result = subprocess.run(
        [sys.executable, "-m", MODULE, "drain"],
        cwd=PROJECT,
        env=env | {f"{PREFIX}LOG_LEVEL": "INFO"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["enqueued"] == summary["succeeded"] == 100
    assert summary["failed"] == summary["not_started"] == 0
    logged = dict(re.findall(r"\S+-worker-\d+ \S+: (job-\d+) sha256=([0-9a-f]{64})", result.stderr))
    assert sorted(logged) == sorted(qq.SAMPLE_JOBS)
    assert all(digest == hashlib.sha256(job.encode()).hexdigest() for job, digest in logged.items())
