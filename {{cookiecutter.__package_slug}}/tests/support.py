"""Helpers shared by the worker tests: a cross-process journal and small writers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import psutil

from {{ cookiecutter.__package_slug }}.settings import Settings
from {{ cookiecutter.__package_slug }}.worker import Failure, Outcome, Session, WriterSource


class Journal:
    """Lines appended from any process, read back by the test.

    Each line is one `os.write` to a file opened with O_APPEND, which the kernel keeps whole.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def add(self, *fields: object) -> None:
        line = ("\t".join(str(field) for field in fields) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def rows(self) -> list[list[str]]:
        return [line.split("\t") for line in self.path.read_text().splitlines()]

    def column(self, index: int = 0) -> Counter[str]:
        return Counter(row[index] for row in self.rows())


def writer_over(
    items: Iterable[Any], *, ignore_desired: bool = False
) -> Callable[[int], AsyncIterator[Any]]:
    """Return a writer that yields `items` once, `desired` at a time (or all at once)."""
    source = iter(items)

    async def writer(desired: int) -> AsyncIterator[Any]:
        for item in itertools.islice(source, None if ignore_desired else desired):
            yield item

    return writer


class RecordingSource(WriterSource):
    """A writer's items, keeping every outcome the runtime settles (in the parent)."""

    def __init__(
        self,
        writer: Callable[..., AsyncIterator[Any]],
        settings: Settings,
        commit: Callable[[Any, str | None], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(writer, settings)
        self.outcomes: list[tuple[Any, Outcome, str | None]] = []
        self._commit = commit

    def settle(self, item: Any, outcome: Outcome, error: str | None) -> None:
        self.outcomes.append((item, outcome, error))

    @property
    def failures(self) -> list[tuple[Any, str]]:
        """(item, error) of the items that failed or were lost."""
        lost = (Outcome.FAILED, Outcome.LOST)
        return [(item, error or "") for item, outcome, error in self.outcomes if outcome in lost]

    def of(self, outcome: Outcome) -> list[Any]:
        """The items settled with `outcome`."""
        return [item for item, settled, _ in self.outcomes if settled is outcome]


class CommittingSource(RecordingSource):
    """A `RecordingSource` with a session in its worker processes: `begin` (a hook, returning
    the items as they are) before the reader, and after it `commit`, the test's
    `commit(item, error)` for each item of a call, all at once; an item whose `commit`
    raises fails with that error."""

    def session(self) -> Session:
        return _CommittingSession(self)

    async def begin(self, items: Sequence[Any]) -> Sequence[Any]:
        return items


class _CommittingSession(Session):
    def __init__(self, source: CommittingSource) -> None:
        self.source = source

    async def begin(self, items: Sequence[Any]) -> Sequence[Any]:
        return await self.source.begin(items)

    async def commit(self, done: Sequence[tuple[Any, Failure | None]]) -> list[Exception | None]:
        commit = self.source._commit
        assert commit is not None
        calls = [commit(item, error) for item, error in done]
        results = await asyncio.gather(*calls, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        return [result if isinstance(result, Exception) else None for result in results]


def fast_settings(**overrides: Any) -> Settings:
    """Settings for tests: small and quick to stop, unaffected by the environment."""
    values: dict[str, Any] = {
        "num_processes": 2,
        "graceful_shutdown_timeout": 10.0,
        "empty_queue_sleep_time": 0.05,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def kill_session(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """kill -9 a process started with `start_new_session=True` and its whole process group.

    As if its machine died: returns once the process is reaped and no process of its group can
    run another instruction (gone, or a zombie waiting for init), so nothing it does lands late.
    """
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout)
    deadline = time.monotonic() + timeout
    while running_in_group(process.pid):
        assert time.monotonic() < deadline, f"process group {process.pid} still running"
        time.sleep(0.01)


def running_in_group(pgid: int) -> list[int]:
    """PIDs of the processes of group `pgid` that are not yet dead or zombies."""
    alive = []
    for candidate in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
            if os.getpgid(candidate.pid) == pgid and candidate.status() != psutil.STATUS_ZOMBIE:
                alive.append(candidate.pid)
    return alive


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def at_once_in_two_processes(call: Callable[[], int]) -> list[int]:
    """Run `call` in two forked processes that start it together; return what each returned."""
    fork = multiprocessing.get_context("fork")
    start, results = fork.Barrier(2), fork.Queue()

    def run() -> None:
        start.wait(10)
        results.put(call())

    processes = [fork.Process(target=run) for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
        assert process.exitcode == 0, f"{process.name} exited with {process.exitcode}"
    return [results.get(timeout=5) for _ in processes]
