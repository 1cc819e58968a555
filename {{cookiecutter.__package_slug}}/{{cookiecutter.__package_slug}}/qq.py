"""The writer, reader and context the worker runs. This file is yours to edit.

Serve until SIGTERM/SIGINT:
    python -m {{ cookiecutter.__package_slug }}.qq
Run until the writer has nothing more, print a JSON summary, exit 1 if an item failed:
    python -m {{ cookiecutter.__package_slug }}.qq drain
The machinery is in `worker/`; docs/worker.md explains the contract of each function.
{%- if cookiecutter.include_spool %}
For a durable source, `spool_source.SpoolWorker` takes the place of `Worker` and this writer:
it yields the records of a spool folder and acks each batch once all of them succeeded
(docs/spool.md, "The worker recipe").
{%- endif %}
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
{% if cookiecutter.include_aiocache %}
from .cache import Cache, open_cache
{%- endif %}
from .settings import Settings
from .settings import settings as project_settings
from .worker import Worker

logger = logging.getLogger(__name__)

SAMPLE_JOBS = tuple(f"job-{number:03d}" for number in range(100))
_unsent = iter(SAMPLE_JOBS)


@dataclass
class Context:
    """Per-process resources, opened once in each worker process by `context`."""
{% if cookiecutter.include_aiocache %}
    cache: Cache
{%- endif %}
    processed: int = 0


async def writer(desired: int, settings: Settings) -> AsyncIterator[str]:
    """Yield up to `desired` new jobs, or nothing when there is no work right now.

    The sample source is an in-memory job set. Replace it with your queue, table or API:
    yield small picklable ids, at most `desired` of them, and nothing when idle.
    """
    for job in itertools.islice(_unsent, desired):
        yield job


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


async def reader(item: str, ctx: Context, settings: Settings) -> None:
    """Process one job: hash it, a stand-in for real work."""
    digest = hashlib.sha256(item.encode()).hexdigest()
{%- if cookiecutter.include_aiocache %}
    await ctx.cache.set(item, digest)
{%- endif %}
    ctx.processed += 1
    logger.info("%s sha256=%s", item, digest)


runner = Worker(
    project_settings.project_name,
    reader=reader,
    writer=writer,
    context=context,
    settings=project_settings,
)

if __name__ == "__main__":
    runner.cli()
