"""The result of one run of the worker."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Summary:
    """Counts for one run. Every enqueued item ends as exactly one of succeeded, failed or
    not_started, so `enqueued == succeeded + failed + not_started`."""

    enqueued: int
    succeeded: int
    failed: int
    not_started: int
    retried: int
    skipped_duplicates: int
    seconds: float
    timed_out: int = 0  # of the failed: those that overran READER_TIMEOUT

    @property
    def ok(self) -> bool:
        """True when every enqueued item succeeded."""
        return self.succeeded == self.enqueued

    def to_json(self) -> str:
        """Return the summary as one line of JSON."""
        return json.dumps(asdict(self) | {"seconds": round(self.seconds, 3)})
