"""Settings: one explicit prefix, a .env file, and an .env.example that lists them all."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from {{ cookiecutter.__package_slug }}.settings import (
    ENV_FILES,
    Settings,
    load,
    unknown_variables,
)

PROJECT = Path(__file__).resolve().parents[1]
PREFIX = "{{ cookiecutter.__env_prefix }}"


def test_environment_uses_the_project_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"{PREFIX}NUM_PROCESSES", "5")
    monkeypatch.setenv("QUASIQUEUE_MAX_QUEUE_SIZE", "7")
    settings = Settings(_env_file=None)
    assert settings.num_processes == 5
    assert settings.max_queue_size == Settings.model_fields["max_queue_size"].default


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text(f"{PREFIX}MAX_RETRIES=4\nUNRELATED=1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(f"{PREFIX}MAX_RETRIES", raising=False)
    assert Settings().max_retries == 4


def test_dotenv_files_the_project_s_then_the_current_folder_s_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (PROJECT / ".env", Path(".env")) == ENV_FILES
    root, here = tmp_path / "project", tmp_path / "here"
    root.mkdir()
    here.mkdir()
    (root / ".env").write_text(f"{PREFIX}MAX_RETRIES=4\n{PREFIX}RETRY_BACKOFF=2\n")
    (here / ".env").write_text(f"{PREFIX}MAX_RETRIES=5\n")
    monkeypatch.chdir(here)
    for name in ("MAX_RETRIES", "RETRY_BACKOFF", "READER_TIMEOUT"):
        monkeypatch.delenv(f"{PREFIX}{name}", raising=False)
    settings = Settings(_env_file=(root / ".env", Path(".env")))
    assert (settings.max_retries, settings.retry_backoff) == (5, 2.0)
    monkeypatch.setenv(f"{PREFIX}MAX_RETRIES", "6")
    assert Settings(_env_file=(root / ".env", Path(".env"))).max_retries == 6


def test_a_misspelt_variable_is_named_with_the_closest_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"{PREFIX}MAX_RETRYS=4\n{PREFIX}NUM_PROCESSES=1\n")
    environ = {
        f"{PREFIX}NUM_PROCESS": "4",  # misspelt
        f"{PREFIX}WHATEVER_ELSE": "1",  # nothing close
        f"{PREFIX}SERVICE_HOST": "10.0.0.1",  # Kubernetes' service links
        f"{PREFIX}PORT_9000_TCP_ADDR": "10.0.0.1",
        f"{PREFIX}METRICS_PORT": "9000",
        "UNRELATED": "1",
    }
    assert unknown_variables(environ, (dotenv, dotenv)) == [
        f"{PREFIX}MAX_RETRYS (in {dotenv}) is not a setting: did you mean {PREFIX}MAX_RETRIES?",
        f"{PREFIX}NUM_PROCESS (in the environment) is not a setting: did you mean"
        f" {PREFIX}NUM_PROCESSES?",
        f"{PREFIX}WHATEVER_ELSE (in the environment) is not a setting: see .env.example for"
        " the settings",
    ]

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(f"{PREFIX}NUM_PROCESS", "4")
    assert load().num_processes == 1  # the misspelt one sets nothing; .env's real one counts
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        f"warning: {PREFIX}MAX_RETRYS",
        f"warning: {PREFIX}NUM_PROCESS",
    ]


def test_bad_values_are_rejected_with_the_field_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"{PREFIX}NUM_PROCESSES", "0")
    with pytest.raises(ValidationError, match="num_processes"):
        Settings(_env_file=None)


def test_env_example_lists_every_setting_with_its_default() -> None:
    listed = {}
    for line in (PROJECT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            listed[name] = value
    expected = {}
    for name, field in Settings.model_fields.items():
        default = field.get_default()
        text = (
            ""
            if default is None
            else str(default).lower()
            if isinstance(default, bool)
            else str(default)
        )
        expected[f"{PREFIX}{name.upper()}"] = text
    assert listed == expected
