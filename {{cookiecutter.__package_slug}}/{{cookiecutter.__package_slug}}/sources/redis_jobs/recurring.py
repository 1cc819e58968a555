"""Recurring jobs in Redis: in the parent of each serving instance a `Ticker` claims the
periods of its schedules as they fall due and submits their jobs, each once however many
instances tick (`lua/every.lua`); `standings` reads where each schedule stands, for `qq stats`
and the metrics page.

No instance leads: every one ticks at each period's time, and the first script call to get
there claims the period in the hash `<stream>:every` (the latest period claimed, per
schedule) and adds its job in the same atomic step; the others find it claimed. An instance
that dies mid-schedule leaves nothing half-done, so nothing needs taking over.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import redis
import redis.asyncio as aioredis

from ...worker.remote import Outage
from . import scripts
from .client import every_name
from .every import NEVER, Every

logger = logging.getLogger(__name__)

LONGEST_SLEEP = 60.0  # seconds between two looks at the clock, however far the next period
RETRY_PAUSE = 1.0  # seconds before ticking again after a failed tick


class Claimed(NamedTuple):
    """What one tick did for one schedule: the periods claimed before (None: none) and now,
    the job standing for the periods missed ("skipped" with missed="skip", "" if none were
    missed), and the jobs of the periods on time, as (period, job id) pairs."""

    schedule: Every
    before: int | None
    period: int
    missed: str
    jobs: list[tuple[int, str]]


UNKNOWN = NEVER - 1  # what an instance knows claimed of a schedule before its first tick


class Ticker:
    """Submits the jobs of `schedules` to `stream`, once per period across every instance."""

    def __init__(self, schedules: Sequence[Every], stream: str) -> None:
        self.schedules = tuple(schedules)
        self.stream = stream
        self.known: dict[str, int] = {}  # schedule -> latest period claimed, as Redis said
        self._script: Any = None

    async def tick(self, client: aioredis.Redis, now: float) -> list[Claimed]:
        """Claim the periods due at `now` in one script call (none if nothing is due)."""
        due: list[tuple[Every, list[int]]] = []
        args: list[str | int] = []
        for schedule in self.schedules:
            known = self.known.get(schedule.name, UNKNOWN)
            missed, periods = schedule.on_time(now, known)
            if periods or missed > known:
                due.append((schedule, periods))
                once = 1 if schedule.missed == "run-once" else 0
                args += [schedule.name, schedule.encoded, once, missed, len(periods), *periods]
        if not due:
            return []
        if self._script is None:
            self._script = client.register_script(scripts.EVERY)
        keys = [self.stream, every_name(self.stream)]
        reply = json.loads(await self._script(keys=keys, args=args, client=client))
        claimed = []
        for (schedule, periods), (before, period, missed, ids) in zip(due, reply, strict=True):
            self.known[schedule.name] = int(period)
            last = int(before) if before else None
            # Jobs were added for the periods after the one claimed before (Lua's cjson
            # writes an empty list as {}).
            added = [p for p in periods if last is not None and p > last]
            jobs = list(zip(added, ids or [], strict=True))
            claimed.append(Claimed(schedule, last, int(period), missed, jobs))
            _log(claimed[-1])
        return claimed

    def next_tick(self, now: float) -> float:
        """When the next period of any schedule falls due, after those known claimed."""
        return min(s.after(max(self.known.get(s.name, NEVER), now)) for s in self.schedules)

    async def run(
        self, connect: Callable[[], Awaitable[aioredis.Redis]], clock: Callable[[], float]
    ) -> None:
        """Tick now, then at each period's time, until cancelled. A failed tick (Redis away,
        or refusing) is logged, at most every 10 s, and tried again in RETRY_PAUSE s."""
        outage = Outage(f"recurring jobs of {self.stream}", logger)
        while True:
            try:
                await self.tick(await connect(), clock())
                outage.ok()
            except Exception as exc:  # the next tick tries again: it must not stop for good
                outage.failed(exc, "could not submit recurring jobs, retrying")
                await asyncio.sleep(RETRY_PAUSE)
                continue
            now = clock()
            await asyncio.sleep(min(max(self.next_tick(now) - now, 0.0), LONGEST_SLEEP))


def _log(claim: Claimed) -> None:
    schedule, before, _, missed, jobs = claim
    name = schedule.name
    if missed:
        since = schedule.when(before or 0).isoformat()
        what = "skipped" if missed == "skipped" else f"job {missed} stands for them"
        logger.info("schedule %r: the periods since %s were missed: %s", name, since, what)
    for on_time, job in jobs:
        logger.info("schedule %r: job %s for %s", name, job, schedule.when(on_time).isoformat())


class Standing(NamedTuple):
    """Where a schedule stands: the latest period claimed (None before the first), and the
    next one due (in the past while it is overdue)."""

    last: int | None
    next: int


def standings(client: redis.Redis, stream: str, schedules: Sequence[Every]) -> dict[str, Standing]:
    """Each schedule's standing, by name, read from `<stream>:every` (one HMGET)."""
    if not schedules:
        return {}
    values = client.hmget(every_name(stream), [schedule.name for schedule in schedules])
    now = time.time()
    found = {}
    for schedule, value in zip(schedules, values, strict=True):
        try:
            last = int(value) if value is not None else None  # None: no period claimed yet
        except ValueError:  # not written by this module
            last = None
        start = last if last is not None and last > NEVER else now
        found[schedule.name] = Standing(last, schedule.after(start))
    return found
