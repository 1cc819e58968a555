"""Settings: one explicit prefix, a .env file, and an .env.example that lists them all."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from {{ cookiecutter.__package_slug }}.settings import Settings

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
