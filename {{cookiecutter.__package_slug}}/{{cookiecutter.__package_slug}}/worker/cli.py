"""The worker's command line: `python -m <package>.qq [serve|drain|health|<source commands>]`."""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .errors import WorkerError
from .logs import configure_logging
from .metrics import probe

if TYPE_CHECKING:
    from .runner import Worker


def run_cli(worker: Worker, argv: Sequence[str] | None = None) -> None:
    """Parse `argv` and run the command; exits the process with the command's status.

    The commands are the runtime's (`serve`, the default, `drain`, `health`) and the ones
    its source adds (`Source.cli().commands()`, e.g. `submit` and `stats`).
    """
    app = typer.Typer(add_completion=False, help=f"Run the {worker.name} worker.")

    @app.command()
    def serve() -> None:
        """Serve until SIGTERM or SIGINT (the default command)."""
        with _exit_on_worker_error():
            asyncio.run(worker.main())

    @app.command()
    def drain() -> None:
        """Process until the source has nothing more; print a JSON summary; exit 1 on failures."""
        with _exit_on_worker_error(), _progress_bar() as progress:
            summary = asyncio.run(worker.drain(progress))
        typer.echo(summary.to_json())
        raise typer.Exit(0 if summary.ok else 1)

    @app.command()
    def health() -> None:
        """Exit 0 if a running worker answers on its metrics port and its source is reachable.

        Else print why and exit 1: a container HEALTHCHECK."""
        settings = worker.settings
        if settings.metrics_port == 0:
            name = f"{settings.model_config.get('env_prefix', '')}METRICS_PORT"
            problem: str | None = f"{name} is 0: the health check needs the metrics server"
        else:
            problem = probe(settings.metrics_host, settings.metrics_port)
        problem = problem or worker.source.cli().check()
        if problem is not None:
            typer.echo(f"unhealthy: {problem}", err=True)
            raise typer.Exit(1)

    for command in worker.source.cli().commands():
        if isinstance(command, typer.Typer):
            app.add_typer(command)
        else:
            app.command(short_help=_summary(command))(command)

    configure_logging(worker.settings.log_level, worker.settings.log_format)
    args = list(sys.argv[1:] if argv is None else argv) or ["serve"]
    script = sys.argv[0]  # a console script's path, or qq.py's under `python -m`
    prog = os.path.basename(script) if script and not script.endswith(".py") else None
    app(args=args, prog_name=prog or f"python -m {type(worker).__module__.split('.')[0]}.qq")


@contextmanager
def _progress_bar() -> Iterator[Callable[[int, int], None] | None]:
    """A tqdm bar on a terminal; nothing in pipes, files or CI (where CI is set)."""
    if not sys.stderr.isatty() or os.environ.get("CI"):
        yield None
        return
    with tqdm(unit="item", file=sys.stderr, dynamic_ncols=True) as bar, logging_redirect_tqdm():

        def update(finished: int, enqueued: int) -> None:
            bar.total = enqueued
            bar.update(finished - bar.n)

        yield update


@contextmanager
def _exit_on_worker_error() -> Iterator[None]:
    """Print a WorkerError as one line and exit 2: the message says what to fix."""
    try:
        yield
    except WorkerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _summary(command: Callable[..., None]) -> str | None:
    """The first paragraph of `command`'s docstring on one line: `--help`'s list of commands
    would otherwise keep its line breaks."""
    doc = inspect.getdoc(command)
    return " ".join(doc.split("\n\n")[0].split()) if doc else None
