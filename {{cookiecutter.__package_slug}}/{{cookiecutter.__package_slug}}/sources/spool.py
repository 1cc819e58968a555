"""A spool folder as a worker's `Source`: at-least-once processing that survives crashes.

`SpoolSource(settings)` claims ready batches from `SPOOL_ROOT` and hands out their records as
`SpoolItem`s. A batch is acked once every one of its records succeeded; if one failed, the
batch is nacked and delivered again later (after `SPOOL_MAX_ATTEMPTS` failures it goes to
`dead/`); if some never started because the worker stopped, it is released without counting
an attempt. A record whose reader raised `worker.Permanent` goes to `dead/` at once, as a batch
of its own, and its batch goes on without it: the records that succeeded are acked with it,
never run again because of it. If the whole worker dies, the
`recover()` run when the next one opens the source returns its claimed batches to ready.
Readers see each record at least once, so make them idempotent with `item.key`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import typer

from ..settings import ENV_PREFIX, Settings
from ..spool import Batch, Consumer, Producer, dead_batches, purge_dead, recover, replay_dead
from ..worker import Failure, Outcome, Source, SourceCli
from ..worker.dead_letters import DeadLetter, dead_letter_commands

# Batches waiting, held by a consumer, given up on; and bytes of records set aside as corrupt.
FOLDERS = ("ready", "claimed", "dead", "corrupt")


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
    errors: list[str] = field(default_factory=list)  # records that may succeed another time
    dead: dict[int, str] = field(default_factory=dict)  # position -> error: given up on
    released: bool = False


class SpoolSource(Source):
    """The records of the spool folder `SPOOL_ROOT` (or `root`), batch by batch."""

    durable = True

    def __init__(self, settings: Settings, root: str | os.PathLike[str] | None = None) -> None:
        self.settings = settings
        self.root = Path(root if root is not None else settings.spool_root)
        self.max_attempts = settings.spool_max_attempts
        self._claims: dict[str, _Claim] = {}
        self._idle: list[Consumer] = []

    def __repr__(self) -> str:
        return f"SpoolSource(root={str(self.root)!r})"

    async def open(self, *, drain: bool) -> None:
        """Create the folders if needed, and return the batches of dead workers to ready."""
        recover(self.root, max_attempts=self.max_attempts)

    async def fetch(self, desired: int, wait: float) -> AsyncIterator[SpoolItem]:
        """Yield the records of newly claimed batches, about `desired` of them (whole
        batches); if none is ready, wait `wait` seconds first and look once more."""
        given = 0
        looked_again = wait <= 0
        while given < desired:
            consumer = self._idle.pop() if self._idle else self._consumer()
            batch = consumer.claim(timeout=0)
            if batch is None:
                self._idle.append(consumer)
                if given or looked_again:
                    return
                looked_again = True
                await asyncio.sleep(wait)
                continue
            claim = _Claim(consumer, batch, remaining=len(batch))
            self._claims[batch.id] = claim
            if not claim.remaining:
                self._finish(claim)
            for position, record in enumerate(batch):
                yield SpoolItem(batch.id, batch.attempts, position, record.key, record.data)
                given += 1

    async def finished(self) -> bool:
        """True when no batch is ready and no live worker holds one (dead ones' go back)."""
        recover(self.root, max_attempts=self.max_attempts)
        return not _entries(self.root / "ready") and not _entries(self.root / "claimed")

    def settle(self, item: SpoolItem, outcome: Outcome, error: Failure | None) -> None:
        """Count the record's outcome; finish its batch when it was the last one.

        The batch is acked if all its records succeeded, nacked (one more failed attempt)
        if one failed or was lost with its worker process, and released (no attempt
        counted) if some never started.
        """
        claim = self._claims[item.batch]
        claim.remaining -= 1
        if outcome is Outcome.FAILED and getattr(error, "permanent", False):
            claim.dead[item.position] = str(error)
        elif outcome is Outcome.FAILED or outcome is Outcome.LOST:
            claim.errors.append(f"{item.key}: {error}")
        elif outcome is Outcome.NOT_STARTED:
            claim.released = True
        if claim.remaining == 0:
            self._finish(claim)

    async def close(self) -> None:
        """Release the batches whose records were fetched but not all handed out."""
        for claim in list(self._claims.values()):
            del self._claims[claim.batch.id]
            claim.batch.release()
            self._idle.append(claim.consumer)
        for consumer in self._idle:
            consumer.close()
        self._idle.clear()

    def cli(self) -> SpoolCli:
        """`submit` (publish one batch), `stats` and `dead` (list, replay, purge), and the
        health check."""
        return SpoolCli(self.root, self.max_attempts)

    async def gauges(self) -> dict[str, float]:
        """Batches waiting (ready), pending (claimed) and dead, and records set aside as
        corrupt, as `qq stats` counts them."""
        counts = [len(_entries(self.root / name)) for name in FOLDERS]
        names = ("waiting", "pending", "dead_letters", "corrupt")
        return dict(zip(names, counts, strict=True))

    def _finish(self, claim: _Claim) -> None:
        """Ack, nack or release the batch; its records that failed for good go to dead/ on
        their own first, so that the others are not run again because of them."""
        del self._claims[claim.batch.id]
        if claim.errors:
            claim.batch.nack("; ".join(claim.errors)[:4000], dead=claim.dead)
        elif claim.released:
            claim.batch.release(dead=claim.dead)
        else:
            claim.batch.ack(dead=claim.dead)
        self._idle.append(claim.consumer)

    def _consumer(self) -> Consumer:
        return Consumer(self.root, max_attempts=self.max_attempts)


class SpoolCli(SourceCli):
    """The command-line part of `SpoolSource`."""

    def __init__(self, root: Path, max_attempts: int) -> None:
        self.root = root
        self.max_attempts = max_attempts

    def commands(self) -> list[Callable[..., None] | typer.Typer]:
        """`submit` (publish one batch), `stats` and `dead` (list, replay, purge)."""
        root, max_attempts = self.root, self.max_attempts

        def submit(
            records: list[str] = typer.Argument(..., metavar="RECORD..."),  # noqa: B008
        ) -> None:
            """Publish the records to the spool folder as one batch.

            Each RECORD is one record's text; '-' reads one record a line from stdin."""
            texts: list[str] = []
            for text in records:
                texts += sys.stdin.read().splitlines() if text == "-" else [text]
            with Producer(root, max_records=max(1, len(texts)), max_age=None) as producer:
                for text in texts:
                    producer.put(text)
            typer.echo(f"published {len(texts)} record(s) to {root}")

        def stats() -> None:
            """Print the number of ready, claimed and dead batches, and of corrupt records set
            aside, as JSON."""
            recover(root, max_attempts=max_attempts)
            counts = {name: len(_entries(root / name)) for name in FOLDERS}
            typer.echo(json.dumps({"root": str(root), **counts}))

        where = f"the batches in {root / 'dead'}"
        dead = dead_letter_commands(lambda: nullcontext(_DeadBatches(root)), where, (OSError,))
        return [submit, stats, dead]

    def check(self) -> str | None:
        """The spool folder must exist and be writable."""
        if not os.access(self.root, os.W_OK | os.X_OK):
            return (
                f"spool folder {str(self.root)!r} ({ENV_PREFIX}SPOOL_ROOT) is missing or not "
                "writable"
            )
        return None


class _DeadBatches:
    """The spool's `dead/` folder as `worker.dead_letters.DeadLetters` (ids: batch names)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def dead_list(self, limit: int) -> list[DeadLetter]:
        return [
            DeadLetter(
                id=batch.name,
                job=batch.name.partition(".")[0],
                attempts=batch.failures,
                error=batch.error,
                when=datetime.fromtimestamp(batch.when, tz=UTC).isoformat(timespec="seconds"),
            )
            for batch in dead_batches(self.root, limit)
        ]

    def dead_replay(self, ids: Sequence[str] | None) -> int:
        return replay_dead(self.root, None if ids is None else list(ids))

    def dead_purge(self, ids: Sequence[str] | None, older_than: float | None) -> int:
        return purge_dead(self.root, None if ids is None else list(ids), older_than)


def _entries(folder: Path) -> list[str]:
    """The batch names in one spool folder (none if it does not exist yet): not hidden files,
    nor the `.error` note beside each dead batch."""
    try:
        names = os.listdir(folder)
        return [n for n in names if not n.startswith(".") and not n.endswith(".error")]
    except FileNotFoundError:
        return []
