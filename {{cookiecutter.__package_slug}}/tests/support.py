"""Helpers shared by the worker tests: a cross-process journal and small writers."""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

from {{ cookiecutter.__package_slug }}.settings import Settings


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
