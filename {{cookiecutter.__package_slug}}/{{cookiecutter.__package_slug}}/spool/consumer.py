"""``Consumer`` and ``Batch``: claim the oldest ready batch under a lock, deliver its intact
records (torn or corrupt ones go to ``corrupt/``), then ack, nack or release it."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from types import TracebackType

from .files import (
    _NAME,
    _create_locked,
    _error_text,
    _fsync_dir,
    _Layout,
    _NotABatchFile,
    _open_regular,
    _read_all,
    _Stamper,
    _try_lock,
    _unlock_close,
    _write_file,
)
from .forks import _track
from .records import MAGIC, Record, SpoolError, _check_int, _check_seconds, _frames, _parse

logger = logging.getLogger(__package__)  # the spool's logger, named as before the split


class Batch:
    """A batch claimed by a :class:`Consumer`: its records, and ack / nack / release.

    ``id`` is the batch id, ``attempts`` how many earlier deliveries failed, ``records`` the
    intact records in order. Finish it exactly once, from the process that claimed it. As a
    context manager it acks on success, nacks on an exception, and releases on
    ``KeyboardInterrupt``/``SystemExit``/``GeneratorExit``.
    """

    __slots__ = ("_consumer", "_done", "_fd", "_name", "attempts", "id", "records")

    def __init__(
        self, consumer: Consumer, fd: int, name: str, attempts: int, records: list[Record]
    ) -> None:
        self._consumer = consumer
        self._fd = fd
        self._name = name
        self._done = False
        self.id = name.rpartition(".")[0]
        self.attempts = attempts
        self.records = records

    def __iter__(self) -> Iterator[Record]:
        """Iterate over the records in order."""
        return iter(self.records)

    def __len__(self) -> int:
        """Number of records."""
        return len(self.records)

    def __repr__(self) -> str:
        """Show id, attempts, size and whether the batch is finished."""
        state = "done" if self._done else "held"
        return f"Batch(id={self.id!r}, attempts={self.attempts}, records={len(self)}, {state})"

    @property
    def done(self) -> bool:
        """True once acked, nacked or released."""
        return self._done

    def ack(self, *, dead: Mapping[int, str] | None = None) -> None:
        """Delete the batch: it has been processed and is never delivered again.

        ``dead`` (record position -> error): records given up on, moved first to ``dead/`` as
        a batch of their own (see :meth:`nack`).
        """
        path = self._finish("ack")
        try:
            if dead:
                self._bury(dead)
            os.unlink(path)
        finally:
            _unlock_close(self._fd)

    def nack(
        self, error: BaseException | str = "", *, dead: Mapping[int, str] | None = None
    ) -> None:
        """Return the batch to ``ready/`` with one more failed attempt (keeping its place).

        After ``max_attempts`` failures it moves to ``dead/`` with ``error`` written beside it.
        ``dead`` (record position -> error): records given up on at once (their reader said
        so): they go to ``dead/`` as a batch of their own, with their errors and their keys, and
        the batch comes back without them.
        """
        path: str | None = self._finish("nack")
        consumer = self._consumer
        layout = consumer._layout
        failures = self.attempts + 1
        copy = None
        try:
            if dead and path is not None:
                path, copy = self._without(dead, path)
            if path is None:
                return
            if failures >= consumer._max_attempts:
                layout.dead_letter(path, self.id, failures, error, consumer._fsync)
            else:
                os.rename(path, os.path.join(layout.ready, f"{self.id}.{failures}"))
        finally:
            _unlock_close(self._fd)
            if copy is not None:
                _unlock_close(copy)

    def release(self, *, dead: Mapping[int, str] | None = None) -> None:
        """Return the batch to ``ready/`` without counting an attempt (without the ``dead``
        records: see :meth:`nack`)."""
        path: str | None = self._finish("release")
        copy = None
        try:
            if dead and path is not None:
                path, copy = self._without(dead, path)
            if path is not None:
                os.rename(path, os.path.join(self._consumer._layout.ready, self._name))
        finally:
            _unlock_close(self._fd)
            if copy is not None:
                _unlock_close(copy)

    def _bury(self, dead: Mapping[int, str]) -> None:
        """Write the records at the positions in ``dead`` to ``dead/`` as a new batch: one
        failure, each record's error in its note, the records' keys kept."""
        layout = self._consumer._layout
        fsync = self._consumer._fsync
        positions = sorted(dead)
        note = "\n".join(f"{self.records[p].key}: {_error_text(dead[p])}" for p in positions)
        batch_id = _Stamper().next()
        name = f"{batch_id}.1"
        records = [self.records[position] for position in positions]
        fd = _create_locked(layout.tmp, name, _frames(records), fsync)  # locked: recover()
        try:  # leaves it alone until it is in dead/
            layout.dead_letter(os.path.join(layout.tmp, name), batch_id, 1, note, fsync)
        finally:
            _unlock_close(fd)

    def _without(self, dead: Mapping[int, str], path: str) -> tuple[str | None, int | None]:
        """Bury the ``dead`` records, and replace the claimed file at ``path`` with a copy
        holding the others: (the copy's path, its locked fd), or (None, None) if none is left.
        """
        self._bury(dead)
        kept = [record for position, record in enumerate(self.records) if position not in dead]
        if not kept:
            os.unlink(path)
            return None, None
        layout = self._consumer._layout
        fd = _create_locked(layout.tmp, self._name, _frames(kept), self._consumer._fsync)
        os.unlink(path)
        return os.path.join(layout.tmp, self._name), fd

    def __enter__(self) -> Batch:
        """Return self."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Ack on success, nack on an Exception, release on other BaseExceptions."""
        if self._done:
            return
        if exc is None:
            self.ack()
        elif isinstance(exc, Exception):
            self.nack(exc)
        else:
            self.release()

    def _finish(self, what: str) -> str:
        if self._consumer._forked:
            raise SpoolError(f"cannot {what} batch {self.id}: it was claimed before fork()")
        if self._done:
            raise SpoolError(f"cannot {what} batch {self.id}: it is already finished")
        self._done = True
        return os.path.join(self._consumer._layout.claimed, self._name)

    def _drop_after_fork(self) -> None:
        if not self._done:
            self._done = True
            os.close(self._fd)  # our copy only: the parent keeps its lock


class Consumer:
    """Claim ready batches one at a time, oldest first; no two consumers get the same batch.

    A batch that fails ``max_attempts`` times (``nack`` or the death of its consumer) goes to
    ``dead/``. Torn or corrupt records are copied to ``corrupt/`` and not delivered.
    Not thread-safe: use one consumer per thread. Unusable in a child after ``fork``.
    """

    def __init__(
        self, root: str | os.PathLike[str], *, max_attempts: int = 5, fsync: bool = True
    ) -> None:
        """Create the spool folders under ``root`` if needed."""
        self._max_attempts = _check_int("max_attempts", max_attempts)
        self._fsync = bool(fsync)
        self._layout = _Layout(root)
        self._layout.make()
        self._held: Batch | None = None
        self._closed = False
        self._forked = False
        _track(self)

    def claim(self, timeout: float | None = 0.0) -> Batch | None:
        """Claim the oldest ready batch, waiting up to ``timeout`` s (None: forever) for one.

        Returns None if there was none in time. The previous batch must be finished first.
        An entry of ``ready/`` that is not a readable batch file (bad header, a directory,
        a symlink, a fifo, a file it may not open or read) is moved to ``corrupt/`` and
        skipped: it never makes ``claim`` raise or block.
        """
        wait = _check_seconds("timeout", timeout)
        if self._forked:
            raise SpoolError("this Consumer was created before fork(); create a new one here")
        if self._closed:
            raise SpoolError("this Consumer is closed")
        if self._held is not None and not self._held.done:
            raise SpoolError(f"finish batch {self._held.id} (ack, nack or release) first")
        deadline = None if wait is None else time.monotonic() + wait
        delay = 0.0005
        while True:
            batch = self._claim_once()
            if batch is not None:
                self._held = batch
                return batch
            if deadline is None:
                time.sleep(delay)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.01)

    def close(self) -> None:
        """Release a batch still held (no attempt counted); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._held is not None and not self._held.done and not self._forked:
            self._held.release()

    def __enter__(self) -> Consumer:
        """Return self; the ``with`` block's exit calls :meth:`close`."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close: release a batch still held."""
        self.close()

    def _claim_once(self) -> Batch | None:
        layout = self._layout
        for name in sorted(os.listdir(layout.ready)):
            match = _NAME.match(name)
            if match is None:
                continue
            path = os.path.join(layout.ready, name)
            try:
                fd = _open_regular(path)
            except _NotABatchFile:
                layout.set_aside(path, name, self._fsync)
                continue
            if fd is None:
                continue  # another consumer claimed it
            try:
                if not _try_lock(fd):
                    os.close(fd)  # being claimed or published right now
                    continue
                claimed = os.path.join(layout.claimed, name)
                try:
                    os.rename(path, claimed)
                except FileNotFoundError:
                    _unlock_close(fd)  # claimed and finished by another consumer meanwhile
                    continue
                batch = self._load(fd, name, match.group(1), int(match.group(2)), claimed)
            except BaseException:
                os.close(fd)  # the claim stays in claimed/, unlocked: recover() returns it
                raise
            if batch is not None:
                return batch
        return None

    def _load(self, fd: int, name: str, batch_id: str, attempts: int, path: str) -> Batch | None:
        layout = self._layout
        try:
            buf = _read_all(fd)
        except OSError:
            buf = b""  # unreadable (an I/O error): set aside like a foreign file
        if not buf.startswith(MAGIC):
            layout.set_aside(path, name, self._fsync)
            _unlock_close(fd)
            return None
        records, bad = _parse(buf, batch_id)
        for start, end in bad:
            part = f"{batch_id}@{start}.bad"
            if not os.path.exists(os.path.join(layout.corrupt, part)):
                _write_file(layout.corrupt, part, buf[start:end], self._fsync)
                logger.warning(
                    "spool batch %s: %d byte(s) at offset %d are not an intact record (torn, "
                    "corrupt or not the text they claim): set aside in corrupt/%s; the batch's "
                    "other records are delivered",
                    batch_id,
                    end - start,
                    start,
                    part,
                )
        if bad and self._fsync:
            _fsync_dir(layout.corrupt)
        if not records:
            os.unlink(path)
            _unlock_close(fd)
            return None
        return Batch(self, fd, name, attempts, records)

    def _drop_after_fork(self) -> None:
        self._forked = True
        if self._held is not None:
            self._held._drop_after_fork()
