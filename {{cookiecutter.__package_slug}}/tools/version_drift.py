"""Print the installed releases that differ from a constraints file (the tested set).

Usage: python tools/version_drift.py [--failed] [--report REPORT] constraints.txt

Compares the distributions installed for this Python (or, with `--report`, those a
`pip install --dry-run --report REPORT` chose) with the file's `name==version` pins whose
markers hold here. `--failed` heads the list for a failed run (`make canary`). It only
reports: the exit status is 0 unless the file cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name


def tested(path: Path) -> dict[str, str]:
    """The pinned version of each distribution whose marker holds for this Python."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if not text or text.startswith("-"):
            continue
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        versions = [spec.version for spec in requirement.specifier if spec.operator == "=="]
        if versions:
            pins[canonicalize_name(requirement.name)] = versions[0]
    return pins


def installed(report: Path | None) -> dict[str, str]:
    """The releases installed here, or those a pip installation report lists; not the ones
    from a local folder (the project itself)."""
    if report is not None:
        return {
            canonicalize_name(entry["metadata"]["name"]): entry["metadata"]["version"]
            for entry in json.loads(report.read_text())["install"]
            if "dir_info" not in entry.get("download_info", {})
        }
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        origin = json.loads(dist.read_text("direct_url.json") or "{}")
        if dist.metadata["Name"] and "dir_info" not in origin:
            found[canonicalize_name(dist.metadata["Name"])] = dist.version
    return found


def drift(pins: dict[str, str], found: dict[str, str]) -> list[str]:
    """One line per release that is not the tested one, or not in the tested set."""
    lines = []
    for name in sorted(found):
        if name in pins and pins[name] != found[name]:
            lines.append(f"  {name} {pins[name]} (tested) -> {found[name]}")
        elif name not in pins and name not in ("pip", "setuptools", "wheel"):
            lines.append(f"  {name} {found[name]} (not in the tested set)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("constraints", type=Path)
    parser.add_argument("--report", type=Path, help="a pip installation report (JSON)")
    parser.add_argument("--failed", action="store_true", help="the run these releases failed")
    args = parser.parse_args(argv)
    try:
        pins = tested(args.constraints)
    except OSError as exc:
        print(f"error: {args.constraints}: {exc.strerror}", file=sys.stderr)
        return 2
    lines = drift(pins, installed(args.report))
    where = f"{args.constraints} (the tested set)"
    if not lines:
        print(f"every release is the one in {where}")
        return 0
    if args.failed:
        print(f"failed with {len(lines)} release(s) that differ from {where}:")
    else:
        print(f"{len(lines)} release(s) differ from {where}:")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
