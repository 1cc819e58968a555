"""The default source: QuasiQueue's writer function, called as QuasiQueue calls it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from .calls import check_writer, keywords
from .source import Source


class WriterSource(Source):
    """Items from `writer(desired=..., settings=...)`, an async generator function.

    The writer yields up to `desired` new items, or nothing (or None / False, as QuasiQueue
    allows) when there is no work right now. A drain ends when it yields nothing new (items
    yielded again within PREVENT_REQUEUING_TIME are skipped) and every item has finished.
    Outcomes are not reported back to the writer: a run is at-most-once.
    """

    def __init__(self, writer: Callable[..., Any], settings: Any) -> None:
        self.writer = writer
        self.settings = settings
        self._takes = check_writer(writer)

    def __repr__(self) -> str:
        writer = getattr(self.writer, "__qualname__", self.writer)
        return f"{type(self).__name__}(writer={writer!r})"

    async def fetch(self, desired: int, wait: float) -> AsyncIterator[Any]:
        """Call the writer once (the runtime paces the calls: at most one per `wait` seconds
        while it yields nothing new)."""
        kwargs = keywords(self._takes, desired=desired, settings=self.settings)
        generator = self.writer(**kwargs)
        try:
            async for item in generator:
                if item is None or item is False:  # QuasiQueue's "nothing right now"
                    break
                yield item
        finally:
            await generator.aclose()
