"""The one seam between the runtime and where items come from: the `Source` protocol.

The runtime (`Worker`) never knows what a source is. In the parent process it opens the
source, fetches items from it, and settles every item it fetched exactly once, with how it
ended. In each worker process it may let the source prepare items before the reader runs
(`begin`) and acknowledge them after (`commit`), many in one call, so that durable sources
acknowledge close to the work, in parallel, without a round trip through the parent. Every
source plugs in this way: the writer function (`WriterSource`, the default), the spool folder
and Redis Streams (in `sources/`).

Subclass `Source` and override what you need; every method has a working default.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import WorkerError

if TYPE_CHECKING:
    import typer


class Outcome(enum.Enum):
    """How one item ended; `Source.settle` gets exactly one per fetched item."""

    SUCCEEDED = "succeeded"  # the reader returned, and `commit` (if any) did too
    FAILED = "failed"  # the reader raised on its last try, or `begin` / `commit` raised
    NOT_STARTED = "not_started"  # handed back at shutdown: the reader never saw it
    LOST = "lost"  # its worker process died holding it: it may or may not have started


class Failure(str):
    """The text of an item's failure, as `commit` gets it; `permanent` is True when the reader
    raised `worker.Permanent`: a source should not try the item again."""

    permanent: bool = False

    def __new__(cls, text: str, *, permanent: bool = False) -> Failure:
        failure = super().__new__(cls, text)
        failure.permanent = permanent
        return failure


class SourceUnavailable(WorkerError):
    """The source cannot be reached; the message names it (never a password) and the limit."""


class Source:
    """Where a worker's items come from, and where their outcomes go.

    Parent process, in this order: `open`, then `fetch` (repeatedly) and `settle` (once per
    fetched item, in the order outcomes arrive), `finished` when a drain has nothing left to
    run, and `close` last, always, after every item was settled. Worker processes: `session`
    once per process, around the user's context, then `begin` and `commit` around the reader
    calls (each for many items at once) when the source overrides them.
    """

    #: True when items are leases on durable storage (a spool, a stream): the runtime then
    #: holds at most MAX_UNSTARTED of them that have not started, so other instances get work.
    durable: ClassVar[bool] = False

    async def open(self, *, drain: bool) -> None:
        """Connect, in the parent, before the first `fetch`.

        Raises `SourceUnavailable` if `drain` is true and the source cannot be reached within
        its connect timeout. When serving, it does not raise for an outage: `fetch` retries.
        """

    def fetch(self, desired: int, wait: float) -> AsyncIterator[Any]:
        """Yield up to `desired` new items (an async generator).

        Yields nothing when there is no work right now; with `wait` > 0 it may block up to
        `wait` seconds for work to arrive first (a push), and while it yields nothing new the
        runtime calls it at most once per `wait` seconds. The runtime may stop iterating
        mid-way (the generator is then closed): a source must keep the items it fetched but
        did not yield.
        Items must be picklable: they travel to a worker process.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement fetch()")

    async def finished(self) -> bool:
        """In a drain, after `fetch` yielded nothing and no item of this instance is
        unfinished: True when no work is left anywhere (the drain then ends).

        For a shared source this is "nothing new and nothing held by any consumer".
        """
        return True

    def settle(self, item: Any, outcome: Outcome, error: str | None) -> None:
        """Record how `item` ended: `error` is None, or the failure's text, a `Failure` when
        the item failed (`error.permanent`: the reader raised `worker.Permanent`).

        Called in the parent, once per item fetched, and must not block: schedule slow work
        and finish it in `close`. An exception is logged and does not stop the run.
        """

    async def close(self) -> None:
        """Release what is held (put not-started items back) and disconnect. Always called."""

    def session(self) -> AbstractAsyncContextManager[Any]:
        """In each worker process, once: open what `begin` and `commit` need (its `state`)."""
        return nullcontext()

    async def begin(self, items: Sequence[Any], state: Any) -> Sequence[Any]:
        """In a worker process, before the reader, once for the items that start together:
        return, per item and in order, what its reader gets, or an `Exception` instance: that
        item then fails with it and its reader does not run (for good, without another
        attempt, if it is a `worker.Permanent`).

        If it raises, every item of the call fails with that error. Only called if a subclass
        overrides it.
        """
        return items

    async def commit(
        self, done: Sequence[tuple[Any, str | None]], state: Any
    ) -> Sequence[Exception | None]:
        """In a worker process, after the reader: `done` holds (item, error) pairs, the error
        being its failure's text (a `Failure` when the reader raised; `begin`'s refusal for an
        item whose reader did not run) or None. Return, per item and in order, None (that
        outcome stands) or an `Exception` (the item fails with it).

        The items that succeed while a previous call runs come together in the next call; an
        item that failed comes alone, so a source may wait there (a retry backoff) without
        holding others. Runs outside the reader's slots, so the next items start meanwhile.
        If it raises, every item of the call fails with that error. Only called if a subclass
        overrides it.
        """
        return [None] * len(done)

    def commands(self) -> list[Callable[..., None] | typer.Typer]:
        """Extra command-line commands: typer command functions (e.g. `submit`, `stats`) or
        command groups (a `typer.Typer` with a name, e.g. `dead`)."""
        return []

    def check(self) -> str | None:
        """For `qq health`, from another process: a problem reaching the source, or None."""
        return None

    async def gauges(self) -> Mapping[str, float]:
        """Counts for the metrics page, read in the parent at each scrape: each `key: value`
        becomes the gauge `<name>_source_<key>` (e.g. `waiting`, `pending`, `dead_letters`).

        Should answer within GAUGES_TIMEOUT (2 s); if it fails or is late, that scrape leaves
        the gauges out.
        """
        return {}

    @property
    def commits(self) -> bool:
        """True when this source overrides `commit` (the runtime then runs it per item)."""
        return type(self).commit is not Source.commit

    @property
    def begins(self) -> bool:
        """True when this source overrides `begin`."""
        return type(self).begin is not Source.begin
