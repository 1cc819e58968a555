"""The worker runtime (owned by the template: `cruft update` keeps it current).

Your code lives in `qq.py`; this package runs it. See docs/worker.md.
"""

from .errors import ContextError, SignatureError, WorkerError, WriterError
from .instrument import Instrument
from .retry import Permanent, ReaderTimeout, RetryAfter
from .runner import Worker
from .source import (
    Failure,
    ItemInfo,
    LabeledGauges,
    Outcome,
    Session,
    Source,
    SourceCli,
    SourceUnavailable,
)
from .summary import Summary
from .writer_source import WriterSource

__all__ = [
    "ContextError",
    "Failure",
    "Instrument",
    "ItemInfo",
    "LabeledGauges",
    "Outcome",
    "Permanent",
    "ReaderTimeout",
    "RetryAfter",
    "Session",
    "SignatureError",
    "Source",
    "SourceCli",
    "SourceUnavailable",
    "Summary",
    "Worker",
    "WorkerError",
    "WriterError",
    "WriterSource",
]
