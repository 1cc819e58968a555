"""Throughput and latency of the worker against stock QuasiQueue and multiprocessing.Pool.

`python bench/bench_worker.py [--quick]`. All baselines are measured in the same run, on the
same machine, with 2 worker processes; the ratios are what to compare, not the raw numbers.
Targets: items awaiting 50 ms at least 0.5x this worker's trivial row (its reader slots hide
the waits), and 10,000 items of 1 KiB in flight at once, each awaiting 1 s, in under 200 MiB
of RSS in their worker process.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import psutil
import quasiqueue

from {{ cookiecutter.__package_slug }}.settings import Settings
from {{ cookiecutter.__package_slug }}.worker import Worker

FORK = multiprocessing.get_context("fork")
PROCESSES = 2


def burn(cpu_ms: float) -> None:
    """Spend `cpu_ms` milliseconds of CPU time."""
    end = time.process_time() + cpu_ms / 1000
    while time.process_time() < end:
        pass


def pool_item(cpu_ms: float) -> None:
    if cpu_ms:
        burn(cpu_ms)


def bench_pool(n: int, cpu_ms: float) -> float:
    started = time.perf_counter()
    with FORK.Pool(PROCESSES) as pool:
        for _ in pool.imap_unordered(pool_item, [cpu_ms] * n):
            pass
    return n / (time.perf_counter() - started)


def counting_writer(n: int) -> Callable[[int], AsyncIterator[int]]:
    numbers = iter(range(n))

    async def writer(desired: int) -> AsyncIterator[int]:
        for number in itertools.islice(numbers, desired):
            yield number

    return writer


def bench_worker(n: int, cpu_ms: float, wait_ms: float = 0.0) -> float:
    async def reader(item: int) -> None:
        if cpu_ms:
            burn(cpu_ms)
        if wait_ms:
            await asyncio.sleep(wait_ms / 1000)

    settings = Settings(_env_file=None, num_processes=PROCESSES, log_level="WARNING")
    worker = Worker("bench", reader=reader, writer=counting_writer(n), settings=settings)
    summary = asyncio.run(worker.drain())
    assert summary.succeeded == n, summary
    return n / summary.seconds


def bench_few_slow(n: int, cpu_ms: float) -> tuple[float, float, int]:
    """`n` items of `cpu_ms` each, run by an async reader that blocks its process while it
    computes: (our seconds, Pool's seconds, how many of our processes ran an item)."""
    pids: Any = FORK.SimpleQueue()

    async def reader(item: int) -> None:
        pids.put(os.getpid())
        burn(cpu_ms)

    settings = Settings(_env_file=None, num_processes=PROCESSES, log_level="WARNING")
    worker = Worker("bench", reader=reader, writer=counting_writer(n), settings=settings)
    summary = asyncio.run(worker.drain())
    assert summary.succeeded == n, summary
    used = {pids.get() for _ in range(n)}
    started = time.perf_counter()
    with FORK.Pool(PROCESSES) as pool:
        pool.map(pool_item, [cpu_ms] * n, chunksize=1)
    return summary.seconds, time.perf_counter() - started, len(used)


def stock_runner(reader: Any, writer: Any) -> quasiqueue.QuasiQueue:
    """Stock QuasiQueue with its own defaults (its annotations are narrower than its calls)."""
    return quasiqueue.QuasiQueue(
        "stock", reader=reader, writer=writer, settings=quasiqueue.Settings()
    )


def bench_memory(n: int, size: int, wait: float) -> tuple[int, float]:
    """`n` items of `size` bytes, each awaiting `wait` seconds, in one worker process with `n`
    reader slots: (the most in flight at once, the most RSS the process had, in MiB)."""
    counts: Any = FORK.Array("l", [0, 0, 0])  # in flight now, most at once, most RSS

    async def reader(item: str) -> None:
        with counts.get_lock():
            counts[0] += 1
            counts[1] = max(counts[1], counts[0])
        await asyncio.sleep(wait)
        rss = psutil.Process().memory_info().rss
        with counts.get_lock():
            counts[0] -= 1
            counts[2] = max(counts[2], rss)

    items = iter(f"{number:08d}".ljust(size, "x") for number in range(n))

    async def writer(desired: int) -> AsyncIterator[str]:
        for item in itertools.islice(items, desired):
            yield item

    settings = Settings(
        _env_file=None,
        num_processes=1,
        concurrent_tasks_per_process=n,
        max_queue_size=n,
        log_level="WARNING",
    )
    summary = asyncio.run(Worker("mem", reader=reader, writer=writer, settings=settings).drain())
    assert summary.succeeded == n, summary
    return int(counts[1]), counts[2] / 2**20


def _serve_stock(n: int, cpu_ms: float, count: Any, wait_ms: float = 0.0) -> None:
    async def reader(item: int) -> None:
        if cpu_ms:
            burn(cpu_ms)
        if wait_ms:
            await asyncio.sleep(wait_ms / 1000)
        with count.get_lock():
            count.value += 1

    asyncio.run(stock_runner(reader, counting_writer(n)).main())


def kill_tree(process: multiprocessing.process.BaseProcess) -> None:
    """Kill a process and its children, and reap it."""
    if process.exitcode is None and process.pid is not None:
        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
        process.kill()
    process.join(10)


def bench_stock(n: int, cpu_ms: float, limit: float, wait_ms: float = 0.0) -> float:
    """Stock QuasiQueue never stops by itself: count what it finishes, then kill it."""
    count: Any = FORK.Value("l", 0)
    process = FORK.Process(target=_serve_stock, args=(n, cpu_ms, count, wait_ms))
    started = time.perf_counter()
    process.start()
    while count.value < n and time.perf_counter() - started < limit:
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    done: int = count.value
    kill_tree(process)
    return done / elapsed


def _serve_latency(use_stock: bool, idle: float, seen: Any) -> None:
    available_at = time.monotonic() + idle
    given = False

    async def writer(desired: int) -> AsyncIterator[float]:
        nonlocal given
        if not given and time.monotonic() >= available_at:
            given = True
            yield available_at  # the reader measures from when the item came to exist

    async def reader(item: float) -> None:
        seen.value = time.monotonic() - item

    if use_stock:
        asyncio.run(stock_runner(reader, writer).main())
    else:
        settings = Settings(_env_file=None, num_processes=PROCESSES, log_level="WARNING")
        asyncio.run(Worker("lat", reader=reader, writer=writer, settings=settings).main())


def bench_latency(use_stock: bool, idle: float, limit: float) -> tuple[float, float]:
    """Seconds from the writer having an item (after `idle` s of nothing) to a reader starting
    it, and seconds from SIGTERM to exit; inf where `limit` passed first."""
    seen: Any = FORK.Value("d", -1.0)
    process = FORK.Process(target=_serve_latency, args=(use_stock, idle, seen))
    process.start()
    deadline = time.monotonic() + idle + limit
    while seen.value < 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    latency = float(seen.value) if seen.value >= 0 else float("inf")
    assert process.pid is not None
    sent = time.monotonic()
    os.kill(process.pid, signal.SIGTERM)
    process.join(limit)
    stop = time.monotonic() - sent if process.exitcode is not None else float("inf")
    kill_tree(process)
    return latency, stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    args = parser.parse_args()
    scale = 0.02 if args.quick else 1.0
    limit = 2.0 if args.quick else 20.0

    print(f"{PROCESSES} processes, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"{'workload':<16}{'runner':<34}{'items/s':>10}  ratio")
    trivial = 0.0
    for label, cpu_ms, n_fast, n_stock in (
        ("trivial", 0.0, 40_000, 600),
        ("5 ms CPU", 5.0, 800, 300),
    ):
        n = max(20, int(n_fast * scale))
        stock = bench_stock(max(20, int(n_stock * scale)), cpu_ms, limit)
        ours = bench_worker(n, cpu_ms)
        trivial = trivial or ours
        pool = bench_pool(n, cpu_ms)
        print(f"{label:<16}{'stock quasiqueue, its defaults':<34}{stock:>10.0f}  1.00x stock")
        print(
            f"{label:<16}{'this worker, rendered defaults':<34}{ours:>10.0f}  "
            f"{ours / stock:.2f}x stock, {ours / pool:.2f}x Pool"
        )
        print(f"{label:<16}{'multiprocessing.Pool imap_unordered':<34}{pool:>10.0f}  1.00x Pool")

    label = "awaits 50 ms"
    stock = bench_stock(max(20, int(600 * scale)), 0.0, limit, wait_ms=50)
    waits = bench_worker(max(200, int(20_000 * scale)), 0.0, wait_ms=50)
    ok = waits / trivial >= 0.5
    print(f"{label:<16}{'stock quasiqueue, its defaults':<34}{stock:>10.0f}  1.00x stock")
    print(
        f"{label:<16}{'this worker, rendered defaults':<34}{waits:>10.0f}  "
        f"{waits / stock:.2f}x stock, {waits / trivial:.2f}x its trivial row (>= 0.50x) "
        f"[{'ok' if ok else 'MISS'}]"
    )

    many = max(200, int(10_000 * scale))
    most, rss = bench_memory(many, 1024, 1.0)
    print(
        f"\nmemory: {many} items of 1 KiB awaiting 1 s in one worker process: {most} in flight "
        f"at once, peak RSS {rss:.0f} MiB (< 200 MiB) [{'ok' if rss < 200 else 'MISS'}]"
    )

    few, slow_ms = 6, 20.0 if args.quick else 100.0
    ours_s, pool_s, used = bench_few_slow(few, slow_ms)
    label = f"{few} x {slow_ms:g} ms"
    print(
        f"{label:<16}{'this worker, rendered defaults':<34}{few / ours_s:>10.1f}  "
        f"{pool_s / ours_s:.2f}x Pool, {used} of {PROCESSES} processes used"
    )
    print(f"{label:<16}{'multiprocessing.Pool map':<34}{few / pool_s:>10.1f}  1.00x Pool")

    idle = 0.55 if args.quick else 3.3  # not a multiple of the poll interval
    print(f"\nafter {idle:g} s with no work: seconds until a new item starts / until SIGTERM exits")
    for label, use_stock in (("stock quasiqueue, its defaults", True), ("this worker", False)):
        latency, stop = bench_latency(use_stock, idle, limit)
        print(f"{label:<34} pick-up {latency:>7.3f}   stop {stop:>7.3f}   (inf: over {limit:g} s)")


if __name__ == "__main__":
    main()
