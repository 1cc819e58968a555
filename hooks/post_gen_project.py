"""Post-generation hook: prune the files of disabled features, then validate the render.

Runs in the generated project directory. It only deletes files, checks what is left and
prints the next steps (not when cruft renders again for `cruft diff` or `cruft update`): no
network, no installs, and running it twice changes nothing more.
On a failed check it prints one line per problem and exits 1, and cookiecutter removes the
directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

CONTEXT = json.loads(r"""{{ cookiecutter | tojson }}""")

# Files (relative to the project root, "{slug}" for the package) that each feature owns.
FEATURE_FILES = {
    "include_aiocache": [
        "{slug}/cache.py",
        "tests/test_cache.py",
        "tests/servers.py",
        "docs/cache.md",
        "deploy/k8s/secret.yaml",
    ],
    "include_streaming_io": [
        "{slug}/streaming",
        "tests/test_streaming.py",
        "tests/test_streaming_s3.py",
        "tests/test_streaming_recipe.py",
        "bench/bench_streaming.py",
        "docs/streaming.md",
    ],
    "include_bounded_queue": [
        "{slug}/bounded_queue",
        "tests/test_bounded_queue.py",
        "tests/test_bounded_queue_props.py",
        "bench/bench_bounded_queue.py",
        "docs/bounded_queue.md",
    ],
    "include_redis_jobs": [
        "{slug}/sources/__init__.py",
        "{slug}/sources/redis_jobs",
        "tests/test_jobs.py",
        "tests/test_jobs_operations.py",
        "tests/test_jobs_foreign.py",
        "tests/test_jobs_crashes.py",
        "tests/test_jobs_tls.py",
        "tests/test_jobs_recurring.py",
        "tests/test_jobs_status.py",
        "tests/jobs_instance.py",
        "tests/jobs_support.py",
        "tests/servers.py",
        "bench/bench_jobs.py",
        "docs/scaling.md",
        "deploy/k8s/scaledobject.yaml",
        "deploy/k8s/secret.yaml",
    ],
    "include_spool": [
        "{slug}/spool",
        "{slug}/sources/__init__.py",
        "{slug}/sources/spool.py",
        "tests/test_spool.py",
        "tests/test_spool_worker.py",
        "tests/test_spool_dead.py",
        "tests/test_spool_props.py",
        "tests/test_spool_procs.py",
        "bench/bench_spool.py",
        "docs/spool.md",
    ],
    "include_tracing": [
        "{slug}/tracing.py",
        "tests/test_tracing.py",
        "docs/tracing.md",
    ],
}
# "\x7b" is "{": written so that Jinja does not read these patterns as tags.
LEFTOVER_JINJA = re.compile(
    r"\x7b\x7b\s*cookiecutter|\x7b%-?\s*(if|for|endif|endfor|else|raw|set)\b"
)
SKIPPED_DIRS = {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


def prune(root: Path, context: dict) -> list[Path]:
    """Delete the files of disabled features and the folders left empty; return what went.

    A file listed under several features stays if any of them is on.
    """
    slug = context["__package_slug"]
    wanted = {
        path for feature, paths in FEATURE_FILES.items() if context[feature] for path in paths
    }
    removed = []
    for feature, paths in FEATURE_FILES.items():
        for pattern in paths:
            path = root / pattern.format(slug=slug)
            if context[feature] or pattern in wanted or not path.exists():
                continue
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    for folder in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            removed.append(folder)
    return removed


def select_license(root: Path, context: dict) -> None:
    """Keep the chosen license text as LICENSE and delete the others."""
    chosen = root / "licenses" / f"{context['license']}.txt"
    if chosen.exists():
        chosen.replace(root / "LICENSE")
    shutil.rmtree(root / "licenses", ignore_errors=True)


def project_files(root: Path) -> list[Path]:
    """Every file of the project, outside tool caches."""
    return [
        path
        for path in sorted(root.rglob("*"))
        if path.is_file() and not SKIPPED_DIRS.intersection(path.relative_to(root).parts)
    ]


def load_toml(text: str) -> object:
    """Parse TOML with tomllib (Python 3.11+) or tomli; None when neither is available."""
    try:
        import tomllib
    except ImportError:
        try:
            import tomli as tomllib
        except ImportError:
            return None
    return tomllib.loads(text)


def validate(root: Path) -> list[str]:
    """Return one line per problem in the rendered project."""
    problems = []
    for path in project_files(root):
        name = path.relative_to(root).as_posix()
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        match = LEFTOVER_JINJA.search(text)
        if match:
            line = text.count("\n", 0, match.start()) + 1
            problems.append(f"{name}:{line}: leftover Jinja {match.group(0)!r}")
        try:
            if path.suffix == ".py":
                compile(text, name, "exec", dont_inherit=True)
            elif path.suffix == ".json":
                json.loads(text)
            elif path.suffix in (".yaml", ".yml"):
                import yaml  # cookiecutter depends on PyYAML

                list(yaml.safe_load_all(text))
            elif path.suffix == ".toml" and load_toml(text) is None:
                print(f"note: {name} not parsed (no tomllib or tomli here)", file=sys.stderr)
        except Exception as error:
            problems.append(f"{name}: does not parse: {type(error).__name__}: {error}")
    return problems


def where(root: Path, cwd: str | None) -> str:
    """`root` as the user would `cd` to it: relative to their shell's folder when inside it."""
    if cwd:
        relative = os.path.relpath(root, cwd)
        if not relative.startswith(os.pardir):
            return relative
    return str(root)


def next_steps(root: Path, context: dict) -> str:
    """What to type after the render, in the order it works in, a few lines. Commands are
    indented; they use `make` or the project's `.venv`, never a bare `python`."""
    slug = context["__package_slug"]
    drain = "make drain     # runs the worker until the source is empty; make serve: until Ctrl-C"
    lines = [
        f"Created {context['__project_name']}. Next:",
        f"  cd {where(root, os.environ.get('PWD'))}",
        "  git init       # before pre-commit install (and cruft), which need a repository",
        "  make install   # .venv with the project and its dev tools",
        "  make test      # ruff, mypy --strict and the tests",
    ]
    source = context["__source"]  # where qq.py's items come from: redis, spool or writer
    if source == "redis":
        job = json.dumps({"n": 1})
        lines += [
            "  docker compose up -d redis   # or redis-server: the jobs' Redis on 127.0.0.1:6379",
            f"  .venv/bin/python -m {slug}.qq submit '{job}'",
            f"  {drain}",
        ]
    elif source == "spool":
        lines += [f"  .venv/bin/python -m {slug}.qq submit 'a record'", f"  {drain}"]
    else:
        lines.append("  make drain     # run the sample jobs once; make serve serves until Ctrl-C")
    if context["include_aiocache"] and not context["include_redis_jobs"]:
        lines.append(
            "The cache is in memory; for Redis, docker compose up -d redis (or redis-server)"
            " serves one on 127.0.0.1:6379."
        )
    if context["include_redis_jobs"] or context["include_aiocache"]:
        lines.append("The tests start their own servers and skip those not installed.")
    lines.append(f"Then edit {slug}/qq.py and rewrite tests/test_qq.py, which tests its sample.")
    return "\n".join(lines)


def rendered_again(root: Path, context: dict) -> bool:
    """Whether this is cruft rendering the template again, for `cruft diff` or `cruft update`.

    cruft renders a project it has created again into a new `tempfile.TemporaryDirectory()`
    (a folder named "tmp" and 8 characters, right in the system's temporary folder), and its
    context records the template's commit (`_commit`), which plain cookiecutter's does not.
    """
    temporary = Path(tempfile.gettempdir()).resolve()
    return (
        "_commit" in context
        and root.parent.parent == temporary
        and re.fullmatch(r"tmp[a-z0-9_]{8}", root.parent.name) is not None
    )


def main() -> int:
    """Prune, validate, then print the next steps (after a first render only: not inside
    `cruft diff` or `cruft update`); return 1 if a check failed."""
    root = Path.cwd()
    select_license(root, CONTEXT)
    prune(root, CONTEXT)
    problems = validate(root)
    for problem in problems:
        print(f"ERROR: {problem}", file=sys.stderr)
    if problems:
        return 1
    if not rendered_again(root, CONTEXT):
        print(next_steps(root, CONTEXT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
