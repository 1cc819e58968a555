"""The spool's dead letters (`dead/`): listed, replayed once from two processes, purged."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import typer
from support import Journal, at_once_in_two_processes, fast_settings
from typer.testing import CliRunner

from {{ cookiecutter.__package_slug }}.sources.spool import SpoolItem, SpoolSource
from {{ cookiecutter.__package_slug }}.spool import (
    Producer,
    dead_batches,
    purge_dead,
    replay_dead,
)
from {{ cookiecutter.__package_slug }}.worker import Worker


def typer_app(command: Callable[..., None]) -> typer.Typer:
    app = typer.Typer()
    app.command()(command)
    return app


async def test_dead_batches_listed_replayed_once_from_two_processes_and_purged(
    tmp_path: Path, journal: Journal
) -> None:
    root = tmp_path / "spool"
    with Producer(root, max_records=1) as producer:  # one record a batch
        for n in range(50):
            producer.put(f"record {n}", key=f"k{n}")
    settings = fast_settings(spool_root=str(root), spool_max_attempts=1)

    def bury(item: SpoolItem) -> None:
        raise ValueError(f"no good: {item.key}")

    source = SpoolSource(settings)
    buried = await Worker("t", bury, settings=settings, source=source).drain()
    assert buried.failed == 50
    gauges = await source.gauges()  # each dead batch once, not with its error note
    assert (gauges["waiting"], gauges["pending"], gauges["dead_letters"]) == (0, 0, 50)
    [stats] = [c for c in source.cli().commands() if getattr(c, "__name__", "") == "stats"]
    printed = CliRunner().invoke(typer_app(stats), [])
    assert json.loads(printed.output)["dead"] == 50, printed.output

    dead = dead_batches(root)
    assert len(dead) == 50
    assert all(batch.failures == 1 and "no good: k" in batch.error for batch in dead)

    chosen = [batch.name for batch in dead[:20]]
    assert sum(at_once_in_two_processes(lambda: replay_dead(root, chosen))) == 20

    def record(item: SpoolItem) -> None:
        journal.add(item.key, item.attempt)

    replayed = await Worker("t", record, settings=settings, source=SpoolSource(settings)).drain()
    assert (replayed.succeeded, replayed.failed) == (20, 0)
    assert Counter(row[0] for row in journal.rows()) == Counter(f"k{n}" for n in range(20))
    assert {row[1] for row in journal.rows()} == {"0"}  # failures reset

    assert purge_dead(root, [dead[20].name]) == 1
    assert purge_dead(root, older_than=3600) == 0  # none is an hour old
    assert purge_dead(root) == 29
    assert dead_batches(root) == []
    assert sorted(p.name for p in (root / "dead").iterdir()) == []  # the error notes went too


def test_dead_commands(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    with Producer(root, max_records=1) as producer:
        for n in range(3):
            producer.put(f"record {n}")
    source = SpoolSource(fast_settings(spool_root=str(root), spool_max_attempts=1))
    [dead] = [command for command in source.cli().commands() if isinstance(command, typer.Typer)]
    for name in sorted(p.name for p in (root / "ready").iterdir()):  # dead-letter them by hand
        (root / "ready" / name).rename(root / "dead" / name)
        (root / "dead" / f"{name}.error").write_text("failed 1 time(s); last error:\nboom\n")

    runner = CliRunner()
    listed = runner.invoke(dead, ["list"])
    assert listed.exit_code == 0, listed.output
    letters = [json.loads(line) for line in listed.output.splitlines()]
    assert [letter["error"] for letter in letters] == ["failed 1 time(s); last error:\nboom"] * 3
    assert runner.invoke(dead, ["replay", letters[0]["id"]]).output.strip() == "replayed 1"
    assert runner.invoke(dead, ["purge", "--older-than", "3600"]).output.strip() == "purged 0"
    assert runner.invoke(dead, ["purge", "--all"]).output.strip() == "purged 2"
    both = runner.invoke(dead, ["purge", "--all", "--older-than", "1"])
    assert both.exit_code == 2
    assert len(list((root / "ready").iterdir())) == 1
