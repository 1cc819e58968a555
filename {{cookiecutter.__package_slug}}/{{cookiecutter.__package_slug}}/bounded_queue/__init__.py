"""Bounded asyncio queue with backpressure, a worker pool, graceful shutdown and metrics.

Concurrency inside one process and one event loop: producers ``await put()`` and are
slowed down while the queue is full (backpressure); a pool of worker tasks takes items
as they arrive (no polling) and runs an async function on each one.

How it works:

* one base class, :class:`BoundedQueue`, whose ``_init`` hook creates the store and binds
  the ``_put`` / ``_get`` hooks for the chosen ordering (FIFO, LIFO, stable priority);
* blocked producers and consumers wait on futures kept in deques and are woken by the
  operation that unblocks them, and a woken waiter that cannot use its turn (cancelled,
  or its item refused) passes it to the next; the fast paths create no future and no
  timer;
* ``stop()`` closes the queue: new items are refused, blocked producers get
  :class:`QueueStateError`, and whatever is queued and in flight is finished (or, after the
  timeout, cancelled and handed back); a worker that dies on a ``BaseException`` stops the
  pool, and the error reaches ``join()``, ``put()`` and ``stop()`` instead of vanishing.
"""

from __future__ import annotations

from .config import QueueConfig, QueueMetrics, QueueOrdering, QueueStatus
from .errors import QueueEmptyError, QueueError, QueueFullError, QueueStateError
from .workers import BoundedQueue, ErrorHandler, WorkerFunc, WorkQueue

__all__ = [
    "BoundedQueue",
    "ErrorHandler",
    "QueueConfig",
    "QueueEmptyError",
    "QueueError",
    "QueueFullError",
    "QueueMetrics",
    "QueueOrdering",
    "QueueStateError",
    "QueueStatus",
    "WorkQueue",
    "WorkerFunc",
]
