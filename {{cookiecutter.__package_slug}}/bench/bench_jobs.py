"""Jobs/s through a Redis stream with 1 and 2 worker instances, against the in-process writer,
and how soon an idle instance starts a new job.

`python bench/bench_jobs.py [--quick] [--only no-op ...]` (`--only`: just those readers'
rows). Starts its own redis-server on a free loopback port (stopped by PID at the end).
Every instance has 2 worker processes; an instance is a forked process running
`Worker(..., source=RedisJobs(...)).drain()`, as a replica on another machine would. Jobs are
submitted before the clock starts; the time runs from starting the instances until every
one has drained. The in-process baseline is `Worker` with a writer counting from 0, with the
same reader and settings, measured in the same run; the three runners take turns in every
round, so a slower spell of the machine hits them alike. All share this machine's cores
with redis-server, so the ratios are what to compare, not the raw numbers.

Targets, against each runner's own no-op row ("vs no-op"): jobs awaiting 50 ms at least 0.5x
(the writer's and one instance's), jobs awaiting 2 ms through one instance at least 0.8x; and
jobs of 1 ms CPU through one instance at least 85% of this machine's cores (1,000 jobs/s a
core). With reader slots that follow the work, jobs that wait keep the CPU busy too, so "vs
in-process" shows what the stream costs in CPU (its no-op row: about 0.45x here), and a second
instance on the same two cores can add little: both are shown, not judged.

Pick-up: one serving instance, idle (EMPTY_QUEUE_SLEEP_TIME 2 s, so polling would show),
gets one job at a time; the time from `submit` to the reader's first line, median and p90.
Target: median under 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package, without PYTHONPATH

from {{ cookiecutter.__package_slug }}.settings import Settings
from {{ cookiecutter.__package_slug }}.sources.redis_jobs import Job, Jobs, RedisJobs
from {{ cookiecutter.__package_slug }}.worker import Worker

FORK = multiprocessing.get_context("fork")
PROCESSES = 2


def settings_for(port: int, stream: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "num_processes": PROCESSES,
        "log_level": "WARNING",
        "jobs_redis_url": f"redis://127.0.0.1:{port}/0",
        "jobs_stream": stream,
    }
    return Settings(_env_file=None, **(values | overrides))


class Workload(NamedTuple):
    """What each job does, and how many jobs make a run of about two seconds here."""

    name: str
    wait_ms: float  # awaited: stands in for a call to a database or API
    cpu_ms: float  # computed: holds the process's CPU
    jobs: int


WORKLOADS = [
    Workload("no-op", 0, 0, 20_000),
    Workload("awaits 2 ms", 2, 0, 20_000),
    Workload("awaits 10 ms", 10, 0, 5_000),
    Workload("awaits 50 ms", 50, 0, 20_000),
    Workload("1 ms CPU", 0, 1, 4_000),
]
# Against the same runner's no-op row, in the same run: (workload, runner) -> at least.
VS_NO_OP = {
    ("awaits 50 ms", "in-process writer"): 0.5,
    ("awaits 50 ms", "redis, 1 instance"): 0.5,
    ("awaits 2 ms", "redis, 1 instance"): 0.8,
}


def make_reader(work: Workload) -> Callable[..., Any]:
    async def reader(item: Any) -> None:
        if work.wait_ms:
            await asyncio.sleep(work.wait_ms / 1000)
        if work.cpu_ms:
            until = time.thread_time() + work.cpu_ms / 1000
            while time.thread_time() < until:
                pass

    return reader


def bench_in_process(n: int, work: Workload, port: int) -> float:
    numbers = iter(range(n))

    async def writer(desired: int) -> AsyncIterator[int]:
        for number in itertools.islice(numbers, desired):
            yield number

    settings = settings_for(port, "unused")
    worker = Worker("bench", reader=make_reader(work), writer=writer, settings=settings)
    started = time.perf_counter()
    summary = asyncio.run(worker.drain())
    elapsed = time.perf_counter() - started
    assert summary.succeeded == n, summary
    return n / elapsed


def _instance(port: int, stream: str, work: Workload, consumer: str) -> None:
    reader = make_reader(work)

    async def job_reader(item: Job) -> None:
        await reader(item)

    settings = settings_for(port, stream)
    source = RedisJobs(settings, consumer=consumer)
    worker = Worker("bench", job_reader, settings=settings, source=source)
    summary = asyncio.run(worker.drain())
    raise SystemExit(0 if summary.ok else 1)


def bench_redis(n: int, work: Workload, port: int, instances: int, run: int) -> float:
    stream = f"bench-{run}:jobs"
    with Jobs(settings_for(port, stream)) as jobs:
        jobs.submit_many(range(n))
    processes = [
        FORK.Process(target=_instance, args=(port, stream, work, f"instance-{i}"))
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


def _serving_instance(port: int, stream: str, started: Connection) -> None:
    """Serve until SIGTERM; the reader sends the time each job started to `started`."""

    def reader(item: Job) -> None:
        started.send((item.payload, time.time()))

    settings = settings_for(port, stream, num_processes=1, empty_queue_sleep_time=2.0)
    worker = Worker("bench", reader, settings=settings, source=RedisJobs(settings))
    asyncio.run(worker.main())


def bench_pickup(n: int, port: int) -> list[float]:
    """Seconds from submitting a job to an idle serving instance until its reader starts."""
    stream = "bench-pickup:jobs"
    receiver, sender = FORK.Pipe(duplex=False)
    instance = FORK.Process(target=_serving_instance, args=(port, stream, sender))
    instance.start()
    latencies = []
    try:
        with Jobs(settings_for(port, stream)) as jobs:
            jobs.submit("warm-up")
            assert receiver.poll(60), "the serving instance started no job within 60 s"
            receiver.recv()
            for number in range(n):
                time.sleep(0.1)  # idle again: the instance waits on the stream
                submitted = time.time()
                jobs.submit(number)
                assert receiver.poll(10), f"job {number} did not start within 10 s"
                payload, began = receiver.recv()
                assert payload == number, payload
                latencies.append(began - submitted)
    finally:
        if instance.pid is not None:
            os.kill(instance.pid, signal.SIGTERM)
        instance.join(30)
        if instance.exitcode is None:
            instance.kill()
            instance.join(10)
    with Jobs(settings_for(port, stream)) as jobs:
        jobs.client.delete(stream, f"{stream}:dead")
    return latencies


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


class Targets:
    """The targets judged in this run: each printed with its verdict, then the count met."""

    def __init__(self) -> None:
        self.met = self.judged = 0

    def judge(self, line: str, ok: bool) -> None:
        self.judged += 1
        self.met += ok
        print(f"{line} [{'ok' if ok else 'MISS'}]")

    def __str__(self) -> str:
        return f"{self.met} of {self.judged} targets met"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument(
        "--only",
        action="append",
        choices=[work.name for work in WORKLOADS],
        help="measure only this reader's rows (again for more); no submit or pick-up lines",
    )
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    workloads = [w._replace(jobs=400) for w in WORKLOADS[:2]] if args.quick else WORKLOADS
    if args.only:
        workloads = [work for work in workloads if work.name in args.only]
    no_op: dict[str, float] = {}
    if shutil.which("redis-server") is None and not shutil.which("/usr/bin/redis-server"):
        print("redis-server is not installed: jobs/s not measured", file=sys.stderr)
        return 1 if os.environ.get("CI") == "true" else 0
    runs = itertools.count()
    targets = Targets()
    with tempfile.TemporaryDirectory() as directory:
        server, port = start_redis(directory)
        try:
            print(f"{PROCESSES} worker processes per instance, best of {repeats} rounds")
            header = (
                f"{'reader':<14}{'jobs':>7}  {'runner':<26}{'items/s':>10}{'vs in-process':>15}"
                f"{'vs no-op':>10}"
            )
            print(header)
            print("-" * len(header))
            for work in workloads:
                n = work.jobs
                rates: dict[str, float] = {}
                for _ in range(repeats):  # the runners take turns
                    for runner, instances in (
                        ("in-process writer", 0),
                        ("redis, 1 instance", 1),
                        ("redis, 2 instances", 2),
                    ):
                        rate = (
                            bench_redis(n, work, port, instances, next(runs))
                            if instances
                            else bench_in_process(n, work, port)
                        )
                        rates[runner] = max(rates.get(runner, 0.0), rate)
                base = rates["in-process writer"]
                if work.name == "no-op":
                    no_op = dict(rates)
                for runner, rate in rates.items():
                    own = f"{rate / no_op[runner]:>9.2f}x" if runner in no_op else ""
                    print(
                        f"{work.name:<14}{n:>7}  {runner:<26}{rate:>10.0f}{rate / base:>14.2f}x"
                        f"{own}"
                    )
                for (name, runner), least in VS_NO_OP.items():
                    if name == work.name and runner in no_op:
                        ratio = rates[runner] / no_op[runner]
                        targets.judge(
                            f"{'':<23}target: {runner} {ratio:.2f}x its no-op row "
                            f"(>= {least:.2f}x)",
                            ratio >= least,
                        )
                if work.cpu_ms and not work.wait_ms:
                    least = 0.85 * (os.cpu_count() or 1) * 1000 / work.cpu_ms
                    rate = rates["redis, 1 instance"]
                    targets.judge(
                        f"{'':<23}target: redis, 1 instance {rate:.0f} jobs/s (>= 85% of "
                        f"{os.cpu_count()} cores: {least:.0f})",
                        rate >= least,
                    )
                scale = rates["redis, 2 instances"] / rates["redis, 1 instance"]
                print(f"{'':<23}2 instances / 1 instance: {scale:.2f}x (not judged, one machine)")
            if args.only:
                print(targets)
                return 0
            rate = bench_submit(20_000, port)
            print(f"submit_many: {rate:.0f} jobs/s")
            count = 5 if args.quick else 50
            latencies = sorted(bench_pickup(count, port))
            median = statistics.median(latencies) * 1000
            p90 = latencies[int(0.9 * (len(latencies) - 1))] * 1000
            targets.judge(
                f"pick-up by an idle instance, {count} jobs: median {median:.1f} ms, "
                f"p90 {p90:.1f} ms (median < 50 ms)",
                median < 50,
            )
            print(targets)
        finally:
            server.kill()
            server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
