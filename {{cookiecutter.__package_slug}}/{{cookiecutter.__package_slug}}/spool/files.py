"""File and lock helpers and the folder layout: ``flock``, ``fsync``, files created under a
lock, opening only regular files, the batch names, ``_Layout`` (``tmp/``, ``ready/``,
``claimed/``, ``dead/``, ``corrupt/``) and the publish stamps."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import stat
import time
import traceback

from .records import _check_root

# Names in ready/, claimed/ and dead/: "<publish time ns, 20 digits>-<producer token>.<failures>".
_NAME = re.compile(r"^(\d{20}-[0-9a-f]{16})\.(\d+)$")
_FOLDERS = ("tmp", "ready", "claimed", "dead", "corrupt")


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _unlock_close(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


_fdatasync = getattr(os, "fdatasync", os.fsync)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_all(fd: int) -> bytes:
    chunks = []
    size = max(os.fstat(fd).st_size, 1 << 16)
    while chunk := os.read(fd, size):
        chunks.append(chunk)
    return b"".join(chunks)


def _create_locked(directory: str, name: str, data: bytes, fsync: bool) -> int:
    """Create ``directory/name`` holding ``data`` and return its fd, flock-ed by this process.

    The file is written under a dot name and renamed only once locked, so recover() never
    finds it unlocked under its real name. A concurrent recover() may delete the unlocked dot
    file before we lock it; the rename then fails and we start again.
    """
    while True:
        part = os.path.join(directory, f".{name}.{secrets.token_hex(4)}")
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            if _try_lock(fd):
                _write_all(fd, data)
                if fsync:
                    os.fsync(fd)
                try:
                    os.rename(part, os.path.join(directory, name))
                except FileNotFoundError:
                    pass
                else:
                    return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _write_file(directory: str, name: str, data: bytes, fsync: bool) -> None:
    _unlock_close(_create_locked(directory, name, data, fsync))


class _NotABatchFile(Exception):
    """The entry is not a regular file this process can open: a directory, a symlink, a
    fifo, a socket, a device, or a file it may not read."""


# os.open errors that come from the entry itself (O_NOFOLLOW on a symlink: ELOOP, or
# EMLINK on FreeBSD; a socket: ENXIO or EOPNOTSUPP; no permission: EACCES or EPERM).
_NOT_A_BATCH_ERRNOS = frozenset(
    {errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.EOPNOTSUPP, errno.ENODEV}
    | {errno.EACCES, errno.EPERM}
)


def _open_regular(path: str) -> int | None:
    """Open the regular file ``path`` for reading; None if it is gone.

    Never follows a symlink and never blocks (O_NONBLOCK: a fifo opens at once). Raises
    :class:`_NotABatchFile` if the entry is anything but a regular file it may read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in _NOT_A_BATCH_ERRNOS:
            raise _NotABatchFile(f"{path}: {exc.strerror}") from exc
        raise
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _NotABatchFile(f"{path}: not a regular file ({stat.filemode(mode)})")
    return fd


def _open_if_dead(path: str) -> int | None:
    """Open and lock ``path`` if no live process holds it; None if it is live or gone.

    Raises :class:`_NotABatchFile` as :func:`_open_regular` does.
    """
    fd = _open_regular(path)
    if fd is None:
        return None
    try:
        if _try_lock(fd):
            # Still the same file under that name? (It may have moved before we locked it.)
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def _error_text(error: BaseException | str) -> str:
    if isinstance(error, BaseException):
        return "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return str(error)


class _Layout:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = _check_root(root)
        self.tmp, self.ready, self.claimed, self.dead, self.corrupt = (
            os.path.join(self.root, folder) for folder in _FOLDERS
        )

    def make(self) -> None:
        for folder in (self.tmp, self.ready, self.claimed, self.dead, self.corrupt):
            os.makedirs(folder, exist_ok=True)

    def set_aside(self, path: str, name: str, fsync: bool) -> bool:
        """Move the entry at ``path`` to ``corrupt/<name>.bad``, whatever kind of entry it is.

        If that name is taken, a random part is added: nothing in ``corrupt/`` is replaced.
        Returns False, leaving the entry where it is, if it is gone (another process moved
        it) or cannot be moved.
        """
        target = f"{name}.bad"
        for _ in range(3):
            if os.path.lexists(os.path.join(self.corrupt, target)):
                target = f"{name}.{secrets.token_hex(4)}.bad"
            try:
                os.rename(path, os.path.join(self.corrupt, target))
            except FileNotFoundError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                    return False
                target = f"{name}.{secrets.token_hex(4)}.bad"
                continue
            if fsync:
                _fsync_dir(self.corrupt)
            return True
        return False

    def dead_letter(
        self, src: str, batch_id: str, failures: int, error: BaseException | str, fsync: bool
    ) -> None:
        """Move a locked batch at ``src`` to dead/, with its last error beside it."""
        name = f"{batch_id}.{failures}"
        text = f"failed {failures} time(s); last error:\n{_error_text(error)}\n"
        _write_file(self.dead, f"{name}.error", text.encode(), fsync)
        os.rename(src, os.path.join(self.dead, name))
        if fsync:
            _fsync_dir(self.dead)


class _Stamper:
    """Publish names that sort by publish time, strictly increasing within one stamper."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(8)
        self._last = 0

    def next(self) -> str:
        ns = time.time_ns()
        if ns <= self._last:
            ns = self._last + 1
        self._last = ns
        return f"{ns:020d}-{self.token}"
