"""How long to wait before the next attempt of a failed item: one rule for every source."""

from __future__ import annotations

import random

MAX_EXPONENT = 62  # 2 ** 62 seconds is far past any cap; a larger exponent could overflow


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait after failed attempt `attempt` (from 1): `base * 2 ** (attempt - 1)`,
    capped at `cap`, with full jitter (a uniform draw from zero to that), so that items
    that failed together do not all retry at the same moment."""
    exponent = min(max(attempt - 1, 0), MAX_EXPONENT)
    return random.uniform(0, min(cap, base * float(2**exponent)))


class Permanent(Exception):
    """Raise it (or a subclass) from a reader: the item fails at once, without retries."""


class RetryAfter(Exception):
    """Raise it from a reader to retry the item after `seconds` (within MAX_RETRIES), in
    place of the usual backoff."""

    def __init__(self, seconds: float, message: str = "") -> None:
        super().__init__(message or f"retry after {seconds:g}s")
        self.seconds = max(0.0, float(seconds))


class ReaderTimeout(TimeoutError):
    """The reader did not finish within READER_TIMEOUT seconds (`setting` names the variable
    with its prefix)."""

    def __init__(self, seconds: float, setting: str = "READER_TIMEOUT") -> None:
        super().__init__(f"the reader did not finish within {setting}={seconds:g}s")
