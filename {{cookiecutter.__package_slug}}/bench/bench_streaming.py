"""Throughput of QueueIO between two threads, against baselines measured in the same run.

Baselines: a bytes copy (memcpy) and hashlib.sha256 on one thread, and an os.pipe
between two threads with a 1 MiB pipe buffer.  Every QueueIO case moves the same
bytes (1 MiB or 64 KiB writes, 1 MiB reads) through a LimitedQueueIO or a
HashingQueueIO with an 8 MiB memory limit.

    python bench/bench_streaming.py            # 1 GiB per case
    python bench/bench_streaming.py --quick    # a few MiB: a smoke test
    python bench/bench_streaming.py --repeat 3 # best of three runs per case
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from {{ cookiecutter.__package_slug }}.streaming import (
    HashingQueueIO,
    LimitedQueueIO,
    QueueIO,
)

MiB = 1024 * 1024
BLOCK = MiB
SMALL = 64 * 1024
LIMIT = 8 * MiB
F_SETPIPE_SZ = 1031  # Linux fcntl command; the fcntl module names it on 3.10+


@dataclass
class Row:
    """One line of the result table."""

    name: str
    seconds: float = 0.0
    cpu: float = 0.0  # process CPU seconds during the best run
    baseline: str = ""
    target: float = 0.0


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def source(total: int, write_size: int) -> list[bytes]:
    """One MiB of random bytes, cut into writes; the writer cycles through them."""
    block = os.urandom(BLOCK)
    pieces = [block[i : i + write_size] for i in range(0, BLOCK, write_size)]
    assert total % BLOCK == 0
    return pieces


def run_memcpy(total: int) -> float:
    src = os.urandom(BLOCK)
    dst = bytearray(BLOCK)
    view = memoryview(dst)

    def copy() -> None:
        for _ in range(total // BLOCK):
            view[:] = src

    return timed(copy)


def run_sha256(total: int, pieces: list[bytes]) -> tuple[float, str]:
    h = hashlib.sha256()

    def digest() -> None:
        update = h.update
        for _ in range(total // BLOCK):
            for piece in pieces:
                update(piece)

    return timed(digest), h.hexdigest()


def run_os_pipe(total: int) -> float:
    import fcntl

    r, w = os.pipe()
    try:
        fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", F_SETPIPE_SZ), MiB)
        block = os.urandom(BLOCK)

        def write() -> None:
            view = memoryview(block)
            for _ in range(total // BLOCK):
                done = 0
                while done < BLOCK:
                    done += os.write(w, view[done:])

        buf = bytearray(BLOCK)
        received = 0

        def read() -> None:
            nonlocal received
            while received < total:
                n = os.readv(r, [buf])
                if n == 0:
                    break
                received += n

        seconds = run_pair(write, read)
        assert received == total
        return seconds
    finally:
        os.close(r)
        os.close(w)


def run_pair(write: Callable[[], None], read: Callable[[], None]) -> float:
    errors: list[BaseException] = []

    def guard(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)

        return run

    writer = threading.Thread(target=guard(write))
    reader = threading.Thread(target=guard(read))
    start = time.perf_counter()
    reader.start()
    writer.start()
    writer.join()
    reader.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    return seconds


def write_all(pipe: QueueIO, total: int, pieces: list[bytes]) -> None:
    """Write `total` bytes, cycling through `pieces`, then close the pipe."""
    w = pipe.write
    with pipe:
        for _ in range(total // BLOCK):
            for piece in pieces:
                w(piece)


def run_writer_alone(pipe: QueueIO, total: int, pieces: list[bytes]) -> float:
    """The writer's cost without a reader: the pipe must be able to hold everything."""
    return timed(lambda: write_all(pipe, total, pieces))


def run_queue(
    pipe: QueueIO, total: int, pieces: list[bytes], mode: str, read_size: int = BLOCK
) -> float:
    received = 0

    def read() -> None:
        nonlocal received
        if mode == "read":
            r = pipe.read
            while data := r(read_size):
                received += len(data)
        else:
            buf = bytearray(BLOCK)
            ri = pipe.readinto
            while n := ri(buf):
                received += n

    seconds = run_pair(lambda: write_all(pipe, total, pieces), read)
    assert received == total, (received, total)
    return seconds


def cpu_use(row: Row) -> str:
    return f"{100 * row.cpu / row.seconds:.0f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="QueueIO throughput against baselines.")
    parser.add_argument("--quick", action="store_true", help="move 8 MiB per case")
    parser.add_argument("--size-mib", type=int, default=1024, help="MiB per case (1024)")
    parser.add_argument("--repeat", type=int, default=None, help="rounds; best is kept (3)")
    args = parser.parse_args(argv)
    total = (8 if args.quick else args.size_mib) * MiB
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if total <= 0 or repeat <= 0:
        parser.error("--size-mib and --repeat must be positive")

    big = source(total, BLOCK)
    small = source(total, SMALL)
    digests = {BLOCK: run_sha256(total, big)[1], SMALL: run_sha256(total, small)[1]}

    def limited(pieces: list[bytes], mode: str) -> float:
        return run_queue(LimitedQueueIO(memory_limit=LIMIT), total, pieces, mode)

    def hashing(pieces: list[bytes], write_size: int, read_size: int = BLOCK) -> float:
        pipe = HashingQueueIO("sha256", memory_limit=max(LIMIT, 2 * read_size))
        seconds = run_queue(pipe, total, pieces, "read", read_size)
        assert pipe.hexdigest() == digests[write_size], "digest mismatch"
        return seconds

    def hashing_alone(pieces: list[bytes], write_size: int) -> float:
        pipe = HashingQueueIO("sha256", memory_limit=total)  # pieces are shared: no copies
        seconds = run_writer_alone(pipe, total, pieces)
        assert pipe.hexdigest() == digests[write_size], "digest mismatch"
        return seconds

    memcpy_row = "memcpy, 1 thread (bytes copy)"
    sha_row = "sha256, 1 thread"
    pipe_row = "os.pipe, 2 threads, 1 MiB pipe buffer"
    cases: list[tuple[Row, Callable[[], float]]] = [
        (Row(memcpy_row), lambda: run_memcpy(total)),
        (Row(sha_row), lambda: run_sha256(total, big)[0]),
        (Row(pipe_row), lambda: run_os_pipe(total)),
    ]
    for label, pieces, size in (("1 MiB", big, BLOCK), ("64 KiB", small, SMALL)):
        cases += [
            (
                Row(f"LimitedQueueIO {label} writes, read(1 MiB)", baseline=pipe_row, target=2.0),
                lambda p=pieces: limited(p, "read"),  # type: ignore[misc]
            ),
            (
                Row(
                    f"LimitedQueueIO {label} writes, readinto(1 MiB)", baseline=pipe_row, target=2.0
                ),
                lambda p=pieces: limited(p, "readinto"),  # type: ignore[misc]
            ),
            (
                Row(
                    f"HashingQueueIO sha256 {label} writes, read(1 MiB)",
                    baseline=sha_row,
                    target=0.95,
                ),
                lambda p=pieces, n=size: hashing(p, n),  # type: ignore[misc]
            ),
            # Diagnostics, no target: where the hashing row above loses time.
            (
                Row(f"  ...sha256 {label} writes, no reader", baseline=sha_row),
                lambda p=pieces, n=size: hashing_alone(p, n),  # type: ignore[misc]
            ),
            (
                Row(f"  ...sha256 {label} writes, read(16 MiB)", baseline=sha_row),
                lambda p=pieces, n=size: hashing(p, n, 16 * MiB),  # type: ignore[misc]
            ),
        ]
    # Each round measures every case once, baselines included, so that a slow
    # moment on a shared machine hits a case and its baseline alike.
    for _ in range(repeat):
        for row, run in cases:
            cpu = time.process_time()
            seconds = run()
            cpu = time.process_time() - cpu
            if row.seconds == 0.0 or seconds < row.seconds:
                row.seconds, row.cpu = seconds, cpu

    rows = [row for row, _ in cases]
    rates = {row.name: total / row.seconds / 1e6 for row in rows}
    print(
        f"streaming benchmark: {total // MiB} MiB per case, best of {repeat}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs; MB = 10^6 bytes"
    )
    header = f"{'case':<48} {'MB/s':>8} {'cpu':>5} {'ratio':>7} {'target':>7}  vs"
    print(header)
    print("-" * len(header))
    targets = met = 0
    for row in rows:
        rate = rates[row.name]
        if not row.baseline:
            print(f"{row.name:<48} {rate:>8.0f} {cpu_use(row):>5} {'':>7} {'':>7}  (baseline)")
            continue
        ratio = rate / rates[row.baseline]
        if not row.target:
            print(f"{row.name:<48} {rate:>8.0f} {cpu_use(row):>5} {ratio:>6.2f}x {'':>7}")
            continue
        targets += 1
        met += ratio >= row.target
        mark = "ok" if ratio >= row.target else "MISS"
        print(
            f"{row.name:<48} {rate:>8.0f} {cpu_use(row):>5} {ratio:>6.2f}x {row.target:>6.2f}x  "
            f"{row.baseline.split(',')[0]} [{mark}]"
        )
    print("cpu: process CPU time / wall time; under 100% on a 1-thread row means the")
    print("machine was busy with other work while it ran.")
    if args.quick:
        print("(--quick: sizes too small for the ratios to mean anything)")
    else:
        print(f"{met} of {targets} targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
