"""Recovery and dead letters: ``recover`` returns the batches of dead processes to
``ready/``; ``dead_batches``, ``replay_dead`` and ``purge_dead`` list, replay and delete the
batches in ``dead/``."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from .files import (
    _NAME,
    _fdatasync,
    _fsync_dir,
    _Layout,
    _NotABatchFile,
    _open_if_dead,
    _Stamper,
    _unlock_close,
)
from .records import MAGIC, _check_int


@dataclass(frozen=True)
class Recovery:
    """What :func:`recover` did: batches it moved, dead-lettered or deleted."""

    requeued: int  # claims of dead consumers moved back to ready/
    republished: int  # open batches of dead producers published to ready/
    dead_lettered: int  # claims of dead consumers that reached max_attempts
    removed: int  # empty batches and half-created files of dead processes deleted
    quarantined: int = 0  # entries that are not batch files, moved to corrupt/


def recover(root: str | os.PathLike[str], *, max_attempts: int = 5, fsync: bool = True) -> Recovery:
    """Return the batches of dead processes to ``ready/``; safe at any time, from any process.

    A claim whose consumer died counts as a failed attempt (after ``max_attempts`` it moves
    to ``dead/``); an open batch of a dead producer is published as it is (a torn last record
    is quarantined when claimed). Files locked by live processes are never touched. An entry
    of ``claimed/`` or ``tmp/`` that is not a regular file it may open (a directory, a
    symlink, a fifo...) is moved to ``corrupt/``; it never makes ``recover`` raise or block.
    """
    _check_int("max_attempts", max_attempts)
    layout = _Layout(root)
    layout.make()
    stamper = _Stamper()
    requeued = republished = dead_lettered = removed = quarantined = 0

    def open_if_dead(path: str, name: str) -> int | None:
        nonlocal quarantined
        try:
            return _open_if_dead(path)
        except _NotABatchFile:
            quarantined += layout.set_aside(path, name, fsync)
            return None

    for name in sorted(os.listdir(layout.claimed)):
        match = _NAME.match(name)
        path = os.path.join(layout.claimed, name)
        if match is None or (fd := open_if_dead(path, name)) is None:
            continue
        try:
            batch_id, failures = match.group(1), int(match.group(2)) + 1
            if failures >= max_attempts:
                reason = f"the consumer holding it died (attempt {failures})"
                layout.dead_letter(path, batch_id, failures, reason, fsync)
                dead_lettered += 1
            else:
                os.rename(path, os.path.join(layout.ready, f"{batch_id}.{failures}"))
                requeued += 1
        finally:
            _unlock_close(fd)

    for name in sorted(os.listdir(layout.tmp)):
        is_open = name.endswith(".open") and not name.startswith(".")
        if not (is_open or name.startswith(".")):
            continue
        path = os.path.join(layout.tmp, name)
        if (fd := open_if_dead(path, name)) is None:
            continue
        try:
            if not is_open or os.fstat(fd).st_size <= len(MAGIC):
                os.unlink(path)
                removed += 1
            else:
                if fsync:
                    _fdatasync(fd)
                os.rename(path, os.path.join(layout.ready, f"{stamper.next()}.0"))
                republished += 1
        finally:
            _unlock_close(fd)

    for folder in (layout.dead, layout.corrupt):
        for name in os.listdir(folder):
            if not name.startswith("."):
                continue
            path = os.path.join(folder, name)
            try:
                fd = _open_if_dead(path)
            except _NotABatchFile:
                continue  # not a file a spool process was creating: leave it alone
            if fd is not None:
                try:
                    os.unlink(path)
                    removed += 1
                finally:
                    _unlock_close(fd)

    if fsync and (requeued or republished):
        _fsync_dir(layout.ready)
    return Recovery(requeued, republished, dead_lettered, removed, quarantined)


@dataclass(frozen=True)
class DeadBatch:
    """A batch in ``dead/``: its file name there, how often it failed, the last error."""

    name: str
    failures: int
    error: str
    when: float  # when it was moved to dead/ (seconds since the epoch)


def dead_batches(root: str | os.PathLike[str], limit: int | None = None) -> list[DeadBatch]:
    """The batches in ``dead/``, oldest published first (at most ``limit``)."""
    layout = _Layout(root)
    batches: list[DeadBatch] = []
    for name in sorted(_dead_names(layout)):
        if limit is not None and len(batches) >= limit:
            break
        match = _NAME.match(name)
        assert match is not None
        note = os.path.join(layout.dead, f"{name}.error")
        try:
            with open(note, encoding="utf-8", errors="replace") as file:
                error = file.read()
            when = os.stat(note).st_mtime
        except OSError:  # no note (an older spool), or purged meanwhile
            error, when = "", _mtime(os.path.join(layout.dead, name))
        batches.append(DeadBatch(name, int(match.group(2)), error.strip(), when))
    return batches


def replay_dead(
    root: str | os.PathLike[str], names: list[str] | None = None, *, fsync: bool = True
) -> int:
    """Move dead batches (``names``, or all) back to ``ready/`` with their failures reset.

    Each moves with one atomic rename, so a batch is replayed once even if two processes
    replay it at once. Returns how many this call moved.
    """
    layout = _Layout(root)

    def move(name: str, batch_id: str) -> None:
        os.rename(os.path.join(layout.dead, name), os.path.join(layout.ready, f"{batch_id}.0"))

    moved = _each_dead(layout, _dead_names(layout) if names is None else names, move)
    if fsync and moved:
        _fsync_dir(layout.ready)
        _fsync_dir(layout.dead)
    return moved


def purge_dead(
    root: str | os.PathLike[str],
    names: list[str] | None = None,
    older_than: float | None = None,
    *,
    fsync: bool = True,
) -> int:
    """Delete dead batches: ``names``, or all, or (with ``older_than``) those moved to
    ``dead/`` more than that many seconds ago. Returns how many this call deleted."""
    layout = _Layout(root)
    if names is None:
        cutoff = None if older_than is None else time.time() - older_than
        names = [
            batch.name for batch in dead_batches(root) if cutoff is None or batch.when < cutoff
        ]
    deleted = _each_dead(layout, names, lambda name, _: os.unlink(os.path.join(layout.dead, name)))
    if fsync and deleted:
        _fsync_dir(layout.dead)
    return deleted


def _each_dead(layout: _Layout, names: list[str], act: Callable[[str, str], None]) -> int:
    """``act(name, batch id)`` on each named batch of ``dead/``, then drop its error note;
    a batch that is not there (another process got to it first) is skipped. Returns how
    many it acted on."""
    done = 0
    for name in names:
        match = _NAME.match(name)
        if match is None:
            continue
        try:
            act(name, match[1])
        except FileNotFoundError:
            continue
        done += 1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(layout.dead, f"{name}.error"))
    return done


def _dead_names(layout: _Layout) -> list[str]:
    try:
        return [name for name in os.listdir(layout.dead) if _NAME.match(name)]
    except FileNotFoundError:
        return []


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0
