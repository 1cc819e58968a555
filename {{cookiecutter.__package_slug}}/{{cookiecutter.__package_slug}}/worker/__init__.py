"""The worker runtime (owned by the template: `cruft update` keeps it current).

Your code lives in `qq.py`; this package runs it. See docs/worker.md.
"""

from .errors import ContextError, SignatureError, WorkerError, WriterError
from .runner import Worker
from .summary import Summary

__all__ = ["ContextError", "SignatureError", "Summary", "Worker", "WorkerError", "WriterError"]
