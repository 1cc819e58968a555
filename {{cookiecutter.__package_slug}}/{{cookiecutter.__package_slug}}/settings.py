"""Settings, read from environment variables and `.env` files.

Each variable is a field name in capitals after {{ cookiecutter.__env_prefix }}.
`.env.example` lists them all with their defaults. The prefix is set here, on the final
class, so it is the same whatever features the project was rendered with; QuasiQueue's own
`QUASIQUEUE_*` variables are not read.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
{%- if cookiecutter.include_aiocache or cookiecutter.include_redis_jobs %}
from urllib.parse import parse_qs, urlsplit
{%- endif %}

from dotenv import dotenv_values
from pydantic import (
    Field,
{%- if cookiecutter.include_aiocache or cookiecutter.include_redis_jobs %}
    SecretStr,
{%- endif %}
    ValidationError,
{%- if cookiecutter.include_aiocache or cookiecutter.include_redis_jobs %}
    ValidationInfo,
    field_validator,
{%- endif %}
{%- if cookiecutter.include_redis_jobs %}
    model_validator,
{%- endif %}
)
from pydantic_settings import SettingsConfigDict

from .worker.settings import WorkerSettings

ENV_PREFIX = "{{ cookiecutter.__env_prefix }}"
# The `.env` files read, the later winning: the project's (next to pyproject.toml), then the
# current folder's. Environment variables win over both.
ENV_FILES = (Path(__file__).resolve().parents[1] / ".env", Path(".env"))
# What Kubernetes sets for a Service named like the project (the prefix, then SERVICE_HOST,
# PORT_9000_TCP, ...): not settings, and not misspelt ones either.
_SERVICE_LINK = re.compile(r"SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_\w+)?)?")
{%- if cookiecutter.include_aiocache or cookiecutter.include_redis_jobs %}
# The server URLs checked: field -> (schemes, the forms to use, where its password goes).
_SERVER_URLS = {
{%- if cookiecutter.include_aiocache %}
    "cache_url": (
        ("memory", "redis", "memcached"),
        "memory://, redis://host:port/db or memcached://host:port",
        "CACHE_PASSWORD",
    ),
{%- endif %}
{%- if cookiecutter.include_redis_jobs %}
    "jobs_redis_url": (
        ("redis", "rediss", "unix"),
        "redis://host:port/db, rediss://host:port/db or unix:///path",
        "JOBS_PASSWORD",
    ),
{%- endif %}
}
{%- endif %}


class Settings(WorkerSettings):
    """All settings of the worker: the runtime's (QuasiQueue's, with defaults tuned for this
    runner, and its own: `worker/settings.py`), and this project's."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=ENV_FILES,
        env_file_encoding="utf-8",
        extra="ignore",
        env_ignore_empty=True,
        validate_default=True,
    )

    # Names the worker: its logs, its processes and its metrics (<name>_items_started_total).
    project_name: str = Field(
        default="{{ cookiecutter.__package_slug }}",
        pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$",
    )
{%- if cookiecutter.include_aiocache %}

    # The cache (see docs/cache.md).
    cache_url: str = "memory://"
    cache_password: SecretStr | None = None
    cache_namespace: str = Field(
        default="{{ cookiecutter.__package_slug }}",
        pattern=r"^[A-Za-z0-9_.-]+$",
    )
    cache_ttl: int = Field(default=3600, ge=0)
    cache_enabled: bool = True
{%- endif %}
{%- if cookiecutter.include_spool %}

    # The spool folder source (see docs/spool.md).
    spool_root: str = "spool"
    # Failed deliveries of one batch before it goes to `<spool_root>/dead`.
    spool_max_attempts: int = Field(default=5, ge=1)
{%- endif %}
{%- if cookiecutter.include_redis_jobs %}

    # Jobs in a Redis stream (see docs/scaling.md).
    # Where the job stream lives; the password is kept out of the URL, logs and reprs.
    jobs_redis_url: str = "redis://127.0.0.1:6379/0"
    jobs_password: SecretStr | None = None
    # The stream; empty means "<project_name>:jobs". Dead letters go to "<stream>:dead".
    jobs_stream: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:{}@-]+$")
    jobs_group: str = Field(default="workers", pattern=r"^[A-Za-z0-9_.:{}@-]+$")
    # This instance's consumer name; empty means "<hostname>-<pid>" (new on each start).
    jobs_consumer: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:{}@-]+$")
    # Seconds a job may sit un-renewed in a consumer's pending list before another takes it.
    jobs_claim_idle: float = Field(default=60.0, ge=0.1)
    # Tries of one job (failures and deaths of its worker) before it goes to the dead letters.
    jobs_max_attempts: int = Field(default=3, ge=1)
    # The most dead letters kept (approximately; the oldest are trimmed).
    jobs_dead_maxlen: int = Field(default=100_000, ge=1)
    # Seconds a submit key is remembered: the same key is not added again within this time.
    jobs_key_ttl: int = Field(default=86_400, ge=1)
{%- endif %}
{%- if cookiecutter.include_aiocache or cookiecutter.include_redis_jobs %}

    @field_validator(*_SERVER_URLS)
    @classmethod
    def _server_url(cls, url: str, info: ValidationInfo) -> str:
        field = str(info.field_name)
        schemes, examples, secret_setting = _SERVER_URLS[field]
        _check_url(field.upper(), url, schemes, examples, secret_setting)
        return url
{%- endif %}
{%- if cookiecutter.include_redis_jobs %}

    @model_validator(mode="after")
    def _stream_outside_the_cache(self) -> Settings:
        stream = self.jobs_stream or f"{self.project_name}:jobs"
        if re.search(r"(^|:)cache(:|$)", stream):
            raise ValueError(
                f"{ENV_PREFIX}JOBS_STREAM {stream!r} has a 'cache' part: that key space is the"
                " cache's"
            )
        return self
{%- endif %}


def load() -> Settings:
    """The settings from the environment and the `.env` files. A bad value ends the program
    with one line per problem on stderr, naming the variable and the rule, and exit status 2.
    A variable with the prefix that is no setting (a misspelt one) gets a warning line."""
    for warning in unknown_variables(os.environ, ENV_FILES):
        print(f"warning: {warning}", file=sys.stderr)
    try:
        return Settings()
    except ValidationError as exc:
        for problem in problems(exc):
            print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def unknown_variables(environ: Mapping[str, str], env_files: tuple[Path, ...]) -> list[str]:
    """One line per variable with the prefix, in `environ` or `env_files`, that sets nothing:
    where it is and the closest real variable, if one is close."""
    known = [ENV_PREFIX + name.upper() for name in Settings.model_fields]
    found = dict.fromkeys(environ, "the environment")
    for path in dict.fromkeys(path.resolve() for path in env_files):
        if path.is_file():
            found.update(dict.fromkeys(dotenv_values(path), str(path)))
    lines = []
    for name, where in sorted(found.items()):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        if _SERVICE_LINK.fullmatch(upper.removeprefix(ENV_PREFIX)):
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.8)
        hint = f"did you mean {close[0]}?" if close else "see .env.example for the settings"
        lines.append(f"{name} (in {where}) is not a setting: {hint}")
    return lines


def problems(exc: ValidationError) -> list[str]:
    """One line per invalid setting: its variable, its value (unless it may hold a secret)
    and the rule it breaks."""
    lines = []
    for error in exc.errors():
        field = "_".join(str(part) for part in error["loc"]).upper()
        rule = error["msg"].removeprefix("Value error, ")
        if not field:  # a rule across settings: its text names them
            lines.append(rule)
            continue
        name = ENV_PREFIX + field
        secret = "PASSWORD" in name or "URL" in name
        shown = "" if secret else f"={error.get('input')!r}"
        lines.append(f"{name}{shown}: {rule}")
    return lines

{%- if cookiecutter.include_aiocache or cookiecutter.include_redis_jobs %}


def _check_url(
    setting: str, url: str, schemes: tuple[str, ...], examples: str, secret_setting: str
) -> None:
    """Raise ValueError, naming `setting` and never showing a password, unless `url` parses,
    has one of `schemes` and holds no password (that belongs in `secret_setting`). `examples`
    shows the right form, e.g. "redis://host:port/db or unix:///path"."""
    try:
        parts = urlsplit(url)
        if parts.port == 0:
            raise ValueError("port 0")
    except ValueError as exc:
        raise ValueError(f"{setting} is not a valid URL ({exc}): use {examples}") from None
    if parts.password or "password" in parse_qs(parts.query):
        raise ValueError(
            f"{setting} holds a password: move it to {secret_setting}, which is kept secret"
        )
    if parts.scheme not in schemes:
        raise ValueError(f"{setting} {url!r} has scheme {parts.scheme!r}: use {examples}")
    database = parts.path.strip("/")
    if parts.scheme in ("redis", "rediss") and database and not database.isdigit():
        raise ValueError(f"{setting} {url!r} names database {database!r}: use a number")
{%- endif %}


settings = load()
