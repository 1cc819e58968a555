"""The seam for tracing each item: `Worker(..., tracing=...)` takes any object with these
four methods (the project's `tracing.py` is one, for OpenTelemetry).

Without one (the default) the runtime does nothing more per item than check that it is None.
With one, the parent asks it for the trace context current when it accepts an item (inside the
writer's span, say), sends that along with the item (a field of its frame), and each worker
process runs each reader call (each try: retries included) inside the span it opens, with what
the source knows of the item (`ItemInfo`: its id, attempt and the context it was enqueued in).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from .source import ItemInfo


class Instrument(Protocol):
    """What the runtime calls, in this order, on an instrument given as `tracing=`."""

    def carrier(self) -> bytes:
        """In the parent, when an item is accepted from the source: the trace context current
        there, as bytes (b"" for none). It travels with the item."""
        ...

    def process_started(self, name: str) -> None:
        """In each worker process, after the fork and before any item: set up what the spans
        need (`name` is the worker's)."""
        ...

    def span(
        self, info: ItemInfo, seq: int, attempt: int, carrier: bytes
    ) -> AbstractContextManager[object]:
        """In a worker process, around one reader call: `info` what the source knows of the
        item, `seq` the runtime's number for it, `attempt` counting from 1 the tries of this
        run, `carrier` what `carrier()` returned for it. The reader's exception, if any,
        passes through the context manager (which must not swallow it)."""
        ...

    def process_stopping(self) -> None:
        """In each worker process, last, before it exits (stopped, recycled, or drained):
        hand over what is buffered. Called even if the context failed to open."""
        ...
