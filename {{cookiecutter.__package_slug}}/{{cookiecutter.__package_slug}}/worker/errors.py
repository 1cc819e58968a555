"""Errors the worker raises when the code it runs needs fixing."""

from __future__ import annotations


class WorkerError(Exception):
    """Base class: the message says what to fix."""


class SignatureError(WorkerError, TypeError):
    """A writer, reader or context function cannot be called the way the worker calls it."""


class WriterError(WorkerError):
    """The writer raised, or yielded an item that cannot be sent to a worker process."""


class ContextError(WorkerError):
    """The context function raised in a worker process."""
