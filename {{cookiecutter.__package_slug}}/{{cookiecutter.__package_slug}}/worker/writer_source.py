"""The default source: QuasiQueue's writer function, called as QuasiQueue calls it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from .calls import check_writer, keywords
from .source import Source


class WriterSource(Source):
    """Items from `writer(desired=..., settings=...)`, an async generator function.

    The writer yields up to `desired` new items, or nothing (or None / False, as QuasiQueue
    allows) when there is no work right now. A drain ends when it yields nothing and every
    item has finished. Outcomes are not reported back to the writer: a run is at-most-once.
    """

    def __init__(self, writer: Callable[..., Any], settings: Any) -> None:
        self.writer = writer
        self.settings = settings
        self._takes = check_writer(writer)
        self._empty = False

    async def fetch(self, desired: int, wait: float) -> AsyncIterator[Any]:
        """Call the writer once; if it had nothing, sleep `wait` seconds before returning."""
        kwargs = keywords(self._takes, desired=desired, settings=self.settings)
        generator = self.writer(**kwargs)
        self._empty = True
        try:
            async for item in generator:
                if item is None or item is False:  # QuasiQueue's "nothing right now"
                    break
                self._empty = False
                yield item
        finally:
            await generator.aclose()
        if self._empty and wait > 0:
            await asyncio.sleep(wait)

    async def finished(self) -> bool:
        """True when the last call of the writer yielded nothing."""
        return self._empty
