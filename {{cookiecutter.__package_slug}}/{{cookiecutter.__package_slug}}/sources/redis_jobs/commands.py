"""The jobs stream's commands: `qq submit`, `qq status`, `qq cancel`, `qq stats`, `qq dead
...`, and `qq health`'s check (`JobsCli`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict

import redis
import typer

from ...settings import ENV_PREFIX, Settings
from ...worker import SourceCli
from ...worker.dead_letters import dead_letter_commands
from .client import Jobs, dead_name
from .connection import explain, where
from .every import Every, check_schedules
from .model import Cancellation, CancelResult, JobsError, JobState, JobStatus
from .recurring import standings

_QUOTE_HINT = "; a string is quoted in JSON: '\"%s\"'"


class JobsCli(SourceCli):
    """The command-line part of `RedisJobs`."""

    def __init__(self, settings: Settings, stream: str, schedules: Sequence[Every] = ()) -> None:
        self.settings = settings
        self.stream = stream
        self.schedules = tuple(schedules)

    def commands(self) -> list[Callable[..., None] | typer.Typer]:
        """`submit`, `status`, `cancel`, `stats` and `dead` (list, replay, purge)."""
        settings = self.settings
        at_redis = where(settings)

        @contextmanager
        def one_line_errors() -> Iterator[None]:
            """A refusal or an unreachable Redis ends the command with one line, exit 2."""
            try:
                yield
            except JobsError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from None
            except redis.RedisError as exc:
                typer.echo(f"error: {at_redis}: {explain(settings, exc)}", err=True)
                raise typer.Exit(2) from None

        @contextmanager
        def dead_letters() -> Iterator[Jobs]:
            """A client whose Redis errors are explained (`dead` prints them in one line)."""
            try:
                with Jobs(settings) as jobs:
                    yield jobs
            except redis.RedisError as exc:
                raise JobsError(explain(settings, exc)) from None

        def submit(
            payloads: list[str] = typer.Argument(..., metavar="PAYLOAD..."),  # noqa: B008
            key: str | None = typer.Option(None, help="Skip the job if this key was submitted."),
            delay: float | None = typer.Option(
                None, min=0, help="Run the jobs this many seconds from now, not before."
            ),
        ) -> None:
            """Add jobs to the Redis stream; print their ids.

            Each PAYLOAD is one job's payload, in JSON (a string is quoted: '"text"'); '-'
            reads one payload a line from stdin."""
            texts: list[str] = []
            for text in payloads:
                texts += (
                    [line for line in sys.stdin.read().splitlines() if line.strip()]
                    if text == "-"
                    else [text]
                )
            values = []
            for text in texts:
                try:
                    values.append(json.loads(text))
                except ValueError as exc:
                    hint = "" if text.lstrip()[:1] in ("{", "[", '"') else _QUOTE_HINT % text
                    typer.echo(f"error: payload {text!r} is not JSON ({exc}){hint}", err=True)
                    raise typer.Exit(2) from None
            if key is not None and len(values) != 1:
                typer.echo(
                    f"error: --key {key!r} needs exactly one payload, got {len(values)}", err=True
                )
                raise typer.Exit(2)
            with one_line_errors(), Jobs(settings) as jobs:
                ids = jobs.submit_many(values, [key] * len(values), delay=delay)
            for job_id in ids:
                typer.echo(
                    job_id if job_id is not None else f"key {key!r} already submitted: skipped"
                )

        def status(
            job_id: str = typer.Argument(..., metavar="ID"),
            as_json: bool = typer.Option(False, "--json", help="Print it as JSON."),
        ) -> None:
            """Print where a job is, or how it ended. Exit 1 if unknown.

            ID is the job id `submit` printed."""
            with one_line_errors(), Jobs(settings) as jobs:
                found = jobs.status(job_id)
            ttl = f"{ENV_PREFIX}JOBS_STATUS_TTL {settings.jobs_status_ttl}s"
            typer.echo(json.dumps(asdict(found)) if as_json else _status_line(found, ttl))
            if found.state is JobState.UNKNOWN:
                raise typer.Exit(1)

        def cancel(
            job_id: str = typer.Argument(..., metavar="ID"),
        ) -> None:
            """Cancel a job that no instance has fetched. Exit 0 if this cancelled it, else 1.

            ID is the job id `submit` printed."""
            with one_line_errors(), Jobs(settings) as jobs:
                answer = jobs.cancel(job_id)
            typer.echo(f"{job_id}: {_cancel_line(answer)}")
            if answer.result is not CancelResult.CANCELLED:
                raise typer.Exit(1)

        def stats() -> None:
            """Print the number of waiting, pending, dead and scheduled jobs as JSON, and
            each recurring schedule's latest period claimed and next one due."""
            with one_line_errors(), Jobs(settings) as jobs:
                schedules = check_schedules(self.schedules)
                counts = jobs.stats().__dict__
                standing = standings(jobs.client, self.stream, schedules)
            if schedules:
                counts["schedules"] = {
                    schedule.name: {
                        "last": _shown(schedule, standing[schedule.name].last),
                        "next": _shown(schedule, standing[schedule.name].next),
                    }
                    for schedule in schedules
                }
            typer.echo(json.dumps(counts))

        dead = dead_letter_commands(
            dead_letters, f"the stream {dead_name(self.stream)} in {at_redis}", (JobsError,)
        )
        return [submit, status, cancel, stats, dead]

    def check(self) -> str | None:
        """A PING to the stream's Redis, with a 2 s limit."""
        try:
            with Jobs(self.settings) as jobs:
                jobs.client.ping()
        except (JobsError, redis.RedisError) as exc:
            return f"{where(self.settings)}: {explain(self.settings, exc)}"
        return None


def _shown(schedule: Every, period: int | None) -> str | None:
    """A period as ISO 8601 in the schedule's time zone, or None."""
    return None if period is None else schedule.when(period).isoformat()


def _status_line(found: JobStatus, ttl: str) -> str:
    """One line for `qq status`: the job id, its state, and what is known with it."""
    state, attempt = found.state, found.attempt
    if state is JobState.SCHEDULED:
        told = f"scheduled, due {found.due}"
    elif state is JobState.WAITING:
        fetched = f", fetched by {found.consumer}" if found.consumer else ""
        told = f"waiting (attempt {attempt}{fetched})"
    elif state is JobState.RUNNING:
        told = f"running (attempt {attempt}, consumer {found.consumer})"
    elif state is JobState.SUCCEEDED:
        told = f"succeeded (attempt {attempt}) at {found.ended}"
    elif state is JobState.FAILED:
        error = " ".join((found.error or "").split())
        told = (
            f"failed after {attempt} attempt(s) at {found.ended}: {error} "
            f"(dead letter {found.dead_letter})"
        )
    elif state is JobState.CANCELLED:
        told = f"cancelled at {found.ended}"
    else:
        told = f"unknown: not submitted here, or it ended over {ttl} ago"
    return f"{found.id}: {told}"


def _cancel_line(answer: Cancellation) -> str:
    """What `qq cancel` says after the job id: the result, naming the consumer that holds a
    fetched or running job."""
    if answer.result is CancelResult.FETCHED:
        return f"not cancelled: fetched by {answer.consumer}, about to start"
    if answer.result is CancelResult.RUNNING:
        return f"running (consumer {answer.consumer}), not cancelled: it is not interrupted"
    return str(answer.result)
