"""Jobs in a Redis stream, shared by worker instances on many machines (docs/scaling.md).

- `submit(payload, key=None)` / `submit_many(payloads)` (or a `Jobs` client) add JSON jobs to
  the project's stream from any program; `qq submit '<json>'` from a shell.
- `Jobs.status(id)` / `qq status ID` tell where a job is (scheduled, waiting, running) or how
  it ended, for JOBS_STATUS_TTL seconds; `Jobs.cancel(id)` / `qq cancel ID` cancel one that no
  instance has fetched.
- `RedisJobs(settings)` is the `Source` that reads the stream through a consumer group: pass it
  as `Worker(..., source=RedisJobs(settings))`. Each job goes to one consumer (one per worker
  instance); jobs left pending by an instance that died are claimed after `JOBS_CLAIM_IDLE`
  seconds; an idle instance waits on a blocking read, so a new job starts at once.
- `RedisJobs(settings, schedules=[Every("nightly", cron="0 3 * * *"), ...])` also submits
  recurring jobs while serving: one job per period across every instance, no leader.

Attempts: a job's attempt counts only runs that started (the worker process records the start
in Redis before the reader runs). A job that was fetched but never started, because its
instance stopped or crashed, goes back without an attempt counted. A run that failed, or whose
worker died after it started, counts one; past `JOBS_MAX_ATTEMPTS` the job moves to the
dead-letter stream with its error (a job whose workers died goes there when next fetched).

A job is acknowledged once (XACK tells whether this call removed it from the pending list):
if a job was claimed away from a stalled instance and both runs finish, the first to
acknowledge counts and the other is reported as `JobLost`. One success per job, even if a
reader ran twice.

The package is split by where each part runs: `feed.py` (the source, in the parent process),
`session.py` (each worker process), `commands.py` (the command line), `client.py` (the
blocking client any program uses), `connection.py` (the URL, TLS and the ACL user every client
connects with), `model.py` (jobs and entries), `every.py` (recurring schedules) and
`recurring.py` (their periods claimed in Redis), and `scripts.py` with the Lua scripts in
`lua/`.
"""

from .client import (
    Jobs,
    acked_name,
    current_name,
    dead_name,
    every_name,
    outcome_name,
    scheduled_name,
    starts_name,
    stream_name,
    submit,
    submit_many,
    wake_name,
)
from .commands import JobsCli
from .connection import connect, connect_async
from .every import Every, ScheduleError
from .feed import RedisJobs
from .model import (
    Cancellation,
    CancelResult,
    Delivery,
    Job,
    JobFailed,
    JobLost,
    JobsError,
    JobState,
    JobStats,
    JobStatus,
    MalformedJob,
)
from .session import JobsSession

__all__ = [
    "CancelResult",
    "Cancellation",
    "Delivery",
    "Every",
    "Job",
    "JobFailed",
    "JobLost",
    "JobState",
    "JobStats",
    "JobStatus",
    "Jobs",
    "JobsCli",
    "JobsError",
    "JobsSession",
    "MalformedJob",
    "RedisJobs",
    "ScheduleError",
    "acked_name",
    "connect",
    "connect_async",
    "current_name",
    "dead_name",
    "every_name",
    "outcome_name",
    "scheduled_name",
    "starts_name",
    "stream_name",
    "submit",
    "submit_many",
    "wake_name",
]
