"""How every client of the jobs stream reaches Redis (`connect`, `connect_async`): the URL,
the ACL user and TLS, from the settings; and what a failed call means, in one line that names
the setting to check (`explain`)."""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ...settings import ENV_PREFIX, Settings

SOCKET_TIMEOUT = 10.0  # seconds a Redis call may take before it counts as failed
CONNECT_TIMEOUT = 2.0  # seconds to connect (and, with TLS, finish the handshake)


def _options(settings: Settings, decode: bool) -> dict[str, Any]:
    """What every client of the stream connects with. `Settings` checked that the user,
    the password and the TLS settings fit the URL, and that the TLS files load."""
    password = settings.jobs_password.get_secret_value() if settings.jobs_password else None
    options: dict[str, Any] = {
        "username": settings.jobs_username,  # None: the URL's user, if it names one
        "password": password,
        "decode_responses": decode,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": SOCKET_TIMEOUT,
    }
    if urlsplit(settings.jobs_redis_url).scheme == "rediss":
        options |= {
            "ssl_ca_certs": settings.jobs_tls_ca_file,  # None: the system's CAs
            "ssl_certfile": settings.jobs_tls_cert_file,
            "ssl_keyfile": settings.jobs_tls_key_file,
            "ssl_check_hostname": settings.jobs_tls_check_hostname,
        }
    return options


# No silent resends: a resent script could run twice. Callers retry where it is safe. Each
# client gets the `Retry` of its own kind (redis-py 8.2 warns about a sync one on asyncio).
# Entries are read with `decode=False`: any program can XADD, and a field that is not UTF-8
# is that entry's problem, never the whole reply's.
def connect(settings: Settings, *, decode: bool = True) -> redis.Redis:
    """A blocking Redis client for the jobs stream (for submitters)."""
    options = _options(settings, decode)
    return redis.Redis.from_url(settings.jobs_redis_url, retry=Retry(NoBackoff(), 0), **options)


def connect_async(settings: Settings, *, decode: bool = True) -> aioredis.Redis:
    """An asyncio Redis client for the jobs stream; open it in the process that uses it."""
    options = _options(settings, decode)
    retry = AsyncRetry(NoBackoff(), 0)
    return aioredis.Redis.from_url(settings.jobs_redis_url, retry=retry, **options)


def where(settings: Settings) -> str:
    """How messages name the jobs' Redis: its URL (never with a password) and its variable."""
    return f"Redis at {settings.jobs_redis_url} ({ENV_PREFIX}JOBS_REDIS_URL)"


def explain(settings: Settings, exc: BaseException) -> str:
    """`exc`, raised by a call to the jobs' Redis, in one line; with what to check when the
    cause is a setting (the TLS files, the host name, the user and its password)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    hint = _hint(settings, exc, text)
    return f"{text} ({hint})" if hint else text


def refused(exc: BaseException) -> bool:
    """True when Redis' ACL refused a command, or a key, to the user (also in a script)."""
    text = str(exc)
    return isinstance(exc, NoPermissionError) or text.startswith(
        ("NOPERM", "The user executing the script can't")
    )


def _hint(settings: Settings, exc: BaseException, text: str) -> str | None:
    p = ENV_PREFIX
    if refused(exc):
        return f"the user {p}JOBS_USERNAME may not do this: give it the ACL in docs/operations.md"
    if isinstance(exc, AuthenticationError) or text.startswith(("WRONGPASS", "NOAUTH")):
        return f"check {p}JOBS_USERNAME and {p}JOBS_PASSWORD"
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        if "mismatch" in str(cause.verify_message):
            return (
                f"the server's certificate does not name the host in {p}JOBS_REDIS_URL: use a "
                f"name it has, or set {p}JOBS_TLS_CHECK_HOSTNAME=false"
            )
        if settings.jobs_tls_ca_file:
            return (
                f"the server's certificate is not signed by a CA in {p}JOBS_TLS_CA_FILE="
                f"{settings.jobs_tls_ca_file}"
            )
        return (
            "the server's certificate is not signed by a CA this system trusts: set "
            f"{p}JOBS_TLS_CA_FILE to the CA bundle that signed it"
        )
    tls = urlsplit(settings.jobs_redis_url).scheme == "rediss"
    if tls and isinstance(cause, ssl.SSLError | ConnectionResetError):
        if settings.jobs_tls_cert_file:
            return (
                "the server ended the TLS connection: does it accept the client certificate "
                f"in {p}JOBS_TLS_CERT_FILE?"
            )
        return (
            "the server ended the TLS connection: if it asks for a client certificate, set "
            f"{p}JOBS_TLS_CERT_FILE and {p}JOBS_TLS_KEY_FILE"
        )
    if tls and isinstance(exc, RedisTimeoutError) and text.startswith("Timeout connecting"):
        return f"rediss:// needs the server's TLS port: is that the port in {p}JOBS_REDIS_URL?"
    if not tls and isinstance(cause, ConnectionResetError):
        return f"if that port is the server's TLS port, use rediss:// in {p}JOBS_REDIS_URL"
    return None
