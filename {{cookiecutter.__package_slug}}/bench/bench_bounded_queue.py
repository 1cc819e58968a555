"""Throughput of BoundedQueue / WorkQueue against a bare asyncio.Queue with 4 worker tasks.

Run: ``python bench/bench_bounded_queue.py`` (100,000 items) or ``--quick`` (3,000 items);
``--yield`` makes each item await ``asyncio.sleep(0)`` once, ``--maxsize`` sets the bound.
Each run pushes N trivial items (``async def work(x): return None``) through 4 workers with
the same ``maxsize``; the timed span runs from starting the workers to the end of
shutdown. Runs of the different variants are interleaved and repeated; the table shows the
median run, the ratio to the bare queue measured in the same process, and the per-item
overhead in microseconds (our time per item minus the bare queue's).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from {{ cookiecutter.__package_slug }}.bounded_queue import BoundedQueue, WorkQueue

WORKERS = 4


async def trivial(item: int) -> None:
    """A trivial item: no I/O, no yield to the event loop."""


async def yielding(item: int) -> None:
    """An item that gives the event loop one turn (like the shortest I/O call)."""
    await asyncio.sleep(0)


work = trivial


async def bare(n: int, maxsize: int, queue_type: type[asyncio.Queue[int]] = asyncio.Queue) -> float:
    start = time.perf_counter()
    queue: asyncio.Queue[int] = queue_type(maxsize)

    async def worker() -> None:
        while True:
            item = await queue.get()
            await work(item)
            queue.task_done()

    tasks = [asyncio.create_task(worker()) for _ in range(WORKERS)]
    for i in range(n):
        await queue.put(i)
    await queue.join()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return time.perf_counter() - start


async def bare_priority(n: int, maxsize: int) -> float:
    return await bare(n, maxsize, asyncio.PriorityQueue)


async def bounded(n: int, maxsize: int, ordering: str = "fifo") -> float:
    start = time.perf_counter()
    async with BoundedQueue[int](maxsize, ordering=ordering) as queue:
        await queue.start_workers(work, WORKERS)
        for i in range(n):
            await queue.put(i)
        await queue.join()
    elapsed = time.perf_counter() - start
    assert queue.metrics.processed == n, queue.metrics
    return elapsed


async def bounded_priority(n: int, maxsize: int) -> float:
    return await bounded(n, maxsize, "priority")


async def work_queue(n: int, maxsize: int) -> float:
    start = time.perf_counter()
    queue = WorkQueue[int](maxsize, concurrency_limit=WORKERS)
    await queue.batch_process(range(n), work)
    elapsed = time.perf_counter() - start
    assert queue.metrics.processed == n, queue.metrics
    return elapsed


Variant = Callable[[int, int], Coroutine[Any, Any, float]]
VARIANTS: list[tuple[str, Variant, str]] = [
    ("asyncio.Queue + 4 tasks (baseline)", bare, ""),
    ("BoundedQueue fifo, start_workers(4)", bounded, "asyncio.Queue + 4 tasks (baseline)"),
    ("WorkQueue.batch_process, 4 workers", work_queue, "asyncio.Queue + 4 tasks (baseline)"),
    ("asyncio.PriorityQueue + 4 tasks", bare_priority, ""),
    ("BoundedQueue priority, 4 workers", bounded_priority, "asyncio.PriorityQueue + 4 tasks"),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few thousand items, 1 repeat")
    parser.add_argument("-n", "--items", type=int, default=None, help="items per run")
    parser.add_argument("--maxsize", type=int, default=1000, help="queue bound (all variants)")
    parser.add_argument("--repeat", type=int, default=None, help="runs per variant")
    parser.add_argument(
        "--yield", dest="yielding", action="store_true", help="each item yields to the loop once"
    )
    args = parser.parse_args(argv)
    global work
    work = yielding if args.yielding else trivial
    n = args.items or (3_000 if args.quick else 100_000)
    repeat = args.repeat or (1 if args.quick else 5)

    times: dict[str, list[float]] = {name: [] for name, _, _ in VARIANTS}
    asyncio.run(bare(min(n, 2_000), args.maxsize))  # warm-up
    for _ in range(repeat):
        for name, func, _ in VARIANTS:
            gc.collect()
            times[name].append(asyncio.run(func(n, args.maxsize)))

    kind = "yielding" if args.yielding else "trivial"
    print(
        f"# {n:,} {kind} items, {WORKERS} workers, maxsize={args.maxsize},"
        f" median of {repeat} run(s), Python {sys.version.split()[0]}"
    )
    print()
    print("| variant | items/s | us/item | vs baseline | overhead us/item |")
    print("|---|---:|---:|---:|---:|")
    for name, _, base in VARIANTS:
        per_item = statistics.median(times[name]) / n
        if base:
            base_item = statistics.median(times[base]) / n
            ratio = f"{base_item / per_item:.2f}x"
            overhead = f"{(per_item - base_item) * 1e6:+.2f}"
        else:
            ratio, overhead = "1.00x", "-"
        print(f"| {name} | {1 / per_item:,.0f} | {per_item * 1e6:.2f} | {ratio} | {overhead} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
