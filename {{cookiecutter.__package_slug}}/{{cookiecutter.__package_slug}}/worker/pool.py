"""The worker processes of a run, from the parent: start them, hand them items, hear their
outcomes, and replace them.

Each process gets at most a window of items over its own socket: its reader slots and a few
more it has not started (`slots.py`), plus those its source's session is committing. The pool
tells the supervisor each outcome (`Outcomes`); it never drops an item. Recycled processes
finish their items first.

A crash costs the item that caused it, not its neighbours. When a worker process dies, its
items that had not started are handed out again, no attempt counted; those that had started
("suspects": any of them may have caused it) each run again alone, one at a time, in a process
of their own. A crash of that process is its one item's: it counts as a failed attempt, and
the item runs alone again while MAX_RETRIES allows, then it is settled as lost, with a log
line naming it (a durable source counts that attempt, and may hand it out again).

Nothing here polls: the pool waits on sockets and process sentinels.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import pickle
import socket
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from .child import CONTEXT_FAILED_EXIT, ReaderPlan, run_worker_process
from .errors import ContextError
from .retry import ReaderTimeout
from .settings import env_name
from .slots import Slots, ahead, committing
from .source import Failure
from .texts import error_text, shorten
from .wire import Frame, FrameReader, Kind, decode_seqs, encode

logger = logging.getLogger(__name__)

# Always fork, whatever the interpreter's default (forkserver on Linux from Python 3.14): the
# reader, context and source reach worker processes unpickled (docs/worker.md).
FORK = multiprocessing.get_context("fork")
KILL_WAIT = 5.0  # seconds to wait for a killed process to be reaped
PICKLE = pickle.HIGHEST_PROTOCOL


class Outcomes(Protocol):
    """What the pool tells the supervisor, once per item it was handed (`seq`)."""

    def item_succeeded(self, seq: int, attempts: int) -> None: ...
    def item_failed(
        self, seq: int, attempts: int, failure: Failure, *, timed_out: bool
    ) -> None: ...
    def item_lost(self, seq: int, error: str, *, timed_out: bool = False) -> None: ...
    def item_not_started(self, seq: int) -> None: ...
    def fatal(self, error: BaseException) -> None: ...
    def dispatched(self) -> None: ...  # items left the queue: the supervisor may fetch more


@dataclass(eq=False)
class _Child:
    """The parent's view of one worker process."""

    process: BaseProcess
    sock: socket.socket
    slots: int  # its reader slots now (adaptive slots change)
    isolated: bool = False  # runs one suspect at a time (see the module docstring)
    transport: asyncio.Transport | None = None
    held: set[int] = field(default_factory=set)  # sent to it, no outcome yet
    started: set[int] = field(default_factory=set)  # their readers may have run
    committing: set[int] = field(default_factory=set)  # readers done, in their commit step
    timed: int | None = None  # the item its sync reader runs (with READER_TIMEOUT)
    overran: int | None = None  # the item whose sync reader overran: the process was killed
    deadline: asyncio.TimerHandle | None = None
    sent: int = 0
    ready: bool = False
    retiring: bool = False
    exited: bool = False
    eof: bool = False


class _Link(asyncio.Protocol):
    """Feeds the frames a worker process sends to the pool."""

    def __init__(self, pool: WorkerPool, child: _Child) -> None:
        self.pool = pool
        self.child = child
        self.frames = FrameReader()

    def data_received(self, data: bytes) -> None:
        self.pool.on_frames(self.child, self.frames.feed(data))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.child.eof = True
        self.pool.on_child_gone(self.child)


class WorkerPool:
    """NUM_PROCESSES worker processes fed from `queue` ((seq, payload, carrier) tuples, taken
    from the left); `items` holds every unfinished item by its seq."""

    def __init__(
        self,
        name: str,
        plan: ReaderPlan,
        queue: deque[tuple[int, bytes, bytes]],
        items: Mapping[int, Any],
        outcomes: Outcomes,
        stopped: asyncio.Event,
    ) -> None:
        settings = plan.settings
        self.name = name
        self.plan = plan
        self.queue = queue
        self.items = items
        self.outcomes = outcomes
        self.stopped = stopped
        self.processes: int = settings.num_processes
        self.max_jobs: int = settings.max_jobs_per_process or 0
        self.times_sync = bool(plan.timeout) and not plan.is_async
        self.loop = asyncio.get_running_loop()
        self.children: list[_Child] = []
        self.connecting: set[asyncio.Task[None]] = set()
        self.launched = 0
        self.turn = 0  # which worker process is offered items first
        self.dispatch_due = False  # a `dispatch` is scheduled
        self.suspects: deque[int] = deque()  # started in a process that died: run each alone
        self.crashes: dict[int, int] = {}  # item -> crashes of a process running it alone
        self.isolation: _Child | None = None  # the process that runs suspects one at a time
        self.reruns = 0  # suspects run again alone
        self.all_exited = asyncio.Event()

    # ---- processes -----------------------------------------------------------------------
    def start(self) -> None:
        """Start NUM_PROCESSES worker processes."""
        for _ in range(self.processes):
            self._spawn()

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
        child = _Child(process=process, sock=parent_sock, slots=plan.slots.start, isolated=isolated)
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

    def stop(self) -> None:
        """Tell every ready process to finish what runs and hand back the rest (a process not
        ready yet is told when it says READY)."""
        for child in self.children:
            if child.ready:
                self._write(child, encode(Kind.STOP))

    def kill_all(self) -> None:
        """Kill every worker process now and reap it."""
        for child in list(self.children):
            if child.process.is_alive():
                child.process.kill()
            if not child.exited:
                child.process.join(KILL_WAIT)

    # ---- handing out items ---------------------------------------------------------------
    def dispatch_soon(self) -> None:
        """Hand out queued items at the end of this turn (once, however many were queued)."""
        if not self.dispatch_due:
            self.dispatch_due = True
            self.loop.call_soon(self.dispatch)

    def _free(self, child: _Child) -> int:
        """How many more items `child` may take now (0 if it is not taking any): its slots
        and a few more not started (`slots.ahead`), plus those its session is committing."""
        if not child.ready or child.retiring or child.isolated or child.transport is None:
            return 0
        held, slots = len(child.held), child.slots
        reading = slots + ahead(slots)
        window = reading + committing(slots)
        free = min(reading - (held - len(child.committing)), window - held)
        if self.max_jobs:
            free = min(free, self.max_jobs - child.sent)
        return max(free, 0)

    def dispatch(self) -> None:
        """Hand queued items to the processes with room, taking turns going first."""
        self.dispatch_due = False
        self._isolate()
        queue = self.queue
        if self.stopped.is_set() or not queue:
            self.outcomes.dispatched()
            return
        children = self.children
        self.turn = (self.turn + 1) % len(children) if children else 0
        order = children[self.turn :] + children[: self.turn]
        free = {child: self._free(child) for child in order}
        if len(queue) < sum(free.values()) and any(not c.held for c in order):
            # Fewer items than room, and a process idle (or starting): spread them.
            free = self._spread(order, free, len(queue))
        for child in order:
            if not queue:
                break
            if free[child] <= 0:
                continue
            frames = []
            for _ in range(min(free[child], len(queue))):
                seq, payload, carrier = queue.popleft()
                frames.append(encode(Kind.ITEM, seq, 0, payload, carrier))
                child.held.add(seq)
            child.sent += len(frames)
            if self.max_jobs and child.sent >= self.max_jobs:
                frames.append(encode(Kind.RETIRE))  # it finishes its items, then exits
                child.retiring = True
                if not self.stopped.is_set():
                    self._spawn()
                    self._count_restart()
            assert child.transport is not None
            child.transport.write(b"".join(frames))
        self.outcomes.dispatched()

    @staticmethod
    def _spread(order: list[_Child], free: dict[_Child, int], count: int) -> dict[_Child, int]:
        """How many of `count` items each process gets when there are fewer than room: one at
        a time to the least loaded, counting the processes still starting (their share waits
        for them), so a few slow items do not all queue in one process."""
        starting = [c for c in order if not (c.ready or c.retiring or c.exited or c.isolated)]
        takers = [c for c in order if free[c] > 0] + starting
        load = {c: len(c.held) for c in takers}
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

    def _isolate(self) -> None:
        """Run the suspects one at a time, each alone in the isolation process (started when
        one waits, retired when none is left)."""
        if self.stopped.is_set():
            return
        if self.suspects and self.isolation is None:
            self._spawn(isolated=True)
        alone = self.isolation
        if alone is None or not alone.ready or alone.retiring or alone.held:
            return
        assert alone.transport is not None
        if not self.suspects:
            alone.transport.write(encode(Kind.RETIRE))
            alone.retiring = True
            return
        seq = self.suspects.popleft()
        alone.held.add(seq)
        alone.sent += 1
        self.reruns += 1
        alone.transport.write(encode(Kind.ITEM, seq, 0, self.payload(seq)))

    def payload(self, seq: int) -> bytes:
        """The bytes of an item handed out again (its trace carrier is not kept: no parent)."""
        return pickle.dumps(self.items[seq], PICKLE)

    def take_suspects(self) -> list[int]:
        """The suspects that have not run again (at shutdown): they are the caller's now."""
        taken = list(self.suspects)
        self.suspects.clear()
        for seq in taken:
            self.crashes.pop(seq, None)
        return taken

    # ---- what the processes say ----------------------------------------------------------
    def on_frames(self, child: _Child, frames: list[Frame]) -> None:
        """Handle the frames a worker process sent, then hand out items once for all."""
        for frame in frames:
            self._on_frame(child, frame)
        self.dispatch()

    def _on_frame(self, child: _Child, frame: Frame) -> None:
        kind = frame.kind
        outcomes = self.outcomes
        if kind == Kind.SUCCEEDED:
            self._ended(child, frame.seq)
            outcomes.item_succeeded(frame.seq, frame.attempts)
        elif kind == Kind.FAILED or kind == Kind.TIMED_OUT or kind == Kind.GAVE_UP:
            self._ended(child, frame.seq)
            failure = Failure(
                frame.payload.decode(errors="replace"), permanent=kind == Kind.GAVE_UP
            )
            outcomes.item_failed(
                frame.seq, frame.attempts, failure, timed_out=kind == Kind.TIMED_OUT
            )
        elif kind == Kind.STARTED:
            seqs = decode_seqs(frame.payload)
            child.started.update(seqs)
            if self.times_sync and seqs:  # a sync reader runs one at a time: time it
                if child.deadline is not None:
                    child.deadline.cancel()
                child.timed = seqs[-1]
                child.deadline = self.loop.call_later(
                    self.plan.timeout, self._overrun, child, seqs[-1]
                )
        elif kind == Kind.READER_DONE:
            child.committing.update(decode_seqs(frame.payload))
        elif kind == Kind.SLOTS:
            child.slots = frame.seq
        elif kind == Kind.NOT_STARTED:
            child.held.discard(frame.seq)
            outcomes.item_not_started(frame.seq)
        elif kind == Kind.READY:
            child.ready = True
            if self.stopped.is_set():
                self._write(child, encode(Kind.STOP))
        elif kind == Kind.CONTEXT_FAILED:
            text = frame.payload.decode(errors="replace")
            outcomes.fatal(
                ContextError(f"context() raised in {child.process.name}: {text}; fix context()")
            )

    def _ended(self, child: _Child, seq: int) -> None:
        """An item of `child` has its outcome: the process holds it no more."""
        child.held.discard(seq)
        child.started.discard(seq)
        child.committing.discard(seq)
        self.crashes.pop(seq, None)
        if child.timed == seq and child.deadline is not None:
            child.deadline.cancel()
            child.timed = child.deadline = None

    def _overrun(self, child: _Child, seq: int) -> None:
        """A sync reader overran READER_TIMEOUT: kill its process (it is replaced)."""
        if child.timed != seq or seq not in child.held or child.exited:
            return
        child.overran = seq
        logger.error(
            "[%s] %s: the reader overran %s=%gs on %s: killing the process",
            self.name,
            child.process.name,
            env_name(self.plan.settings, "READER_TIMEOUT"),
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
            self._ended(child, child.overran)
            setting = env_name(self.plan.settings, "READER_TIMEOUT")
            text = error_text(ReaderTimeout(self.plan.timeout, setting))
            self.outcomes.item_lost(child.overran, text, timed_out=True)
        not_started = sorted(child.held - child.started, reverse=True)
        suspects = sorted(child.held & child.started)
        child.held.clear()
        child.started.clear()
        child.committing.clear()
        if self.stopped.is_set():  # nothing is handed out any more: settle them now
            for seq in reversed(not_started):
                self.outcomes.item_not_started(seq)
            for seq in suspects:
                self.crashes.pop(seq, None)
                error = f"worker process {name} exited (code {code}) while holding it"
                self.outcomes.item_lost(seq, error)
        else:
            for seq in not_started:  # first in line again, no attempt counted
                self.queue.appendleft((seq, self.payload(seq), b""))
            if suspects and child.isolated:
                self._crashed_alone(suspects[0], name, code)
            elif suspects:
                logger.error(
                    "[%s] %s exited with code %s holding %d item(s) that had started: each "
                    "runs again alone, in a process of its own, to find the one that crashes "
                    "it%s",
                    self.name,
                    name,
                    code,
                    len(suspects),
                    f" ({len(not_started)} not started: handed out again)" if not_started else "",
                )
                self.suspects.extend(suspects)
        if not self.children:
            self.all_exited.set()
        if self.stopped.is_set() or child.retiring or child.isolated:
            self.dispatch()
            return
        if child.overran is None and (code == CONTEXT_FAILED_EXIT or not child.ready):
            self.outcomes.fatal(
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
        self.dispatch()

    def _crashed_alone(self, seq: int, name: str, code: int | None) -> None:
        """The isolation process died running item `seq` alone: the crash is the item's."""
        crashes = self.crashes[seq] = self.crashes.get(seq, 0) + 1
        tries = self.plan.max_retries + 1
        if crashes < tries:
            logger.error(
                "[%s] %s crashed its worker process (%s, code %s) running alone (try %d of "
                "%d): it runs alone again",
                self.name,
                shorten(self.items[seq]),
                name,
                code,
                crashes,
                tries,
            )
            self.suspects.appendleft(seq)
            self._count_restart()
            return
        self.crashes.pop(seq)
        self.outcomes.item_lost(
            seq,
            f"worker process {name} exited (code {code}) while running it alone, "
            f"{crashes} time(s): the item crashes its process",
        )

    def _count_restart(self) -> None:
        if self.plan.metrics is not None:
            self.plan.metrics.restarts.inc()

    def _write(self, child: _Child, data: bytes) -> None:
        if child.transport is not None and not child.transport.is_closing():
            child.transport.write(data)
