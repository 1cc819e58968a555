"""Jobs in a Redis stream, shared by worker instances on many machines (docs/scaling.md).

- `submit(payload, key=None)` / `submit_many(payloads)` (or a `Jobs` client) add JSON jobs to
  the project's stream from any program; `python -m <package>.jobs submit '<json>'` from a shell.
- `JobsWorker(name, reader, context, settings)` is a `Worker` whose writer reads the stream
  through a consumer group: each job goes to one consumer (one per worker instance), jobs
  left pending by an instance that died are claimed after `JOBS_CLAIM_IDLE` seconds, and the
  reader's own process acknowledges a job only after the reader returned. A failed job is
  put back at the end of the stream until `JOBS_MAX_ATTEMPTS`, then moved to the dead-letter
  stream with its error. Acknowledged jobs are trimmed from the stream as the writer reads.

A job is acknowledged once (XACK tells whether this call removed it from the pending list):
if a job was claimed away from a stalled instance and both runs finish, the first to
acknowledge counts and the other is reported as `JobLost`. One success per job, even if a
reader ran twice.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple, cast
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from .settings import Settings
from .worker import Summary, Worker
from .worker.calls import check_context, check_reader, keywords, open_context
from .worker.child import shorten

logger = logging.getLogger(__name__)

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
WARN_EVERY = 10.0  # seconds between two warnings about an unreachable Redis
DRAIN_POLL = 0.05  # seconds between checks while drain() waits for other consumers' jobs
DRAIN_GIVE_UP = 120.0  # seconds drain() waits for an unreachable Redis before it stops
CHUNK = 1000  # jobs per pipeline or script call
ACKS_IN_FLIGHT = 1  # ack batches one worker process has on the wire at once


class JobsError(Exception):
    """A jobs setting, payload or Redis state the jobs module cannot work with."""


class JobLost(JobsError):
    """Another consumer claimed the job and acknowledged it before this run of it did."""


class JobFailed(JobsError):
    """The reader raised: the job was put back for another attempt or moved to dead letters."""


@dataclass(frozen=True)
class Job:
    """One job as a reader gets it.

    `id` stays the same across attempts (use it, or `key`, to make the reader idempotent);
    `attempt` counts from 1 and includes attempts whose worker died.
    """

    id: str
    payload: Any
    key: str | None = None
    attempt: int = 1


class Delivery(NamedTuple):
    """A job as the writer hands it to a worker process: raw, so the parent stays light.

    It travels as a plain tuple (`tuple(delivery)`, back with `Delivery._make`): pickling a
    NamedTuple costs about 5 us more per job, a tenth of what a no-op job costs in all.
    """

    entry: str  # the stream entry acknowledged for it
    job_id: str
    key: str
    payload: str  # JSON text, decoded in the worker process
    attempt: int
    deliveries: int  # Redis' delivery count when handed out: settle and renew check it


@dataclass(frozen=True)
class JobStats:
    """Counts of one stream: jobs not yet handed out, handed out and unacknowledged, dead."""

    stream: str
    waiting: int
    pending: int
    dead: int


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


def _key_name(stream: str, key: str) -> str:
    return f"{stream}:key:{key}"


def default_consumer() -> str:
    """`<hostname>-<pid>`: unique per running instance, new on each start."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _connection_options(settings: Settings) -> dict[str, Any]:
    url = urlsplit(settings.jobs_redis_url)
    if url.scheme not in ("redis", "rediss", "unix"):
        raise JobsError(
            f"JOBS_REDIS_URL {settings.jobs_redis_url!r} has scheme {url.scheme!r}: "
            "use redis://host:port/db, rediss://host:port/db or unix:///path"
        )
    if url.password:
        raise JobsError(
            "JOBS_REDIS_URL holds a password: move it to JOBS_PASSWORD, which is kept secret"
        )
    password = settings.jobs_password.get_secret_value() if settings.jobs_password else None
    return {
        "password": password,
        "decode_responses": True,
        "socket_connect_timeout": 2.0,
        "socket_timeout": 10.0,
        # No silent resends: a resent script could run twice. Callers retry where it is safe.
        "retry": Retry(NoBackoff(), 0),
    }


def connect(settings: Settings) -> redis.Redis:
    """A blocking Redis client for the jobs stream (for submitters)."""
    return redis.Redis.from_url(settings.jobs_redis_url, **_connection_options(settings))


def connect_async(settings: Settings) -> aioredis.Redis:
    """An asyncio Redis client for the jobs stream; open it in the process that uses it."""
    return aioredis.Redis.from_url(settings.jobs_redis_url, **_connection_options(settings))


def _encode(payload: Any) -> str:
    try:
        return json.dumps(payload, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise JobsError(
            f"payload {shorten(payload)} cannot be stored as JSON ({exc}); submit ids, strings, "
            "numbers, lists and dicts, and load the rest in the reader"
        ) from None


def _check_key(key: str | None) -> None:
    if key is not None and (not isinstance(key, str) or not key or len(key) > 200):
        raise JobsError(f"key {key!r} must be a non-empty str of at most 200 characters")


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
  redis.call('XADD', unpack(a))
end
"""

# KEYS: stream, dead. ARGV: group, consumer, count, mode (history|claim|new), cursor,
# min idle ms, max attempts, dead maxlen. Returns JSON [cursor, pending if no job, jobs]:
# one bulk string is parsed much faster than nested replies by redis-py's Python parser.
_FETCH = (
    _HELPERS
    + """
local s, d, g, c = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local n, mode, cursor = tonumber(ARGV[3]), ARGV[4], ARGV[5]
local maxa, maxlen = tonumber(ARGV[7]), ARGV[8]
local out = {}
local function deliver(e, deliveries)
  local id = e[1]
  if not e[2] then redis.call('XACK', s, g, id); return end
  local m = fieldmap(e[2])
  local attempt = tonumber(m['attempt'] or '1') + deliveries - 1
  if attempt > maxa then
    bury(d, maxlen, id, m, attempt - 1, 'the worker holding it stopped without an outcome ' ..
         '(attempt ' .. (attempt - 1) .. ' of ' .. maxa .. ')' ..
         (m['error'] and ('; earlier: ' .. m['error']) or ''), c)
    redis.call('XACK', s, g, id)
    return
  end
  out[#out + 1] = {id, m['job'] or id, m['key'] or '', m['payload'] or '', attempt, deliveries}
end
local function count(id)
  return redis.call('XPENDING', s, g, id, id, 1)[1][4]
end
if mode == 'history' then
  local r = redis.call('XREADGROUP', 'GROUP', g, c, 'COUNT', n, 'STREAMS', s, cursor)
  local entries = r and r[1][2] or {}
  for _, e in ipairs(entries) do
    cursor = e[1]
    if e[2] then deliver(e, count(e[1])) else deliver(e, 0) end
  end
  if #entries < n then cursor = '' end
  return cjson.encode({cursor, 0, out})
end
if mode == 'claim' then
  local r = redis.call('XAUTOCLAIM', s, g, c, ARGV[6], cursor, 'COUNT', n)
  cursor = r[1]
  for _, e in ipairs(r[2]) do
    if e[2] then deliver(e, count(e[1])) else deliver(e, 0) end
  end
  n = n - #r[2]
end
local fresh = -1
if n > 0 then
  local r = redis.call('XREADGROUP', 'GROUP', g, c, 'COUNT', n, 'STREAMS', s, '>')
  fresh = r and #r[1][2] or 0
  if r then for _, e in ipairs(r[1][2]) do deliver(e, 1) end end
end
-- Trim: every entry older than the oldest pending one was acknowledged. Whole nodes go
-- (~, cheap); when nothing is pending or new, every entry was acknowledged: all go.
local p = redis.call('XPENDING', s, g)
if p[1] > 0 then
  redis.call('XTRIM', s, 'MINID', '~', p[2])
elseif fresh == 0 then
  redis.call('XTRIM', s, 'MAXLEN', 0)
end
return cjson.encode({cursor, #out == 0 and p[1] or 0, out})
"""
)

# KEYS: stream, acked. ARGV: group, consumer, record (1|0), maxlen, and one string of
# space-separated entry, deliveries, job id triples. Returns one character per job:
# 1 (acknowledged now) or 0 (acknowledged before, by a consumer that claimed it).
_ACK = """
local s, a, g, c = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local words = {}
for w in string.gmatch(ARGV[5], '%S+') do words[#words + 1] = w end
local out = {}
for i = 1, #words, 3 do
  local id = words[i]
  if redis.call('XACK', s, g, id) == 1 then
    if ARGV[3] == '1' then
      redis.call('XADD', a, 'MAXLEN', '~', ARGV[4], '*', 'job', words[i + 2], 'entry', id,
                 'consumer', c, 'deliveries', words[i + 1])
    end
    out[#out + 1] = '1'
  else
    out[#out + 1] = '0'
  end
end
return table.concat(out)
"""

# KEYS: stream, dead. ARGV: group, consumer, entry, deliveries, next attempt, max attempts,
# error, dead maxlen. Puts the job back as a new entry (or buries it) and acknowledges the old
# one. Returns 0 (not held any more), 1 (put back) or 2 (moved to the dead letters).
_SETTLE = (
    _HELPERS
    + """
local s, d, g, c, id = KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3]
local nexta, maxa, err = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
if not holds(s, g, c, id, ARGV[4]) then return 0 end
local e = redis.call('XRANGE', s, id, id)[1]
local m = fieldmap(e and e[2])
redis.call('XACK', s, g, id)
if not e then return 0 end
if nexta > maxa then
  bury(d, ARGV[8], id, m, nexta - 1, err, c)
  return 2
end
local a = {s, '*', 'job', m['job'] or id, 'payload', m['payload'] or '', 'attempt', nexta}
if m['key'] then a[#a + 1] = 'key'; a[#a + 1] = m['key'] end
if err ~= '' then a[#a + 1] = 'error'; a[#a + 1] = err end
redis.call('XADD', unpack(a))
return 1
"""
)

# KEYS: stream. ARGV: group, consumer, then entry, deliveries pairs. Resets the idle time of
# the jobs this consumer still holds; returns the entries it no longer holds.
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
  end
end
return lost
"""
)

# KEYS: stream, key marker. ARGV: payload, key, ttl. Returns {1, id} or {0, existing id}.
_SUBMIT_KEYED = """
local existing = redis.call('GET', KEYS[2])
if existing then return {0, existing} end
local id = redis.call('XADD', KEYS[1], '*', 'payload', ARGV[1], 'key', ARGV[2])
redis.call('SET', KEYS[2], id, 'EX', ARGV[3])
return {1, id}
"""


# ---- submitting ------------------------------------------------------------------------------
class Jobs:
    """A blocking client of the job stream: submit jobs, read counts and dead letters."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else Settings()
        self.stream = stream_name(self.settings)
        self.dead = dead_name(self.stream)
        self.client = connect(self.settings)
        self._keyed = self.client.register_script(_SUBMIT_KEYED)

    def __repr__(self) -> str:
        return f"Jobs(url={self.settings.jobs_redis_url!r}, stream={self.stream!r})"

    def __enter__(self) -> Jobs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self.client.close()

    def submit(self, payload: Any, key: str | None = None) -> str | None:
        """Add one job; return its id, or None when `key` was submitted within JOBS_KEY_TTL."""
        return self.submit_many([payload], keys=[key])[0]

    def submit_many(
        self, payloads: Iterable[Any], keys: Iterable[str | None] | None = None
    ) -> list[str | None]:
        """Add jobs in pipelined chunks; return their ids (None for an already-submitted key)."""
        items = list(payloads)
        key_list = list(keys) if keys is not None else [None] * len(items)
        if len(key_list) != len(items):
            raise JobsError(f"{len(key_list)} keys for {len(items)} payloads: give one per payload")
        for key in key_list:
            _check_key(key)
        encoded = [_encode(payload) for payload in items]
        ids: list[str | None] = []
        ttl = self.settings.jobs_key_ttl
        for start in range(0, len(items), CHUNK):
            pipe = self.client.pipeline(transaction=False)
            chunk = zip(
                encoded[start : start + CHUNK], key_list[start : start + CHUNK], strict=True
            )
            for text, key in chunk:
                if key is None:
                    pipe.xadd(self.stream, {"payload": text})
                else:
                    marker = _key_name(self.stream, key)
                    self._keyed(keys=[self.stream, marker], args=[text, key, ttl], client=pipe)
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
        group = next((g for g in groups if g["name"] == self.settings.jobs_group), None)
        if group is None:  # nothing was handed out yet
            return JobStats(self.stream, int(self.client.xlen(self.stream)), 0, dead)
        waiting = group["lag"]
        if waiting is None:  # entries were deleted by hand: count those after the last delivered
            after = f"({group['last-delivered-id']}"
            waiting = len(cast(list[Any], self.client.xrange(self.stream, after, "+")))
        return JobStats(self.stream, int(waiting), int(group["pending"]), dead)

    def dead_letters(self, count: int = 100) -> list[dict[str, str]]:
        """The oldest `count` dead letters: job id, payload (JSON), key, attempts, error."""
        entries = cast(list[tuple[str, dict[str, str]]], self.client.xrange(self.dead, count=count))
        return [fields for _, fields in entries]


_default: tuple[int, Jobs] | None = None


def _jobs_for(settings: Settings | None) -> tuple[Jobs, bool]:
    """The per-process default client (kept), or a new one for explicit settings (closed)."""
    global _default
    if settings is not None:
        return Jobs(settings), True
    if _default is None or _default[0] != os.getpid():
        _default = (os.getpid(), Jobs())
    return _default[1], False


def submit(payload: Any, key: str | None = None, settings: Settings | None = None) -> str | None:
    """Add one JSON job to the stream; return its id, or None if `key` was seen recently."""
    jobs, close = _jobs_for(settings)
    try:
        return jobs.submit(payload, key)
    finally:
        if close:
            jobs.close()


def submit_many(
    payloads: Iterable[Any],
    keys: Iterable[str | None] | None = None,
    settings: Settings | None = None,
) -> list[str | None]:
    """Add many JSON jobs in pipelined chunks; return their ids."""
    jobs, close = _jobs_for(settings)
    try:
        return jobs.submit_many(payloads, keys)
    finally:
        if close:
            jobs.close()


# ---- the source, in the parent process -------------------------------------------------------
class _Warner:
    """Logs an unreachable Redis at most once every WARN_EVERY seconds; tracks the outage."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.down_since: float | None = None
        self.warned = -WARN_EVERY

    def failed(self, exc: BaseException) -> float:
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
        if now - self.warned >= WARN_EVERY:
            self.warned = now
            logger.warning("%s: Redis unreachable, retrying: %r", self.where, exc)
        return now - self.down_since

    def ok(self) -> None:
        if self.down_since is not None:
            logger.warning("%s: Redis reachable again", self.where)
        self.down_since = None


class JobSource:
    """The writer side: fetches jobs for one consumer and keeps their leases alive.

    Each fetch is one script: first the consumer's own pending jobs from an earlier run (when
    the consumer name is stable), then, every JOBS_CLAIM_IDLE/4 seconds, jobs other consumers
    left idle for JOBS_CLAIM_IDLE (XAUTOCLAIM), then new jobs (XREADGROUP >). Every job handed
    out and not yet settled is renewed every JOBS_CLAIM_IDLE/4 seconds, so only the jobs of a
    dead (or stalled) instance become claimable.
    """

    def __init__(self, settings: Settings, consumer: str | None = None) -> None:
        self.settings = settings
        self.stream = stream_name(settings)
        self.dead = dead_name(self.stream)
        self.group = settings.jobs_group
        self.consumer = consumer or settings.jobs_consumer or default_consumer()
        _connection_options(settings)  # fail now on a bad URL
        self.interval = settings.jobs_claim_idle / 4
        self.leases: dict[str, int] = {}  # entry -> delivery count, for jobs not yet settled
        self.returned: list[Delivery] = []  # fetched but never handed to the runtime
        self.draining = False
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._history: str | None = "0"
        self._cursor = "0-0"
        self._next_claim = 0.0
        self._heartbeat: asyncio.Task[None] | None = None
        self._group_ready = False
        self._warner = _Warner(f"jobs writer ({self.consumer})")

    def begin(self, *, draining: bool) -> None:
        """Reset for a new run (drain or serve)."""
        self.draining = draining
        self.leases.clear()
        self.returned.clear()
        self._history = "0"
        self._cursor = "0-0"
        self._next_claim = 0.0

    async def writer(self, desired: int) -> AsyncIterator[tuple[Any, ...]]:
        """The worker's writer: yield up to `desired` jobs for this consumer, as tuples."""
        batch = await self._fetch(desired)
        for delivery in batch:  # leased before the first yield: a fast ack must find its lease
            self.leases[delivery.entry] = delivery.deliveries
        handed = 0
        try:
            for delivery in batch:
                yield tuple(delivery)
                handed += 1
        finally:
            for delivery in batch[handed:]:  # the run stopped mid-batch: give these back
                self.leases.pop(delivery.entry, None)
                self.returned.append(delivery)

    async def _fetch(self, desired: int) -> list[Delivery]:
        settings = self.settings
        while True:
            try:
                client = await self._open()
                if self._history is not None:
                    cursor, _, out = await self._call(client, desired, "history")
                    self._history = cursor or None
                    if out or self._history is not None:
                        self._warner.ok()
                        return self._deliveries(out)
                now = time.monotonic()
                claim = now >= self._next_claim
                mode = "claim" if claim else "new"
                cursor, pending, out = await self._call(client, desired, mode)
                if claim:
                    self._cursor = cursor
                    if cursor == "0-0":  # the whole pending list was scanned
                        self._next_claim = now + self.interval
                self._warner.ok()
                if out:
                    return self._deliveries(out)
                if not self.draining or self.leases or int(pending) == 0:
                    return []
                # drain: nothing of ours runs, but other consumers hold jobs: wait for them
                # to finish, or for their jobs to become claimable.
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._create_group()
                continue
            except UNREACHABLE as exc:
                down = self._warner.failed(exc)
                if not self.draining:
                    return []
                if down > DRAIN_GIVE_UP:
                    raise JobsError(
                        f"Redis at {settings.jobs_redis_url} unreachable for {down:.0f}s "
                        f"during drain: {exc!r}"
                    ) from exc
            # Poll quickly while draining: the run ends as soon as the last job is settled.
            await asyncio.sleep(min(settings.empty_queue_sleep_time, DRAIN_POLL))

    async def _call(self, client: aioredis.Redis, count: int, mode: str) -> Any:
        settings = self.settings
        reply = await self._scripts["fetch"](
            keys=[self.stream, self.dead],
            args=[
                self.group,
                self.consumer,
                count,
                mode,
                self._history if mode == "history" else self._cursor,
                int(settings.jobs_claim_idle * 1000),
                settings.jobs_max_attempts,
                settings.jobs_dead_maxlen,
            ],
            client=client,
        )
        return json.loads(reply)

    @staticmethod
    def _deliveries(rows: Any) -> list[Delivery]:
        if not rows:  # Lua's cjson writes an empty table as {}
            return []
        return [Delivery(e, j, k, p, int(a), int(d)) for e, j, k, p, a, d in rows]

    async def _open(self) -> aioredis.Redis:
        if self._client is None:
            client = connect_async(self.settings)
            self._scripts = {
                name: client.register_script(lua)
                for name, lua in (("fetch", _FETCH), ("renew", _RENEW), ("settle", _SETTLE))
            }
            self._client = client
            self._heartbeat = asyncio.get_running_loop().create_task(self._renew_forever())
            self._group_ready = False
        if not self._group_ready:  # again after a failure: Redis may have been down
            await self._create_group()
            await self._forget_old_consumers()
            self._group_ready = True
        return self._client

    async def _create_group(self) -> None:
        assert self._client is not None
        try:
            await self._client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _forget_old_consumers(self) -> None:
        """Delete consumers with no pending jobs, idle for an hour (or 10 claim times)."""
        assert self._client is not None
        limit = max(3600.0, 10 * self.settings.jobs_claim_idle) * 1000
        consumers = await self._client.xinfo_consumers(self.stream, self.group)
        for consumer in consumers:
            if consumer["pending"] == 0 and consumer["idle"] > limit:
                await self._client.xgroup_delconsumer(self.stream, self.group, consumer["name"])

    async def _renew_forever(self) -> None:
        warner = _Warner(f"jobs lease renewal ({self.consumer})")
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.renew()
                warner.ok()
            except UNREACHABLE as exc:
                warner.failed(exc)

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
            for entry in lost:
                if self.leases.pop(entry, None) is not None:
                    logger.warning(
                        "job entry %s was claimed by another consumer (this one stalled for "
                        "over JOBS_CLAIM_IDLE): the run that finishes first counts",
                        entry,
                    )

    async def finish(self, unstarted: Sequence[Delivery]) -> None:
        """Put jobs that were fetched but never run back in the stream; close the client."""
        back = [*unstarted, *self.returned]
        self.returned.clear()
        try:
            if back and self._client is not None:
                for delivery in back:
                    self.leases.pop(delivery.entry, None)
                    await self._scripts["settle"](
                        keys=[self.stream, self.dead],
                        args=[
                            self.group,
                            self.consumer,
                            delivery.entry,
                            delivery.deliveries,
                            delivery.attempt,
                            self.settings.jobs_max_attempts,
                            "",
                            self.settings.jobs_dead_maxlen,
                        ],
                        client=self._client,
                    )
                logger.info("put %d unstarted job(s) back in %s", len(back), self.stream)
        except UNREACHABLE as exc:
            logger.warning(
                "could not put %d unstarted job(s) back (%r): they return after JOBS_CLAIM_IDLE",
                len(back),
                exc,
            )
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop renewing leases and close the connections."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.wait({self._heartbeat})
            self._heartbeat = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None


# ---- acknowledgements, in each worker process ------------------------------------------------
class _Acker:
    """Acknowledges jobs of one worker process in batches: the acks that arrive while a batch
    is on the wire go out together in the next one (ACKS_IN_FLIGHT batches at a time)."""

    def __init__(self, settings: Settings, consumer: str, record_acks: bool) -> None:
        self.settings = settings
        self.consumer = consumer
        self.record = "1" if record_acks else "0"
        self.stream = stream_name(settings)
        self.client = connect_async(settings)
        self._ack = self.client.register_script(_ACK)
        self._settle = self.client.register_script(_SETTLE)
        self._waiting: list[tuple[Delivery, asyncio.Future[bool]]] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self._warner = _Warner(f"jobs acks ({consumer}, pid {os.getpid()})")

    async def ack(self, delivery: Delivery) -> bool:
        """Acknowledge; True if this call counted, False if another consumer acknowledged it."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((delivery, future))
        if len(self._flushers) < ACKS_IN_FLIGHT:
            self._flushers.add(asyncio.get_running_loop().create_task(self._flush()))
        return await future

    async def _flush(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                args: list[Any] = [
                    self.settings.jobs_group,
                    self.consumer,
                    self.record,
                    self.settings.jobs_dead_maxlen,
                ]
                args.append(" ".join(f"{d.entry} {d.deliveries} {d.job_id}" for d, _ in batch))
                keys = [self.stream, acked_name(self.stream)]
                try:
                    results = await self._retrying(partial(self._ack, keys=keys, args=args))
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, str(results), strict=True):
                    if not future.done():
                        future.set_result(result == "1")
        finally:
            # In the same step that found nothing waiting (a done callback would run later,
            # and an ack() in between would wait with no flusher to send it).
            self._flushers.discard(cast("asyncio.Task[None]", asyncio.current_task()))

    async def settle(self, delivery: Delivery, next_attempt: int, error: str) -> int:
        """Put the job back for `next_attempt`, or bury it past the limit: 0, 1 or 2."""
        settings = self.settings
        args: list[Any] = [
            settings.jobs_group,
            self.consumer,
            delivery.entry,
            delivery.deliveries,
            next_attempt,
            settings.jobs_max_attempts,
            error,
            settings.jobs_dead_maxlen,
        ]
        keys = [self.stream, dead_name(self.stream)]
        return int(await self._retrying(partial(self._settle, keys=keys, args=args)))

    async def _retrying(self, call: Callable[[], Any]) -> Any:
        """Run `call` until Redis answers, for at most JOBS_CLAIM_IDLE seconds.

        After that the job is claimable anyway; a repeated script is harmless, as it only
        acts on a job this consumer still holds.
        """
        delay = 0.05
        while True:
            try:
                result = await call()
            except UNREACHABLE as exc:
                down = self._warner.failed(exc)
                if down > self.settings.jobs_claim_idle:
                    raise JobsError(
                        f"Redis unreachable for {down:.0f}s: could not acknowledge; the job "
                        "runs again once claimed"
                    ) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            self._warner.ok()
            return result

    async def close(self) -> None:
        if self._flushers:
            await asyncio.wait(self._flushers)
        await self.client.aclose()


@dataclass
class ProcessJobs:
    """The context the worker processes of a `JobsWorker` hold: the user's, and the acker."""

    ctx: Any
    acker: _Acker


# ---- the worker ------------------------------------------------------------------------------
class JobsWorker(Worker):
    """A `Worker` that takes its jobs from the Redis stream (see the module docstring).

    `reader(item, ctx, settings)` gets a `Job`; `ctx` is what `context` yields, as usual.
    Retries go through the stream (`JOBS_MAX_ATTEMPTS`, waiting RETRY_BACKOFF doubling
    before putting a job back), so the runtime's in-process MAX_RETRIES is set to 0.
    `record_acks=True` appends each accepted acknowledgement to the `<stream>:acked` stream
    (for audits and tests).
    """

    def __init__(
        self,
        name: str,
        reader: Callable[..., Any],
        context: Callable[..., Any] | None = None,
        settings: Settings | None = None,
        *,
        consumer: str | None = None,
        record_acks: bool = False,
    ) -> None:
        settings = settings if settings is not None else Settings()
        self.user_reader = reader
        self.user_context = context
        self._user_takes = check_reader(reader)
        check_context(context)
        self.source = JobSource(settings, consumer)
        self.record_acks = record_acks
        self._unstarted: list[Delivery] = []
        super().__init__(
            name,
            reader=self._run_job,
            writer=self.source.writer,
            context=self._context,
            settings=settings.model_copy(update={"max_retries": 0}),
            finish=self._finish_job,
        )

    @property
    def consumer(self) -> str:
        """This instance's consumer name."""
        return self.source.consumer

    # parent side
    async def drain(self, progress: Callable[[int, int], None] | None = None) -> Summary:
        """Run until the stream has no new job and no consumer holds one; return counts."""
        self.source.begin(draining=True)
        self._unstarted = []
        try:
            return await super().drain(progress)
        finally:
            await self.source.finish(self._unstarted)

    async def main(self) -> None:
        """Serve until SIGTERM or SIGINT; put the jobs that never started back."""
        self.source.begin(draining=False)
        self._unstarted = []
        try:
            await super().main()
        finally:
            await self.source.finish(self._unstarted)

    def on_success(self, item: Any) -> None:
        """The job was acknowledged by its worker process."""
        self.source.leases.pop(Delivery._make(item).entry, None)

    def on_failure(self, item: Any, error: str) -> None:
        """The job was put back or buried by its process, or is claimed once its lease ends."""
        delivery = Delivery._make(item)
        self.source.leases.pop(delivery.entry, None)
        logger.error("[%s] job %s failed: %s", self.name, delivery.job_id, error)

    def on_unstarted(self, items: list[Any]) -> None:
        """Remember jobs that never started: `finish` puts them back in the stream."""
        self._unstarted.extend(map(Delivery._make, items))

    # worker-process side
    async def _context(self, settings: Settings) -> AsyncIterator[ProcessJobs]:
        acker = _Acker(settings, self.source.consumer, self.record_acks)
        try:
            async with AsyncExitStack() as stack:
                ctx = await open_context(stack, self.user_context, settings)
                yield ProcessJobs(ctx, acker)
        finally:
            await acker.close()

    async def _run_job(self, item: Any, ctx: ProcessJobs, settings: Settings) -> None:
        item = Delivery._make(item)
        try:
            payload = json.loads(item.payload)
        except ValueError as exc:
            raise JobsError(f"payload {shorten(item.payload)} is not JSON: {exc}") from None
        job = Job(item.job_id, payload, item.key or None, item.attempt)
        result = self.user_reader(
            **keywords(self._user_takes, item=job, ctx=ctx.ctx, settings=settings)
        )
        if inspect.isawaitable(result):
            await result

    async def _finish_job(self, item: Any, ctx: ProcessJobs, error: str | None) -> None:
        """Acknowledge a job that succeeded; put back or bury one that failed."""
        item = Delivery._make(item)
        if error is None:
            if not await ctx.acker.ack(item):
                raise JobLost(
                    f"job {item.job_id} was acknowledged by another consumer that claimed it "
                    f"(JOBS_CLAIM_IDLE {self.settings.jobs_claim_idle}s passed without a "
                    "renewal): this result is not counted"
                )
            return
        settings = self.settings
        max_attempts = settings.jobs_max_attempts
        if item.attempt < max_attempts:
            backoff = settings.retry_backoff * 2 ** (item.attempt - 1)
            await asyncio.sleep(min(backoff, settings.retry_backoff_max))
        outcome = await ctx.acker.settle(item, item.attempt + 1, error)
        fate = {
            0: "not put back: another consumer claimed or finished it",
            1: "put back for another attempt",
            2: "moved to the dead letters",
        }[outcome]
        raise JobFailed(
            f"job {item.job_id} attempt {item.attempt} of {max_attempts}: {error}; {fate}"
        )


# ---- command line ----------------------------------------------------------------------------
def main(runner: Worker | None = None, argv: Sequence[str] | None = None) -> None:
    """`submit` and `stats` commands; any other command goes to `runner.cli` (serve, drain).

    `submit '<json>' ['<json>' ...] [--key K]` prints each new job's id; `-` reads one JSON
    payload per line from stdin. `stats` prints the stream's counts as JSON.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if runner is not None and args[:1] not in (["submit"], ["stats"]):
        runner.cli(args)
        return
    import typer

    app = typer.Typer(add_completion=False, help="Submit jobs to the stream, or count them.")

    @app.command()
    def submit(
        payloads: list[str] = typer.Argument(..., help="JSON payloads; '-' reads JSON lines."),  # noqa: B008
        key: str | None = typer.Option(None, help="Skip the job if this key was submitted."),
    ) -> None:
        """Add jobs to the stream; print their ids."""
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
                typer.echo(
                    f"error: payload {text!r} is not JSON ({exc}); quote strings: '\"{text}\"'",
                    err=True,
                )
                raise typer.Exit(2) from None
        if key is not None and len(values) != 1:
            typer.echo(
                f"error: --key {key!r} needs exactly one payload, got {len(values)}", err=True
            )
            raise typer.Exit(2)
        try:
            with Jobs() as jobs:
                ids = jobs.submit_many(values, [key] * len(values))
        except (JobsError, redis.RedisError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        for job_id in ids:
            typer.echo(job_id if job_id is not None else f"key {key!r} already submitted: skipped")

    @app.command()
    def stats() -> None:
        """Print the number of waiting, pending and dead jobs as JSON."""
        try:
            with Jobs() as jobs:
                counts = jobs.stats()
        except (JobsError, redis.RedisError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(json.dumps(counts.__dict__))

    app(args=args, prog_name=f"python -m {__spec__.name if __spec__ else __name__}")


if __name__ == "__main__":
    main()
