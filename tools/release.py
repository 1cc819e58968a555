"""`make release`: tag HEAD `v<version>`, the version CHANGELOG.md and cookiecutter.json name.

Refuses, with one line and exit status 1, when the newest release heading of CHANGELOG.md
(`## [x.y.z] - yyyy-mm-dd`) and `__template_version` in cookiecutter.json differ, when the
working tree has changes not committed (untracked files included), or when the tag exists.
Creates an annotated tag on HEAD; publishing it (`git push origin v<version>`) is yours.

Usage: python tools/release.py
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1]
RELEASE_HEADING = re.compile(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", re.MULTILINE)


class Refused(Exception):
    """A reason not to tag."""


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=TEMPLATE, capture_output=True, text=True)


def version() -> str:
    """The version both files name, or Refused saying how they differ."""
    releases = RELEASE_HEADING.findall((TEMPLATE / "CHANGELOG.md").read_text(encoding="utf-8"))
    if not releases:
        raise Refused("CHANGELOG.md has no release heading like '## [1.2.3] - 2026-01-31'")
    config = json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8"))
    configured = config.get("__template_version")
    if releases[0] != configured:
        raise Refused(
            f"CHANGELOG.md's newest release is {releases[0]} but cookiecutter.json's "
            f"__template_version is {configured}: make them the same, commit, run again"
        )
    return releases[0]


def release() -> str:
    """Tag HEAD and return the tag, or raise Refused."""
    tag = f"v{version()}"
    status = git("status", "--porcelain")
    if status.returncode != 0:
        raise Refused(f"git status failed: {status.stderr.strip()}")
    if status.stdout.strip():
        changed = len(status.stdout.splitlines())
        raise Refused(f"the working tree has {changed} uncommitted change(s): commit them first")
    if git("rev-parse", "--verify", "--quiet", f"refs/tags/{tag}").returncode == 0:
        raise Refused(f"tag {tag} already exists: add a new release to CHANGELOG.md first")
    tagged = git("tag", "--annotate", "--message", f"Release {tag}", tag)
    if tagged.returncode != 0:
        raise Refused(f"git tag {tag} failed: {tagged.stderr.strip()}")
    return tag


def main() -> int:
    try:
        tag = release()
    except Refused as reason:
        print(f"release refused: {reason}", file=sys.stderr)
        return 1
    print(f"tagged {tag}; publish it with: git push origin {tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
