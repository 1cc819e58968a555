"""`Worker`: a QuasiQueue runner that loses no item, runs fast, and stops quickly."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

from .calls import check_context, check_reader
from .child import ReaderPlan
from .errors import SignatureError
from .instrument import Instrument
from .metrics import Metrics, create_metrics
from .settings import WorkerSettings, env_name
from .slots import Slots
from .source import Source
from .summary import Summary
from .supervisor import Supervisor
from .writer_source import WriterSource

logger = logging.getLogger(__name__)


class Worker:
    """Runs a reader and context over worker processes, on the items of one source.

    Built like `quasiqueue.QuasiQueue(name, reader, writer, context, settings)` and calls the
    functions the same way, by keyword; or with `source=` (a `Source`: the spool, Redis
    Streams, your own) in place of the writer. `main()` serves until SIGTERM or SIGINT;
    `drain()` runs until the source has nothing more and every item has finished, and returns
    a `Summary`. How each item ended goes to the source (`Source.settle`). `tracing`, if
    given, opens a span around each reader call (`worker.instrument.Instrument`).
    """

    def __init__(
        self,
        name: str,
        reader: Callable[..., Any],
        writer: Callable[..., Any] | None = None,
        context: Callable[..., Any] | None = None,
        settings: WorkerSettings | None = None,
        *,
        source: Source | None = None,
        tracing: Instrument | None = None,
    ) -> None:
        self.name = name
        self.reader = reader
        self.writer = writer
        self.context = context
        self.settings = settings if settings is not None else WorkerSettings()
        self._reader_takes = check_reader(reader)
        check_context(context)
        if source is not None and writer is not None:
            raise SignatureError(f"give a writer or a source, not both (source={source!r})")
        if source is not None and not isinstance(source, Source):
            raise SignatureError(f"source must be a Source, got {source!r}")
        if source is None:
            if writer is None:
                raise SignatureError("give a writer (an async generator function) or a source=")
            source = WriterSource(writer, self.settings)
        self.source = source
        self.tracing = tracing

    async def main(self) -> None:
        """Serve until SIGTERM or SIGINT, then finish in-flight items and return."""
        summary = await self._run(drain=False)
        logger.info("[%s] stopped: %s", self.name, summary.to_json())

    async def drain(self, progress: Callable[[int, int], None] | None = None) -> Summary:
        """Run until the writer yields nothing and every item has an outcome.

        `progress`, if given, is called in the parent after each outcome with the number of
        items finished and the number enqueued so far.
        """
        return await self._run(drain=True, progress=progress)

    def cli(self, argv: Sequence[str] | None = None) -> None:
        """Run the command line: `serve` (the default), `drain`, `health`, and the source's."""
        from .cli import run_cli

        run_cli(self, argv)

    def _supervisor(
        self,
        *,
        drain: bool,
        progress: Callable[[int, int], None] | None,
        metrics: Metrics | None,
    ) -> Supervisor:
        settings = self.settings
        source = self.source
        is_async = inspect.iscoroutinefunction(self.reader)
        slots = Slots.for_reader(
            is_async,
            settings.concurrent_tasks_per_process,
            settings.max_concurrent_tasks_per_process,
        )
        plan = ReaderPlan(
            reader=self.reader,
            reader_takes=self._reader_takes,
            is_async=is_async,
            context=self.context,
            settings=settings,
            slots=slots,
            max_retries=settings.max_retries,
            retry_backoff=settings.retry_backoff,
            retry_backoff_max=settings.retry_backoff_max,
            metrics=metrics,
            source=source,
            timeout=settings.reader_timeout,
            name=self.name,
            tracing=self.tracing,
        )
        logger.info(
            "[%s] %s %r: %d processes, %s, %s",
            self.name,
            "draining" if drain else "serving",
            source,
            settings.num_processes,
            slots,
            _metrics_text(settings),
        )
        return Supervisor(self.name, source, plan, drain=drain, progress=progress)

    async def _run(
        self, *, drain: bool, progress: Callable[[int, int], None] | None = None
    ) -> Summary:
        metrics = create_metrics(self.name) if self.settings.metrics_port else None
        try:
            return await self._supervisor(drain=drain, progress=progress, metrics=metrics).run()
        finally:
            if metrics is not None:
                metrics.close()


def _metrics_text(settings: WorkerSettings) -> str:
    if settings.metrics_port == 0:
        return f"no metrics ({env_name(settings, 'METRICS_PORT')} is 0)"
    return f"metrics at http://{settings.metrics_host}:{settings.metrics_port}/metrics"
