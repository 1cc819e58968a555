"""qq.py's reader and context, called as the worker calls them, and its commands end to end."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from servers import Server, running

from {{ cookiecutter.__package_slug }} import qq
from {{ cookiecutter.__package_slug }}.jobs import Job, JobsWorker
from {{ cookiecutter.__package_slug }}.settings import Settings

PROJECT = Path(__file__).resolve().parents[1]
PREFIX = "{{ cookiecutter.__env_prefix }}"
MODULE = "{{ cookiecutter.__package_slug }}.qq"


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running("redis", tmp_path_factory.mktemp("redis")) as server:
        yield server


def digest(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


async def test_context_and_reader_as_the_worker_calls_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(_env_file=None)
    caplog.set_level("INFO")
    job = Job(id="1-0", payload={"text": "hello"})
    async with asynccontextmanager(qq.context)(settings=settings) as ctx:
        await qq.reader(item=job, ctx=ctx, settings=settings)
        assert ctx.processed == 1
{%- if cookiecutter.include_aiocache %}
        assert await ctx.cache.get("1-0") == digest({"text": "hello"})
{%- endif %}
    assert f"1-0 sha256={digest({'text': 'hello'})}" in caplog.text
    assert "this process handled 1 job(s)" in caplog.text


def test_runner_reads_the_stream() -> None:
    assert isinstance(qq.runner, JobsWorker)


def test_submit_then_drain_processes_every_job(redis: Server) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(PREFIX)}
    env |= {
        f"{PREFIX}JOBS_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
        f"{PREFIX}JOBS_STREAM": "qq-test",
        f"{PREFIX}LOG_LEVEL": "INFO",
    }
    payloads = [{"n": n} for n in range(50)]
    submitted = subprocess.run(
        [sys.executable, "-m", MODULE, "submit", "-"],
        input="".join(json.dumps(payload) + "\n" for payload in payloads),
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    ids = submitted.stdout.split()
    assert len(ids) == 50

    drained = subprocess.run(
        [sys.executable, "-m", MODULE, "drain"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert drained.returncode == 0, drained.stderr
    summary = json.loads(drained.stdout.splitlines()[-1])
    assert summary["succeeded"] == summary["enqueued"] == 50
    logged = dict(re.findall(r"-worker-\d+ \S+: (\S+) sha256=([0-9a-f]{64})", drained.stderr))
    assert sorted(logged) == sorted(ids)
    assert sorted(logged.values()) == sorted(digest(payload) for payload in payloads)
