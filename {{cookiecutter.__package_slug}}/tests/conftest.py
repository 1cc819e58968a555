"""Fixtures for the worker tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import Journal


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    """A journal file that reader processes append to."""
    return Journal(tmp_path / "journal.tsv")
