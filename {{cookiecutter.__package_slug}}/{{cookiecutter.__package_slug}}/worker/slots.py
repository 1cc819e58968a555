"""How many items a worker process reads at once: its reader slots.

A sync reader has one slot: it blocks its process. An async reader has
CONCURRENT_TASKS_PER_PROCESS slots when that is set; unset (0, the default), its slots follow
the work. They start at 16. While items wait for a slot they grow toward the number that would
keep the process 80% busy (running on a CPU, or waiting for one: `cpu_demand`), at most 8 times
as many at once (from 20% busy, 4 times). Once it is that busy they hold: on a full CPU fewer
slots would not run more items, only let the readers' waits go by unused. They shrink by a
fifth when the event loop is 50 ms late, the sign that items wait for the CPU too long; never
below 16 nor above MAX_CONCURRENT_TASKS_PER_PROCESS (5,000). The process decides 5 ms after
items start to wait and after each growth, else every 25 ms while it has work. A reader that
waits on calls thus has enough slots to hide its waits within tens of milliseconds; one that
computes keeps 16.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

FLOOR = 16  # the slots an adaptive process starts with and never goes below
TICK = 0.025  # seconds between two decisions of an adaptive process
TICK_GROWING = 0.005  # ... when items start to wait, or it grew: a waiting reader ramps fast
AHEAD_MAX = 32  # items a process holds that have not started: one per slot, at most this
COMMITTING_MAX = 224  # items a process may hold whose readers are done, still committing
BUSY_TARGET = 0.8  # the share of the time the process wants a CPU that growing aims at
GROW_MAX = 8  # the most the slots grow in one tick
LAG_HIGH = 0.05  # seconds the event loop may be late before the slots shrink


@dataclass(frozen=True)
class Slots:
    """A process's reader slots: how many at first, at most, and whether they adapt."""

    start: int
    ceiling: int
    adaptive: bool

    @classmethod
    def for_reader(cls, is_async: bool, fixed: int, ceiling: int) -> Slots:
        """The slots of a reader: one if sync; `fixed` if set (> 0); else adaptive."""
        if not is_async:
            return cls(1, 1, adaptive=False)
        if fixed > 0:
            return cls(fixed, fixed, adaptive=False)
        return cls(min(FLOOR, ceiling), ceiling, adaptive=True)

    @property
    def floor(self) -> int:
        """The fewest slots the process keeps."""
        return min(FLOOR, self.ceiling) if self.adaptive else self.start

    def __str__(self) -> str:
        if self.adaptive:
            return f"{self.start} to {self.ceiling} reader slots a process, adapting"
        if self.ceiling == 1:
            return "1 reader call at a time a process"
        return f"{self.ceiling} reader slots a process"


def ahead(limit: int) -> int:
    """How many items a process with `limit` slots may hold that have not started: enough to
    fill the slots freed before its parent sends more, few enough that other instances of a
    shared source still get work (one per slot, at most AHEAD_MAX)."""
    return min(limit, AHEAD_MAX)


def committing(limit: int) -> int:
    """How many items, readers done, a process may hold while its source commits them."""
    return min(14 * limit, COMMITTING_MAX)


def next_limit(slots: Slots, limit: int, *, waiting: bool, busy: float, lag: float) -> int:
    """The slots for the next tick of an adaptive process, from this tick's measurements:
    `waiting` (every slot was taken and items waited for one), `busy` (the share of the time
    the process ran on a CPU or waited for one: `cpu_demand`) and `lag` (seconds the event
    loop was late)."""
    if lag > LAG_HIGH:
        return max(slots.floor, limit - limit // 5)
    if not waiting or busy >= BUSY_TARGET:
        return limit
    factor = BUSY_TARGET / max(busy, BUSY_TARGET / GROW_MAX)
    return min(slots.ceiling, max(limit + 1, math.ceil(limit * factor)))


def cpu_demand() -> float:
    """Seconds this process has run on a CPU or waited for one (Linux's
    /proc/self/schedstat), so that a process slowed down by others' load still counts as
    busy; where that file is missing, its CPU time."""
    try:
        with open("/proc/self/schedstat", "rb") as stats:
            fields = stats.read().split()
    except OSError:
        fields = []
    if len(fields) < 2 or not (fields[0].isdigit() and fields[1].isdigit()):
        return time.process_time()
    return (int(fields[0]) + int(fields[1])) / 1e9
