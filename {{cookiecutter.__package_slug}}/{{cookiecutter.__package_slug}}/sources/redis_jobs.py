"""Jobs in a Redis stream, shared by worker instances on many machines (docs/scaling.md).

- `submit(payload, key=None)` / `submit_many(payloads)` (or a `Jobs` client) add JSON jobs to
  the project's stream from any program; `qq submit '<json>'` from a shell.
- `RedisJobs(settings)` is the `Source` that reads the stream through a consumer group: pass it
  as `Worker(..., source=RedisJobs(settings))`. Each job goes to one consumer (one per worker
  instance); jobs left pending by an instance that died are claimed after `JOBS_CLAIM_IDLE`
  seconds; an idle instance waits on a blocking read, so a new job starts at once.

Attempts: a job's attempt counts only runs that started (the worker process records the start
in Redis before the reader runs). A job that was fetched but never started, because its
instance stopped or crashed, goes back without an attempt counted. A run that failed, or whose
worker died after it started, counts one; past `JOBS_MAX_ATTEMPTS` the job moves to the
dead-letter stream with its error (a job whose workers died goes there when next fetched).

A job is acknowledged once (XACK tells whether this call removed it from the pending list):
if a job was claimed away from a stalled instance and both runs finish, the first to
acknowledge counts and the other is reported as `JobLost`. One success per job, even if a
reader ran twice.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib
import json
import logging
import math
import os
import re
import socket
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, partial
from typing import Any, NamedTuple, cast

import redis
import redis.asyncio as aioredis
import typer
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ..settings import Settings
from ..worker import Outcome, Permanent, Source, SourceUnavailable
from ..worker.dead_letters import DeadLetter, dead_letter_commands
from ..worker.remote import Outage
from ..worker.retry import backoff
from ..worker.texts import shorten

logger = logging.getLogger(__name__)

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
CHUNK = 1000  # jobs per pipeline or script call
OUTAGE_PAUSE = 0.25  # seconds between two tries of an unreachable Redis while fetching
SOCKET_TIMEOUT = 10.0  # seconds a Redis call may take before it counts as failed
BLOCK_MAX = SOCKET_TIMEOUT / 2  # the longest blocking read: well within the socket timeout
ENTRY_ID = re.compile(r"\d+-\d+")
_QUOTE_HINT = "; a string is quoted in JSON: '\"%s\"'"
STOPPED = "the worker holding it stopped without an outcome"  # a dead letter's error
GONE = (
    "its stream entry is gone: deleted, or lost when Redis restarted without persistence "
    "(docs/scaling.md)"
)
SHOWN = 1000  # characters of a dead letter's payload that `dead list` shows
ACKED = {"1": "acked", "0": "not held", "2": "gone"}  # the codes of the `_ACK` script


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


# ---- names and connections -----------------------------------------------------------------


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


def default_consumer() -> str:
    """`<hostname>-<pid>`: unique per running instance, new on each start."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _connection_options(settings: Settings, decode: bool) -> dict[str, Any]:
    """What every client of the stream connects with (`Settings` checked the URL)."""
    password = settings.jobs_password.get_secret_value() if settings.jobs_password else None
    return {
        "password": password,
        "decode_responses": decode,
        "socket_connect_timeout": 2.0,
        "socket_timeout": SOCKET_TIMEOUT,
    }


# No silent resends: a resent script could run twice. Callers retry where it is safe. Each
# client gets the `Retry` of its own kind (redis-py 8.2 warns about a sync one on asyncio).
# Entries are read with `decode=False`: any program can XADD, and a field that is not UTF-8
# is that entry's problem, never the whole reply's.
def connect(settings: Settings, *, decode: bool = True) -> redis.Redis:
    """A blocking Redis client for the jobs stream (for submitters)."""
    options = _connection_options(settings, decode)
    return redis.Redis.from_url(settings.jobs_redis_url, retry=Retry(NoBackoff(), 0), **options)


def connect_async(settings: Settings, *, decode: bool = True) -> aioredis.Redis:
    """An asyncio Redis client for the jobs stream; open it in the process that uses it."""
    options = _connection_options(settings, decode)
    retry = AsyncRetry(NoBackoff(), 0)
    return aioredis.Redis.from_url(settings.jobs_redis_url, retry=retry, **options)


def _text(raw: bytes) -> str:
    """Bytes from Redis as text: UTF-8, with any other byte kept as a lone surrogate
    (`surrogateescape`), so that `_is_text` can tell and the bytes can be had back."""
    return raw.decode("utf-8", "surrogateescape")


def _is_text(value: str) -> bool:
    """True unless `value` (from `_text`) holds bytes that are not UTF-8."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _delivery(
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
        if not _is_text(payload):
            size = len(payload.encode("utf-8", "surrogateescape"))
            problem = f"its payload is not UTF-8 text ({size} bytes)"
        else:
            fields = {"job": job, "key": key, "traceparent": traceparent}
            odd = [name for name, value in fields.items() if not _is_text(value)]
            if odd:
                problem = f"its field {odd[0]!r} is not UTF-8 text"
    if problem:
        return (entry, entry, "", "", attempt, deliveries, "", problem)
    return (entry, job, key, payload, attempt, deliveries, traceparent, "")


def _attempt(value: str | None) -> int:
    """An entry's attempt field as a whole number from 1 (missing or foreign: 1)."""
    try:
        return max(1, int(value or 1))
    except ValueError:
        return 1


def _number(raw: bytes) -> int:
    """A whole number Redis holds as bytes (0 when it is not one)."""
    try:
        return int(raw)
    except ValueError:
        return 0


def _shown(raw: bytes) -> str:
    """A dead letter's payload for `dead list`: its text, or `base64:` and its bytes when it is
    not UTF-8, cut to SHOWN characters."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        text = "base64:" + base64.b64encode(raw).decode()
    if len(text) > SHOWN:
        text = f"{text[:SHOWN]}... ({len(raw)} bytes)"
    return text


def _encode(payload: Any) -> str:
    try:
        return json.dumps(payload, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise JobsError(
            f"payload {shorten(payload)} cannot be stored as JSON ({exc}); submit ids, strings, "
            "numbers, lists and dicts, and load the rest in the reader"
        ) from None


def _due(delay: float | None, at: datetime | None) -> tuple[int, int] | None:
    """(delay ms or -1, due time ms) for `_SCHEDULE`, or None for a job due now."""
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
    moment = datetime.fromtimestamp(int(entry.partition("-")[0]) / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds")


def _check_key(key: str | None) -> None:
    if key is not None and (not isinstance(key, str) or not key or len(key) > 200):
        raise JobsError(f"key {key!r} must be a non-empty str of at most 200 characters")
    if key is not None and not _is_text(key):
        raise JobsError(f"key {key!r} cannot be stored: it is not valid Unicode text")


# ---- Lua: each step is one atomic script, so no state is half-changed ------------------------
_HELPERS = """
local function fieldmap(f)
  local m = {}
  if f then for i = 1, #f, 2 do m[f[i]] = f[i + 1] end end
  return m
end
local function holds(s, g, c, id, deliveries)
  local p = redis.call('XPENDING', s, g, id, id, 1)[1]
  return p ~= nil and p[2] == c and p[4] == tonumber(deliveries)
end
local function bury(d, maxlen, id, m, attempts, err, c)
  local a = {d, 'MAXLEN', '~', maxlen, '*', 'job', m['job'] or id, 'payload', m['payload'] or '',
             'attempts', attempts, 'error', err, 'consumer', c}
  if m['key'] then a[#a + 1] = 'key'; a[#a + 1] = m['key'] end
  if m['traceparent'] then a[#a + 1] = 'traceparent'; a[#a + 1] = m['traceparent'] end
  redis.call('XADD', unpack(a))
end
-- An entry's attempt field as a whole number from 1 (a missing or foreign value counts as 1).
local function attempt_of(m)
  local a = tonumber(m['attempt'])
  if not a or a ~= a or a < 1 or a == math.huge then return 1 end
  return math.floor(a)
end
-- Move the scheduled jobs that are due (by Redis' clock) from the sorted set `z` into the
-- stream `s`; return the ms until the next one is due, or -1 if none is scheduled. A member
-- that is not a scheduled job (another program's) goes to the dead letters `d` as it is.
local function move_due(s, z, d, maxlen)
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', ms, 'LIMIT', 0, 1000)) do
    local ok, j = pcall(cjson.decode, member)
    if ok and type(j) == 'table' and type(j['job']) == 'string'
        and type(j['payload']) == 'string' then
      local a = {s, '*', 'job', j['job'], 'payload', j['payload']}
      if type(j['key']) == 'string' then a[#a + 1] = 'key'; a[#a + 1] = j['key'] end
      if type(j['traceparent']) == 'string' then
        a[#a + 1] = 'traceparent'; a[#a + 1] = j['traceparent']
      end
      redis.call('XADD', unpack(a))
    else
      redis.call('XADD', d, 'MAXLEN', '~', maxlen, '*', 'job', 'scheduled', 'payload', member,
                 'attempts', 0, 'error', 'not a scheduled job (written by another program?)')
    end
    redis.call('ZREM', z, member)
  end
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  if #first == 0 then return -1 end
  return math.max(0, tonumber(first[2]) - ms)
end
-- The attempt the next run of entry `id` (fields `m`) is: the one after the last run of it
-- that started (the starts hash holds that run's attempt), else the entry's own.
local function next_attempt(t, id, m)
  local started = tonumber(redis.call('HGET', t, id) or '0') or 0
  if started > 0 then return started + 1 end
  return attempt_of(m)
end
-- Put entry `id` back for its next attempt (the runs that started count), or bury it.
local function back(s, d, t, maxlen, id, m, err, c, maxa)
  local nexta = next_attempt(t, id, m)
  redis.call('HDEL', t, id)
  if nexta > maxa then
    bury(d, maxlen, id, m, nexta - 1, err, c)
    return 2
  end
  local a = {s, '*', 'job', m['job'] or id, 'payload', m['payload'] or '', 'attempt', nexta}
  if m['key'] then a[#a + 1] = 'key'; a[#a + 1] = m['key'] end
  if m['traceparent'] then a[#a + 1] = 'traceparent'; a[#a + 1] = m['traceparent'] end
  if err ~= '' then a[#a + 1] = 'error'; a[#a + 1] = err end
  redis.call('XADD', unpack(a))
  return 1
end
"""

# KEYS: stream, starts, dead, scheduled. ARGV: group, consumer, count, mode
# (history|claim|new), cursor, min idle ms, max attempts, dead maxlen, dead-letter error.
# First moves the scheduled jobs that are due into the stream (in this one script, so each
# moves once however many instances fetch). Returns JSON [cursor, jobs, ms until the next
# scheduled job is due or -1]: one bulk string is parsed much faster than nested replies by
# redis-py's Python parser. Fetching
# counts no attempt: starting a job does. Each job comes with the attempt its next run is (the
# entry's first attempt plus the runs of it that started); a job whose runs that started used
# every attempt (their workers died) goes to the dead letters here and comes with attempt 0,
# so that it still ends as a failed item.
_FETCH = (
    _HELPERS
    + """
local s, t, d, z, g, c = KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2]
local n, mode, cursor = tonumber(ARGV[3]), ARGV[4], ARGV[5]
local maxa, maxlen = tonumber(ARGV[7]), ARGV[8]
local out = {}
local nextdue = move_due(s, z, d, maxlen)
local function deliver(e, deliveries, fresh)
  local id = e[1]
  if not e[2] then redis.call('XACK', s, g, id); redis.call('HDEL', t, id); return end
  local m = fieldmap(e[2])
  local attempt = attempt_of(m)
  if not fresh then attempt = next_attempt(t, id, m) end  -- runs of it may have started
  if attempt > maxa then
    bury(d, maxlen, id, m, attempt - 1, ARGV[9] .. ' (attempt ' .. (attempt - 1) .. ' of ' ..
         maxa .. ')' .. (m['error'] and ('; earlier: ' .. m['error']) or ''), c)
    redis.call('XACK', s, g, id)
    redis.call('HDEL', t, id)
    attempt = 0
  end
  local problem = ''  -- the worker process fails such an entry for good (Python checks UTF-8)
  if not m['payload'] then problem = 'the entry has no payload field' end
  out[#out + 1] = {id, m['job'] or id, m['key'] or '', m['payload'] or '', attempt, deliveries,
                   m['traceparent'] or '', problem}
end
local function count(id)
  local p = redis.call('XPENDING', s, g, id, id, 1)[1]
  return p and p[4] or 0
end
if mode == 'history' then
  local r = redis.call('XREADGROUP', 'GROUP', g, c, 'COUNT', n, 'STREAMS', s, cursor)
  local entries = r and r[1][2] or {}
  for _, e in ipairs(entries) do
    cursor = e[1]
    deliver(e, count(e[1]))
  end
  if #entries < n then cursor = '' end
  return cjson.encode({cursor, out, nextdue})
end
if mode == 'claim' then
  local r = redis.call('XAUTOCLAIM', s, g, c, ARGV[6], cursor, 'COUNT', n)
  cursor = r[1]
  for _, e in ipairs(r[2]) do deliver(e, count(e[1])) end
  n = n - #r[2]
end
local fresh = -1
if n > 0 then
  local r = redis.call('XREADGROUP', 'GROUP', g, c, 'COUNT', n, 'STREAMS', s, '>')
  fresh = r and #r[1][2] or 0
  if r then for _, e in ipairs(r[1][2]) do deliver(e, 1, true) end end  -- never delivered
end
-- Trim: every entry older than the oldest pending one was acknowledged. Whole nodes go
-- (~, cheap); when nothing is pending or new, every entry was acknowledged: all go.
local p = redis.call('XPENDING', s, g)
if p[1] > 0 then
  redis.call('XTRIM', s, 'MINID', '~', p[2])
elseif fresh == 0 then
  redis.call('XTRIM', s, 'MAXLEN', 0)
end
return cjson.encode({cursor, out, nextdue})
"""
)

# Acknowledgements of jobs that succeeded, many in one call. KEYS: stream, starts, acked.
# ARGV: group, consumer, record acks (1|0), acked maxlen, then entry, deliveries, job id
# triples. Returns one character per job: 1 (acknowledged now), 0 (not pending here: a
# consumer that claimed it has it or acknowledged it) or 2 (the entry is gone from the stream:
# deleted, or lost with a Redis restart without persistence).
_ACK = """
local s, t, a, g, c = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2]
local ids, acked = {}, {}
for i = 5, #ARGV, 3 do
  local id = ARGV[i]
  ids[#ids + 1] = id
  if redis.call('XACK', s, g, id) == 1 then
    if ARGV[3] == '1' then
      redis.call('XADD', a, 'MAXLEN', '~', ARGV[4], '*', 'job', ARGV[i + 2], 'entry', id,
                 'consumer', c, 'deliveries', ARGV[i + 1])
    end
    acked[#acked + 1] = '1'
  elseif #redis.call('XRANGE', s, id, id) == 0 then
    acked[#acked + 1] = '2'
  else
    acked[#acked + 1] = '0'
  end
end
redis.call('HDEL', t, unpack(ids))
return table.concat(acked)
"""

# KEYS: stream, dead, starts. ARGV: group, consumer, entry, deliveries, error, max attempts,
# dead maxlen. Puts a job this consumer holds back for its next attempt (or buries it) and
# acknowledges the old entry. Returns 0 (not held any more: claimed by another consumer),
# 1 (put back), 2 (buried) or 3 (the entry is gone from the stream).
_SETTLE = (
    _HELPERS
    + """
local s, d, t, g, c, id = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3]
local e = redis.call('XRANGE', s, id, id)[1]
if not holds(s, g, c, id, ARGV[4]) then
  if e then return 0 end
  redis.call('HDEL', t, id)
  return 3
end
redis.call('XACK', s, g, id)
if not e then redis.call('HDEL', t, id); return 3 end
return back(s, d, t, ARGV[7], id, fieldmap(e[2]), ARGV[5], c, tonumber(ARGV[6]))
"""
)

# KEYS: stream, dead, starts. ARGV: group, consumer, count, error, max attempts, dead maxlen.
# Puts back up to `count` jobs this consumer still holds once all its items were settled:
# fetched and never started (no attempt counted), or lost with their worker (one counted).
# Returns how many it handled.
_RELEASE = (
    _HELPERS
    + """
local s, d, t, g, c = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2]
local held = redis.call('XPENDING', s, g, '-', '+', tonumber(ARGV[3]), c)
for _, p in ipairs(held) do
  local id = p[1]
  local e = redis.call('XRANGE', s, id, id)[1]
  redis.call('XACK', s, g, id)
  if e then
    local err = ''
    if tonumber(redis.call('HGET', t, id) or '0') > 0 then err = ARGV[4] end
    back(s, d, t, ARGV[6], id, fieldmap(e[2]), err, c, tonumber(ARGV[5]))
  else
    redis.call('HDEL', t, id)
  end
end
return #held
"""
)

# KEYS: stream. ARGV: group, consumer, then entry, deliveries pairs. Resets the idle time of
# the jobs this consumer still holds; returns those it no longer holds, each followed by 1
# (claimed by another consumer) or 0 (the entry is gone from the stream).
_RENEW = (
    _HELPERS
    + """
local s, g, c = KEYS[1], ARGV[1], ARGV[2]
local lost = {}
for i = 3, #ARGV, 2 do
  if holds(s, g, c, ARGV[i], ARGV[i + 1]) then
    redis.call('XCLAIM', s, g, c, 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
    lost[#lost + 1] = #redis.call('XRANGE', s, ARGV[i], ARGV[i])
  end
end
return lost
"""
)

# KEYS: stream, key marker. ARGV: payload, key, ttl, traceparent (optional). Returns {1, id}
# or {0, existing id}.
_SUBMIT_KEYED = """
local existing = redis.call('GET', KEYS[2])
if existing then return {0, existing} end
local a = {KEYS[1], '*', 'payload', ARGV[1], 'key', ARGV[2]}
if ARGV[4] then a[#a + 1] = 'traceparent'; a[#a + 1] = ARGV[4] end
local id = redis.call('XADD', unpack(a))
redis.call('SET', KEYS[2], id, 'EX', ARGV[3])
return {1, id}
"""


# KEYS: scheduled, wake, key marker (only for a keyed job). ARGV: job id, member (JSON), delay
# ms (or -1), due time ms (when no delay), key ttl. Schedules a job (a delay counts on Redis'
# clock); returns {1, id}, or {0, existing id} when the key was submitted within its ttl. A job
# due before every other scheduled one adds an entry to the wake stream, so that an idle
# worker blocked on the job stream (and the wake stream) wakes up to wait for this job's time.
_SCHEDULE = """
if KEYS[3] then
  local existing = redis.call('GET', KEYS[3])
  if existing then return {0, existing} end
end
local due = tonumber(ARGV[4])
if tonumber(ARGV[3]) >= 0 then
  local now = redis.call('TIME')
  due = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[3])
end
redis.call('ZADD', KEYS[1], due, ARGV[2])
if redis.call('ZRANGE', KEYS[1], 0, 0)[1] == ARGV[2] then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', 1000, '*', 'due', due)
end
if KEYS[3] then redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[5]) end
return {1, ARGV[1]}
"""

# KEYS: dead, stream. ARGV: dead-letter entries. Moves each one that still exists back into
# the stream as a new job (job id, payload and key kept, attempts reset) and deletes it, in one
# script: replayed once even if two callers replay it at once. Returns how many it moved.
_REPLAY = (
    _HELPERS
    + """
local n = 0
for _, id in ipairs(ARGV) do
  local e = redis.call('XRANGE', KEYS[1], id, id)[1]
  if e then
    local m = fieldmap(e[2])
    local a = {KEYS[2], '*', 'job', m['job'] or id, 'payload', m['payload'] or ''}
    if m['key'] then a[#a + 1] = 'key'; a[#a + 1] = m['key'] end
    if m['traceparent'] then a[#a + 1] = 'traceparent'; a[#a + 1] = m['traceparent'] end
    redis.call('XADD', unpack(a))
    redis.call('XDEL', KEYS[1], id)
    n = n + 1
  end
end
return n
"""
)


# ---- submitting ------------------------------------------------------------------------------
class Jobs:
    """A blocking client of the job stream: submit jobs, read counts and dead letters."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else Settings()
        self.stream = stream_name(self.settings)
        self.dead = dead_name(self.stream)
        self.scheduled = scheduled_name(self.stream)
        self.client = connect(self.settings)
        self._entries = connect(self.settings, decode=False)  # entries: any bytes (see _text)
        self._keyed = self.client.register_script(_SUBMIT_KEYED)
        self._schedule = self.client.register_script(_SCHEDULE)
        self._replay = self.client.register_script(_REPLAY)

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
                    targets = [self.scheduled, wake_name(self.stream), *marker]
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

    def dead_letters(self, count: int = 100) -> list[dict[str, str]]:
        """The oldest `count` dead letters: job id, payload (JSON), key, attempts, error."""
        return [
            {name: _text(value) for name, value in fields.items()}
            for _, fields in self._dead_entries("-", "+", count)
        ]

    # dead letters (worker.dead_letters.DeadLetters: `qq dead list | replay | purge`)
    def dead_list(self, limit: int) -> list[DeadLetter]:
        """The oldest `limit` dead letters; their id is the dead-letter stream's entry, their
        payload as it was (`base64:` and its bytes when it is not UTF-8 text)."""
        letters = []
        for entry, fields in self._dead_entries("-", "+", limit):
            letters.append(
                DeadLetter(
                    id=entry,
                    job=_text(fields.get("job", entry.encode())),
                    attempts=_number(fields.get("attempts", b"0")),
                    error=_text(fields.get("error", b"")),
                    when=_entry_time(entry),
                    payload=_shown(fields.get("payload", b"")),
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
            (entry.decode(), {_text(name): value for name, value in fields.items()})
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


# ---- the source: fetching and leases in the parent ------------------------------------------
class _Session(NamedTuple):
    """What a worker process holds for the source: its one pipelined connection, and the
    outage it reports when Redis is away."""

    wire: _Wire
    outage: Outage


class RedisJobs(Source):
    """The jobs of one Redis stream (see the module docstring), as a worker's `Source`.

    In the parent each fetch is one script: first this consumer's own pending jobs from an
    earlier run (when the consumer name is stable), then, every JOBS_CLAIM_IDLE/4 seconds, jobs
    other consumers left idle for JOBS_CLAIM_IDLE (XAUTOCLAIM), then new jobs; when there are
    none, a blocking read waits for the next one. Every job held and not yet settled is renewed
    every JOBS_CLAIM_IDLE/4 seconds, so only the jobs of a dead (or stalled) instance become
    claimable. The worker processes record each start and acknowledge each job themselves.
    `record_acks=True` appends each accepted acknowledgement to `<stream>:acked` (for audits
    and tests).
    """

    durable = True

    def __init__(
        self, settings: Settings, *, consumer: str | None = None, record_acks: bool = False
    ) -> None:
        self.settings = settings
        self.stream = stream_name(settings)
        self.dead = dead_name(self.stream)
        self.starts = starts_name(self.stream)
        self.scheduled = scheduled_name(self.stream)
        self.wake = wake_name(self.stream)
        self.group = settings.jobs_group
        self.consumer = consumer or settings.jobs_consumer or default_consumer()
        self.record_acks = record_acks
        self.interval = settings.jobs_claim_idle / 4
        self.leases: dict[str, int] = {}  # entry -> delivery count, for jobs not yet settled
        self.lost: dict[str, str] = {}  # entry -> why, for jobs lost with their process
        self.draining = False
        self._client: aioredis.Redis | None = None
        self._entries: aioredis.Redis | None = None  # reads entries undecoded (see `_text`)
        self._scripts: dict[str, Any] = {}
        self._history: str | None = "0"
        self._cursor = "0-0"
        self._next_claim = 0.0
        self._heartbeat: asyncio.Task[None] | None = None
        self._releasing: asyncio.Task[None] | None = None
        self._lost_again = False  # a job was lost while `_releasing` ran: run it once more
        self._fetching = asyncio.Lock()  # a fetch's jobs are leased before anything is released
        self._group_ready = False
        self._joined = False  # this run reached Redis: `close` has jobs to put back
        self._outage = Outage(f"Redis jobs at {settings.jobs_redis_url} ({self.consumer})")

    def __repr__(self) -> str:
        return f"RedisJobs(url={self.settings.jobs_redis_url!r}, stream={self.stream!r})"

    # parent
    async def open(self, *, drain: bool) -> None:
        """Connect and join the group. A drain that cannot reach Redis within
        SOURCE_CONNECT_TIMEOUT raises `SourceUnavailable`; serving retries in `fetch`."""
        self.draining = drain
        self.leases.clear()
        self._history, self._cursor, self._next_claim = "0", "0-0", 0.0
        self._fetching = asyncio.Lock()  # of this run's event loop
        self._joined = False
        deadline = time.monotonic() + self.settings.source_connect_timeout
        while True:
            try:
                await self._open()
                self._outage.ok()
                return
            except UNREACHABLE as exc:
                if not drain:
                    self._outage.failed(exc)  # logged; `fetch` retries
                    return
                # A drain logs nothing here: if Redis stays away, its one error line says it.
                if time.monotonic() >= deadline:
                    raise self._unavailable(exc) from None
            await asyncio.sleep(OUTAGE_PAUSE)

    def _unavailable(self, exc: BaseException) -> SourceUnavailable:
        return SourceUnavailable(
            f"Redis at {self.settings.jobs_redis_url} (JOBS_REDIS_URL) unreachable for "
            f"{self.settings.source_connect_timeout:g}s (SOURCE_CONNECT_TIMEOUT): {exc}"
        )

    async def fetch(self, desired: int, wait: float) -> AsyncIterator[tuple[Any, ...]]:
        """Yield up to `desired` jobs for this consumer, as tuples (see `Delivery`); with
        `wait`, block on the stream up to that long for a new job first."""
        async with self._fetching:
            batch = await self._fetch(desired, wait)
            leases = self.leases
            for row in batch:  # leased before the first yield: an ack must find its lease
                if row[4]:  # attempt 0: buried at fetch, not held
                    leases[row[0]] = row[5]
        for row in batch:  # what is not yielded stays pending here: `close` releases it
            yield row

    async def _fetch(self, desired: int, wait: float) -> list[tuple[Any, ...]]:
        deadline = time.monotonic() + wait
        try:
            await self._open()
            if self._history is not None:
                cursor, out, _ = await self._call(desired, "history")
                self._history = cursor or None
                if out or self._history is not None:
                    self._outage.ok()
                    return out
            while True:
                now = time.monotonic()
                claim = now >= self._next_claim
                cursor, out, due_in = await self._call(desired, "claim" if claim else "new")
                if claim:
                    self._cursor = cursor
                    if cursor == "0-0":  # the whole pending list was scanned
                        self._next_claim = now + self.interval
                block = deadline - time.monotonic()
                if due_in >= 0:  # wake up when the next scheduled job is due, to move it
                    block = min(block, due_in / 1000)
                if not out and block > 0:
                    out = await self._wait_for_new(desired, block)
                if out or time.monotonic() >= deadline:
                    break  # else a scheduled job is due, or one was scheduled: fetch again
            self._outage.ok()
            return out
        except ResponseError as exc:
            # NOGROUP: the stream was deleted; UNBLOCKED: deleted while a blocking read waited.
            if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                raise
            self._group_ready = False  # join again next time
            return []
        except UNREACHABLE as exc:
            down = self._outage.failed(exc)
            self._group_ready = False
            if self.draining and down > self.settings.source_connect_timeout:
                raise self._unavailable(exc) from None
            await asyncio.sleep(min(max(wait, 0.05), OUTAGE_PAUSE))
            return []

    async def _wait_for_new(self, count: int, wait: float) -> list[tuple[Any, ...]]:
        """Block up to `wait` seconds for new entries (XREADGROUP BLOCK): no polling."""
        assert self._entries is not None
        block = max(1, int(min(wait, BLOCK_MAX) * 1000))
        streams: dict[Any, Any] = {self.stream: ">", self.wake: ">"}  # wake: see _SCHEDULE
        reply = await self._entries.xreadgroup(
            self.group, self.consumer, streams, count=count, block=block
        )
        rows, done, woken = [], [], []
        for stream, entries in cast(list[tuple[bytes, list[tuple[bytes, Any]]]], reply or []):
            for raw_entry, raw_fields in entries:
                entry = raw_entry.decode()
                if stream.decode() == self.wake:
                    woken.append(entry)
                    continue
                if not raw_fields:  # deleted
                    done.append(entry)
                    continue
                fields = {_text(name): _text(value) for name, value in raw_fields.items()}
                missing = "" if "payload" in fields else "the entry has no payload field"
                rows.append(
                    _delivery(
                        entry,
                        fields.get("job", entry),
                        fields.get("key", ""),
                        fields.get("payload", ""),
                        _attempt(fields.get("attempt")),
                        1,
                        fields.get("traceparent", ""),
                        missing,
                    )
                )
        if done:
            await self._entries.xack(self.stream, self.group, *done)
        if woken:
            await self._entries.xack(self.wake, self.group, *woken)
        return rows

    async def finished(self) -> bool:
        """True when the group has nothing pending (with any consumer) and nothing new."""
        try:
            client = await self._open()
            pending = await client.xpending(self.stream, self.group)
            if int(pending["pending"]):
                return False
            groups = await client.xinfo_groups(self.stream)
            group = next((g for g in groups if g["name"] == self.group), None)
            if group is None:  # the stream was deleted and made again: join it again
                self._group_ready = False
                return False
            if group.get("lag") is not None:
                return int(group["lag"]) == 0
            after = f"({group['last-delivered-id']}"
            assert self._entries is not None
            return not await self._entries.xrange(self.stream, after, "+", count=1)
        except ResponseError as exc:
            if not str(exc).startswith("NOGROUP"):
                raise
            self._group_ready = False  # the stream is gone (a Redis restart): join it again
            return False
        except UNREACHABLE as exc:
            if self._outage.failed(exc) > self.settings.source_connect_timeout:
                raise self._unavailable(exc) from None
            return False

    def settle(self, item: Any, outcome: Outcome, error: str | None) -> None:
        """Drop the lease; a job lost with its worker process goes back (or to the dead
        letters, with why) at once. Jobs that never started go back in `close`."""
        self.leases.pop(item[0], None)  # its Delivery.entry
        if outcome is not Outcome.LOST:
            return
        self.lost[item[0]] = error or STOPPED
        if self._releasing is None or self._releasing.done():
            self._releasing = asyncio.get_running_loop().create_task(self._release_lost())
        else:  # the running one may have listed the held jobs already: it runs once more
            self._lost_again = True

    async def _release_lost(self) -> None:
        """Put back the jobs this consumer holds that are leased to nobody in this instance."""
        try:
            while True:
                self._lost_again = False
                async with self._fetching:
                    await self._put_back_unleased()
                if not self._lost_again:
                    return
        except UNREACHABLE as exc:
            logger.warning("could not put lost jobs back (%r): they return after a claim", exc)

    async def _put_back_unleased(self) -> None:
        """Put back (or bury) the jobs this consumer holds that no lease here covers."""
        client = await self._open()
        held = await client.xpending_range(self.stream, self.group, "-", "+", CHUNK, self.consumer)
        for row in held:
            entry = cast(str, row["message_id"])
            if entry in self.leases:
                continue
            await self._scripts["settle"](
                keys=[self.stream, self.dead, self.starts],
                args=[
                    self.group,
                    self.consumer,
                    entry,
                    row["times_delivered"],
                    self.lost.pop(entry, STOPPED),
                    self.settings.jobs_max_attempts,
                    self.settings.jobs_dead_maxlen,
                ],
                client=client,
            )

    async def close(self) -> None:
        """Put back every job this consumer still holds (none started, or lost with their
        worker: only those count an attempt), then stop renewing and disconnect."""
        if self._releasing is not None:
            await asyncio.wait({self._releasing})
        try:
            if self._client is not None and self._joined:
                released = 0
                while True:
                    count = int(
                        await self._scripts["release"](
                            keys=[self.stream, self.dead, self.starts],
                            args=[
                                self.group,
                                self.consumer,
                                CHUNK,
                                STOPPED,
                                self.settings.jobs_max_attempts,
                                self.settings.jobs_dead_maxlen,
                            ],
                            client=self._client,
                        )
                    )
                    released += count
                    if count < CHUNK:
                        break
                if released:
                    logger.info("put %d unfinished job(s) back in %s", released, self.stream)
        except (*UNREACHABLE, ResponseError) as exc:
            logger.warning(
                "could not put held jobs back (%r): they return after JOBS_CLAIM_IDLE", exc
            )
        finally:
            self.leases.clear()
            if self._heartbeat is not None:
                self._heartbeat.cancel()
                await asyncio.wait({self._heartbeat})
                self._heartbeat = None
            if self._client is not None:
                await self._client.aclose()
                self._client = None
            if self._entries is not None:
                await self._entries.aclose()
                self._entries = None

    async def _call(self, count: int, mode: str) -> tuple[str, list[tuple[Any, ...]], int]:
        """One fetch script call: (cursor, deliveries, ms until the next scheduled job is due
        or -1). The reply is read as bytes and decoded here, entry by entry (`_delivery`)."""
        reply = await self._scripts["fetch"](
            keys=[self.stream, self.starts, self.dead, self.scheduled],
            args=[
                self.group,
                self.consumer,
                count,
                mode,
                self._history if mode == "history" else self._cursor,
                int(self.settings.jobs_claim_idle * 1000),
                self.settings.jobs_max_attempts,
                self.settings.jobs_dead_maxlen,
                STOPPED,
            ],
            client=self._entries,
        )
        cursor, rows, due_in = json.loads(_text(reply))
        if not rows:  # Lua's cjson writes an empty table as {}
            return cursor, [], due_in
        deliveries = [
            _delivery(e, j, k, p, int(a), int(d), t, problem)
            for e, j, k, p, a, d, t, problem in rows
        ]
        return cursor, deliveries, due_in

    async def _open(self) -> aioredis.Redis:
        if self._client is None:
            client = connect_async(self.settings)
            self._entries = connect_async(self.settings, decode=False)
            self._scripts = {
                name: client.register_script(lua)
                for name, lua in (("renew", _RENEW), ("settle", _SETTLE), ("release", _RELEASE))
            }
            self._scripts["fetch"] = self._entries.register_script(_FETCH)
            self._client = client
            self._heartbeat = asyncio.get_running_loop().create_task(self._renew_forever())
            self._group_ready = False
        if not self._group_ready:  # again after a failure: Redis may have been down
            await self._create_group()
            await self._forget_old_consumers()
            self._group_ready = self._joined = True
        return self._client

    async def _create_group(self) -> None:
        assert self._client is not None
        for stream in (self.stream, self.wake):
            try:
                await self._client.xgroup_create(stream, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _forget_old_consumers(self) -> None:
        """Delete consumers with no pending jobs, idle for an hour (or 10 claim times)."""
        assert self._client is not None
        limit = max(3600.0, 10 * self.settings.jobs_claim_idle) * 1000
        for stream in (self.stream, self.wake):
            for consumer in await self._client.xinfo_consumers(stream, self.group):
                if consumer["pending"] == 0 and consumer["idle"] > limit:
                    await self._client.xgroup_delconsumer(stream, self.group, consumer["name"])

    async def _renew_forever(self) -> None:
        outage = Outage(f"Redis jobs lease renewal ({self.consumer})")
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.renew()
                outage.ok()
            except UNREACHABLE as exc:
                outage.failed(exc)

    async def renew(self) -> None:
        """Reset the idle time of every job this consumer holds and has not settled."""
        if self._client is None:
            return
        held = list(self.leases.items())
        for start in range(0, len(held), CHUNK):
            args: list[Any] = [self.group, self.consumer]
            for entry, deliveries in held[start : start + CHUNK]:
                args += [entry, deliveries]
            lost = await self._scripts["renew"](keys=[self.stream], args=args, client=self._client)
            for entry, exists in zip(lost[::2], lost[1::2], strict=True):
                if self.leases.pop(entry, None) is None:
                    continue
                if int(exists):
                    logger.warning(
                        "job entry %s was claimed by another consumer (this one stalled for "
                        "over JOBS_CLAIM_IDLE): the run that finishes first counts",
                        entry,
                    )
                else:
                    logger.warning("job entry %s: %s", entry, GONE)

    # worker processes
    @asynccontextmanager
    async def session(self) -> AsyncIterator[_Session]:
        """This process's pipelined Redis connection."""
        client = connect_async(self.settings)
        wire = _Wire(client)
        try:
            yield _Session(wire, Outage(f"Redis jobs ({self.consumer}, pid {os.getpid()})"))
        finally:
            await wire.close()
            await client.aclose()

    async def begin(self, items: Sequence[Any], state: _Session) -> list[Job | Exception]:
        """Record that the jobs start (one call for all), then decode each for its reader.

        The starts are written to Redis before the readers run, without waiting for the
        reply: a worker that dies after this still counts the attempts (the bytes are on
        their way), and the process's commands reach Redis in order, so a job's
        acknowledgement or settlement comes after its start mark.
        """
        deliveries = [Delivery._make(item) for item in items]
        marks = [field for d in deliveries if d.attempt for field in (d.entry, d.attempt)]
        if marks:  # per entry, the attempt of the run that starts (HSET: no script to run)
            mark = partial(state.wire.send, "HSET", self.starts, *marks)
            await _retrying(state.outage, self.settings.jobs_claim_idle, mark)
        return [self._job(delivery) for delivery in deliveries]

    def _job(self, delivery: Delivery) -> Job | Exception:
        """The job its reader gets, or why it fails: its earlier runs used every attempt, or
        the entry is not a job (`MalformedJob`: a failure for good, whatever the payload)."""
        if delivery.attempt == 0:
            return JobFailed(
                f"job {delivery.job_id}: the workers of its earlier runs stopped without an "
                f"outcome {self.settings.jobs_max_attempts} time(s); moved to the dead letters"
            )
        if delivery.problem:
            return MalformedJob(f"entry {delivery.entry} is not a job: {delivery.problem}")
        try:
            payload = json.loads(delivery.payload)
        except Exception as exc:  # not JSON, nested too deep: this entry's failure alone
            return MalformedJob(
                f"entry {delivery.entry} is not a job: its payload "
                f"{shorten(delivery.payload, 100)} is not JSON ({type(exc).__name__}: "
                f"{shorten(str(exc), 100)})"
            )
        return Job(
            delivery.job_id,
            payload,
            delivery.key or None,
            delivery.attempt,
            delivery.traceparent or None,
        )

    async def commit(
        self, done: Sequence[tuple[Any, str | None]], state: _Session
    ) -> list[Exception | None]:
        """Acknowledge the jobs that succeeded (one call for all); put back (after the retry
        backoff) or bury one that failed."""
        results: list[Exception | None] = [None] * len(done)
        succeeded: list[tuple[int, Delivery]] = []
        for index, (item, error) in enumerate(done):
            delivery = Delivery._make(item)
            if delivery.attempt == 0:  # moved to the dead letters when fetched
                continue
            if error is None:
                succeeded.append((index, delivery))
            else:
                results[index] = await self._put_back(delivery, error, state)
        if succeeded:
            codes = await self.acknowledge([delivery for _, delivery in succeeded], state)
            for (index, delivery), code in zip(succeeded, codes, strict=True):
                if code == "not held":
                    results[index] = JobLost(
                        f"job {delivery.job_id} was acknowledged by another consumer that "
                        f"claimed it (JOBS_CLAIM_IDLE {self.settings.jobs_claim_idle}s passed "
                        "without a renewal): this result is not counted"
                    )
                elif code == "gone":
                    results[index] = JobLost(
                        f"job {delivery.job_id} ran, but {GONE}: nothing was acknowledged"
                    )
        return results

    async def acknowledge(self, deliveries: Sequence[Delivery], state: _Session) -> list[str]:
        """Acknowledge jobs in one call: per job, "acked" (now), "not held" (acknowledged
        before, or held by a consumer that claimed it) or "gone" (its entry left the stream)."""
        settings = self.settings
        record = "1" if self.record_acks else "0"
        keys = [self.stream, self.starts, acked_name(self.stream)]
        args: list[Any] = [settings.jobs_group, self.consumer, record, settings.jobs_dead_maxlen]
        for d in deliveries:
            args += (d.entry, d.deliveries, d.job_id)
        call = partial(state.wire.script, _ACK, keys, args)
        codes = await _retrying(state.outage, settings.jobs_claim_idle, call)
        return [ACKED[code] for code in codes]

    async def _put_back(self, delivery: Delivery, error: str, state: _Session) -> JobFailed:
        """Put a failed job back for its next attempt (after the retry backoff), or bury it."""
        settings = self.settings
        attempt = delivery.attempt
        permanent = getattr(error, "permanent", False)  # worker.Permanent: no other attempt
        max_attempts = 0 if permanent else settings.jobs_max_attempts
        if attempt < max_attempts:
            await asyncio.sleep(
                backoff(attempt, settings.retry_backoff, settings.retry_backoff_max)
            )
        args: list[Any] = [
            settings.jobs_group,
            self.consumer,
            delivery.entry,
            delivery.deliveries,
            error,
            max_attempts,
            settings.jobs_dead_maxlen,
        ]
        keys = [self.stream, self.dead, self.starts]
        call = partial(state.wire.script, _SETTLE, keys, args)
        outcome = int(await _retrying(state.outage, settings.jobs_claim_idle, call))
        fate = {
            0: "not put back: another consumer claimed or finished it",
            1: "put back for another attempt",
            2: "moved to the dead letters",
            3: f"not put back: {GONE}",
        }[outcome]
        return JobFailed(
            f"job {delivery.job_id} attempt {attempt} of {settings.jobs_max_attempts}: "
            f"{error}; {fate}"
        )

    # command line and health
    def commands(self) -> list[Callable[..., None] | typer.Typer]:
        """`submit`, `stats` and `dead` (list, replay, purge)."""
        settings = self.settings
        at_redis = f"Redis at {settings.jobs_redis_url} (JOBS_REDIS_URL)"

        @contextmanager
        def one_line_errors() -> Iterator[None]:
            """A refusal or an unreachable Redis ends the command with one line, exit 2."""
            try:
                yield
            except JobsError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from None
            except redis.RedisError as exc:
                typer.echo(f"error: {at_redis}: {exc}", err=True)
                raise typer.Exit(2) from None

        def submit(
            payloads: list[str] = typer.Argument(..., help="JSON payloads; '-' reads JSON lines."),  # noqa: B008
            key: str | None = typer.Option(None, help="Skip the job if this key was submitted."),
            delay: float | None = typer.Option(
                None, min=0, help="Run the jobs this many seconds from now, not before."
            ),
        ) -> None:
            """Add jobs to the Redis stream; print their ids."""
            texts: list[str] = []
            for text in payloads:
                texts += (
                    [line for line in sys.stdin.read().splitlines() if line.strip()]
                    if text == "-"
                    else [text]
                )
            values = []
            for text in texts:
                try:
                    values.append(json.loads(text))
                except ValueError as exc:
                    hint = "" if text.lstrip()[:1] in ("{", "[", '"') else _QUOTE_HINT % text
                    typer.echo(f"error: payload {text!r} is not JSON ({exc}){hint}", err=True)
                    raise typer.Exit(2) from None
            if key is not None and len(values) != 1:
                typer.echo(
                    f"error: --key {key!r} needs exactly one payload, got {len(values)}", err=True
                )
                raise typer.Exit(2)
            with one_line_errors(), Jobs(settings) as jobs:
                ids = jobs.submit_many(values, [key] * len(values), delay=delay)
            for job_id in ids:
                typer.echo(
                    job_id if job_id is not None else f"key {key!r} already submitted: skipped"
                )

        def stats() -> None:
            """Print the number of waiting, pending, dead and scheduled jobs as JSON."""
            with one_line_errors(), Jobs(settings) as jobs:
                counts = jobs.stats()
            typer.echo(json.dumps(counts.__dict__))

        where = f"the stream {dead_name(self.stream)} in {at_redis}"
        dead = dead_letter_commands(partial(Jobs, settings), where, (JobsError, redis.RedisError))
        return [submit, stats, dead]

    async def gauges(self) -> dict[str, float]:
        """Jobs waiting, pending with any consumer, and dead letters (what `qq stats` says)."""

        def counts() -> JobStats:
            with Jobs(self.settings) as jobs:
                return jobs.stats()

        stats = await asyncio.to_thread(counts)
        return {
            "waiting": stats.waiting,
            "pending": stats.pending,
            "dead_letters": stats.dead,
            "scheduled": stats.scheduled,
        }

    def check(self) -> str | None:
        """A PING to the stream's Redis, with a 2 s limit."""
        try:
            with Jobs(self.settings) as jobs:
                jobs.client.ping()
        except (JobsError, redis.RedisError) as exc:
            return f"Redis at {self.settings.jobs_redis_url} (JOBS_REDIS_URL): {exc}"
        return None


async def _retrying(outage: Outage, limit: float, call: Callable[[], Awaitable[Any]]) -> Any:
    """Run `call` until Redis answers, for at most `limit` seconds (JOBS_CLAIM_IDLE).

    After that the job is claimable anyway; a repeated script is harmless, as it only acts
    on a job this consumer still holds.
    """
    delay = 0.05
    while True:
        try:
            result = await call()
        except UNREACHABLE as exc:
            down = outage.failed(exc)
            if down > limit:
                raise JobsError(
                    f"Redis unreachable for {down:.0f}s: the job runs again once claimed"
                ) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            continue
        outage.ok()
        return result


class _Wire:
    """One Redis connection on which a worker process pipelines its commands: each is written
    at once, and one task reads the replies in order. A command whose reply nobody waits for
    (a start mark) costs no round trip, and commands reach Redis in the order they were sent.
    A broken connection fails the replies still due; the next command connects again."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._pool = client.connection_pool
        self._connection: Any = None
        self._replies: deque[asyncio.Future[Any]] = deque()
        self._due = asyncio.Event()  # set while replies are due on the connection
        self._reader: asyncio.Task[None] | None = None

    async def send(self, *args: Any, reply: bool = False) -> asyncio.Future[Any]:
        """Write one command; return the future of its reply (a reply nobody asked for is
        dropped, a refusal logged). Raises a Redis connection error if it was not written."""
        connection = await self._connect()
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not reply:
            answer.add_done_callback(_unheard)
        self._replies.append(answer)
        self._due.set()
        try:
            async with asyncio.timeout(SOCKET_TIMEOUT):
                await connection.send_packed_command(_pack(args), check_health=False)
        except BaseException as exc:
            self._connection = None  # a command may be half written: the reader fails the rest
            await connection.disconnect(nowait=True)
            answer.remove_done_callback(_unheard)
            answer.add_done_callback(_unheard)  # its sender hears of it from this exception
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(f"writing to Redis took over {SOCKET_TIMEOUT}s") from None
            raise
        return answer

    async def _connect(self) -> Any:
        if self._connection is None or self._reader is None or self._reader.done():
            # Without redis-py's own socket timeout, which costs a task per write: `send`
            # and `_read` bound their waits themselves.
            options = {**self._pool.connection_kwargs, "socket_timeout": None}
            connection: Any = self._pool.connection_class(**options)
            await connection.connect()
            self._connection, self._replies = connection, deque()
            self._due = asyncio.Event()
            self._reader = asyncio.get_running_loop().create_task(
                self._read(connection, self._replies, self._due)
            )
        return self._connection

    async def script(self, lua: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run a Lua script (EVALSHA; loaded first if Redis does not have it) and return its
        reply."""
        command = ("EVALSHA", _sha(lua), len(keys), *keys, *args)
        try:
            return await (await self.send(*command, reply=True))
        except NoScriptError:
            await (await self.send("SCRIPT", "LOAD", lua, reply=True))
            return await (await self.send(*command, reply=True))

    async def _read(
        self, connection: Any, replies: deque[asyncio.Future[Any]], due: asyncio.Event
    ) -> None:
        while True:
            if not replies:
                due.clear()
                await due.wait()
                continue
            try:
                result = await connection.read_response(timeout=SOCKET_TIMEOUT)
            except ResponseError as exc:
                result = exc
            except BaseException as exc:  # the connection is gone (redis-py closed it)
                if self._connection is connection:
                    self._connection = None  # the next command connects again
                await connection.disconnect(nowait=True)
                failure = exc if isinstance(exc, Exception) else RedisConnectionError(repr(exc))
                while replies:
                    future = replies.popleft()
                    if not future.done():
                        future.set_exception(failure)
                if isinstance(exc, Exception):
                    return
                raise
            future = replies.popleft()
            if future.done():
                continue
            if isinstance(result, ResponseError):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def close(self) -> None:
        """Wait (up to the socket timeout) for the replies still due, then disconnect."""
        if self._replies:
            await asyncio.wait(list(self._replies), timeout=SOCKET_TIMEOUT)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait({self._reader})
        if self._connection is not None:
            await self._connection.disconnect()
            self._connection = None


def _pack(args: Sequence[Any]) -> bytes:
    """One command in Redis' protocol (RESP): what redis-py's packer makes, in a fraction of
    its time."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _unheard(future: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of a command whose reply nobody waits for; log a refusal."""
    if future.cancelled():
        return
    exc = future.exception()
    if exc is not None and not isinstance(exc, UNREACHABLE):
        logger.warning("Redis refused a command sent without waiting: %r", exc)


@cache
def _sha(lua: str) -> str:
    return hashlib.sha1(lua.encode()).hexdigest()
