"""What the pipe classes share: the default sizes, ``PipeAbortedError``, the argument checks,
and the byte pieces the buffer holds (a written buffer taken as bytes, a read buffer as a
byte view, pieces joined back into bytes)."""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

DEFAULT_CHUNK_SIZE = 1024 * 1024
"""Largest piece a write is split into while it waits for room (1 MiB)."""

DEFAULT_MEMORY_LIMIT = 16 * 1024 * 1024
"""Default buffer bound of :class:`LimitedQueueIO` (16 MiB)."""

_NO_LIMIT = sys.maxsize

# One buffered piece: (data, start, end); the piece is data[start:end].
_Piece = tuple[bytes, int, int]


class PipeAbortedError(OSError):
    """Raised to the reader (and any later writer) after ``abort()``; ``__cause__`` is its error."""


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _timeout(value: object) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {value!r}")
    return float(value)


def _as_bytes(b: ReadableBuffer) -> bytes:
    """Return ``b`` itself when it is ``bytes`` (immutable, no copy), else one copy of it."""
    if type(b) is bytes:
        return b
    if isinstance(b, str):
        raise TypeError("write() argument must be a bytes-like object, not 'str'")
    try:
        view = memoryview(b)
    except TypeError:
        raise TypeError(
            f"write() argument must be a bytes-like object, not {type(b).__name__!r}"
        ) from None
    with view:
        return view.tobytes()


def _byte_view(view: memoryview) -> memoryview:
    """``view`` as a flat writable byte view, checked before any data is taken."""
    if view.readonly:
        raise TypeError("readinto() argument must be a writable bytes-like object")
    if view.format == "B" and view.ndim == 1:
        return view
    return view.cast("B")


def _join(parts: list[_Piece]) -> bytes:
    if len(parts) == 1:
        data, start, end = parts[0]
        if start == 0 and end == len(data):
            return data
        return data[start:end]
    return b"".join(
        [
            data if start == 0 and end == len(data) else memoryview(data)[start:end]
            for data, start, end in parts
        ]
    )
