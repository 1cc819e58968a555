"""The settings the runtime reads, with the defaults it is tuned for: `WorkerSettings`.

The project's `Settings` (settings.py) extends it with its own and sets the environment
prefix and `.env`; `.env.example` says why each default differs from QuasiQueue's. A `Worker`
built without settings reads these from QuasiQueue's own `QUASIQUEUE_*` variables, as
QuasiQueue does.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator
from quasiqueue import Settings as QuasiQueueSettings

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class WorkerSettings(QuasiQueueSettings):
    """QuasiQueue's settings, with the defaults this runner is tuned for, and its own."""

    log_level: str = "INFO"  # one of LOG_LEVELS, in any case
    log_format: Literal["text", "json"] = "text"

    # QuasiQueue's settings, with the defaults this runner is tuned for.
    num_processes: int = Field(default=2, ge=1)
    max_queue_size: int = Field(default=1000, ge=1)
    lookup_block_size: int = Field(default=250, ge=1)
    # Reader slots per process of an async reader: 0 (default) adapts them to the work, from
    # 16 up to MAX_CONCURRENT_TASKS_PER_PROCESS; a number fixes them (docs/worker.md).
    concurrent_tasks_per_process: int = Field(default=0, ge=0)
    max_concurrent_tasks_per_process: int = Field(default=5000, ge=1)
    max_jobs_per_process: int | None = Field(default=10_000, ge=0)
    empty_queue_sleep_time: float = Field(default=0.5, gt=0)
    graceful_shutdown_timeout: float = Field(default=30.0, ge=0)
    prevent_requeuing_time: float = Field(default=300.0, ge=0)

    # Prometheus metrics on http://METRICS_HOST:METRICS_PORT/metrics; port 0: off.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    # Retries of a failing reader call, inside the worker process.
    max_retries: int = Field(default=0, ge=0, le=1000)
    retry_backoff: float = Field(default=0.5, ge=0)
    retry_backoff_max: float = Field(default=30.0, ge=0)
    # Seconds one reader call may take; 0: no limit. An async reader is cancelled, a sync
    # reader's process is killed and replaced; the item fails with a timeout error.
    reader_timeout: float = Field(default=0.0, ge=0)

    # Durable sources (spool, Redis): the most items this instance holds that have not
    # started, its processes' read-ahead (one per reader slot, at most 32 a process)
    # included; 0: that read-ahead plus one fetch (LOOKUP_BLOCK_SIZE).
    max_unstarted: int = Field(default=0, ge=0)
    # Seconds `drain` waits for an unreachable source before it exits 2.
    source_connect_timeout: float = Field(default=10.0, gt=0)

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, level: str) -> str:
        if level.upper() not in LOG_LEVELS:
            raise ValueError(
                f"Input should be {', '.join(LOG_LEVELS[:-1])} or CRITICAL, in any case"
            )
        return level


def env_name(settings: Any, name: str) -> str:
    """The environment variable that sets `name` (e.g. "READER_TIMEOUT") in `settings`: with
    its prefix (MY_WORKER_READER_TIMEOUT), as messages name it."""
    config = getattr(settings, "model_config", {})
    return f"{config.get('env_prefix', '')}{name}"
