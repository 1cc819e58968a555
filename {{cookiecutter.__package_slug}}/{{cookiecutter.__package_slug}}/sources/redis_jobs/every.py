"""Recurring jobs as declared: `Every` says which job to submit and when, `check_schedules`
the rules a list of them keeps. A schedule's periods are instants in Unix seconds that every
instance computes alike; `recurring.py` claims each period once in Redis.

Cron expressions are read by cronsim, which follows Debian's cron, DST included: in a zone
with DST, a job at a fixed time (e.g. `30 2 * * *`) that falls in the hour skipped in spring
runs at the end of the gap (03:00), once; in the hour repeated in autumn it runs the first
time only. A job that runs every hour or more often (a `*` in the minute or hour field)
follows real time: it has no run in the skipped hour and runs in both repeated ones.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime, tzinfo
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

from ...worker import WorkerError
from .model import JobsError

MISSED = ("run-once", "skip")
NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
LATE = 60  # seconds after its time a period's job is on time still
CATCH_UP = 10  # the most periods on time at once (after a stall) that each get their job
NEVER = -1  # the period before the first: a cron that matched no time in 50 years
FAR = 2**53  # the period after the last: a cron that matches no time in the next 50 years
# What ZoneInfo raises for a name it does not know (ZoneInfoNotFoundError is a KeyError), a
# malformed one, or one that is not text.
BAD_ZONE = (KeyError, ValueError, TypeError)


class ScheduleError(JobsError, WorkerError):
    """A schedule breaks a rule: the message names the schedule and the rule."""


@dataclass(frozen=True)
class Every:
    """A job submitted once per period of a schedule, by one instance among all that serve.

    Give `cron` (5 fields: minute hour day month weekday, or 6 with seconds first), read in
    the time zone `tz` (an IANA name; UTC by default), or `seconds` (a whole number: periods
    start at multiples of it since the Unix epoch, so every 3600 starts on the hour, UTC).
    `payload` (JSON) is each job's payload; the job's `key` is `every:<name>:<period>`, its
    period in Unix seconds. Each period's job is submitted when it falls due, or later while
    it is on time: within LATE seconds, and among the CATCH_UP latest periods (after a stall
    or a short outage of Redis). Periods older than that were missed (no instance served):
    `missed` says what happens to them: "run-once" (one job, keyed with the latest of them,
    when an instance starts) or "skip" (none). Checked when the worker starts
    (`check_schedules`), not here.
    """

    name: str
    _: KW_ONLY
    cron: str | None = None
    seconds: int | None = None
    payload: Any = None
    tz: str = "UTC"
    missed: str = "run-once"

    def problem(self) -> str | None:
        """The first rule this schedule breaks, as one line naming it, or None."""
        rule = self._rule()
        return None if rule is None else f"schedule {self.name!r}: {rule}"

    def _rule(self) -> str | None:
        if not isinstance(self.name, str) or not NAME.fullmatch(self.name):
            return "the name must be 1 to 100 letters, digits, '_', '.' or '-'"
        if (self.cron is None) == (self.seconds is None):
            return "give cron= (e.g. '0 3 * * *') or seconds=, one of the two"
        if self.missed not in MISSED:
            return f"missed={self.missed!r} must be 'run-once' or 'skip'"
        if self.seconds is not None:
            if type(self.seconds) is not int or self.seconds < 1:
                return f"seconds={self.seconds!r} must be a whole number >= 1"
            if self.tz != "UTC":
                return f"tz={self.tz!r} is for cron=: seconds= periods follow the Unix epoch"
        elif not isinstance(self.cron, str):
            return f"cron={self.cron!r} must be text, e.g. '0 3 * * *'"
        else:
            try:
                self._zone  # noqa: B018
            except BAD_ZONE:
                return f"tz={self.tz!r} is not a time zone: use an IANA name (Europe/Paris) or UTC"
            try:
                if self.after(0) == FAR:
                    return f"cron={self.cron!r} matches no time"
            except CronSimError as exc:
                return f"cron={self.cron!r} is not a cron expression ({exc})"
        try:
            self.encoded  # noqa: B018
        except (TypeError, ValueError, RecursionError) as exc:
            return f"payload {self.payload!r:.80} cannot be stored as JSON ({exc})"
        return None

    @cached_property
    def encoded(self) -> str:
        """The payload as JSON text."""
        return json.dumps(self.payload, separators=(",", ":"), allow_nan=False)

    @cached_property
    def _zone(self) -> tzinfo:
        return UTC if self.tz == "UTC" else ZoneInfo(self.tz)

    def _matches(self, start: float, reverse: bool) -> Iterator[datetime]:
        assert self.cron is not None
        return CronSim(self.cron, datetime.fromtimestamp(start, self._zone), reverse=reverse)

    def latest(self, now: float) -> int:
        """The latest period at or before `now` (NEVER if there is none)."""
        if self.seconds is not None:
            return math.floor(now) // self.seconds * self.seconds
        # From the next whole second back: a match at `now`'s own second counts.
        found = next(
            (
                int(t.timestamp())
                for t in self._matches(math.floor(now) + 1, reverse=True)
                if t.timestamp() <= now
            ),
            NEVER,
        )
        # Backwards, cronsim reads local wall times too: in the second pass of a repeated
        # hour it can miss the first pass's match. The forward sequence is the schedule.
        while found != NEVER and (following := self.after(found)) <= now:
            found = following
        return found

    def after(self, moment: float) -> int:
        """The first period after `moment` (FAR if there is none in the next 50 years)."""
        if self.seconds is not None:
            return (math.floor(moment) // self.seconds + 1) * self.seconds
        # cronsim reads local wall times: from the second pass of a repeated hour it can
        # return the first pass's match, which is earlier. Skip those.
        for match in self._matches(math.floor(moment), reverse=False):
            if match.timestamp() > moment:
                return int(match.timestamp())
        return FAR

    def key(self, period: int) -> str:
        """The key of the job of `period`."""
        return f"every:{self.name}:{period}"

    def when(self, period: int) -> datetime:
        """`period` as a time in the schedule's zone."""
        return datetime.fromtimestamp(period, self._zone)

    def on_time(self, now: float, claimed: int) -> tuple[int, list[int]]:
        """The periods due at `now` and on time that are later than `claimed` (oldest
        first), and the period before them: a missed one, unless it is `claimed` or earlier."""
        periods: list[int] = []
        period = self.latest(now)
        while period > claimed and now - period < LATE and len(periods) < CATCH_UP:
            periods.insert(0, period)
            period = self.latest(period - 1)
        return period, periods


def check_schedules(schedules: Iterable[Every]) -> tuple[Every, ...]:
    """The schedules, once each is checked; raise ScheduleError naming the first problem."""
    checked: dict[str, Every] = {}
    for schedule in schedules:
        if not isinstance(schedule, Every):
            raise ScheduleError(f"schedule {schedule!r} is not an Every(...)")
        problem = schedule.problem()
        if problem is not None:
            raise ScheduleError(problem)
        if schedule.name in checked:
            raise ScheduleError(f"schedule {schedule.name!r} is declared twice: names are unique")
        checked[schedule.name] = schedule
    return tuple(checked.values())
