"""A durable batch spool that separate processes share through one folder, with no broker.

Producers append length- and checksum-framed records to a private batch file and publish it
with write, fsync, atomic rename into ``ready/`` and fsync of that folder. A consumer claims
the oldest ready batch by locking it (``fcntl.flock``) and renaming it into ``claimed/``, and
``ack`` deletes it. Every open or claimed batch file is locked by the process that owns it,
and a lock dies with its process, so :func:`recover` can run at any time from any process:
it moves only unlocked (dead) batches back to ``ready/`` and never touches a live one.

Delivery is at least once; every record has a key that is stable across redeliveries.
POSIX only (``fcntl``), on a local file system. See docs/spool.md for the layout and tuning.
"""

from __future__ import annotations

from .consumer import Batch, Consumer
from .producer import Producer
from .records import MAGIC as MAGIC
from .records import Record, SpoolError, SpoolFull
from .recovery import DeadBatch, Recovery, dead_batches, purge_dead, recover, replay_dead

__all__ = [
    "Batch",
    "Consumer",
    "DeadBatch",
    "Producer",
    "Record",
    "Recovery",
    "SpoolError",
    "SpoolFull",
    "dead_batches",
    "purge_dead",
    "recover",
    "replay_dead",
]
