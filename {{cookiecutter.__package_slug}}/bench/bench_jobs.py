"""Jobs/s through a Redis stream with 1 and 2 worker instances, against the in-process writer.

`python bench/bench_jobs.py [--quick]`. Starts its own redis-server on a free loopback port
(stopped by PID at the end). Every instance has 2 worker processes; an instance is a forked
process running `JobsWorker.drain()`, as a replica on another machine would. Jobs are
submitted before the clock starts; the time runs from starting the instances until every
one has drained. The in-process baseline is `Worker` with a writer counting from 0, with the
same reader and settings, measured in the same run. All share this machine's cores with
redis-server, so the ratios are what to compare, not the raw numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis

from {{ cookiecutter.__package_slug }}.jobs import Job, Jobs, JobsWorker
from {{ cookiecutter.__package_slug }}.settings import Settings
from {{ cookiecutter.__package_slug }}.worker import Worker

FORK = multiprocessing.get_context("fork")
PROCESSES = 2


def settings_for(port: int, stream: str) -> Settings:
    return Settings(
        _env_file=None,
        num_processes=PROCESSES,
        log_level="WARNING",
        jobs_redis_url=f"redis://127.0.0.1:{port}/0",
        jobs_stream=stream,
    )


def make_reader(work_ms: float) -> Callable[..., Any]:
    async def reader(item: Any) -> None:
        if work_ms:
            await asyncio.sleep(work_ms / 1000)  # stands in for a call to a database or API

    return reader


def bench_in_process(n: int, work_ms: float, port: int) -> float:
    numbers = iter(range(n))

    async def writer(desired: int) -> AsyncIterator[int]:
        for number in itertools.islice(numbers, desired):
            yield number

    settings = settings_for(port, "unused")
    worker = Worker("bench", reader=make_reader(work_ms), writer=writer, settings=settings)
    started = time.perf_counter()
    summary = asyncio.run(worker.drain())
    elapsed = time.perf_counter() - started
    assert summary.succeeded == n, summary
    return n / elapsed


def _instance(port: int, stream: str, work_ms: float, consumer: str) -> None:
    reader = make_reader(work_ms)

    async def job_reader(item: Job) -> None:
        await reader(item)

    worker = JobsWorker(
        "bench", reader=job_reader, settings=settings_for(port, stream), consumer=consumer
    )
    summary = asyncio.run(worker.drain())
    raise SystemExit(0 if summary.ok else 1)


def bench_redis(n: int, work_ms: float, port: int, instances: int, run: int) -> float:
    stream = f"bench-{run}:jobs"
    with Jobs(settings_for(port, stream)) as jobs:
        jobs.submit_many(range(n))
    processes = [
        FORK.Process(target=_instance, args=(port, stream, work_ms, f"instance-{i}"))
        for i in range(instances)
    ]
    started = time.perf_counter()
    for process in processes:
        process.start()
    for process in processes:
        process.join(300)
    elapsed = time.perf_counter() - started
    for process in processes:
        if process.exitcode is None:
            process.kill()
            process.join(10)
        assert process.exitcode == 0, f"an instance exited with {process.exitcode}"
    with Jobs(settings_for(port, stream)) as jobs:
        stats = jobs.stats()
        assert (stats.waiting, stats.pending, stats.dead) == (0, 0, 0), stats
        jobs.client.delete(stream, f"{stream}:dead")
    return n / elapsed


def bench_submit(n: int, port: int) -> float:
    with Jobs(settings_for(port, "bench-submit:jobs")) as jobs:
        started = time.perf_counter()
        jobs.submit_many({"order": number} for number in range(n))
        elapsed = time.perf_counter() - started
        jobs.client.delete(jobs.stream)
    return n / elapsed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = _free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir"]
    process = subprocess.Popen([*command, directory], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise
            time.sleep(0.02)
    client.close()
    return process, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    args = parser.parse_args()
    n = 400 if args.quick else 20_000
    repeats = 1 if args.quick else 3
    workloads = [0.0, 2.0] if args.quick else [0.0, 2.0, 10.0]
    if shutil.which("redis-server") is None and not shutil.which("/usr/bin/redis-server"):
        print("redis-server is not installed: jobs items/s not measured", file=sys.stderr)
        print("items/s: not measured (no redis-server)")
        return 0
    runs = itertools.count()
    with tempfile.TemporaryDirectory() as directory:
        server, port = start_redis(directory)
        try:
            print(f"{n} jobs, {PROCESSES} worker processes per instance, best of {repeats}")
            header = f"{'reader':<14}{'runner':<26}{'items/s':>10}{'vs in-process':>15}"
            print(header)
            print("-" * len(header))
            for work_ms in workloads:
                name = "no-op" if not work_ms else f"awaits {work_ms:g} ms"
                base = max(bench_in_process(n, work_ms, port) for _ in range(repeats))
                one = max(bench_redis(n, work_ms, port, 1, next(runs)) for _ in range(repeats))
                two = max(bench_redis(n, work_ms, port, 2, next(runs)) for _ in range(repeats))
                for runner, rate in (
                    ("in-process writer", base),
                    ("redis, 1 instance", one),
                    ("redis, 2 instances", two),
                ):
                    print(f"{name:<14}{runner:<26}{rate:>10.0f}{rate / base:>14.2f}x")
                print(f"{'':<14}{'2 instances / 1 instance':<26}{'':>10}{two / one:>14.2f}x")
            rate = bench_submit(n, port)
            print(f"submit_many: {rate:.0f} jobs/s")
        finally:
            server.kill()
            server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
