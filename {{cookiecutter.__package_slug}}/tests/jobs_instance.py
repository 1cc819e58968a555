"""One worker instance for the jobs tests: a separate process standing in for a machine.

`python tests/jobs_instance.py PORT STREAM CONSUMER JOURNAL COMMAND [options]` runs
`Worker(..., source=RedisJobs(...)).cli([COMMAND])`: `serve` (until SIGTERM), `drain` (prints
the JSON summary, exits 0 when every job succeeded, 2 when Redis cannot be reached) or
`health`. Each worker process journals `ready <consumer> <pid>` once its context is open;
`begin <job id> <consumer> <pid>` before the start of a job is recorded in Redis (so the
journal never counts fewer starts than Redis), `buried <job id> ...` for a job fetched
after its earlier runs used every attempt; the reader journals
`ran <job id> <consumer> <pid> <attempt> <time> <key>` before it works for `--work-ms`.
`--every SECONDS` declares the recurring schedule `tick` (`Every("tick", seconds=SECONDS)`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import Journal, fast_settings

from {{ cookiecutter.__package_slug }}.sources.redis_jobs import (
    Delivery,
    Every,
    Job,
    JobsSession,
    RedisJobs,
)
from {{ cookiecutter.__package_slug }}.worker import Worker


class JournaledJobs(RedisJobs):
    """`RedisJobs` whose worker processes journal each start before recording it in Redis."""

    def __init__(self, journal: Journal, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.journal = journal

    def session(self) -> JournaledSession:
        session = JournaledSession(self.settings, self.consumer, record_acks=self.record_acks)
        session.journal = self.journal
        return session


class JournaledSession(JobsSession):
    journal: Journal

    async def begin(self, items: Sequence[Any]) -> list[Job | Exception]:
        for delivery in map(Delivery._make, items):
            event = "begin" if delivery.attempt else "buried"
            self.journal.add(event, delivery.job_id, self.consumer, os.getpid())
        return await super().begin(items)


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("port", "stream", "consumer", "journal", "command"):
        parser.add_argument(name)
    parser.add_argument("--work-ms", type=float, default=0.0)
    parser.add_argument("--claim-idle", type=float, default=1.5)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--idle-sleep", type=float, default=0.05)
    parser.add_argument("--connect-timeout", type=float, default=10.0)
    parser.add_argument("--metrics-port", type=int, default=0)
    parser.add_argument("--every", type=int, default=0)
    args = parser.parse_args()
    journal = Journal(Path(args.journal))
    settings = fast_settings(
        jobs_redis_url=f"redis://127.0.0.1:{args.port}/0",
        jobs_stream=args.stream,
        jobs_claim_idle=args.claim_idle,
        jobs_max_attempts=args.max_attempts,
        num_processes=args.processes,
        concurrent_tasks_per_process=args.tasks,
        empty_queue_sleep_time=args.idle_sleep,
        source_connect_timeout=args.connect_timeout,
        metrics_port=args.metrics_port,
        retry_backoff=0.01,
    )

    async def context() -> AsyncIterator[None]:
        journal.add("ready", args.consumer, os.getpid())
        yield None

    async def reader(item: Job) -> None:
        now = time.time()
        journal.add("ran", item.id, args.consumer, os.getpid(), item.attempt, now, item.key or "")
        if args.work_ms:
            await asyncio.sleep(args.work_ms / 1000)

    schedules = [Every("tick", seconds=args.every, payload="tick")] if args.every else []
    source = JournaledJobs(
        journal, settings, consumer=args.consumer, record_acks=True, schedules=schedules
    )
    worker = Worker("instance", reader, context=context, settings=settings, source=source)
    worker.cli([args.command])


if __name__ == "__main__":
    main()
