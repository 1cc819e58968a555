"""The one seam between the runtime and where items come from, split by where it runs.

- `Source`, in the parent process: the runtime opens it, fetches items from it, settles every
  item it fetched exactly once with how it ended, and closes it.
- `Session`, in each worker process: `Source.session()` makes one per process (or None, the
  default: the source needs nothing there). It owns its own connections and state; the
  runtime lets it prepare items before the reader runs (`begin`) and acknowledge them after
  (`commit`), many in one call, so that durable sources acknowledge close to the work.
- `SourceCli`, in the command line: `Source.cli()` gives the commands it adds (`submit`,
  `stats`, `dead`) and what `qq health` checks.

Every source plugs in this way: the writer function (`WriterSource`, the default), the spool
folder and Redis Streams (in `sources/`). Subclass what you need; every method has a working
default. docs/worker.md has a complete source in about 40 lines.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

from .errors import WorkerError

if TYPE_CHECKING:
    from types import TracebackType

    import typer


class Outcome(enum.Enum):
    """How one item ended; `Source.settle` gets exactly one per fetched item."""

    SUCCEEDED = "succeeded"  # the reader returned, and `commit` (if any) did too
    FAILED = "failed"  # the reader raised on its last try, or `begin` / `commit` refused it
    NOT_STARTED = "not_started"  # handed back at shutdown: the reader never saw it
    LOST = "lost"  # its worker process died holding it: it may or may not have started


class Failure(str):
    """The text of an item's failure; `permanent` is True when no other attempt can succeed
    (the reader raised `worker.Permanent`, or `begin` refused the item with one)."""

    permanent: bool = False

    def __new__(cls, text: str, *, permanent: bool = False) -> Failure:
        failure = super().__new__(cls, text)
        failure.permanent = permanent
        return failure


class SourceUnavailable(WorkerError):
    """The source cannot be reached; the message names it (never a password) and the limit."""


@dataclass(frozen=True)
class ItemInfo:
    """What a source knows of an item, for its span (docs/tracing.md): its own id, the
    attempt this run is by the source's count, and the W3C trace context of the span that
    enqueued it. None where the source does not know."""

    id: str | None = None
    attempt: int | None = None
    traceparent: str | None = None


@dataclass(frozen=True)
class LabeledGauges:
    """Gauges of one name for `Source.gauges`, one per value of `label` (e.g. one per
    schedule): `<name>_source_<key>{<label>="<value>"}`, with `help` as their description."""

    label: str
    values: Mapping[str, float]
    help: str = ""


class Session:
    """The part of a source in one worker process: an async context manager, entered once
    after the fork and left before the process exits. It holds its own state (connections,
    pipelines) as attributes.

    `begin` runs before the reader, once for the items that start together; `commit` after
    it, once for the items whose readers ended together, outside the reader's slots (the next
    items start meanwhile). A failed item is committed alone, so a session may wait there (a
    retry backoff) without holding others.
    """

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    async def begin(self, items: Sequence[Any]) -> Sequence[Any]:
        """Return, per item and in order, what its reader gets, or an `Exception` instance:
        that item then fails with it and its reader does not run (for good, without another
        attempt, if it is a `worker.Permanent`). If it raises, every item of the call fails
        with that error."""
        return items

    async def commit(
        self, done: Sequence[tuple[Any, Failure | None]]
    ) -> Sequence[Exception | None]:
        """Acknowledge items whose readers ended: `done` holds (item, failure or None) pairs.
        Return, per item and in order, None (that outcome stands) or an `Exception` (the item
        fails with it). If it raises, every item of the call fails with that error."""
        return [None] * len(done)


class SourceCli:
    """The part of a source in the command line (`python -m <package>.qq ...`)."""

    def commands(self) -> list[Callable[..., None] | typer.Typer]:
        """Extra commands: typer command functions (e.g. `submit`, `stats`) or command
        groups (a `typer.Typer` with a name, e.g. `dead`)."""
        return []

    def check(self) -> str | None:
        """For `qq health`, from another process: a problem reaching the source, or None."""
        return None


class Source:
    """Where a worker's items come from, and where their outcomes go (see the module
    docstring for the parts that run in the worker processes and the command line).

    Parent process, in this order: `open`, then `fetch` (repeatedly) and `settle` (once per
    fetched item, in the order outcomes arrive), `finished` when a drain has nothing left to
    run, and `close` last, always, after every item was settled. `gauges` at each scrape of
    the metrics page.
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

    def settle(self, item: Any, outcome: Outcome, error: Failure | None) -> None:
        """Record how `item` ended: `error` is None, or its failure (`error.permanent`: no
        other attempt can succeed).

        Called in the parent, once per item fetched, and must not block: schedule slow work
        and finish it in `close`. An exception is logged and does not stop the run.
        """

    async def close(self) -> None:
        """Release what is held (put not-started items back) and disconnect. Always called."""

    async def gauges(self) -> Mapping[str, float | LabeledGauges]:
        """Counts for the metrics page, read in the parent at each scrape: each `key: value`
        becomes the gauge `<name>_source_<key>` (e.g. `waiting`, `pending`, `dead_letters`),
        or, for `LabeledGauges`, one gauge of that name per label value.

        Should answer within GAUGES_TIMEOUT (2 s); if it fails or is late, that scrape leaves
        the gauges out.
        """
        return {}

    def describe(self, item: Any) -> ItemInfo:
        """What this source knows of `item` (as fetched), for tracing and logs, in any
        process; it must not block."""
        return ItemInfo()

    def session(self) -> Session | None:
        """In each worker process, once, after the fork: this source's `Session`, or None
        when it needs nothing there (the default: items go straight to the reader)."""
        return None

    def cli(self) -> SourceCli:
        """The commands this source adds to the command line, and its health check."""
        return SourceCli()
