"""The jobs stream in each worker process: a `JobsSession` records each start before the
reader runs and acknowledges, puts back or buries each job after it, on one pipelined
connection (`_Wire`)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from types import TracebackType
from typing import Any, Self

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...settings import ENV_PREFIX, Settings
from ...worker import Failure, Session
from ...worker.remote import Outage
from ...worker.retry import backoff
from ...worker.texts import shorten
from . import scripts
from .client import acked_name, dead_name, starts_name, stream_name
from .connection import SOCKET_TIMEOUT, connect_async, where
from .model import ACKED, Delivery, Job, JobFailed, JobLost, JobsError, MalformedJob

logger = logging.getLogger(__name__)

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
STOPPED = "the worker holding it stopped without an outcome"  # a dead letter's error
GONE = (
    "its stream entry is gone: deleted, or lost when Redis restarted without persistence "
    "(docs/scaling.md)"
)


class JobsSession(Session):
    """One worker process's part of `RedisJobs`: its pipelined connection (opened when the
    session is entered), the start marks before the readers, the outcomes after them."""

    def __init__(self, settings: Settings, consumer: str, *, record_acks: bool = False) -> None:
        self.settings = settings
        self.consumer = consumer
        self.record_acks = record_acks
        self.stream = stream_name(settings)
        self.dead = dead_name(self.stream)
        self.starts = starts_name(self.stream)
        self.client: aioredis.Redis | None = None
        self.wire: _Wire | None = None
        self.outage = Outage(f"{where(settings)}, consumer {consumer}", logger)

    async def __aenter__(self) -> Self:
        self.client = connect_async(self.settings)
        self.wire = _Wire(self.client)
        self.outage = Outage(
            f"{where(self.settings)}, consumer {self.consumer}, pid {os.getpid()}", logger
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.wire is not None:
            await self.wire.close()
        if self.client is not None:
            await self.client.aclose()
        self.wire = self.client = None

    async def begin(self, items: Sequence[Any]) -> list[Job | Exception]:
        """Record that the jobs start (one call for all), then decode each for its reader.

        The starts are written to Redis before the readers run, without waiting for the
        reply: a worker that dies after this still counts the attempts (the bytes are on
        their way), and the process's commands reach Redis in order, so a job's
        acknowledgement or settlement comes after its start mark. The mark is also what
        `Jobs.status` calls running; `Jobs.cancel` leaves a fetched job alone, so nothing
        has to be asked before a start.
        """
        deliveries = [Delivery._make(item) for item in items]
        marks = [field for d in deliveries if d.attempt for field in (d.entry, d.attempt)]
        if marks:  # per entry, the attempt of the run that starts (HSET: no script to run)
            mark = partial(self._wire().send, "HSET", self.starts, *marks)
            await _retrying(self.outage, self.settings.jobs_claim_idle, mark)
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

    async def commit(self, done: Sequence[tuple[Any, Failure | None]]) -> list[Exception | None]:
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
                results[index] = await self._put_back(delivery, error)
        if succeeded:
            codes = await self.acknowledge([delivery for _, delivery in succeeded])
            for (index, delivery), code in zip(succeeded, codes, strict=True):
                if code == "not held":
                    idle = f"{ENV_PREFIX}JOBS_CLAIM_IDLE {self.settings.jobs_claim_idle}s"
                    results[index] = JobLost(
                        f"job {delivery.job_id} was acknowledged by another consumer that "
                        f"claimed it ({idle} passed without a renewal): this result is not "
                        "counted"
                    )
                elif code == "gone":
                    results[index] = JobLost(
                        f"job {delivery.job_id} ran, but {GONE}: nothing was acknowledged"
                    )
        return results

    async def acknowledge(self, deliveries: Sequence[Delivery]) -> list[str]:
        """Acknowledge jobs in one call: per job, "acked" (now: its status is succeeded), "not
        held" (acknowledged before, or held by a consumer that claimed it) or "gone" (its entry
        left the stream)."""
        settings = self.settings
        record = "1" if self.record_acks else "0"
        keys = [self.stream, self.starts, acked_name(self.stream)]
        args: list[Any] = [
            settings.jobs_group,
            self.consumer,
            record,
            settings.jobs_dead_maxlen,
            settings.jobs_status_ttl,
        ]
        for d in deliveries:
            args += (d.entry, d.deliveries, d.job_id, d.attempt)
        call = partial(self._wire().script, scripts.ACK, keys, args)
        codes = await _retrying(self.outage, settings.jobs_claim_idle, call)
        return [ACKED[code] for code in codes]

    async def _put_back(self, delivery: Delivery, error: Failure) -> JobFailed:
        """Put a failed job back for its next attempt (after the retry backoff), or bury it
        (at once if its failure is permanent: no other attempt can succeed)."""
        settings = self.settings
        attempt = delivery.attempt
        max_attempts = 0 if error.permanent else settings.jobs_max_attempts
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
            settings.jobs_status_ttl,
        ]
        keys = [self.stream, self.dead, self.starts]
        call = partial(self._wire().script, scripts.SETTLE, keys, args)
        outcome = int(await _retrying(self.outage, settings.jobs_claim_idle, call))
        fate = {
            0: "not put back: another consumer claimed or finished it",
            1: "put back for another attempt",
            2: "moved to the dead letters",
            3: f"not put back: {GONE}",
        }[outcome]
        return JobFailed(f"attempt {attempt} of {settings.jobs_max_attempts}: {error}; {fate}")

    def _wire(self) -> _Wire:
        assert self.wire is not None, "the session was not entered"
        return self.wire


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
        command = ("EVALSHA", scripts.sha(lua), len(keys), *keys, *args)
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
