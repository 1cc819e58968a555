"""The queues' errors: ``QueueError`` and its kinds (full, empty, wrong state)."""

from __future__ import annotations


class QueueError(Exception):
    """Base class of every error raised by this module's queues."""


class QueueFullError(QueueError):
    """The queue is full: ``put_nowait`` was refused or ``put`` timed out."""


class QueueEmptyError(QueueError):
    """``get_nowait`` found the queue empty."""


class QueueStateError(QueueError):
    """The operation is not allowed in the queue's current state (named in the message)."""
