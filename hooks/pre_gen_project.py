"""Pre-generation hook: reject answers that would render a broken project.

Runs before any file is written; on failure cookiecutter removes the output directory.
Values arrive as JSON data (`tojson`), never pasted into this source, so a crafted answer
cannot run code here. Each rejection is one line naming the value and the rule.
"""

from __future__ import annotations

import json
import keyword
import re
import sys

CONTEXT = json.loads(r"""{{ cookiecutter | tojson }}""")

MAX_NAME_LENGTH = 40
LICENSES = ("MIT", "Apache-2.0", "BSD-3-Clause", "GPL-3.0-only", "Proprietary")
PYTHON_VERSIONS = ("3.11", "3.12", "3.13", "3.14")
# Import names the rendered project depends on or creates: a package of the same name would
# shadow them.
TAKEN = frozenset(
    {
        "quasiqueue",
        "pydantic",
        "pydantic_core",
        "pydantic_settings",
        "typer",
        "click",
        "psutil",
        "redis",
        "tqdm",
        "hypothesis",
        "pytest",
        "mypy",
        "ruff",
        "setuptools",
        "pip",
        "packaging",
        "dotenv",
        "cruft",
        "cookiecutter",
        "tests",
        "test",
        "bench",
        "tools",
        "docs",
        "build",
        "dist",
        "worker",
    }
)
# Import names only a feature depends on: a project of such a name renders without it, not
# with it (the supported and unsupported combinations of tests/test_hooks.py).
FEATURE_TAKEN = {
    "include_aiocache": frozenset({"aiocache", "aiomcache"}),
    "include_streaming_io": frozenset({"boto3", "botocore", "moto", "s3transfer"}),
    "include_tracing": frozenset({"opentelemetry"}),
}
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*")
NAME_RULE = "use ASCII letters, digits, spaces, '-' or '_', starting with a letter"
UNRENDERED = re.compile(r"\x7b[\x7b%]")  # an opening Jinja tag


class Rejected(ValueError):
    """An answer the template cannot render."""


def check(context: dict) -> None:
    """Raise Rejected with a one-line message for the first answer that breaks a rule."""
    for key, value in context.items():
        if key.startswith("__") and isinstance(value, str) and UNRENDERED.search(value):
            raise Rejected(
                f"private variable {key} was not rendered ({value!r}): "
                "this template needs cookiecutter >= 2.2; upgrade it (pip install -U cookiecutter)"
            )
    name = context["project_name"].strip()  # the render uses it trimmed (__project_name)
    slug = context["__package_slug"]
    if not name:
        raise Rejected("project_name is empty: give the project a name, e.g. 'My Worker'")
    if len(name) > MAX_NAME_LENGTH:
        raise Rejected(
            f"project_name {name[:20]!r}... is {len(name)} characters long: "
            f"the limit is {MAX_NAME_LENGTH}"
        )
    if "/" in name or "\\" in name:
        raise Rejected(f"project_name {name!r} contains a slash: {NAME_RULE}")
    if not IDENTIFIER.fullmatch(slug):
        if not slug.isascii():
            what = "is not ASCII"
        elif not slug.isidentifier():
            what = "is not a Python identifier"
        else:
            what = "does not start with a letter"
        raise Rejected(
            f"project_name {name!r} gives the package name {slug!r}, which {what}: {NAME_RULE}"
        )
    if keyword.iskeyword(slug) or keyword.issoftkeyword(slug):
        raise Rejected(f"project_name {name!r} gives the package name {slug!r}, a Python keyword")
    if slug in sys.stdlib_module_names:
        raise Rejected(
            f"project_name {name!r} gives the package name {slug!r}, which would shadow the "
            "standard-library module of that name: choose another name"
        )
    if slug in TAKEN:
        raise Rejected(
            f"project_name {name!r} gives the package name {slug!r}, which would shadow a "
            "package the project depends on or a folder it creates: choose another name"
        )
    for feature, names in FEATURE_TAKEN.items():
        if context[feature] is True and slug in names:
            raise Rejected(
                f"project_name {name!r} gives the package name {slug!r}, which would shadow a "
                f"package {feature} needs: choose another name, or answer no to {feature}"
            )
    email = context["author_email"]
    if not EMAIL.fullmatch(email):
        raise Rejected(f"author_email {email!r} is not an email address like name@example.com")
    for field in ("description", "author_name"):
        if "\n" in context[field] or "\r" in context[field]:
            raise Rejected(f"{field} {context[field]!r} spans several lines: keep it to one line")
    if context["license"] not in LICENSES:
        raise Rejected(f"license {context['license']!r} is not one of {', '.join(LICENSES)}")
    if context["python_version"] not in PYTHON_VERSIONS:
        raise Rejected(
            f"python_version {context['python_version']!r} is not one of "
            f"{', '.join(PYTHON_VERSIONS)}"
        )
    for feature in (key for key in context if key.startswith("include_")):
        if not isinstance(context[feature], bool):
            raise Rejected(f"{feature} {context[feature]!r} is not a yes/no answer (true or false)")


def main() -> int:
    """Check the answers; print the rejection and return 1 if one breaks a rule."""
    try:
        check(CONTEXT)
    except Rejected as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
