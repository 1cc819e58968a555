"""The worker's command line: `python -m <package>.qq [serve|drain]`."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from .errors import WorkerError

if TYPE_CHECKING:
    from .runner import Worker

LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def configure_logging(level: str) -> None:
    """Send log records of the parent and its worker processes to stderr."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr)


def run_cli(worker: Worker, argv: Sequence[str] | None = None) -> None:
    """Parse `argv` and serve or drain; exits the process with the command's status."""
    app = typer.Typer(add_completion=False, help=f"Run the {worker.name} worker.")

    @app.command()
    def serve() -> None:
        """Serve until SIGTERM or SIGINT (the default command)."""
        with _exit_on_worker_error():
            asyncio.run(worker.main())

    @app.command()
    def drain() -> None:
        """Process until the writer has nothing more; print a JSON summary; exit 1 on failures."""
        with _exit_on_worker_error():
            summary = asyncio.run(worker.drain())
        typer.echo(summary.to_json())
        raise typer.Exit(0 if summary.ok else 1)

    configure_logging(worker.settings.log_level)
    args = list(sys.argv[1:] if argv is None else argv) or ["serve"]
    app(args=args, prog_name=f"python -m {type(worker).__module__.split('.')[0]}.qq")


@contextmanager
def _exit_on_worker_error() -> Iterator[None]:
    """Print a WorkerError as one line and exit 2: the message says what to fix."""
    try:
        yield
    except WorkerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
