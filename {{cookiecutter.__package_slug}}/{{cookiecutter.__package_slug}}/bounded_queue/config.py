"""The queues' settings and states: ``QueueStatus``, ``QueueOrdering``, the argument checks,
the validated ``QueueConfig`` and the ``QueueMetrics`` snapshot."""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass

from pydantic import BaseModel, ConfigDict, field_validator


class QueueStatus(str, enum.Enum):
    """Lifecycle state of a queue: IDLE -> PROCESSING -> STOPPING -> STOPPED."""

    IDLE = "idle"
    PROCESSING = "processing"
    STOPPING = "stopping"
    STOPPED = "stopped"


class QueueOrdering(str, enum.Enum):
    """The order in which queued items are handed out."""

    FIFO = "fifo"
    LIFO = "lifo"
    PRIORITY = "priority"


_IDLE = QueueStatus.IDLE
_PROCESSING = QueueStatus.PROCESSING
_STOPPING = QueueStatus.STOPPING
_STOPPED = QueueStatus.STOPPED


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def _check_timeout(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds >= 0 or None, got {value!r}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0 or None, got {value!r}")
    return float(value)


def _check_ordering(value: object) -> QueueOrdering:
    try:
        return QueueOrdering(value)
    except ValueError:
        allowed = ", ".join(repr(o.value) for o in QueueOrdering)
        raise ValueError(f"ordering must be one of {allowed}, got {value!r}") from None


class QueueConfig(BaseModel):
    """Validated settings for a queue; build one with ``BoundedQueue.from_config(config)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    queue_capacity: int = 100
    """Maximum number of queued (not yet started) items; ``put`` blocks beyond it."""
    concurrency_limit: int | None = None
    """Maximum number of worker tasks, hence of items in flight; None = no limit."""
    ordering: QueueOrdering = QueueOrdering.FIFO
    """FIFO, LIFO or priority (stable among equal priorities)."""
    put_timeout: float | None = None
    """Default ``put`` timeout in seconds; None = wait as long as it takes."""

    @field_validator("queue_capacity")
    @classmethod
    def _capacity(cls, value: int) -> int:
        return _check_int("queue_capacity", value, 1)

    @field_validator("concurrency_limit")
    @classmethod
    def _limit(cls, value: int | None) -> int | None:
        return None if value is None else _check_int("concurrency_limit", value, 1)

    @field_validator("put_timeout")
    @classmethod
    def _timeout(cls, value: float | None) -> float | None:
        return _check_timeout("put_timeout", value)


@dataclass(frozen=True)
class QueueMetrics:
    """A snapshot of a queue's counters, taken by :attr:`BoundedQueue.metrics`."""

    enqueued: int
    """Items accepted by put / put_nowait / offer."""
    processed: int
    """Items whose worker function returned (or that a consumer marked task_done)."""
    failed: int
    """Items whose worker function raised."""
    cancelled: int
    """Items whose worker was cancelled mid-item (stop timeout, or a cancelled worker)."""
    handler_errors: int
    """Times the error handler itself raised."""
    backpressure_events: int
    """Times a put found the queue full (it then waited, timed out, or was refused)."""
    in_flight: int
    """Items taken from the queue and not finished yet."""
    depth: int
    """Items queued now."""
    max_depth: int
    """Highest depth seen."""

    def as_dict(self) -> dict[str, int]:
        """The snapshot as a plain dict (for logging or a metrics exporter)."""
        return asdict(self)
