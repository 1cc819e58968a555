"""The reader and context the worker runs on jobs from the Redis stream. This file is yours.

Add jobs (JSON payloads) from a shell, or with `jobs.submit(payload)` from any program:
    python -m {{ cookiecutter.__package_slug }}.qq submit '{"text": "hello"}'
Serve until SIGTERM/SIGINT, or run until the stream has nothing new or pending:
    python -m {{ cookiecutter.__package_slug }}.qq
    python -m {{ cookiecutter.__package_slug }}.qq drain
Every instance of this worker, on any machine, shares the stream: docs/scaling.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
{% if cookiecutter.include_aiocache %}
from .cache import Cache, open_cache
{%- endif %}
from .jobs import Job, JobsWorker, main
from .settings import Settings
from .settings import settings as project_settings

logger = logging.getLogger(__name__)


@dataclass
class Context:
    """Per-process resources, opened once in each worker process by `context`."""
{% if cookiecutter.include_aiocache %}
    cache: Cache
{%- endif %}
    processed: int = 0


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


async def reader(item: Job, ctx: Context, settings: Settings) -> None:
    """Process one job: hash its payload, a stand-in for real work. Keep it idempotent:
    a job can run again (with the same `item.id`) if its worker dies before acknowledging."""
    digest = hashlib.sha256(json.dumps(item.payload, sort_keys=True).encode()).hexdigest()
{%- if cookiecutter.include_aiocache %}
    await ctx.cache.set(item.id, digest)
{%- endif %}
    ctx.processed += 1
    logger.info("%s sha256=%s", item.id, digest)


runner = JobsWorker(
    project_settings.project_name,
    reader=reader,
    context=context,
    settings=project_settings,
)

if __name__ == "__main__":
    main(runner)
