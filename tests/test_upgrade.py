"""Projects rendered from the previous template version reach this one with `cruft update`.

For each source variant, render the template as it was at PREVIOUS, make a user edit in
`qq.py`, update to the template as it is now, and check: the runtime and the sources arrive,
the files the template dropped are gone, the user's edit survives, and after the hand edits
listed in CHANGELOG.md ("How to upgrade") the project's own `qq` tests pass.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import BIN, TEMPLATE, run

PREVIOUS = "c9da61944b0e1f4afe2d918e9d0e5fb228e6f1ff"  # 0.1.0 with Redis jobs: before Sources
IGNORED = shutil.ignore_patterns(".git", ".venv", "build", "__pycache__", ".*_cache")
# A user edit the update must keep, in every variant; and one in the reader, which the
# spool variant rewrites (its reader now gets spool records): there cruft leaves a conflict
# for the user, as CHANGELOG.md says.
EDIT = ("Open per-process resources after the fork", "Open our resources after the fork")
READER_EDIT = ("a stand-in for real work", "our real work")
VARIANTS: dict[str, dict[str, bool]] = {
    "writer": {},
    "spool": {"include_spool": True},
    "redis": {"include_redis_jobs": True},
}


def git(cwd: Path, *args: str) -> str:
    result = run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A template repository: PREVIOUS tagged v1, the working tree committed on top as v2."""
    repo = tmp_path_factory.mktemp("template")
    archive = subprocess.run(
        ["git", "archive", "--format=tar", PREVIOUS], cwd=TEMPLATE, capture_output=True, timeout=120
    )
    assert archive.returncode == 0, f"{PREVIOUS} not in this clone: {archive.stderr!r}"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(repo, filter="data")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "v1")
    git(repo, "tag", "v1")
    for path in repo.iterdir():
        if path.name != ".git":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    shutil.copytree(TEMPLATE, repo, ignore=IGNORED, dirs_exist_ok=True)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "v2")
    git(repo, "tag", "v2")
    return repo


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cruft_update_from_the_previous_version(
    template: Path, tmp_path: Path, variant: str
) -> None:
    project = create(template, tmp_path, VARIANTS[variant])
    package = project / "my_worker"
    qq = package / "qq.py"
    edited = qq.read_text().replace(*EDIT)
    if variant != "spool":
        edited = edited.replace(*READER_EDIT)
    qq.write_text(edited)
    git(project, "commit", "-qam", "our edit")

    updated = run(
        [
            *(str(BIN / "cruft"), "update", "--checkout", "v2"),
            *("--skip-apply-ask", "--allow-untracked-files"),
            # CHANGELOG.md, "How to upgrade": Python 3.10 is no longer offered.
            *("--variables-to-update", json.dumps({"python_version": "3.11"})),
        ],
        cwd=project,
    )
    assert updated.returncode == 0, updated.stdout + updated.stderr
    rejected = [path.name for path in project.rglob("*.rej")]
    assert not rejected, f"cruft could not merge: {rejected}"
    conflicted = [path.name for path in project.rglob("*.py") if "<<<<<<<" in path.read_text()]
    assert not conflicted, f"cruft left conflicts in {conflicted}"

    assert (package / "worker" / "source.py").exists()
    assert EDIT[1] in qq.read_text()
    assert (READER_EDIT[1] in qq.read_text()) == (variant != "spool")
    assert not (package / "jobs.py").exists()
    assert not (package / "spool_source.py").exists()
    assert not (package / "qq_redis_jobs.py").exists()
    if variant == "redis":
        assert (package / "sources" / "redis_jobs" / "feed.py").exists()
        assert "source=RedisJobs(project_settings, schedules=SCHEDULES)" in qq.read_text()
    if variant == "spool":
        assert (package / "sources" / "spool.py").exists()
    tests = run(
        [str(BIN / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_qq.py"],
        cwd=project,
        timeout=300,
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]


def create(template: Path, out: Path, answers: dict[str, bool]) -> Path:
    """`cruft create` at v1 with `answers`; the project committed to its own git repository."""
    created = run(
        [
            *(str(BIN / "cruft"), "create", "--no-input", "--checkout", "v1"),
            *("--extra-context", json.dumps(answers), "--output-dir", str(out / "out")),
            str(template),
        ],
        cwd=out,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    project = out / "out" / "my_worker"
    git(project, "init", "-q", "-b", "main")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "created")
    return project
