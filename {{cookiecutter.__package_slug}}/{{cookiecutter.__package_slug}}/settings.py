"""Settings, read from environment variables and a `.env` file.

Each variable is a field name in capitals after {{ cookiecutter.__env_prefix }}.
`.env.example` lists them all with their defaults. The prefix is set here, on the final
class, so it is the same whatever features the project was rendered with; QuasiQueue's own
`QUASIQUEUE_*` variables are not read.
"""

from __future__ import annotations

{% if cookiecutter.include_redis_jobs -%}
import re
{% endif -%}
import sys
from typing import Literal
{%- if cookiecutter.include_aiocache or cookiecutter.include_redis_jobs %}
from urllib.parse import parse_qs, urlsplit
{%- endif %}

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
from quasiqueue import Settings as QuasiQueueSettings

ENV_PREFIX = "{{ cookiecutter.__env_prefix }}"
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


class Settings(QuasiQueueSettings):
    """All settings of the worker: QuasiQueue's, with defaults tuned for this runner, and ours."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        env_ignore_empty=True,
        validate_default=True,
    )

    project_name: str = "{{ cookiecutter.__package_slug }}"
    log_level: str = Field(default="INFO", pattern="^(?i:debug|info|warning|error|critical)$")
    log_format: Literal["text", "json"] = "text"

    # QuasiQueue's settings, with the defaults this runner is tuned for (see .env.example).
    num_processes: int = Field(default=2, ge=1)
    max_queue_size: int = Field(default=1000, ge=1)
    lookup_block_size: int = Field(default=250, ge=1)
    # Reader slots per process of an async reader: 0 (default) adapts them to the work, from
    # 16 up to MAX_CONCURRENT_TASKS_PER_PROCESS; a number fixes them (docs/worker.md).
    concurrent_tasks_per_process: int = Field(default=0, ge=0)
    max_concurrent_tasks_per_process: int = Field(default=5000, ge=1)
    max_jobs_per_process: int | None = Field(default=10_000, ge=0)
    empty_queue_sleep_time: float = Field(default=0.5, gt=0)
    graceful_shutdown_timeout: float = Field(default=30.0, ge=0)
    prevent_requeuing_time: float = Field(default=300.0, ge=0)

    # Prometheus metrics on http://METRICS_HOST:METRICS_PORT/metrics; port 0: off.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    # Retries of a failing reader call, inside the worker process.
    max_retries: int = Field(default=0, ge=0, le=1000)
    retry_backoff: float = Field(default=0.5, ge=0)
    retry_backoff_max: float = Field(default=30.0, ge=0)
    # Seconds one reader call may take; 0: no limit. An async reader is cancelled, a sync
    # reader's process is killed and replaced; the item fails with a timeout error.
    reader_timeout: float = Field(default=0.0, ge=0)

    # Durable sources (spool, Redis): the most items this instance holds that have not
    # started, its processes' read-ahead (2 per reader slot) included; 0: that read-ahead
    # plus one fetch (LOOKUP_BLOCK_SIZE).
    max_unstarted: int = Field(default=0, ge=0)
    # Seconds `drain` waits for an unreachable source before it exits 2.
    source_connect_timeout: float = Field(default=10.0, gt=0)
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
    """The settings from the environment and `.env`. A bad value ends the program with one
    line per problem on stderr, naming the variable and the rule, and exit status 2."""
    try:
        return Settings()
    except ValidationError as exc:
        for problem in problems(exc):
            print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None


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
