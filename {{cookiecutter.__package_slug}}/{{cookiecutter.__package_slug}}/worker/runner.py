"""`Worker`: a QuasiQueue runner that loses no item, runs fast, and stops quickly."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..settings import Settings
from .calls import check_context, check_reader, check_writer
from .child import READ_AHEAD, ReaderPlan, shorten
from .metrics import Metrics, create_metrics
from .summary import Summary
from .supervisor import Hooks, Supervisor

logger = logging.getLogger(__name__)

# Items per reader slot a process may hold when items have a finish step: READ_AHEAD not read
# yet (as without one), the rest read and finishing, so acknowledgements go out in batches.
FINISHING_WINDOW = 16


class Worker:
    """Runs a QuasiQueue writer, reader and context over worker processes.

    Built like `quasiqueue.QuasiQueue(name, reader, writer, context, settings)` and calls the
    functions the same way, by keyword. `main()` serves until SIGTERM or SIGINT; `drain()` runs
    until the writer has nothing more and every item has finished, and returns a `Summary`.
    Subclass it and override `on_success` / `on_failure` / `on_unstarted` to settle items
    with a durable source; such a source can also pass `finish`, a coroutine function
    `finish(item, ctx, error)` that each worker process awaits after the reader (`error` is
    None or the failure's text) to acknowledge the item there. It runs outside the reader's
    concurrency slot, and if it raises, the item fails with that error.
    """

    def __init__(
        self,
        name: str,
        reader: Callable[..., Any],
        writer: Callable[..., Any],
        context: Callable[..., Any] | None = None,
        settings: Settings | None = None,
        *,
        finish: Callable[[Any, Any, str | None], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self.reader = reader
        self.writer = writer
        self.context = context
        self.finish = finish
        self.settings = settings if settings is not None else Settings()
        self._reader_takes = check_reader(reader)
        self._writer_takes = check_writer(writer)
        check_context(context)

    def on_success(self, item: Any) -> None:
        """Called in the parent for each item whose reader succeeded. Does nothing by default."""

    def on_failure(self, item: Any, error: str) -> None:
        """Called in the parent for each item that failed its last attempt. Logs by default."""
        logger.error("[%s] item failed: %s: %s", self.name, shorten(item), error)

    def on_unstarted(self, items: list[Any]) -> None:
        """Called in the parent at shutdown with the queued items that never started.

        Their count is logged in any case; override this to put them back into a durable
        source. The default does nothing more: a run is at-most-once.
        """

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
        """Run the command line: `serve` (the default) or `drain`."""
        from .cli import run_cli

        run_cli(self, argv)

    def _supervisor(
        self,
        *,
        drain: bool,
        progress: Callable[[int, int], None] | None,
        metrics: Metrics | None,
    ) -> Supervisor:
        is_async = inspect.iscoroutinefunction(self.reader)
        settings = self.settings
        concurrency = settings.concurrent_tasks_per_process if is_async else 1
        plan = ReaderPlan(
            reader=self.reader,
            reader_takes=self._reader_takes,
            context=self.context,
            settings=settings,
            concurrency=concurrency,
            window=(READ_AHEAD if self.finish is None else FINISHING_WINDOW) * concurrency,
            max_retries=settings.max_retries,
            retry_backoff=settings.retry_backoff,
            retry_backoff_max=settings.retry_backoff_max,
            metrics=metrics,
            finish=self.finish,
        )
        hooks = Hooks(self.on_success, self.on_failure, self.on_unstarted)
        return Supervisor(
            self.name, self.writer, self._writer_takes, plan, hooks, drain=drain, progress=progress
        )

    async def _run(
        self, *, drain: bool, progress: Callable[[int, int], None] | None = None
    ) -> Summary:
        metrics = create_metrics(self.name) if self.settings.metrics_port else None
        try:
            return await self._supervisor(drain=drain, progress=progress, metrics=metrics).run()
        finally:
            if metrics is not None:
                metrics.close()
