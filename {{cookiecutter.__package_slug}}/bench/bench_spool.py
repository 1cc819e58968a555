"""Benchmark: spool throughput vs multiprocessing.Queue, one producer and one consumer process.

Run: ``python bench/bench_spool.py`` (200,000 records) or ``--quick`` (a few thousand).
Every method moves the same small JSON records (json.dumps in the producer, json.loads in
the consumer); the clock runs from the start signal until the consumer has every record.
The methods run in turn, ``--rounds`` times (3; 1 with --quick), and the table shows each
method's best and median round, so that other load on the machine disturbs the ratios less.
The spool directory defaults to a fresh temporary directory (``--dir`` to choose where).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.synchronize import Barrier

from {{ cookiecutter.__package_slug }}.spool import Consumer, Producer

CTX = mp.get_context("spawn")
LIST_SIZE = 1000
QUEUE_ITEM = "mp.Queue, item by item"


def make_record(i: int) -> str:
    return json.dumps({"id": i, "user": f"user-{i % 997}", "amount": i * 0.01, "ok": True})


def spool_producer(root: str, n: int, fsync: bool, batch: int, go: Barrier) -> None:
    with Producer(root, fsync=fsync, max_records=batch, max_bytes=batch << 10) as producer:
        go.wait()
        for i in range(n):
            producer.put(make_record(i))


def spool_consumer(root: str, n: int, fsync: bool, go: Barrier, done: mp.Queue[int]) -> None:
    consumer = Consumer(root, fsync=fsync)
    total = seen = 0
    go.wait()
    while seen < n:
        batch = consumer.claim(timeout=60)
        if batch is None:
            break
        for record in batch:
            total += json.loads(record.data)["id"]
        seen += len(batch)
        batch.ack()
    done.put(total if seen == n else -1)


def queue_producer(q: mp.Queue[str | list[str] | None], n: int, lists: bool, go: Barrier) -> None:
    go.wait()
    if lists:
        for start in range(0, n, LIST_SIZE):
            q.put([make_record(i) for i in range(start, min(n, start + LIST_SIZE))])
    else:
        for i in range(n):
            q.put(make_record(i))
    q.put(None)
    q.close()
    q.join_thread()


def queue_consumer(q: mp.Queue[str | list[str] | None], go: Barrier, done: mp.Queue[int]) -> None:
    total = 0
    go.wait()
    while (item := q.get()) is not None:
        for record in item if isinstance(item, list) else [item]:
            total += json.loads(record)["id"]
    done.put(total)


def timed(
    start_producer: Callable[[Barrier], mp.process.BaseProcess],
    start_consumer: Callable[[Barrier, mp.Queue[int]], mp.process.BaseProcess],
    n: int,
) -> float:
    """Start both processes, release them together, return seconds until the consumer is done."""
    go = CTX.Barrier(3)  # both processes and this one: the clock starts when all are ready
    done: mp.Queue[int] = CTX.Queue()
    procs = [start_producer(go), start_consumer(go, done)]
    for proc in procs:
        proc.start()
    go.wait(timeout=120)
    began = time.perf_counter()
    try:
        total = done.get(timeout=600)
    except queue.Empty:
        total = -2
    elapsed = time.perf_counter() - began
    for proc in procs:
        proc.join(60)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if total != n * (n - 1) // 2:
        raise SystemExit(f"consumer got the wrong records (checksum {total})")
    return elapsed


def run_spool(base: str, n: int, fsync: bool, batch: int = 1000) -> float:
    root = tempfile.mkdtemp(prefix="spool-bench-", dir=base)
    try:
        return timed(
            lambda go: CTX.Process(target=spool_producer, args=(root, n, fsync, batch, go)),
            lambda go, done: CTX.Process(target=spool_consumer, args=(root, n, fsync, go, done)),
            n,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_queue(n: int, lists: bool) -> float:
    q: mp.Queue[str | list[str] | None] = CTX.Queue()
    return timed(
        lambda go: CTX.Process(target=queue_producer, args=(q, n, lists, go)),
        lambda go, done: CTX.Process(target=queue_consumer, args=(q, go, done)),
        n,
    )


def filesystem(path: str) -> str:
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                point = fields[1]
                inside = path == point or path.startswith(point.rstrip("/") + "/")
                if (inside or point == "/") and len(point) >= len(best):
                    best, kind = point, fields[2]
    except OSError:
        pass
    return kind


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few thousand records")
    parser.add_argument("--records", type=int, default=None, help="number of records")
    parser.add_argument("--dir", default=None, help="where to create the spool directories")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of every method")
    args = parser.parse_args(argv)
    n = args.records or (3000 if args.quick else 200_000)
    rounds = args.rounds or (1 if args.quick else 3)
    base = os.path.abspath(args.dir or tempfile.gettempdir())
    os.makedirs(base, exist_ok=True)

    methods: list[tuple[str, Callable[[], float]]] = [
        ("spool, fsync on", lambda: run_spool(base, n, fsync=True)),
        ("spool, fsync off", lambda: run_spool(base, n, fsync=False)),
        ("spool, fsync on, 4k/batch", lambda: run_spool(base, n, fsync=True, batch=4000)),
        (QUEUE_ITEM, lambda: run_queue(n, lists=False)),
        (f"mp.Queue, lists of {LIST_SIZE:,}", lambda: run_queue(n, lists=True)),
    ]
    rates: dict[str, list[float]] = {name: [] for name, _ in methods}
    for _ in range(rounds):
        for name, run in methods:
            rates[name].append(n / run())
    best = {name: max(values) for name, values in rates.items()}
    median = {name: statistics.median(values) for name, values in rates.items()}

    print(f"{n:,} JSON records, 1 producer + 1 consumer process, {rounds} round(s),")
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, spool dir {base}")
    print(f"({filesystem(base)}). Spool defaults: 1,000 records or 1 MiB a batch, 64 KiB write")
    print("buffer; 4k/batch rows: 4,000 records or 4 MiB.")
    print()
    header = ("method", "best items/s", "median items/s", "best vs item", "median vs item")
    widths = (25, 12, 14, 12, 14)
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|")
    for name, _ in methods:
        cells = (
            name,
            f"{best[name]:,.0f}",
            f"{median[name]:,.0f}",
            f"{best[name] / best[QUEUE_ITEM]:.2f}x",
            f"{median[name] / median[QUEUE_ITEM]:.2f}x",
        )
        print(
            "| "
            + " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )
    print()
    print(f"target: spool with fsync >= 2x {QUEUE_ITEM} (best rounds):")
    for name in ("spool, fsync on", "spool, fsync on, 4k/batch"):
        ratio = best[name] / best[QUEUE_ITEM]
        print(f"  {name}: {'met' if ratio >= 2.0 else 'NOT met'} ({ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
