{%- set source = cookiecutter.__source -%}
"""The reader and context the worker runs, and where its items come from. This file is yours.

Serve until SIGTERM/SIGINT:
    python -m {{ cookiecutter.__package_slug }}.qq
Run until the source has nothing more, print a JSON summary, exit 1 if an item failed:
    python -m {{ cookiecutter.__package_slug }}.qq drain
{%- if source == "redis" %}
Add jobs (JSON payloads) to the Redis stream that every instance shares (docs/scaling.md):
    python -m {{ cookiecutter.__package_slug }}.qq submit '{"text": "hello"}'
{%- elif source == "spool" %}
Publish records to the spool folder (SPOOL_ROOT) as one batch (docs/spool.md):
    python -m {{ cookiecutter.__package_slug }}.qq submit 'hello' 'world'
{%- endif %}
`--help` lists every command. `Worker` takes either a `writer` (an async generator function,
as in QuasiQueue) or a `source` (docs/worker.md lists the sources). Here the items come from
{% if source == "redis" %}the Redis stream: `source=RedisJobs(...)`.{% elif source == "spool" %}the spool folder: `source=SpoolSource(...)`.{% else %}`writer`.{% endif %} The machinery is in `worker/`.
"""

from __future__ import annotations

import hashlib
{%- if source == "redis" %}
import json
{%- elif source == "writer" %}
import itertools
{%- endif %}
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
{% if cookiecutter.include_aiocache %}
from .cache import Cache, open_cache
{%- endif %}
from .settings import Settings
from .settings import settings as project_settings
{%- if source == "redis" %}
from .sources.redis_jobs import Every, Job, RedisJobs
{%- elif source == "spool" %}
from .sources.spool import SpoolItem, SpoolSource
{%- endif %}
{%- if cookiecutter.include_tracing %}
from .tracing import Tracing
{%- endif %}
from .worker import Worker

logger = logging.getLogger(__name__)
{%- if source == "redis" %}

# Recurring jobs, each submitted once per period by one of the serving instances
# (docs/scaling.md). For example:
#   Every("nightly-report", cron="0 3 * * *", tz="Europe/Paris", payload={"text": "report"})
SCHEDULES: list[Every] = []
{%- endif %}
{%- if source == "writer" %}

SAMPLE_JOBS = tuple(f"job-{number:03d}" for number in range(100))
_unsent = iter(SAMPLE_JOBS)
{%- endif %}


@dataclass
class Context:
    """Per-process resources, opened once in each worker process by `context`."""
{% if cookiecutter.include_aiocache %}
    cache: Cache
{%- endif %}
    processed: int = 0
{%- if source == "writer" %}


async def writer(desired: int, settings: Settings) -> AsyncIterator[str]:
    """Yield up to `desired` new jobs, or nothing when there is no work right now.

    The sample source is an in-memory job set. Replace it with your queue, table or API:
    yield small picklable ids, at most `desired` of them, and nothing when idle.
    """
    for job in itertools.islice(_unsent, desired):
        yield job
{%- endif %}


async def context(settings: Settings) -> AsyncIterator[Context]:
    """Open per-process resources after the fork; the code after `yield` closes them."""
{%- if cookiecutter.include_aiocache %}
    async with open_cache(settings) as cache:
        ctx = Context(cache=cache)
        yield ctx
{%- else %}
    ctx = Context()
    yield ctx
{%- endif %}
    logger.info("closing: this process handled %d job(s)", ctx.processed)
{%- if source == "redis" %}


async def reader(item: Job, ctx: Context, settings: Settings) -> None:
    """Process one job: hash its payload, a stand-in for real work. Keep it idempotent:
    a job can run again (with the same `item.id`) if its worker dies before acknowledging."""
    digest = hashlib.sha256(json.dumps(item.payload, sort_keys=True).encode()).hexdigest()
{%- if cookiecutter.include_aiocache %}
    await ctx.cache.set(item.id, digest)
{%- endif %}
    ctx.processed += 1
    logger.info("%s sha256=%s", item.id, digest)
{%- elif source == "spool" %}


async def reader(item: SpoolItem, ctx: Context, settings: Settings) -> None:
    """Process one record: hash it, a stand-in for real work. Keep it idempotent: a record
    runs again (with the same `item.key`) if its batch is delivered again."""
    data = item.data.encode() if isinstance(item.data, str) else item.data
    digest = hashlib.sha256(data).hexdigest()
{%- if cookiecutter.include_aiocache %}
    await ctx.cache.set(item.key, digest)
{%- endif %}
    ctx.processed += 1
    logger.info("%s sha256=%s", item.key, digest)
{%- else %}


async def reader(item: str, ctx: Context, settings: Settings) -> None:
    """Process one job: hash it, a stand-in for real work."""
    digest = hashlib.sha256(item.encode()).hexdigest()
{%- if cookiecutter.include_aiocache %}
    await ctx.cache.set(item, digest)
{%- endif %}
    ctx.processed += 1
    logger.info("%s sha256=%s", item, digest)
{%- endif %}


runner = Worker(
    project_settings.project_name,
    reader=reader,
{%- if source == "redis" %}
    source=RedisJobs(project_settings, schedules=SCHEDULES),
{%- elif source == "spool" %}
    source=SpoolSource(project_settings),
{%- else %}
    writer=writer,
{%- endif %}
    context=context,
    settings=project_settings,
{%- if cookiecutter.include_tracing %}
    tracing=Tracing.from_env(),  # spans per item when OTEL_* names an exporter (docs/tracing.md)
{%- endif %}
)

if __name__ == "__main__":
    runner.cli()
