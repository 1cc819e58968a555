"""What every client of a server here shares (job sources, the cache): warnings about an
unreachable server that do not flood the log."""

from __future__ import annotations

import logging
import time

from .texts import error_text

logger = logging.getLogger(__name__)

WARN_EVERY = 10.0  # seconds between two warnings about the same unreachable server


class Outage:
    """Tracks one server's outage and logs it at most once every WARN_EVERY seconds.

    Call `failed(exc)` after each failed call (it returns how long the server has been
    unreachable) and `ok()` after each successful one (it logs the recovery once). Warnings go
    to `log` (the caller's module logger), or to this module's.
    """

    def __init__(self, where: str, log: logging.Logger | None = None) -> None:
        self.where = where
        self.log = log or logger
        self.down_since: float | None = None
        self._warned = -WARN_EVERY

    def failed(self, exc: BaseException, what: str = "unreachable, retrying") -> float:
        """Record a failed call; return the seconds since the outage began."""
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            self.log.warning("%s: %s: %s", self.where, what, error_text(exc))
        return now - self.down_since

    def ok(self) -> None:
        """Record a successful call."""
        if self.down_since is not None:
            self.log.warning("%s: reachable again", self.where)
        self.down_since = None
        self._warned = -WARN_EVERY
