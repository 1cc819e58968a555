"""Key names and the blocking client of the jobs stream: submit jobs, ask a job's status or
cancel it, read counts and dead letters (`Jobs`, `submit`, `submit_many`), from any program
(`connection.py` connects)."""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import socket
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import cache
from typing import Any, cast

from redis.exceptions import ResponseError

from ...settings import Settings
from ...worker.dead_letters import DeadLetter
from ...worker.texts import shorten
from . import scripts
from .connection import connect
from .model import (
    Cancellation,
    CancelResult,
    JobsError,
    JobStats,
    JobStatus,
    as_number,
    as_text,
    is_text,
    ms_time,
    shown,
)

CHUNK = 1000  # jobs per pipeline or script call
ENTRY_ID = re.compile(r"\d+-\d+")
JOB_ID = re.compile(r"\d+-\d+|[0-9a-f]{32}")  # a stream entry's, or a scheduled job's
CANCELS = {  # cancel.lua's answers
    "cancelled": CancelResult.CANCELLED,
    "already": CancelResult.ALREADY_CANCELLED,
    "fetched": CancelResult.FETCHED,
    "running": CancelResult.RUNNING,
    "finished": CancelResult.FINISHED,
    "unknown": CancelResult.UNKNOWN,
}


# ---- names -----------------------------------------------------------------------------------


def stream_name(settings: Settings) -> str:
    """The job stream: JOBS_STREAM, or `<project_name>:jobs`."""
    return settings.jobs_stream or f"{settings.project_name}:jobs"


def dead_name(stream: str) -> str:
    """The dead-letter stream of `stream`."""
    return f"{stream}:dead"


def acked_name(stream: str) -> str:
    """The stream that records accepted acknowledgements when `record_acks` is on."""
    return f"{stream}:acked"


def starts_name(stream: str) -> str:
    """The hash that holds, per stream entry, the attempt of its last run that started."""
    return f"{stream}:starts"


def scheduled_name(stream: str) -> str:
    """The sorted set of jobs submitted with a delay, by the time they are due (ms)."""
    return f"{stream}:scheduled"


def wake_name(stream: str) -> str:
    """The stream that wakes idle workers when a job is scheduled before all others."""
    return f"{stream}:wake"


def every_name(stream: str) -> str:
    """The hash that holds, per recurring schedule, the latest period claimed (Unix seconds)."""
    return f"{stream}:every"


# The keys of jobs' status, named after the stream in the Lua scripts too (lua/helpers.lua).
def current_name(stream: str) -> str:
    """The hash of the jobs whose stream entry is not their id (retried, replayed, scheduled):
    job id to its entry now, or `due:<ms>` while it is scheduled."""
    return f"{stream}:current"


def outcome_name(stream: str, job_id: str) -> str:
    """The key that keeps a finished job's outcome (JSON) for JOBS_STATUS_TTL seconds."""
    return f"{stream}:outcome:{job_id}"


def _key_name(stream: str, key: str) -> str:
    return f"{stream}:key:{key}"


def _check_entry_ids(ids: Sequence[str]) -> None:
    """Raise JobsError naming the first id that is not a stream entry id."""
    for entry in ids:
        if not ENTRY_ID.fullmatch(entry):
            raise JobsError(
                f"dead-letter id {entry!r} is not a stream entry id like 1700000000000-0 "
                "(`dead list` shows them)"
            )


def _check_job_id(job_id: str) -> None:
    """Raise JobsError unless `job_id` has the form of the ids `submit` returns."""
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise JobsError(
            f"job id {job_id!r} is not a job id: `submit` prints them (a stream entry id like "
            "1700000000000-0, or 32 hex digits for a scheduled job)"
        )


def default_consumer() -> str:
    """`<hostname>-<pid>`: unique per running instance, new on each start."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _encode(payload: Any) -> str:
    try:
        return json.dumps(payload, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise JobsError(
            f"payload {shorten(payload)} cannot be stored as JSON ({exc}); submit ids, strings, "
            "numbers, lists and dicts, and load the rest in the reader"
        ) from None


def _due(delay: float | None, at: datetime | None) -> tuple[int, int] | None:
    """(delay ms or -1, due time ms) for `scripts.SCHEDULE`, or None for a job due now."""
    if delay is not None and at is not None:
        raise JobsError(f"delay={delay!r} and at={at!r}: give one of the two")
    if delay is not None:
        if not isinstance(delay, int | float) or not math.isfinite(delay) or delay < 0:
            raise JobsError(f"delay {delay!r} must be a finite number of seconds >= 0")
        return round(delay * 1000), 0
    if at is not None:
        if not isinstance(at, datetime) or at.tzinfo is None:
            raise JobsError(f"at {at!r} must be a timezone-aware datetime (e.g. in UTC)")
        return -1, round(at.timestamp() * 1000)
    return None


def _entry_time(entry: str) -> str:
    """When a stream entry was added (its id's milliseconds), ISO 8601 in UTC."""
    return ms_time(int(entry.partition("-")[0]))


def _check_key(key: str | None) -> None:
    if key is not None and (not isinstance(key, str) or not key or len(key) > 200):
        raise JobsError(f"key {key!r} must be a non-empty str of at most 200 characters")
    if key is not None and not is_text(key):
        raise JobsError(f"key {key!r} cannot be stored: it is not valid Unicode text")


# ---- submitting ------------------------------------------------------------------------------
class Jobs:
    """A blocking client of the job stream: submit jobs, ask their status or cancel them,
    read counts and dead letters."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else Settings()
        self.stream = stream_name(self.settings)
        self.dead = dead_name(self.stream)
        self.scheduled = scheduled_name(self.stream)
        self.current = current_name(self.stream)
        self.client = connect(self.settings)
        self._entries = connect(self.settings, decode=False)  # entries: any bytes (see _text)
        self._keyed = self.client.register_script(scripts.SUBMIT_KEYED)
        self._schedule = self.client.register_script(scripts.SCHEDULE)
        self._replay = self.client.register_script(scripts.REPLAY)
        self._status = self._entries.register_script(scripts.STATUS)
        self._cancel = self._entries.register_script(scripts.CANCEL)

    def __repr__(self) -> str:
        return f"Jobs(url={self.settings.jobs_redis_url!r}, stream={self.stream!r})"

    def __enter__(self) -> Jobs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self.client.close()
        self._entries.close()

    def submit(
        self,
        payload: Any,
        key: str | None = None,
        *,
        delay: float | None = None,
        at: datetime | None = None,
    ) -> str | None:
        """Add one job; return its id, or None when `key` was submitted within JOBS_KEY_TTL.

        With `delay` (seconds, on Redis' clock) or `at` (a timezone-aware time) the job is
        scheduled: workers get it when it is due, not before.
        """
        return self.submit_many([payload], keys=[key], delay=delay, at=at)[0]

    def submit_many(
        self,
        payloads: Iterable[Any],
        keys: Iterable[str | None] | None = None,
        *,
        delay: float | None = None,
        at: datetime | None = None,
    ) -> list[str | None]:
        """Add jobs in pipelined chunks; return their ids (None for an already-submitted key).
        `delay` or `at` schedule them all (see `submit`)."""
        items = list(payloads)
        key_list = list(keys) if keys is not None else [None] * len(items)
        if len(key_list) != len(items):
            raise JobsError(f"{len(key_list)} keys for {len(items)} payloads: give one per payload")
        for key in key_list:
            _check_key(key)
        due = _due(delay, at)
        encoded = [_encode(payload) for payload in items]
        ids: list[str | None] = []
        ttl = self.settings.jobs_key_ttl
        traceparent = _traceparent()  # the submitter's span, carried to the worker's
        for start in range(0, len(items), CHUNK):
            pipe = self.client.pipeline(transaction=False)
            chunk = zip(
                encoded[start : start + CHUNK], key_list[start : start + CHUNK], strict=True
            )
            for text, key in chunk:
                marker = [] if key is None else [_key_name(self.stream, key)]
                if due is not None:
                    job_id = uuid.uuid4().hex
                    fields = {"job": job_id, "payload": text, "key": key}
                    if traceparent is not None:
                        fields["traceparent"] = traceparent
                    member = json.dumps(fields)
                    args: list[str | int] = [job_id, member, *due, ttl]
                    targets = [self.scheduled, wake_name(self.stream), self.current, *marker]
                    self._schedule(keys=targets, args=args, client=pipe)
                elif key is None:
                    pipe.xadd(
                        self.stream,
                        {"payload": text}
                        if traceparent is None
                        else {"payload": text, "traceparent": traceparent},
                    )
                else:
                    keyed: list[str | int] = [text, key, ttl]
                    if traceparent is not None:
                        keyed.append(traceparent)
                    self._keyed(keys=[self.stream, *marker], args=keyed, client=pipe)
            for result in pipe.execute():
                if isinstance(result, list):
                    ids.append(result[1] if result[0] == 1 else None)
                else:
                    ids.append(cast(str, result))
        return ids

    def status(self, job_id: str) -> JobStatus:
        """Where job `job_id` (as `submit` returned it) is now: scheduled, waiting, running,
        or, for JOBS_STATUS_TTL seconds after it ended, succeeded, failed or cancelled; else
        unknown. One script call: a consistent view. Raises JobsError for a malformed id."""
        _check_job_id(job_id)
        keys = [self.stream, starts_name(self.stream)]
        reply = self._status(keys=keys, args=[self.settings.jobs_group, job_id])
        return JobStatus.from_script(job_id, json.loads(as_text(reply)))

    def cancel(self, job_id: str) -> Cancellation:
        """Cancel job `job_id` if no instance holds it: a scheduled job, or a waiting one no
        instance fetched, never runs, and its status is `cancelled`. One atomic script: of two
        callers at once, one gets CANCELLED and the other ALREADY_CANCELLED. A job an instance
        fetched is about to start and runs (FETCHED); a running one is not interrupted
        (RUNNING): both name the consumer. A finished one says so (FINISHED). Raises JobsError
        for a malformed id."""
        _check_job_id(job_id)
        keys = [self.stream, starts_name(self.stream), self.scheduled]
        args: list[str | int] = [self.settings.jobs_group, job_id, self.settings.jobs_status_ttl]
        answer, *holder = [as_text(part) for part in self._cancel(keys=keys, args=args)]
        return Cancellation(CANCELS[answer], *holder)

    def stats(self) -> JobStats:
        """How many jobs wait, are pending with a consumer, and are dead letters."""
        dead = int(self.client.xlen(self.dead))
        try:
            groups = self.client.xinfo_groups(self.stream)
        except ResponseError:  # no stream yet
            groups = []
        scheduled = int(self.client.zcard(self.scheduled))
        group = next((g for g in groups if g["name"] == self.settings.jobs_group), None)
        if group is None:  # nothing was handed out yet
            waiting = int(self.client.xlen(self.stream))
            return JobStats(self.stream, waiting, 0, dead, scheduled)
        waiting = group["lag"]
        if waiting is None:  # entries were deleted by hand: count those after the last delivered
            after = f"({group['last-delivered-id']}"
            waiting = len(cast(list[Any], self._entries.xrange(self.stream, after, "+")))
        return JobStats(self.stream, int(waiting), int(group["pending"]), dead, scheduled)

    # dead letters (worker.dead_letters.DeadLetters: `qq dead list | replay | purge`)
    def dead_list(self, limit: int) -> list[DeadLetter]:
        """The oldest `limit` dead letters; their id is the dead-letter stream's entry, their
        payload as it was (`base64:` and its bytes when it is not UTF-8 text)."""
        letters = []
        for entry, fields in self._dead_entries("-", "+", limit):
            letters.append(
                DeadLetter(
                    id=entry,
                    job=as_text(fields.get("job", entry.encode())),
                    attempts=as_number(fields.get("attempts", b"0")),
                    error=as_text(fields.get("error", b"")),
                    when=_entry_time(entry),
                    payload=shown(fields.get("payload", b"")),
                )
            )
        return letters

    def _dead_entries(self, start: str, end: str, count: int) -> list[tuple[str, dict[str, bytes]]]:
        """Dead letters as Redis holds them: entry id, then field name (text) to raw value."""
        rows = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            self._entries.xrange(self.dead, start, end, count=count),
        )
        return [
            (entry.decode(), {as_text(name): value for name, value in fields.items()})
            for entry, fields in rows
        ]

    def dead_replay(self, ids: Sequence[str] | None) -> int:
        """Move dead letters (None: all there are now) back into the stream as new jobs, job
        id, payload and key kept, attempts reset; each once, even if two callers replay at
        once. Returns how many."""
        if ids is not None:
            _check_entry_ids(ids)
            chunks = [list(ids[start : start + CHUNK]) for start in range(0, len(ids), CHUNK)]
            return sum(self._replay_some(chunk) for chunk in chunks)
        last = self._last_dead()
        replayed = 0
        while last is not None:
            page = self._dead_entries("-", last, CHUNK)
            if not page:
                break
            replayed += self._replay_some([entry for entry, _ in page])
        return replayed

    def dead_purge(self, ids: Sequence[str] | None, older_than: float | None = None) -> int:
        """Delete dead letters: these, or (None) all there are now, or those older than
        `older_than` seconds (by Redis' clock). Returns how many."""
        if ids is not None:
            _check_entry_ids(ids)
            return sum(
                int(self.client.xdel(self.dead, *ids[start : start + CHUNK]))
                for start in range(0, len(ids), CHUNK)
            )
        if older_than is not None:
            seconds, micros = self.client.time()
            limit = seconds * 1000 + micros // 1000 - int(older_than * 1000)
            return int(self.client.xtrim(self.dead, minid=f"{max(limit, 0)}-0", approximate=False))
        last = self._last_dead()
        if last is None:
            return 0
        ms, _, seq = last.partition("-")
        return int(self.client.xtrim(self.dead, minid=f"{ms}-{int(seq) + 1}", approximate=False))

    def _replay_some(self, entries: list[str]) -> int:
        return int(self._replay(keys=[self.dead, self.stream], args=entries))

    def _last_dead(self) -> str | None:
        newest = cast(list[tuple[bytes, Any]], self._entries.xrevrange(self.dead, count=1))
        return newest[0][0].decode() if newest else None


@cache
def _propagate() -> Any:
    """OpenTelemetry's `propagate` module, or None where OpenTelemetry is not installed."""
    try:
        return importlib.import_module("opentelemetry.propagate")
    except ImportError:
        return None


def _traceparent() -> str | None:
    """The W3C trace context of the span current in this program, if OpenTelemetry is
    installed and a span is current (through the global propagator); else None."""
    propagate = _propagate()
    if propagate is None:
        return None
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers.get("traceparent")


_default: tuple[int, Jobs] | None = None


def _jobs_for(settings: Settings | None) -> tuple[Jobs, bool]:
    """The per-process default client (kept), or a new one for explicit settings (closed)."""
    global _default
    if settings is not None:
        return Jobs(settings), True
    if _default is None or _default[0] != os.getpid():
        _default = (os.getpid(), Jobs())
    return _default[1], False


def submit(
    payload: Any,
    key: str | None = None,
    settings: Settings | None = None,
    *,
    delay: float | None = None,
    at: datetime | None = None,
) -> str | None:
    """Add one JSON job to the stream; return its id, or None if `key` was seen recently.
    `delay` (seconds) or `at` (an aware datetime) schedule it for later."""
    return submit_many([payload], [key], settings, delay=delay, at=at)[0]


def submit_many(
    payloads: Iterable[Any],
    keys: Iterable[str | None] | None = None,
    settings: Settings | None = None,
    *,
    delay: float | None = None,
    at: datetime | None = None,
) -> list[str | None]:
    """Add many JSON jobs in pipelined chunks; return their ids. `delay` or `at` schedule
    them all for later."""
    jobs, close = _jobs_for(settings)
    try:
        return jobs.submit_many(payloads, keys, delay=delay, at=at)
    finally:
        if close:
            jobs.close()
