"""One run of the worker, in the parent process.

The parent fetches items from the source, keeps them in a bounded buffer, and hands each
worker process at most a window of items over its own socket: its reader slots and a few
more (`slots.py`). Every item it fetches is tracked until it has an outcome, and the source is
told each outcome once (`Source.settle`), so nothing is lost: recycled processes finish their
items first, and at shutdown the items that never started are settled as not started.

A crash costs the item that caused it, not its neighbours. When a worker process dies, its
items that had not started are handed out again, no attempt counted; those that had started
("suspects": any of them may have caused it) each run again alone, one at a time, in a process
of their own. A crash of that process is its one item's: it counts as a failed attempt, and
the item runs alone again while MAX_RETRIES allows, then it is settled as lost, with a log
line naming it (a durable source counts that attempt, and may hand it out again).

Nothing here polls: the parent waits on sockets, process sentinels, events and the source.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import itertools
import logging
import multiprocessing
import pickle
import signal
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

from .child import CONTEXT_FAILED_EXIT, ReaderPlan, run_worker_process
from .errors import ContextError, WorkerError, WriterError
from .metrics import serve_metrics
from .retry import ReaderTimeout
from .slots import Slots, ahead, committing
from .source import Failure, Outcome, Source
from .summary import Summary
from .texts import error_text, shorten
from .wire import Frame, FrameReader, Kind, decode_seqs, encode
from .writer_source import WriterSource

logger = logging.getLogger(__name__)

# Always fork, whatever the interpreter's default (forkserver on Linux from Python 3.14): the
# reader, context and source reach worker processes unpickled (docs/worker.md).
FORK = multiprocessing.get_context("fork")
KILL_WAIT = 5.0  # seconds to wait for a killed process to be reaped
PICKLE = pickle.HIGHEST_PROTOCOL
RECENT_LIMIT = 100_000  # items remembered for requeue protection, at most
DRAIN_RECHECK = 0.05  # seconds a drain waits for work other consumers of a source hold


@dataclass(eq=False)
class _Child:
    """The parent's view of one worker process."""

    process: BaseProcess
    sock: socket.socket
    limit: int  # its reader slots now (adaptive slots change)
    isolated: bool = False  # runs one suspect at a time (see the module docstring)
    transport: asyncio.Transport | None = None
    outstanding: set[int] = field(default_factory=set)
    started: set[int] = field(default_factory=set)  # their readers may have run
    finishing: set[int] = field(default_factory=set)  # read, in their commit step
    running: int | None = None  # the item its sync reader started (with READER_TIMEOUT)
    overran: int | None = None  # the item whose sync reader overran: the process was killed
    deadline: asyncio.TimerHandle | None = None
    sent: int = 0
    ready: bool = False
    retiring: bool = False
    exited: bool = False
    eof: bool = False


class _Link(asyncio.Protocol):
    """Feeds the frames a worker process sends to the supervisor."""

    def __init__(self, supervisor: Supervisor, child: _Child) -> None:
        self.supervisor = supervisor
        self.child = child
        self.frames = FrameReader()

    def data_received(self, data: bytes) -> None:
        self.supervisor.on_frames(self.child, self.frames.feed(data))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.child.eof = True
        self.supervisor.on_child_gone(self.child)


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
        self.num_processes: int = settings.num_processes
        self.block_size: int = settings.lookup_block_size
        if source.durable:  # leases: hold few unstarted items, so other instances get work
            most = ahead(plan.slots.ceiling)  # unstarted, held in each process at most
            in_processes = most * self.num_processes
            if 0 < settings.max_unstarted <= in_processes:
                raise WorkerError(
                    f"MAX_UNSTARTED={settings.max_unstarted} is not above what the worker"
                    f" processes read ahead ({self.num_processes} x {most}"
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
        self.max_jobs: int = settings.max_jobs_per_process or 0
        self.commits = source.commits  # processes hold items while their commits run
        self.times_sync = bool(plan.timeout) and not inspect.iscoroutinefunction(plan.reader)
        self.tracing = plan.tracing

        self.loop = asyncio.get_running_loop()
        self.seq = itertools.count(1)
        self.pending: deque[tuple[int, bytes]] = deque()  # accepted, not yet handed out
        self.items: dict[int, Any] = {}  # every unfinished item, by sequence number
        self.recent: OrderedDict[Hashable, float] = OrderedDict()  # requeue protection
        self.children: list[_Child] = []
        self.connecting: set[asyncio.Task[None]] = set()
        self.launched = 0
        self.turn = 0  # which worker process is offered items first
        self.dispatch_due = False  # a `_dispatch` is scheduled
        self.unstarted: list[Any] = []
        self.suspects: deque[int] = deque()  # started in a process that died: run each alone
        self.crashes: dict[int, int] = {}  # item -> crashes of a process running it alone
        self.isolation: _Child | None = None  # the process that runs suspects one at a time
        self.enqueued = self.succeeded = self.failed = self.retried = self.skipped = 0
        self.timed_out = 0

        self.room = asyncio.Event()  # the buffer can take a block of items
        self.idle = asyncio.Event()  # no unfinished item
        self.stopped = asyncio.Event()  # stop fetching from the source
        self.all_exited = asyncio.Event()
        self.end: asyncio.Future[None] = self.loop.create_future()
        self.fatal: BaseException | None = None
        self.signals = 0

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
            for _ in range(self.num_processes):
                self._spawn()
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
                self._kill_all()
                await self.source.close()
        if self.fatal is not None:
            raise self.fatal
        return Summary(
            enqueued=self.enqueued,
            succeeded=self.succeeded,
            failed=self.failed,
            not_started=len(self.unstarted),
            retried=self.retried,
            timed_out=self.timed_out,
            skipped_duplicates=self.skipped,
            seconds=time.perf_counter() - started,
        )

    def request_stop(self, signum: int | None = None) -> None:
        """Stop fetching and shut down gracefully; a second SIGINT kills at once."""
        self.signals += 1
        if self.signals > 1 and signum == signal.SIGINT:
            logger.warning("[%s] second interrupt: killing worker processes now", self.name)
            self._kill_all()
            return
        if signum is not None:
            logger.info("[%s] %s received: finishing in-flight items", self.name, _signame(signum))
        self._finish()

    def _finish(self, error: BaseException | None = None) -> None:
        if error is not None and self.fatal is None:
            self.fatal = error
        self.stopped.set()
        if not self.end.done():
            self.end.set_result(None)

    # ---- the source ----------------------------------------------------------------------
    async def _feed(self) -> None:
        recheck = False  # a drain found work held elsewhere: wait a little for it
        try:
            while not self.stopped.is_set():
                while len(self.pending) > self.refill_at:
                    self.room.clear()
                    await self.room.wait()
                desired = max(1, min(self.block_size, self.max_queue_size - len(self.pending)))
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
                while len(self.pending) >= self.max_queue_size and not self.stopped.is_set():
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
        if self.tracing is not None:  # the trace context current here (the writer's span)
            payload = self.tracing.carrier() + b"\n" + payload
        self.pending.append((seq, payload))
        self.enqueued += 1
        self.idle.clear()
        if not self.dispatch_due:  # once for the items accepted in this step
            self.dispatch_due = True
            self.loop.call_soon(self._dispatch)
        return 1

    # ---- worker processes ----------------------------------------------------------------
    def _spawn(self, *, isolated: bool = False) -> None:
        parent_sock, child_sock = socket.socketpair()
        inherited = [child.sock.fileno() for child in self.children] + [parent_sock.fileno()]
        plan = self.plan
        if isolated:  # one slot: a crash of this process is its one item's
            plan = dataclasses.replace(plan, slots=Slots(1, 1, adaptive=False))
        process = FORK.Process(
            target=run_worker_process,
            args=(child_sock, inherited, plan),
            name=f"{self.name}-{'alone' if isolated else 'worker'}-{self.launched:03d}",
        )
        self.launched += 1
        process.start()
        child_sock.close()
        child = _Child(process=process, sock=parent_sock, limit=plan.slots.start, isolated=isolated)
        if isolated:
            self.isolation = child
        self.children.append(child)
        self.all_exited.clear()
        self.loop.add_reader(process.sentinel, self._on_exit, child)
        task = self.loop.create_task(self._connect(child))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    async def _connect(self, child: _Child) -> None:
        transport, _ = await self.loop.connect_accepted_socket(
            lambda: _Link(self, child), child.sock
        )
        assert isinstance(transport, asyncio.Transport)
        child.transport = transport

    def _free(self, child: _Child) -> int:
        """How many more items `child` may take now (0 if it is not taking any): its slots
        and a few more not started (`slots.ahead`), plus those its source is committing."""
        if not child.ready or child.retiring or child.isolated or child.transport is None:
            return 0
        held, limit = len(child.outstanding), child.limit
        reading = limit + ahead(limit)
        window = reading + (committing(limit) if self.commits else 0)
        free = min(reading - (held - len(child.finishing)), window - held)
        if self.max_jobs:
            free = min(free, self.max_jobs - child.sent)
        return max(free, 0)

    def _isolate(self) -> None:
        """Run the suspects one at a time, each alone in the isolation process (started when
        one waits, retired when none is left)."""
        if self.stopped.is_set():
            return
        if self.suspects and self.isolation is None:
            self._spawn(isolated=True)
        alone = self.isolation
        if alone is None or not alone.ready or alone.retiring or alone.outstanding:
            return
        assert alone.transport is not None
        if not self.suspects:
            alone.transport.write(encode(Kind.RETIRE))
            alone.retiring = True
            return
        seq = self.suspects.popleft()
        alone.outstanding.add(seq)
        alone.sent += 1
        self.retried += 1
        alone.transport.write(encode(Kind.ITEM, seq, 0, self._payload(seq)))

    def _payload(self, seq: int) -> bytes:
        """The bytes of an item handed out again (its trace carrier is not kept: no parent)."""
        payload = pickle.dumps(self.items[seq], PICKLE)
        return b"\n" + payload if self.tracing is not None else payload

    def _dispatch(self) -> None:
        self.dispatch_due = False
        self._isolate()
        pending = self.pending
        if self.stopped.is_set() or not pending:
            self._note_room()
            return
        children = self.children
        self.turn = (self.turn + 1) % len(children) if children else 0
        order = children[self.turn :] + children[: self.turn]  # take turns going first
        free = {child: self._free(child) for child in order}
        if len(pending) < sum(free.values()) and any(not c.outstanding for c in order):
            # Fewer items than room, and a process idle (or starting): spread them.
            free = self._spread(order, free, len(pending))
        for child in order:
            if not pending:
                break
            if free[child] <= 0:
                continue
            frames = []
            for _ in range(min(free[child], len(pending))):
                seq, payload = pending.popleft()
                frames.append(encode(Kind.ITEM, seq, 0, payload))
                child.outstanding.add(seq)
            child.sent += len(frames)
            if self.max_jobs and child.sent >= self.max_jobs:
                frames.append(encode(Kind.RETIRE))  # it finishes its items, then exits
                child.retiring = True
                if not self.stopped.is_set():
                    self._spawn()
                    self._count_restart()
            assert child.transport is not None
            child.transport.write(b"".join(frames))
        self._note_room()

    @staticmethod
    def _spread(order: list[_Child], free: dict[_Child, int], count: int) -> dict[_Child, int]:
        """How many of `count` items each process gets when there are fewer than room: one at
        a time to the least loaded, counting the processes still starting (their share waits
        for them), so a few slow items do not all queue in one process."""
        starting = [c for c in order if not (c.ready or c.retiring or c.exited)]
        takers = [c for c in order if free[c] > 0] + starting
        load = {c: len(c.outstanding) for c in takers}
        given = dict.fromkeys(order, 0)
        for _ in range(count):
            open_ = [c for c in takers if c in starting or given[c] < free[c]]
            if not open_:
                break
            child = min(open_, key=lambda c: load[c])
            load[child] += 1
            if child not in starting:
                given[child] += 1
        return given

    def _note_room(self) -> None:
        if len(self.pending) <= self.refill_at:
            self.room.set()
        if self.plan.metrics is not None:
            self.plan.metrics.queue_depth.set(len(self.pending))

    def on_frames(self, child: _Child, frames: list[Frame]) -> None:
        """Handle the frames a worker process sent, then hand out items once for all."""
        for frame in frames:
            self._on_frame(child, frame)
        self._dispatch()

    def _on_frame(self, child: _Child, frame: Frame) -> None:
        kind = frame.kind
        if kind == Kind.SUCCEEDED:
            self.succeeded += 1
            self._tell(self._settle(child, frame), Outcome.SUCCEEDED, None)
        elif kind == Kind.FAILED or kind == Kind.TIMED_OUT or kind == Kind.GAVE_UP:
            self.failed += 1
            self.timed_out += kind == Kind.TIMED_OUT
            item = self._settle(child, frame)
            text = frame.payload.decode(errors="replace")
            error = Failure(text, permanent=kind == Kind.GAVE_UP)
            logger.error("[%s] item failed: %s: %s", self.name, shorten(item), error)
            self._tell(item, Outcome.FAILED, error)
        elif kind == Kind.STARTED:
            seqs = decode_seqs(frame.payload)
            child.started.update(seqs)
            if self.times_sync and seqs:  # a sync reader runs one at a time: time it
                if child.deadline is not None:
                    child.deadline.cancel()
                child.running = seqs[-1]
                child.deadline = self.loop.call_later(
                    self.plan.timeout, self._overrun, child, seqs[-1]
                )
        elif kind == Kind.SLOTS:
            child.limit = frame.seq
        elif kind == Kind.READ:
            child.finishing.update(decode_seqs(frame.payload))
        elif kind == Kind.NOT_STARTED:
            child.outstanding.discard(frame.seq)
            item = self.items.pop(frame.seq)
            self.unstarted.append(item)
            self._tell(item, Outcome.NOT_STARTED, None)
            self._check_idle()
        elif kind == Kind.READY:
            child.ready = True
            if self.stopped.is_set():
                self._write(child, encode(Kind.STOP))
        elif kind == Kind.CONTEXT_FAILED:
            text = frame.payload.decode(errors="replace")
            self._finish(
                ContextError(f"context() raised in {child.process.name}: {text}; fix context()")
            )

    def _settle(self, child: _Child, frame: Frame) -> Any:
        child.outstanding.discard(frame.seq)
        child.started.discard(frame.seq)
        child.finishing.discard(frame.seq)
        self.crashes.pop(frame.seq, None)
        if child.running == frame.seq and child.deadline is not None:
            child.deadline.cancel()
            child.running = child.deadline = None
        self.retried += max(0, frame.attempts - 1)
        item = self.items.pop(frame.seq)
        self._check_idle()
        return item

    def _check_idle(self) -> None:
        if self.progress is not None:
            finished = self.succeeded + self.failed + len(self.unstarted)
            self.progress(finished, self.enqueued)
        if not self.items:
            self.idle.set()

    def _tell(self, item: Any, outcome: Outcome, error: str | None) -> None:
        """Settle one item with the source: the one place every outcome goes."""
        try:
            self.source.settle(item, outcome, error)
        except Exception:
            logger.exception("[%s] settling %s raised for %s", self.name, outcome, shorten(item))

    def _overrun(self, child: _Child, seq: int) -> None:
        """A sync reader overran READER_TIMEOUT: kill its process (it is replaced)."""
        if child.running != seq or seq not in child.outstanding or child.exited:
            return
        child.overran = seq
        logger.error(
            "[%s] %s: the reader overran READER_TIMEOUT=%gs on %s: killing the process",
            self.name,
            child.process.name,
            self.plan.timeout,
            shorten(self.items.get(seq)),
        )
        child.process.kill()

    def _on_exit(self, child: _Child) -> None:
        self.loop.remove_reader(child.process.sentinel)
        child.process.join()
        child.exited = True
        self.on_child_gone(child)

    def on_child_gone(self, child: _Child) -> None:
        """Settle a worker process once it has exited and all it sent has been read: hand
        out again the items it had not started, run those it had started alone (see the
        module docstring), and replace it unless it was retiring."""
        if not (child.exited and child.eof) or child not in self.children:
            return
        self.children.remove(child)
        if child is self.isolation:
            self.isolation = None
        if child.transport is not None:
            child.transport.close()
        code = child.process.exitcode
        name = child.process.name
        metrics = self.plan.metrics
        if metrics is not None and child.process.pid is not None:
            metrics.process_exited(child.process.pid)
        if child.deadline is not None:
            child.deadline.cancel()
        if child.overran is not None:
            self._time_out(child, child.overran)
        not_started = sorted(child.outstanding - child.started, reverse=True)
        suspects = sorted(child.outstanding & child.started)
        if self.stopped.is_set():  # nothing is handed out any more: settle them now
            self._settle_at_stop(not_started, suspects, name, code)
            not_started = suspects = []
        for seq in not_started:  # first in line again, no attempt counted
            self.pending.appendleft((seq, self._payload(seq)))
        if suspects and child.isolated:
            self._crashed_alone(suspects[0], name, code)
        elif suspects:
            logger.error(
                "[%s] %s exited with code %s holding %d item(s) that had started: each runs "
                "again alone, in a process of its own, to find the one that crashes it%s",
                self.name,
                name,
                code,
                len(suspects),
                f" ({len(not_started)} not started: handed out again)" if not_started else "",
            )
            self.suspects.extend(suspects)
        child.outstanding.clear()
        child.started.clear()
        child.finishing.clear()
        self._check_idle()
        if not self.children:
            self.all_exited.set()
        if self.stopped.is_set() or child.retiring or child.isolated:
            self._dispatch()
            return
        if child.overran is None and (code == CONTEXT_FAILED_EXIT or not child.ready):
            self._finish(
                ContextError(
                    f"worker process {name} exited with code {code} before it "
                    "was ready; check context() and the worker's logs"
                )
            )
            return
        if child.overran is None and not suspects:
            logger.error("[%s] %s exited with code %s: replacing it", self.name, name, code)
        self._spawn()
        self._count_restart()
        self._dispatch()

    def _settle_at_stop(
        self, not_started: list[int], started: list[int], name: str, code: int | None
    ) -> None:
        """Settle the items of a process that exited while the run stops."""
        for seq in not_started:
            item = self.items.pop(seq)
            self.unstarted.append(item)
            self._tell(item, Outcome.NOT_STARTED, None)
        for seq in started:
            self.crashes.pop(seq, None)
            error = f"worker process {name} exited (code {code}) while holding it"
            self._lose(self.items.pop(seq), Outcome.LOST, error)

    def _crashed_alone(self, seq: int, name: str, code: int | None) -> None:
        """The isolation process died running item `seq` alone: the crash is the item's."""
        crashes = self.crashes[seq] = self.crashes.get(seq, 0) + 1
        item = self.items[seq]
        tries = self.plan.max_retries + 1
        if crashes < tries:
            logger.error(
                "[%s] %s crashed its worker process (%s, code %s) running alone (try %d of "
                "%d): it runs alone again",
                self.name,
                shorten(item),
                name,
                code,
                crashes,
                tries,
            )
            self.suspects.appendleft(seq)
            self._count_restart()
            return
        self.crashes.pop(seq)
        text = (
            f"worker process {name} exited (code {code}) while running it alone, "
            f"{crashes} time(s): the item crashes its process"
        )
        self._lose(self.items.pop(seq), Outcome.LOST, text)

    def _time_out(self, child: _Child, seq: int) -> None:
        """Settle the item whose sync reader overran as failed by a timeout."""
        child.outstanding.discard(seq)
        child.started.discard(seq)
        child.finishing.discard(seq)
        self.crashes.pop(seq, None)
        error = error_text(ReaderTimeout(self.plan.timeout))
        self._lose(self.items.pop(seq), Outcome.FAILED, error, timed_out=True)

    def _lose(self, item: Any, outcome: Outcome, error: str, *, timed_out: bool = False) -> None:
        """Count, log and settle an item whose process died holding it (its metrics too: the
        process cannot count it any more)."""
        self.failed += 1
        self.timed_out += timed_out
        metrics = self.plan.metrics
        if metrics is not None:
            metrics.failed.inc()
            if timed_out:
                metrics.timed_out.inc()
        logger.error("[%s] item failed: %s: %s", self.name, shorten(item), error)
        self._tell(item, outcome, error)

    def _count_restart(self) -> None:
        if self.plan.metrics is not None:
            self.plan.metrics.restarts.inc()

    def _write(self, child: _Child, data: bytes) -> None:
        if child.transport is not None and not child.transport.is_closing():
            child.transport.write(data)

    # ---- shutdown ------------------------------------------------------------------------
    async def _shutdown(self, feeder: asyncio.Task[None] | None) -> None:
        self.stopped.set()
        self.room.set()
        self.idle.set()
        if feeder is not None:
            feeder.cancel()
            await asyncio.wait({feeder}, timeout=self.graceful_timeout)
        while self.pending:
            seq, _ = self.pending.popleft()
            item = self.items.pop(seq)
            self.unstarted.append(item)
            self._tell(item, Outcome.NOT_STARTED, None)
        while self.suspects:  # they had started in a process that died
            seq = self.suspects.popleft()
            self.crashes.pop(seq, None)
            text = "its worker process died holding it; stopped before it ran again alone"
            self._lose(self.items.pop(seq), Outcome.LOST, text)
        for child in self.children:
            if child.ready:  # a process not ready yet gets STOP when it says READY
                self._write(child, encode(Kind.STOP))
        if self.children and not await _wait(self.all_exited, self.graceful_timeout):
            logger.warning(
                "[%s] graceful_shutdown_timeout (%ss) passed: killing %d worker process(es)",
                self.name,
                self.graceful_timeout,
                len(self.children),
            )
            self._kill_all()
            await _wait(self.all_exited, KILL_WAIT)
        if self.unstarted:
            logger.warning(
                "[%s] %d queued item(s) were not started", self.name, len(self.unstarted)
            )

    def _kill_all(self) -> None:
        for child in list(self.children):
            if child.process.is_alive():
                child.process.kill()
            if not child.exited:
                child.process.join(KILL_WAIT)


def _signame(signum: int) -> str:
    return signal.Signals(signum).name


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait for `event` at most `seconds`; return whether it is set."""
    if not event.is_set() and seconds > 0:
        waiter = asyncio.ensure_future(event.wait())
        await asyncio.wait({waiter}, timeout=seconds)
        waiter.cancel()
    return event.is_set()
