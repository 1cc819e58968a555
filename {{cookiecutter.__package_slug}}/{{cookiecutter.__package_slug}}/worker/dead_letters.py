"""Dead letters you can act on: one `qq dead list | replay | purge` for every durable source.

A source that gives up on items (the Redis stream's dead letters, the spool's `dead/` folder)
implements `DeadLetters` and returns `dead_letter_commands(...)` among its `commands()`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from typing import Protocol

import typer


@dataclass(frozen=True)
class DeadLetter:
    """One item a source gave up on: its id for `replay` and `purge`, and why."""

    id: str
    job: str  # the item's own id (a Redis job id, a spool batch name)
    attempts: int
    error: str
    when: str  # when it was given up on, ISO 8601 in UTC
    payload: str = ""  # its data as text (`base64:...` when it is not UTF-8), cut; or ""


class DeadLetters(Protocol):
    """What a source offers to act on its dead letters."""

    def dead_list(self, limit: int) -> list[DeadLetter]:
        """The oldest `limit` dead letters."""

    def dead_replay(self, ids: Sequence[str] | None) -> int:
        """Hand these dead letters (None: all) out again as new items, attempts reset; each
        exactly once even when two callers replay at once. Returns how many."""

    def dead_purge(self, ids: Sequence[str] | None, older_than: float | None) -> int:
        """Delete these dead letters (None: all, or those older than `older_than` seconds).
        Returns how many."""


def dead_letter_commands(
    open_letters: Callable[[], AbstractContextManager[DeadLetters]],
    where: str,
    failures: tuple[type[Exception], ...] = (),
) -> typer.Typer:
    """The `dead` command group (`list`, `replay`, `purge`) over what `open_letters` opens;
    `failures` are printed as one line and exit 2."""
    app = typer.Typer(name="dead", help=f"Act on the dead letters ({where}).", no_args_is_help=True)

    @contextmanager
    def letters() -> Iterator[DeadLetters]:
        try:
            with open_letters() as opened:
                yield opened
        except failures as exc:
            typer.echo(f"error: {where}: {exc}", err=True)
            raise typer.Exit(2) from None

    @app.command("list")
    def list_(
        limit: int = typer.Option(20, min=1, help="How many, oldest first."),
    ) -> None:
        """Print the oldest dead letters as JSON lines (id, job, attempts, error, when, payload)."""
        with letters() as opened:
            for letter in opened.dead_list(limit):
                typer.echo(json.dumps(asdict(letter)))

    @app.command()
    def replay(
        ids: list[str] | None = typer.Argument(None, metavar="[ID]..."),  # noqa: B008
        everything: bool = typer.Option(False, "--all", help="Replay every dead letter."),
    ) -> None:
        """Hand dead letters out again as new items (payload and key kept, attempts reset).

        Each ID is a dead letter's id, as `dead list` prints it."""
        chosen = _choose(ids, everything, "replay", "--all")
        with letters() as opened:
            replayed = opened.dead_replay(chosen)
        typer.echo(f"replayed {replayed}")
        _missing(chosen, replayed)

    @app.command()
    def purge(
        ids: list[str] | None = typer.Argument(None, metavar="[ID]..."),  # noqa: B008
        everything: bool = typer.Option(False, "--all", help="Purge every dead letter."),
        older_than: float | None = typer.Option(
            None, min=0, help="Purge the dead letters older than this many seconds."
        ),
    ) -> None:
        """Delete dead letters for good.

        Each ID is a dead letter's id, as `dead list` prints it."""
        if older_than is not None and (ids or everything):
            typer.echo("error: give ids, --all or --older-than, not several", err=True)
            raise typer.Exit(2)
        chosen = None
        if older_than is None:
            chosen = _choose(ids, everything, "purge", "--all, --older-than")
        with letters() as opened:
            purged = opened.dead_purge(chosen, older_than)
        typer.echo(f"purged {purged}")
        _missing(chosen, purged)

    return app


def _choose(ids: list[str] | None, everything: bool, verb: str, options: str) -> list[str] | None:
    """The ids to act on, or None for all; exits 2 unless exactly one of the two was given."""
    if bool(ids) == everything:
        typer.echo(f"error: {verb} needs one of: dead-letter ids, {options}", err=True)
        raise typer.Exit(2)
    return None if everything else list(ids or [])


def _missing(chosen: list[str] | None, done: int) -> None:
    """Exit 1, saying so, if fewer of the ids `chosen` were acted on than given."""
    missing = 0 if chosen is None else len(set(chosen)) - done
    if missing > 0:
        text = f"error: {missing} of the ids given are not dead letters (`dead list`)"
        typer.echo(text, err=True)
        raise typer.Exit(1)
