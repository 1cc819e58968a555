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
{% if cookiecutter.include_aiocache or cookiecutter.include_redis_jobs -%}
import ssl
{% endif -%}
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
        ("memory", "redis", "rediss", "memcached"),
        "memory://, redis://host:port/db, rediss://host:port/db or memcached://host:port",
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
# The Redis clients with a user and TLS settings: the settings' prefix -> the URL's field.
_REDIS_CLIENTS = {
{%- if cookiecutter.include_aiocache %}
    "cache": "cache_url",
{%- endif %}
{%- if cookiecutter.include_redis_jobs %}
    "jobs": "jobs_redis_url",
{%- endif %}
}
_TLS_FILES = [
    f"{client}_tls_{kind}_file" for client in _REDIS_CLIENTS for kind in ("ca", "cert", "key")
]
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
    # Redis' ACL user and its password (empty: the default user); no password in the URL.
    cache_username: str | None = None
    cache_password: SecretStr | None = None
    # TLS, with a rediss:// URL: the CA bundle that signed the server's certificate (empty:
    # the system's), this client's certificate and key, and whether the certificate must
    # name the URL's host.
    cache_tls_ca_file: str | None = None
    cache_tls_cert_file: str | None = None
    cache_tls_key_file: str | None = None
    cache_tls_check_hostname: bool = True
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
    # Redis' ACL user and its password (empty: the default user; docs/operations.md).
    jobs_username: str | None = None
    jobs_password: SecretStr | None = None
    # TLS, with a rediss:// URL: the CA bundle that signed the server's certificate (empty:
    # the system's), this client's certificate and key, and whether the certificate must
    # name the URL's host.
    jobs_tls_ca_file: str | None = None
    jobs_tls_cert_file: str | None = None
    jobs_tls_key_file: str | None = None
    jobs_tls_check_hostname: bool = True
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
    # Seconds a job's outcome (succeeded, failed, cancelled) is kept for `qq status`.
    jobs_status_ttl: int = Field(default=86_400, ge=1)
{%- endif %}
{%- if cookiecutter.include_aiocache or cookiecutter.include_redis_jobs %}

    @field_validator(*_SERVER_URLS)
    @classmethod
    def _server_url(cls, url: str, info: ValidationInfo) -> str:
        field = str(info.field_name)
        schemes, examples, secret_setting = _SERVER_URLS[field]
        _check_url(field.upper(), url, schemes, examples, secret_setting)
        return url

    @field_validator(*_TLS_FILES)
    @classmethod
    def _tls_file(cls, path: str | None) -> str | None:
        if path is not None:
            _check_readable(path)
        return path

    @model_validator(mode="after")
    def _redis_clients(self) -> Settings:
        for client, url_field in _REDIS_CLIENTS.items():
            _check_redis_client(self, client, url_field)
        return self
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


def _check_readable(path: str) -> None:
    """Raise ValueError unless `path` is a file this process can read."""
    if not Path(path).is_file():
        raise ValueError("no such file" if not Path(path).exists() else "not a file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"this user (uid {os.getuid()}) cannot read it")


def _check_redis_client(settings: Settings, client: str, url_field: str) -> None:
    """Raise ValueError, naming the variables, unless the user, password and TLS settings of
    `client` ("jobs", "cache") fit its URL and its TLS files load."""

    def name(part: str) -> str:
        return f"{ENV_PREFIX}{client.upper()}_{part.upper()}"

    url_name = ENV_PREFIX + url_field.upper()
    parts = urlsplit(getattr(settings, url_field))
    query = parse_qs(parts.query)
    user: str | None = getattr(settings, f"{client}_username")
    ca: str | None = getattr(settings, f"{client}_tls_ca_file")
    cert: str | None = getattr(settings, f"{client}_tls_cert_file")
    key: str | None = getattr(settings, f"{client}_tls_key_file")
    for option in query:
        if option.startswith("ssl_"):
            raise ValueError(f"{url_name} sets {option}: use the {name('tls_*')} settings")
    url_user = bool(parts.username) or "username" in query
    if url_user and user:
        raise ValueError(f"{url_name} names a user and {name('username')} is set: keep one")
    if (url_user or user) and not getattr(settings, f"{client}_password"):
        raise ValueError(f"a Redis user needs {name('password')} (any value for a nopass user)")
    tls = [part for part, path in (("tls_ca_file", ca), ("tls_cert_file", cert)) if path]
    tls += [] if getattr(settings, f"{client}_tls_check_hostname") else ["tls_check_hostname"]
    if (tls or key) and parts.scheme != "rediss":
        raise ValueError(
            f"{name((tls or ['tls_key_file'])[0])} is set but {url_name} is not rediss://: use "
            "rediss:// for TLS, or leave the TLS settings empty"
        )
    if bool(cert) != bool(key):
        raise ValueError(
            f"{name('tls_cert_file')} and {name('tls_key_file')}: give both (this client's "
            "certificate and its private key), or neither"
        )
    context = ssl.create_default_context()
    try:
        if ca:
            context.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise ValueError(f"{name('tls_ca_file')}={ca!r} holds no PEM certificate ({exc})") from None
    try:
        if cert:
            context.load_cert_chain(cert, key, password=_no_password)
    except (ssl.SSLError, _EncryptedKey) as exc:
        raise ValueError(
            f"{name('tls_cert_file')}={cert!r} and {name('tls_key_file')}={key!r} are not a "
            f"PEM certificate and its private key ({exc})"
        ) from None


class _EncryptedKey(Exception):
    """The private key asks for a password, which would be prompted for on the terminal."""


def _no_password() -> bytes:
    raise _EncryptedKey("the key is encrypted: give it unencrypted, kept in a secret store")
{%- endif %}


settings = load()
