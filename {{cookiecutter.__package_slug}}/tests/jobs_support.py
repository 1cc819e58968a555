"""Helpers of the Redis-jobs tests: settings for a test stream, workers, instances."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from support import Journal, fast_settings, kill_session

from {{ cookiecutter.__package_slug }}.settings import Settings
from {{ cookiecutter.__package_slug }}.sources.redis_jobs import RedisJobs, acked_name
from {{ cookiecutter.__package_slug }}.worker import Worker

PROJECT = Path(__file__).resolve().parents[1]
INSTANCE = PROJECT / "tests" / "jobs_instance.py"
_streams = itertools.count()


def new_stream() -> str:
    """A stream name no other test uses."""
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


def jobs_worker(
    settings: Settings, reader: Callable[..., Any], consumer: str | None = None
) -> Worker:
    """A worker over the stream, recording its acknowledgements."""
    source = RedisJobs(settings, consumer=consumer, record_acks=True)
    return Worker("t", reader, settings=settings, source=source)


def acks(port: int, stream: str) -> list[dict[str, str]]:
    """Every accepted acknowledgement (RedisJobs(record_acks=True) records them)."""
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

    def start(consumer: str, command: str, *options: str) -> subprocess.Popen[str]:
        head = [sys.executable, str(INSTANCE), str(port), stream, consumer, str(journal.path)]
        process = subprocess.Popen(
            [*head, command, *options],
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
                kill_session(process)
            process.communicate(timeout=10)
