"""A bounded in-memory byte pipe between one writer thread and one reader thread.

``QueueIO`` is an :class:`io.RawIOBase` whose ``write`` side is fed by one thread
(for example an S3 download) and whose ``read`` side is drained by another (for
example ``upload_fileobj``).  Semantics, in short:

* ``read(n)`` returns exactly ``n`` bytes unless the writer closed the stream
  first; after end of stream every read returns ``b""``.  No byte is returned twice.
* Waiting is done on condition variables, never by polling.  Nothing times out
  unless a ``timeout`` was given.
* ``LimitedQueueIO`` never buffers more than ``memory_limit`` bytes: larger writes
  are split into ``chunk_size`` pieces, admitted as the reader makes room.  The
  bound holds after a read times out too (see ``buffered``).
* ``close()`` ends the data, not the file: ``closed`` turns true only when the
  reader hangs up (``close_read()``), so ``io.BufferedReader``,
  ``io.TextIOWrapper`` and what is built on them read a closed stream to its end.
* Errors cross sides: ``abort(exc)`` (or an exception inside ``with``) makes the
  reader's next read raise :class:`PipeAbortedError` caused by ``exc``;
  ``close_read()`` makes the writer's next or blocked write raise
  :class:`BrokenPipeError`.
* ``HashingQueueIO`` hashes in the writer's thread as data passes, and
  ``ProgressHashingQueueIO`` also drives a tqdm bar when tqdm is installed.

One thread may write and one thread may read at a time; ``close``, ``abort``,
``close_read`` and the properties may be used from any thread.
"""

from __future__ import annotations

from .limited import HashingQueueIO, LimitedQueueIO, ProgressBar, ProgressHashingQueueIO
from .pieces import DEFAULT_CHUNK_SIZE, DEFAULT_MEMORY_LIMIT, PipeAbortedError
from .pipe import QueueIO

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MEMORY_LIMIT",
    "HashingQueueIO",
    "LimitedQueueIO",
    "PipeAbortedError",
    "ProgressBar",
    "ProgressHashingQueueIO",
    "QueueIO",
]
