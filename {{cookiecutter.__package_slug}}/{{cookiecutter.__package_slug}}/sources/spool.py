"""The worker fed by a spool folder: at-least-once processing that survives crashes.

`SpoolWorker` is a `Worker` whose writer claims ready batches from the spool and yields their
records. A batch is acked once every one of its records succeeded; if one failed, or never
started because the worker stopped, the batch is nacked and delivered again later (after
`max_attempts` failures it goes to `dead/`). If the whole worker dies, `recover()` (run
when the next one starts) returns its claimed batches to ready. Readers see each record at
least once, so make them idempotent with `item.key`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .settings import Settings
from .spool import Batch, Consumer, recover
from .worker import Worker


class SpoolItem(NamedTuple):
    """One record of a claimed batch, as the reader receives it."""

    batch: str
    attempt: int
    position: int  # in its batch
    key: str
    data: bytes | str


@dataclass
class _Claim:
    consumer: Consumer
    batch: Batch
    remaining: int
    errors: list[str] = field(default_factory=list)
    unstarted: int = 0


class SpoolSource:
    """Claims batches for the writer and settles them when all their records have ended."""

    def __init__(self, root: str | os.PathLike[str], *, max_attempts: int = 5) -> None:
        self.root = root
        self.max_attempts = max_attempts
        self._claims: dict[str, _Claim] = {}
        self._idle: list[Consumer] = []
        recover(root, max_attempts=max_attempts)  # batches of a worker that died go back

    async def writer(self, desired: int) -> AsyncIterator[SpoolItem]:
        """Yield the records of newly claimed batches, about `desired` of them."""
        given = 0
        while given < desired:
            consumer = self._idle.pop() if self._idle else self._consumer()
            batch = consumer.claim(timeout=0)
            if batch is None:
                self._idle.append(consumer)
                return
            claim = _Claim(consumer, batch, remaining=len(batch))
            self._claims[batch.id] = claim
            if not claim.remaining:
                self._finish(claim)
            for position, record in enumerate(batch):
                yield SpoolItem(batch.id, batch.attempts, position, record.key, record.data)
                given += 1

    def settle(self, item: SpoolItem, error: str | None = None, *, started: bool = True) -> None:
        """Record how one item ended; finish its batch when it was the last one.

        The batch is acked if all its records succeeded, nacked (one more failed attempt) if
        one failed, and released (no attempt counted) if some never started.
        """
        claim = self._claims[item.batch]
        claim.remaining -= 1
        if error is not None:
            claim.errors.append(f"{item.key}: {error}")
        if not started:
            claim.unstarted += 1
        if claim.remaining == 0:
            self._finish(claim)

    def _finish(self, claim: _Claim) -> None:
        del self._claims[claim.batch.id]
        if claim.errors:
            claim.batch.nack("; ".join(claim.errors)[:4000])
        elif claim.unstarted:
            claim.batch.release()
        else:
            claim.batch.ack()
        self._idle.append(claim.consumer)

    def _consumer(self) -> Consumer:
        return Consumer(self.root, max_attempts=self.max_attempts)


class SpoolWorker(Worker):
    """A Worker whose items are the records of a spool folder, acked batch by batch."""

    def __init__(
        self,
        name: str,
        reader: Callable[..., Any],
        root: str | os.PathLike[str],
        context: Callable[..., Any] | None = None,
        settings: Settings | None = None,
        *,
        max_attempts: int = 5,
    ) -> None:
        self.source = SpoolSource(root, max_attempts=max_attempts)
        super().__init__(name, reader, self.source.writer, context, settings)

    def on_success(self, item: SpoolItem) -> None:
        """Count the record towards acking its batch."""
        self.source.settle(item)

    def on_failure(self, item: SpoolItem, error: str) -> None:
        """Log, and mark its batch for redelivery."""
        super().on_failure(item, error)
        self.source.settle(item, error)

    def on_unstarted(self, items: list[SpoolItem]) -> None:
        """Return their batches to the spool, without counting a failed attempt."""
        for item in items:
            self.source.settle(item, started=False)
