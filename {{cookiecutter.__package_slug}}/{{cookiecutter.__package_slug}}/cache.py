"""The cache: opened once in each worker process (in `context`), never in the parent.

`open_cache(settings)` builds an aiocache backend from `CACHE_URL` (`memory://`,
`redis://host:port/db`, `rediss://` for TLS, `memcached://host:port`) and yields a `Cache`.
Its calls fail soft: when the server is down they log a warning and behave as a miss, so the
worker keeps processing items. Values are pickled, so any picklable value (datetimes, dataclasses)
round-trips; only let trusted code write to the cache server. docs/cache.md has the details.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import re
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from aiocache import Cache as Backends
from aiocache.serializers import PickleSerializer
from redis.asyncio import BlockingConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .settings import ENV_PREFIX, Settings
from .worker.remote import Outage

logger = logging.getLogger(__name__)

# aiocache 0.12.3 calls two redis-py methods that redis-py 5 deprecated; the calls still work.
for _message in (
    "Call to deprecated close. (Use aclose() instead) -- Deprecated since version 5.0.1.",
    "Call to deprecated setex. (Use 'set' instead.) -- Deprecated since version 2.6.12.",
):
    warnings.filterwarnings("ignore", message=re.escape(_message), category=DeprecationWarning)

R = TypeVar("R")
OPERATION_TIMEOUT = 1.0  # seconds a cache call may take before it counts as failed
# Connections to Redis one process opens at most; a call waits for a free one (within its
# OPERATION_TIMEOUT) rather than open one per reader slot: an async reader may run thousands.
REDIS_POOL_SIZE = 32
# What a server that is down or slow raises; any other error is the caller's and is raised.
UNAVAILABLE = (OSError, TimeoutError, RedisConnectionError, RedisTimeoutError)
# memcached keys: at most 250 bytes, no spaces or control characters (aiocache would turn
# spaces into "_", so "a b" and "a_b" would share a value). Other keys are hashed.
_MEMCACHED_KEY = re.compile(r"[!-~]{1,200}")

_current: Cache | None = None  # the cache of this process, set by open_cache


class CacheError(Exception):
    """A cache URL or operation the cache cannot serve."""


class Cache:
    """A namespaced cache whose calls never raise when the server is unavailable.

    On Redis its keys are `<CACHE_NAMESPACE>:cache:<key>`, a prefix no job source uses, so a
    cache and a job stream can share one Redis database and `clear()` never touches the jobs.
    On memcached a key that memcached cannot hold (spaces, over 200 characters) is stored
    under its SHA-256.
    """

    def __init__(self, backend: Any, url: str, namespace: str, ttl: int | None) -> None:
        self._backend = backend
        self.url = url
        self.namespace = namespace
        self.ttl = ttl
        self._outage = Outage(f"cache {url}", logger)
        self._memcached = url.startswith("memcached")

    def __repr__(self) -> str:
        return f"Cache(url={self.url!r}, namespace={self.namespace!r}, ttl={self.ttl!r})"

    @property
    def enabled(self) -> bool:
        """False when CACHE_ENABLED is off: every call is then a no-op miss."""
        return self._backend is not None

    async def get(self, key: str, default: Any = None) -> Any:
        """Return the value under `key`, or `default` when missing or unreachable."""
        return await self._call("get", default, self._key(key), default=default)

    async def set(self, key: str, value: Any, ttl: int | None = None) -> bool:
        """Store `value` for `ttl` seconds (None: CACHE_TTL; 0: no expiry); False if not
        stored. Raises TypeError for a `ttl` that is not a whole number of seconds >= 0."""
        _check_ttl(ttl)
        seconds = self.ttl if ttl is None else (ttl or None)
        return bool(await self._call("set", False, self._key(key), value, ttl=seconds))

    async def delete(self, key: str) -> bool:
        """Remove `key`; False if it was not there or the server is unreachable."""
        return bool(await self._call("delete", False, self._key(key)))

    async def clear(self) -> bool:
        """Remove every key of this namespace, and nothing else."""
        if self._backend is None:
            return False
        if self._memcached:
            raise CacheError(
                "memcached cannot clear one namespace without flushing the whole server: "
                f"let the keys expire ({ENV_PREFIX}CACHE_TTL) or use Redis"
            )
        return bool(await self._call("clear", False, namespace=self.namespace))

    async def close(self) -> None:
        """Close the backend's connections."""
        if self._backend is not None:
            with suppress(*UNAVAILABLE):
                await self._backend.close()

    def _key(self, key: str) -> str:
        if self._memcached and not _MEMCACHED_KEY.fullmatch(key):
            return "sha256-" + hashlib.sha256(key.encode()).hexdigest()
        return key

    async def _call(self, operation: str, fallback: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one backend call; a server that is down or slow makes it return `fallback`."""
        if self._backend is None:
            return fallback
        try:
            result = await getattr(self._backend, operation)(*args, **kwargs)
        except UNAVAILABLE as exc:
            self._outage.failed(exc, f"cache {operation} failed, carrying on without it")
            return fallback
        if self._outage.down_since is not None:
            self._outage.ok()
        return result


def namespace_of(settings: Settings) -> str:
    """The prefix of every cache key: `<CACHE_NAMESPACE>:cache` (aiocache adds the colon)."""
    return f"{settings.cache_namespace}:cache"


def _backend(settings: Settings) -> Any:
    url = urlsplit(settings.cache_url)  # `Settings` checked it
    common: dict[str, Any] = {
        "namespace": namespace_of(settings),
        "serializer": PickleSerializer(),
        "timeout": OPERATION_TIMEOUT,
    }
    password = settings.cache_password.get_secret_value() if settings.cache_password else None
    if url.scheme == "memory":
        return Backends(Backends.MEMORY, **common)
    if url.scheme in ("redis", "rediss"):
        db = int(url.path.strip("/") or 0)
        host, port = url.hostname or "127.0.0.1", url.port or 6379
        return Backends(
            Backends.REDIS,
            endpoint=host,
            port=port,
            db=db,
            password=password,
            pool_max_size=REDIS_POOL_SIZE,
            connection_pool_class=BlockingConnectionPool,
            ssl=url.scheme == "rediss",
            connection_pool_kwargs=_redis_options(settings),
            **common,
        )
    if url.scheme == "memcached":
        host, port = url.hostname or "127.0.0.1", url.port or 11211
        return Backends(Backends.MEMCACHED, endpoint=host, port=port, **common)
    raise CacheError(
        f"CACHE_URL {settings.cache_url!r} has scheme {url.scheme!r}: "
        "use memory://, redis://host:port/db, rediss://host:port/db or memcached://host:port"
    )


def _redis_options(settings: Settings) -> dict[str, Any]:
    """The ACL user (from CACHE_USERNAME or the URL) and, for rediss://, the TLS settings
    (`Settings` checked that they fit the URL and that the files load)."""
    url = urlsplit(settings.cache_url)
    user = settings.cache_username or (unquote(url.username) if url.username else None)
    options: dict[str, Any] = {"username": user}
    if url.scheme == "rediss":
        options |= {
            "ssl_ca_certs": settings.cache_tls_ca_file,
            "ssl_certfile": settings.cache_tls_cert_file,
            "ssl_keyfile": settings.cache_tls_key_file,
            "ssl_check_hostname": settings.cache_tls_check_hostname,
        }
    return options


@asynccontextmanager
async def open_cache(settings: Settings) -> AsyncIterator[Cache]:
    """Open this process's cache, make it the current one, and close it on exit."""
    global _current
    backend = _backend(settings) if settings.cache_enabled else None
    namespace = namespace_of(settings)
    cache = Cache(backend, settings.cache_url, namespace, settings.cache_ttl or None)
    previous, _current = _current, cache
    try:
        yield cache
    finally:
        _current = previous
        await cache.close()


def current() -> Cache:
    """The cache opened by this process's context; raises in a process that has none."""
    if _current is None:
        raise CacheError("no cache is open in this process: open it in context() with open_cache")
    return _current


async def get(key: str, default: Any = None) -> Any:
    """`current().get(...)`."""
    return await current().get(key, default)


async def set(key: str, value: Any, ttl: int | None = None) -> bool:
    """`current().set(...)`."""
    return await current().set(key, value, ttl)


async def delete(key: str) -> bool:
    """`current().delete(...)`."""
    return await current().delete(key)


def cached(
    ttl: int | None = None,
) -> Callable[[Callable[..., Awaitable[R]]], Callable[..., Awaitable[R]]]:
    """Cache an async function's results in the current cache, keyed by its arguments
    (`@cached()` or `@cached(ttl=60)`; `ttl` as for `Cache.set`)."""
    if callable(ttl):
        raise TypeError(f"write @cached() with parentheses, not @cached (on {ttl!r})")
    _check_ttl(ttl)

    def decorate(function: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
        if not inspect.iscoroutinefunction(function):
            raise TypeError(f"cached() needs an async function, got {function!r}")
        name = f"{function.__module__}.{function.__qualname__}"
        missing = object()

        @functools.wraps(function)
        async def wrapper(*args: Any, **kwargs: Any) -> R:
            cache = current()
            key = f"{name}:{args!r}:{sorted(kwargs.items())!r}"
            value = await cache.get(key, missing)
            if value is missing:
                value = await function(*args, **kwargs)
                await cache.set(key, value, ttl)
            return value  # type: ignore[no-any-return]

        return wrapper

    return decorate


def _check_ttl(ttl: object) -> None:
    """Raise TypeError unless `ttl` is None or a whole number of seconds >= 0."""
    if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or ttl < 0):
        raise TypeError(f"ttl {ttl!r} must be None or a whole number of seconds >= 0")
