"""The jobs stream as a worker's `Source`, in the parent process: fetch jobs through the
consumer group, keep their leases, settle and release them (`RedisJobs`)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...settings import ENV_PREFIX, Settings
from ...worker import Failure, ItemInfo, LabeledGauges, Outcome, Source, SourceUnavailable
from ...worker.remote import Outage
from . import scripts
from .client import (
    CHUNK,
    Jobs,
    dead_name,
    default_consumer,
    scheduled_name,
    starts_name,
    stream_name,
    wake_name,
)
from .commands import JobsCli
from .connection import SOCKET_TIMEOUT, connect_async, explain, refused, where
from .every import Every, check_schedules
from .model import Delivery, JobStats, as_text, attempt_of, delivery
from .recurring import Standing, Ticker, standings
from .session import GONE, STOPPED, JobsSession

logger = logging.getLogger(__name__)

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
OUTAGE_PAUSE = 0.25  # seconds between two tries of an unreachable Redis while fetching
BLOCK_MAX = SOCKET_TIMEOUT / 2  # the longest blocking read: well within the socket timeout


class RedisJobs(Source):
    """The jobs of one Redis stream (see the module docstring), as a worker's `Source`.

    In the parent each fetch is one script: first this consumer's own pending jobs from an
    earlier run (when the consumer name is stable), then, every JOBS_CLAIM_IDLE/4 seconds, jobs
    other consumers left idle for JOBS_CLAIM_IDLE (XAUTOCLAIM), then new jobs; when there are
    none, a blocking read waits for the next one. Every job held and not yet settled is renewed
    every JOBS_CLAIM_IDLE/4 seconds, so only the jobs of a dead (or stalled) instance become
    claimable. The worker processes record each start and acknowledge each job themselves.
    `record_acks=True` appends each accepted acknowledgement to `<stream>:acked` (for audits
    and tests). `schedules` are recurring jobs (`Every`): while serving, each instance
    submits them as they fall due, one job per period across all instances (`recurring.py`).
    """

    durable = True

    def __init__(
        self,
        settings: Settings,
        *,
        consumer: str | None = None,
        record_acks: bool = False,
        schedules: Sequence[Every] = (),
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
        self.schedules = tuple(schedules)  # checked in `open` and `qq stats`: one line each
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
        self._ticker: asyncio.Task[None] | None = None
        self._releasing: asyncio.Task[None] | None = None
        self._lost_again = False  # a job was lost while `_releasing` ran: run it once more
        self._fetching = asyncio.Lock()  # a fetch's jobs are leased before anything is released
        self._group_ready = False
        self._joined = False  # this run reached Redis: `close` has jobs to put back
        self._outage = Outage(f"{where(settings)}, consumer {self.consumer}", logger)

    def __repr__(self) -> str:
        return f"RedisJobs(url={self.settings.jobs_redis_url!r}, stream={self.stream!r})"

    def describe(self, item: Any) -> ItemInfo:
        """The job's id, the attempt this run is, and its submitter's trace context."""
        job = Delivery._make(item)
        return ItemInfo(job.job_id, job.attempt or None, job.traceparent or None)

    # parent
    async def open(self, *, drain: bool) -> None:
        """Check the schedules, connect and join the group, and, when serving, start
        submitting the recurring jobs. Bad schedules raise `ScheduleError`; a drain that cannot
        reach Redis within SOURCE_CONNECT_TIMEOUT raises `SourceUnavailable`; serving retries
        in `fetch`."""
        check_schedules(self.schedules)
        self.draining = drain
        self.leases.clear()
        self._history, self._cursor, self._next_claim = "0", "0-0", 0.0
        self._fetching = asyncio.Lock()  # of this run's event loop
        self._joined = False
        deadline = time.monotonic() + self.settings.source_connect_timeout
        waiting = False
        while True:
            try:
                await self._open()
                self._outage.ok()
                break
            except ResponseError as exc:
                if refused(exc):
                    raise self._refused(exc) from None
                raise
            except UNREACHABLE as exc:
                if not drain:
                    self._outage.failed(exc)  # logged; `fetch` retries
                    break
                if time.monotonic() >= deadline:
                    raise self._unavailable(exc) from None
                if not waiting:  # one line now; if Redis stays away, one error line says so
                    waiting = True
                    logger.warning(
                        "%s unreachable, waiting up to %gs (%sSOURCE_CONNECT_TIMEOUT): %s",
                        where(self.settings),
                        self.settings.source_connect_timeout,
                        ENV_PREFIX,
                        explain(self.settings, exc),
                    )
            await asyncio.sleep(OUTAGE_PAUSE)
        if self.schedules and not drain:  # a drain ends: it submits no recurring job
            ticker = Ticker(self.schedules, self.stream)
            self._ticker = asyncio.get_running_loop().create_task(ticker.run(self._open, time.time))

    def _unavailable(self, exc: BaseException) -> SourceUnavailable:
        return SourceUnavailable(
            f"{where(self.settings)} unreachable for {self.settings.source_connect_timeout:g}s "
            f"({ENV_PREFIX}SOURCE_CONNECT_TIMEOUT): {explain(self.settings, exc)}"
        )

    def _refused(self, exc: ResponseError) -> SourceUnavailable:
        """A command the ACL user may not run: the worker stops with one line, any mode."""
        return SourceUnavailable(f"{where(self.settings)}: {explain(self.settings, exc)}")

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
            if refused(exc):
                raise self._refused(exc) from None
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
                fields = {as_text(name): as_text(value) for name, value in raw_fields.items()}
                missing = "" if "payload" in fields else "the entry has no payload field"
                rows.append(
                    delivery(
                        entry,
                        fields.get("job", entry),
                        fields.get("key", ""),
                        fields.get("payload", ""),
                        attempt_of(fields.get("attempt")),
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
            if refused(exc):
                raise self._refused(exc) from None
            if not str(exc).startswith("NOGROUP"):
                raise
            self._group_ready = False  # the stream is gone (a Redis restart): join it again
            return False
        except UNREACHABLE as exc:
            if self._outage.failed(exc) > self.settings.source_connect_timeout:
                raise self._unavailable(exc) from None
            return False

    def settle(self, item: Any, outcome: Outcome, error: Failure | None) -> None:
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
                    self.settings.jobs_status_ttl,
                ],
                client=client,
            )

    async def close(self) -> None:
        """Put back every job this consumer still holds (none started, or lost with their
        worker: only those count an attempt), then stop renewing and disconnect."""
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.wait({self._ticker})
            self._ticker = None
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
                                self.settings.jobs_status_ttl,
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
                self.settings.jobs_status_ttl,
            ],
            client=self._entries,
        )
        cursor, rows, due_in = json.loads(as_text(reply))
        if not rows:  # Lua's cjson writes an empty table as {}
            return cursor, [], due_in
        deliveries = [
            delivery(e, j, k, p, int(a), int(d), t, problem)
            for e, j, k, p, a, d, t, problem in rows
        ]
        return cursor, deliveries, due_in

    async def _open(self) -> aioredis.Redis:
        if self._client is None:
            client = connect_async(self.settings)
            self._entries = connect_async(self.settings, decode=False)
            self._scripts = {
                name: client.register_script(lua)
                for name, lua in (
                    ("renew", scripts.RENEW),
                    ("settle", scripts.SETTLE),
                    ("release", scripts.RELEASE),
                )
            }
            self._scripts["fetch"] = self._entries.register_script(scripts.FETCH)
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
        outage = Outage(f"{where(self.settings)}, lease renewal of {self.consumer}", logger)
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

    def session(self) -> JobsSession:
        """This source's part in each worker process: its pipelined connection, the start
        marks and the acknowledgements."""
        return JobsSession(self.settings, self.consumer, record_acks=self.record_acks)

    def cli(self) -> JobsCli:
        """`submit`, `status`, `cancel`, `stats` and `dead` (list, replay, purge), and the
        health check."""
        return JobsCli(self.settings, self.stream, self.schedules)

    async def gauges(self) -> Mapping[str, float | LabeledGauges]:
        """Jobs waiting, pending with any consumer, dead letters and scheduled, and when each
        recurring schedule is next due (what `qq stats` says)."""

        def counts() -> tuple[JobStats, dict[str, Standing]]:
            with Jobs(self.settings) as jobs:
                return jobs.stats(), standings(jobs.client, self.stream, self.schedules)

        stats, standing = await asyncio.to_thread(counts)
        gauges: dict[str, float | LabeledGauges] = {
            "waiting": stats.waiting,
            "pending": stats.pending,
            "dead_letters": stats.dead,
            "scheduled": stats.scheduled,
        }
        if standing:
            gauges["schedule_next_run_timestamp_seconds"] = LabeledGauges(
                "schedule",
                {name: float(state.next) for name, state in standing.items()},
                "When each recurring schedule's next job is due (Unix time); past: overdue.",
            )
        return gauges
