"""One run of the worker, in the parent process.

The supervisor fetches items from the source into a bounded queue, which its `WorkerPool`
(`pool.py`) hands to the worker processes. Every item it fetches is tracked until it has an
outcome, and the source is told each outcome once (`Source.settle`), so nothing is lost: at
shutdown the items that never started are settled as not started. A drain ends when the source
has nothing more and every item has its outcome.

Nothing here polls: the parent waits on sockets, process sentinels, events and the source.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
import signal
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Any

from .child import ReaderPlan
from .errors import WorkerError, WriterError
from .metrics import serve_metrics
from .pool import KILL_WAIT, PICKLE, WorkerPool
from .settings import env_name
from .slots import ahead
from .source import Failure, Outcome, Source
from .summary import Summary
from .texts import error_text, shorten
from .writer_source import WriterSource

logger = logging.getLogger(__name__)

RECENT_LIMIT = 100_000  # items remembered for requeue protection, at most
DRAIN_RECHECK = 0.05  # seconds a drain waits for work other consumers of a source hold


class Supervisor:
    """Runs a source and worker processes until drained, stopped, or a fatal error."""

    def __init__(
        self,
        name: str,
        source: Source,
        plan: ReaderPlan,
        *,
        drain: bool,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        settings = plan.settings
        self.name = name
        self.source = source
        self.plan = plan
        self.drain = drain
        self.progress = progress  # called with (finished, enqueued) after each outcome
        self.block_size: int = settings.lookup_block_size
        if source.durable:  # leases: hold few unstarted items, so other instances get work
            processes = settings.num_processes
            most = ahead(plan.slots.ceiling)  # unstarted, held in each process at most
            in_processes = most * processes
            if 0 < settings.max_unstarted <= in_processes:
                raise WorkerError(
                    f"{env_name(settings, 'MAX_UNSTARTED')}={settings.max_unstarted} is not"
                    " above what the worker"
                    f" processes read ahead ({processes} x {most}"
                    f" = {in_processes}): set it above {in_processes}, or 0"
                )
            limit = settings.max_unstarted or in_processes + self.block_size
            self.max_queue_size: int = limit - in_processes
            self.refill_at = self.max_queue_size // 2
        else:
            self.max_queue_size = settings.max_queue_size
            self.refill_at = max(0, self.max_queue_size - self.block_size)
        self.idle_sleep: float = settings.empty_queue_sleep_time
        self.requeue_window: float = settings.prevent_requeuing_time
        self.graceful_timeout: float = settings.graceful_shutdown_timeout

        self.loop = asyncio.get_running_loop()
        self.seq = itertools.count(1)
        self.queue: deque[tuple[int, bytes, bytes]] = deque()  # accepted, not handed out
        self.items: dict[int, Any] = {}  # every unfinished item, by sequence number
        self.recent: OrderedDict[Hashable, float] = OrderedDict()  # requeue protection
        self.unstarted: list[Any] = []
        self.enqueued = self.succeeded = self.failed = self.retried = self.skipped = 0
        self.timed_out = 0

        self.room = asyncio.Event()  # the queue can take a block of items
        self.idle = asyncio.Event()  # no unfinished item
        self.stopped = asyncio.Event()  # stop fetching from the source
        self.end: asyncio.Future[None] = self.loop.create_future()
        self.fatal_error: BaseException | None = None
        self.signals = 0
        self.pool = WorkerPool(name, plan, self.queue, self.items, self, self.stopped)

    # ---- the run -------------------------------------------------------------------------
    async def run(self) -> Summary:
        """Run until drained (drain mode), a stop signal, or a fatal error; then shut down."""
        started = time.perf_counter()
        handles_signals = threading.current_thread() is threading.main_thread()
        if handles_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self.loop.add_signal_handler(signum, self.request_stop, signum)
        metrics, server, feeder = self.plan.metrics, None, None
        try:
            await self.source.open(drain=self.drain)
            feeder = self.loop.create_task(self._feed())
            if metrics is not None:
                host, port = self.plan.settings.metrics_host, self.plan.settings.metrics_port
                server = await serve_metrics(metrics, host, port, self.source)
            self.pool.start()
            await self.end
        finally:
            try:
                await self._shutdown(feeder)
            finally:
                if server is not None:
                    server.close()
                if handles_signals:
                    for signum in (signal.SIGTERM, signal.SIGINT):
                        self.loop.remove_signal_handler(signum)
                self.pool.kill_all()
                await self.source.close()
        if self.fatal_error is not None:
            raise self.fatal_error
        return Summary(
            enqueued=self.enqueued,
            succeeded=self.succeeded,
            failed=self.failed,
            not_started=len(self.unstarted),
            retried=self.retried + self.pool.reruns,
            timed_out=self.timed_out,
            skipped_duplicates=self.skipped,
            seconds=time.perf_counter() - started,
        )

    def request_stop(self, signum: int | None = None) -> None:
        """Stop fetching and shut down gracefully; a second SIGINT kills at once."""
        self.signals += 1
        if self.signals > 1 and signum == signal.SIGINT:
            logger.warning("[%s] second interrupt: killing worker processes now", self.name)
            self.pool.kill_all()
            return
        if signum is not None:
            logger.info("[%s] %s received: finishing in-flight items", self.name, _signame(signum))
        self._finish()

    def _finish(self, error: BaseException | None = None) -> None:
        if error is not None and self.fatal_error is None:
            self.fatal_error = error
        self.stopped.set()
        if not self.end.done():
            self.end.set_result(None)

    # ---- the source ----------------------------------------------------------------------
    async def _feed(self) -> None:
        recheck = False  # a drain found work held elsewhere: wait a little for it
        try:
            while not self.stopped.is_set():
                while len(self.queue) > self.refill_at:
                    self.room.clear()
                    await self.room.wait()
                desired = max(1, min(self.block_size, self.max_queue_size - len(self.queue)))
                wait = (DRAIN_RECHECK if recheck else 0.0) if self.drain else self.idle_sleep
                asked = self.loop.time()
                if await self._fetch(desired, wait):
                    recheck = False
                    continue
                # Nothing new: fetch again after `wait` at the soonest, whether the source
                # waited (a blocking read) or not (a writer, or only duplicates).
                await _wait(self.stopped, asked + wait - self.loop.time())
                if not self.drain:
                    continue
                if self.items:
                    await self.idle.wait()  # ask once more when everything has finished
                elif await self.source.finished():
                    logger.debug("[%s] source finished, everything settled", self.name)
                    self._finish()
                    return
                else:
                    recheck = True
        except WorkerError as exc:
            self._finish(exc)
        except Exception as exc:
            what = (
                "the writer"
                if isinstance(self.source, WriterSource)
                else f"{type(self.source).__name__}.fetch()"
            )
            logger.exception("[%s] %s raised", self.name, what)
            error = WriterError(
                f"{what} raised {error_text(exc)}; fix it, or catch transient errors inside "
                "it and yield nothing until the source is back"
            )
            error.__cause__ = exc  # code written for QuasiQueue can reach the original
            self._finish(error)

    async def _fetch(self, desired: int, wait: float) -> int:
        """Fetch once from the source; return how many new items it gave."""
        generator = self.source.fetch(desired, wait)
        new = 0
        try:
            async for item in generator:
                new += self._accept(item)
                while len(self.queue) >= self.max_queue_size and not self.stopped.is_set():
                    self.room.clear()  # backpressure: pause the source mid-fetch
                    await self.room.wait()
                if self.stopped.is_set():
                    break
        finally:
            await generator.aclose()  # type: ignore[attr-defined]
        return new

    def _accept(self, item: Any) -> int:
        try:
            payload = pickle.dumps(item, PICKLE)
        except Exception as exc:
            raise WriterError(
                f"the writer yielded {shorten(item)} of type {type(item).__name__}, which cannot "
                f"be pickled to reach a worker process ({exc}); yield plain data such as an id, "
                "a str, or a dict of str/int/float values, and load the rest in the reader"
            ) from exc
        if self.requeue_window > 0:
            key: Hashable = item
            try:
                hash(item)
            except TypeError:
                key = payload  # unhashable items (dicts, lists) are compared by their bytes
            now = time.monotonic()
            recent = self.recent
            while recent and next(iter(recent.values())) <= now - self.requeue_window:
                recent.popitem(last=False)
            if key in recent:
                self.skipped += 1
                return 0
            recent[key] = now
            if len(recent) > RECENT_LIMIT:  # bound memory at high rates: forget the oldest
                recent.popitem(last=False)
        seq = next(self.seq)
        self.items[seq] = item
        tracing = self.plan.tracing  # the trace context current here (the writer's span)
        self.queue.append((seq, payload, b"" if tracing is None else tracing.carrier()))
        self.enqueued += 1
        self.idle.clear()
        self.pool.dispatch_soon()
        return 1

    # ---- outcomes (pool.Outcomes) --------------------------------------------------------
    def item_succeeded(self, seq: int, attempts: int) -> None:
        self.succeeded += 1
        self.retried += max(0, attempts - 1)
        self._settle(seq, Outcome.SUCCEEDED, None)

    def item_failed(self, seq: int, attempts: int, failure: Failure, *, timed_out: bool) -> None:
        """Count and settle it (its worker process logged it)."""
        self.failed += 1
        self.timed_out += timed_out
        self.retried += max(0, attempts - 1)
        self._settle(seq, Outcome.FAILED, failure)

    def item_lost(self, seq: int, error: str, *, timed_out: bool = False) -> None:
        """Count, log and settle an item whose process died holding it (its metrics too: the
        process cannot count it any more); one whose sync reader overran failed by timeout."""
        self.failed += 1
        self.timed_out += timed_out
        metrics = self.plan.metrics
        if metrics is not None:
            metrics.failed.inc()
            if timed_out:
                metrics.timed_out.inc()
        logger.error("[%s] item %s failed: %s", self.name, self._label(self.items[seq]), error)
        outcome = Outcome.FAILED if timed_out else Outcome.LOST
        self._settle(seq, outcome, Failure(error))

    def item_not_started(self, seq: int) -> None:
        self.unstarted.append(self.items[seq])
        self._settle(seq, Outcome.NOT_STARTED, None)

    def fatal(self, error: BaseException) -> None:
        self._finish(error)

    def dispatched(self) -> None:
        if len(self.queue) <= self.refill_at:
            self.room.set()
        if self.plan.metrics is not None:
            self.plan.metrics.queue_depth.set(len(self.queue))

    def _label(self, item: Any) -> str:
        """How logs name an item: its id, as its source knows it, or its repr."""
        try:
            known = self.source.describe(item).id
        except Exception:
            known = None
        return known if known is not None else shorten(item)

    def _settle(self, seq: int, outcome: Outcome, error: Failure | None) -> None:
        """Settle one item with the source: the one place every outcome goes."""
        item = self.items.pop(seq)
        try:
            self.source.settle(item, outcome, error)
        except Exception:
            logger.exception(
                "[%s] settling %s raised for %s", self.name, outcome, self._label(item)
            )
        if self.progress is not None:
            finished = self.succeeded + self.failed + len(self.unstarted)
            self.progress(finished, self.enqueued)
        if not self.items:
            self.idle.set()

    # ---- shutdown ------------------------------------------------------------------------
    async def _shutdown(self, feeder: asyncio.Task[None] | None) -> None:
        self.stopped.set()
        self.room.set()
        self.idle.set()
        if feeder is not None:
            feeder.cancel()
            await asyncio.wait({feeder}, timeout=self.graceful_timeout)
        while self.queue:
            self.item_not_started(self.queue.popleft()[0])
        for seq in self.pool.take_suspects():  # they had started in a process that died
            self.item_lost(seq, "its worker process died holding it; stopped before it ran alone")
        self.pool.stop()
        pool = self.pool
        if pool.children and not await _wait(pool.all_exited, self.graceful_timeout):
            logger.warning(
                "[%s] graceful_shutdown_timeout (%ss) passed: killing %d worker process(es)",
                self.name,
                self.graceful_timeout,
                len(pool.children),
            )
            pool.kill_all()
            await _wait(pool.all_exited, KILL_WAIT)
        if self.unstarted:
            logger.warning(
                "[%s] %d queued item(s) were not started", self.name, len(self.unstarted)
            )


def _signame(signum: int) -> str:
    return signal.Signals(signum).name


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait for `event` at most `seconds`; return whether it is set."""
    if not event.is_set() and seconds > 0:
        waiter = asyncio.ensure_future(event.wait())
        await asyncio.wait({waiter}, timeout=seconds)
        waiter.cancel()
    return event.is_set()
