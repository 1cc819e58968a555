"""One worker instance for the jobs tests: a separate process standing in for a machine.

`python tests/jobs_instance.py PORT STREAM CONSUMER JOURNAL MODE [options]`; MODE is `serve`
(until SIGTERM) or `drain` (prints the JSON summary, exits 0 when every job succeeded).
Each worker process journals `ready <consumer> <pid>` once its context is open, and the
reader journals `ran <job id> <consumer> <pid>` before it works for `--work-ms`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import Journal, fast_settings

from {{ cookiecutter.__package_slug }}.jobs import Job, JobsWorker


def main() -> int:
    parser = argparse.ArgumentParser()
    for name in ("port", "stream", "consumer", "journal", "mode"):
        parser.add_argument(name)
    parser.add_argument("--work-ms", type=float, default=0.0)
    parser.add_argument("--claim-idle", type=float, default=1.5)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=16)
    args = parser.parse_args()
    journal = Journal(Path(args.journal))
    settings = fast_settings(
        jobs_redis_url=f"redis://127.0.0.1:{args.port}/0",
        jobs_stream=args.stream,
        jobs_claim_idle=args.claim_idle,
        num_processes=args.processes,
        concurrent_tasks_per_process=args.tasks,
        retry_backoff=0.01,
    )

    async def context() -> AsyncIterator[None]:
        journal.add("ready", args.consumer, os.getpid())
        yield None

    async def reader(item: Job) -> None:
        journal.add("ran", item.id, args.consumer, os.getpid())
        if args.work_ms:
            await asyncio.sleep(args.work_ms / 1000)

    worker = JobsWorker(
        "instance",
        reader=reader,
        context=context,
        settings=settings,
        consumer=args.consumer,
        record_acks=True,
    )
    if args.mode == "serve":
        asyncio.run(worker.main())
        return 0
    summary = asyncio.run(worker.drain())
    print(summary.to_json(), flush=True)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
