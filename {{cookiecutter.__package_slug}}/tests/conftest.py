"""Fixtures for the worker tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import Journal

# The commands the tests start (drain, serve, submit) fail on a UserWarning, as the tests do
# (pyproject.toml): a library's new warning shows here before it reaches users' logs.
os.environ["PYTHONWARNINGS"] = "error::UserWarning"


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    """A journal file that reader processes append to."""
    return Journal(tmp_path / "journal.tsv")
