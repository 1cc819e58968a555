"""The memory-limited pipes: ``LimitedQueueIO``, ``HashingQueueIO`` (hashes as data passes)
and ``ProgressHashingQueueIO`` (also drives a progress bar, ``ProgressBar``: tqdm fits)."""

from __future__ import annotations

import hashlib
from typing import Protocol

from .pieces import DEFAULT_MEMORY_LIMIT, _positive_int
from .pipe import QueueIO


class ProgressBar(Protocol):
    """What :class:`ProgressHashingQueueIO` needs from a progress bar (tqdm fits)."""

    def update(self, n: int) -> object:
        """Advance the bar by ``n`` bytes."""

    def close(self) -> None:
        """Finish the bar."""


class LimitedQueueIO(QueueIO):
    """A :class:`QueueIO` that never buffers more than ``memory_limit`` bytes.

    A write that does not fit is split into ``chunk_size`` pieces (default
    ``min(1 MiB, memory_limit)``), each admitted as the reader makes room.
    """

    def __init__(
        self,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        chunk_size: int | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        super().__init__(
            memory_limit=_positive_int("memory_limit", memory_limit),
            chunk_size=chunk_size,
            timeout=timeout,
        )


class HashingQueueIO(LimitedQueueIO):
    """A :class:`LimitedQueueIO` that hashes the bytes in the writer's thread as they pass.

    ``hash_algorithm`` is any fixed-size :func:`hashlib.new` name.  The digest is
    final, and available, once the writer called ``close()``.
    """

    def __init__(
        self,
        hash_algorithm: str = "sha256",
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        chunk_size: int | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        super().__init__(memory_limit, chunk_size, timeout=timeout)
        try:
            hasher = hashlib.new(hash_algorithm)
        except (ValueError, TypeError) as error:  # with `as`: one format for every target
            raise ValueError(
                f"hash_algorithm must be a hashlib algorithm name, got {hash_algorithm!r}"
            ) from error
        if hasher.digest_size == 0:
            raise ValueError(
                f"hash_algorithm must have a fixed digest size, got {hash_algorithm!r}"
            )
        self._hasher = hasher

    @property
    def hash_name(self) -> str:
        """The hash algorithm's name, as hashlib spells it."""
        return self._hasher.name

    def _admitted(self, data: bytes | memoryview) -> None:
        self._hasher.update(data)

    def _check_digest_ready(self) -> None:
        if self._aborted:
            raise RuntimeError("no digest: the stream was aborted")
        if not self._write_closed:
            raise RuntimeError("no digest yet: the writer has not called close()")

    def digest(self) -> bytes:
        """The digest of every byte written; raises ``RuntimeError`` before ``close()``."""
        self._check_digest_ready()
        return self._hasher.digest()

    def hexdigest(self) -> str:
        """The hex digest of every byte written; raises ``RuntimeError`` before ``close()``."""
        self._check_digest_ready()
        return self._hasher.hexdigest()

    def get_hash(self) -> str:
        """Same as :meth:`hexdigest` (the seed's name)."""
        return self.hexdigest()


def _tqdm_bar(total: int | None, desc: str | None) -> ProgressBar | None:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)


class ProgressHashingQueueIO(HashingQueueIO):
    """A :class:`HashingQueueIO` that reports written bytes to a progress bar.

    Without ``bar`` it makes a tqdm bar (``total_size`` bytes, ``desc``) when tqdm
    is installed; without tqdm it runs with no bar (``progress`` is None).  The
    bar advances in the writer's thread and is closed when the write side ends.
    """

    def __init__(
        self,
        total_size: int | None = None,
        hash_algorithm: str = "sha256",
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        chunk_size: int | None = None,
        *,
        timeout: float | None = None,
        bar: ProgressBar | None = None,
        desc: str | None = None,
    ) -> None:
        if total_size is not None and (
            isinstance(total_size, bool) or not isinstance(total_size, int) or total_size < 0
        ):
            raise ValueError(
                f"total_size must be a non-negative integer or None, got {total_size!r}"
            )
        super().__init__(hash_algorithm, memory_limit, chunk_size, timeout=timeout)
        self.progress: ProgressBar | None = bar if bar is not None else _tqdm_bar(total_size, desc)

    def _admitted(self, data: bytes | memoryview) -> None:
        super()._admitted(data)
        if self.progress is not None:
            self.progress.update(len(data))

    def _write_end_closed(self, clean: bool) -> None:
        if self.progress is not None:
            self.progress.close()
