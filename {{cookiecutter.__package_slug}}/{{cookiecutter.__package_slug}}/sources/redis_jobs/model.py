"""What the jobs stream holds and hands out: jobs, deliveries, counts and errors, and how an
entry's bytes become text (any program can XADD: a field that is not UTF-8 is that entry's
problem, never the whole reply's)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple

from ...worker import Permanent

SHOWN = 1000  # characters of a dead letter's payload that `dead list` shows
ACKED = {"1": "acked", "0": "not held", "2": "gone"}  # the codes of the `ack.lua` script


class JobsError(Exception):
    """A jobs setting, payload or Redis state the jobs module cannot work with."""


class JobLost(JobsError):
    """Another consumer claimed the job and acknowledged it before this run of it did."""


class JobFailed(JobsError):
    """The job failed: it was put back for another attempt or moved to the dead letters."""


class MalformedJob(JobsError, Permanent):
    """A stream entry that is not a job as this module writes them (its payload is not JSON,
    not UTF-8 text, or missing): it fails at once and goes to the dead letters as it was."""


@dataclass(frozen=True)
class Job:
    """One job as a reader gets it.

    `id` stays the same across attempts (use it, or `key`, to make the reader idempotent);
    `attempt` counts from 1 the runs that started, this one included (also those whose
    worker died); a job fetched but never started does not count. `traceparent` is the W3C
    trace context of the span current where it was submitted (with OpenTelemetry), or None.
    """

    id: str
    payload: Any
    key: str | None = None
    attempt: int = 1
    traceparent: str | None = None


class Delivery(NamedTuple):
    """A job as the source hands it to a worker process: raw, so the parent stays light.

    It travels as a plain tuple (the parent builds it so; `Delivery._make` reads it back):
    pickling a NamedTuple costs several microseconds more per job.
    """

    entry: str  # the stream entry acknowledged for it
    job_id: str
    key: str
    payload: str  # JSON text, decoded in the worker process
    attempt: int  # the attempt this run is; 0 for a job moved to the dead letters when fetched
    deliveries: int  # Redis' delivery count when handed out: settle and renew check it
    traceparent: str  # the submitter's trace context (W3C), or ""
    problem: str  # why the entry is not a job (it then fails for good), or ""


@dataclass(frozen=True)
class JobStats:
    """Counts of one stream: jobs not yet handed out, handed out and unacknowledged, dead,
    and scheduled for later."""

    stream: str
    waiting: int
    pending: int
    dead: int
    scheduled: int = 0


class JobState(StrEnum):
    """Where a job is (`Jobs.status`)."""

    SCHEDULED = "scheduled"  # submitted with a delay or a time: not due yet
    WAITING = "waiting"  # in the stream, not started (an instance may have fetched it)
    RUNNING = "running"  # a run of it started and has no outcome yet
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # moved to the dead letters
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"  # never submitted here, or ended over JOBS_STATUS_TTL ago


@dataclass(frozen=True)
class JobStatus:
    """A job's state, and what is known with it: `attempt` (running: this run; waiting: the
    next run; succeeded: the run that did; failed: the runs that started), the stream `entry`
    that holds it now (a retry or a replay makes a new one; the job id stays), the `consumer`
    (instance) that fetched it, when it is `due` (scheduled) or `ended` (ISO 8601, UTC), and for
    a failed job its `error` and its `dead_letter` id (for `qq dead replay`)."""

    id: str
    state: JobState
    attempt: int | None = None
    entry: str | None = None
    consumer: str | None = None
    due: str | None = None
    ended: str | None = None
    error: str | None = None
    dead_letter: str | None = None

    @classmethod
    def from_script(cls, job_id: str, where: dict[str, Any]) -> JobStatus:
        """The status from what `locate.lua` returns (JSON decoded)."""
        return cls(
            job_id,
            JobState(where["state"]),
            where.get("attempt"),
            where.get("entry"),
            where.get("consumer"),
            ms_time(where["due"]) if "due" in where else None,
            ms_time(where["at"]) if "at" in where else None,
            where.get("error"),
            where.get("dead"),
        )


class CancelResult(StrEnum):
    """What `Jobs.cancel` did: only CANCELLED means this call cancelled the job."""

    CANCELLED = "cancelled"
    ALREADY_CANCELLED = "already cancelled"
    FETCHED = "fetched, about to start: not cancelled"  # an instance holds it: it runs
    RUNNING = "running, not cancelled"  # a run started: it is not interrupted
    FINISHED = "finished, not cancelled"  # it succeeded or failed
    UNKNOWN = "unknown, not cancelled"  # not submitted here, or ended over JOBS_STATUS_TTL ago


@dataclass(frozen=True)
class Cancellation:
    """`Jobs.cancel`'s answer: its `result`, and for a job an instance holds (FETCHED or
    RUNNING) the `consumer` that does."""

    result: CancelResult
    consumer: str | None = None


def ms_time(ms: int) -> str:
    """A time in milliseconds since the epoch (Redis' clock), ISO 8601 in UTC."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds")


def as_text(raw: bytes) -> str:
    """Bytes from Redis as text: UTF-8, with any other byte kept as a lone surrogate
    (`surrogateescape`), so that `_is_text` can tell and the bytes can be had back."""
    return raw.decode("utf-8", "surrogateescape")


def is_text(value: str) -> bool:
    """True unless `value` (from `_text`) holds bytes that are not UTF-8."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def delivery(
    entry: str,
    job: str,
    key: str,
    payload: str,
    attempt: int,
    deliveries: int,
    traceparent: str,
    problem: str,
) -> tuple[Any, ...]:
    """One fetched entry as a plain `Delivery` tuple. An entry whose fields are not UTF-8 text
    comes with its problem instead (its worker process fails it for good; Redis keeps the
    bytes for the dead letter), and never with the bytes themselves."""
    if not problem:
        if not is_text(payload):
            size = len(payload.encode("utf-8", "surrogateescape"))
            problem = f"its payload is not UTF-8 text ({size} bytes)"
        else:
            fields = {"job": job, "key": key, "traceparent": traceparent}
            odd = [name for name, value in fields.items() if not is_text(value)]
            if odd:
                problem = f"its field {odd[0]!r} is not UTF-8 text"
    if problem:
        return (entry, entry, "", "", attempt, deliveries, "", problem)
    return (entry, job, key, payload, attempt, deliveries, traceparent, "")


def attempt_of(value: str | None) -> int:
    """An entry's attempt field as a whole number from 1 (missing or foreign: 1)."""
    try:
        return max(1, int(value or 1))
    except ValueError:
        return 1


def as_number(raw: bytes) -> int:
    """A whole number Redis holds as bytes (0 when it is not one)."""
    try:
        return int(raw)
    except ValueError:
        return 0


def shown(raw: bytes) -> str:
    """A dead letter's payload for `dead list`: its text, or `base64:` and its bytes when it is
    not UTF-8, cut to SHOWN characters."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        text = "base64:" + base64.b64encode(raw).decode()
    if len(text) > SHOWN:
        text = f"{text[:SHOWN]}... ({len(raw)} bytes)"
    return text
