"""The cache against real servers: round trips, namespaces, per-process wiring, outages."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import pickle
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from servers import Server, certificates, running
from support import Journal, fast_settings, free_port, writer_over

from {{ cookiecutter.__package_slug }} import cache as cache_module
from {{ cookiecutter.__package_slug }}.cache import Cache, CacheError, cached, open_cache
from {{ cookiecutter.__package_slug }}.settings import Settings
from {{ cookiecutter.__package_slug }}.worker import Worker


@dataclass
class Point:
    x: int
    at: datetime.datetime


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running("redis", tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def memcached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running("memcached", tmp_path_factory.mktemp("memcached")) as server:
        yield server


def cache_settings(url: str, **overrides: Any) -> Settings:
    return fast_settings(cache_url=url, **overrides)


@pytest.fixture(params=["memory", "redis", "memcached"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    server: Server = request.getfixturevalue(request.param)
    return f"{request.param}://127.0.0.1:{server.port}" + ("/0" if request.param == "redis" else "")


async def test_values_round_trip(url: str) -> None:
    value = {"point": Point(3, datetime.datetime(2026, 1, 2, 3, 4, 5)), "tags": ("a", "b")}
    async with open_cache(cache_settings(url, cache_namespace=f"rt{os.getpid()}")) as cache:
        assert await cache.set("key", value)
        assert await cache.get("key") == value
        assert await cache.delete("key")
        assert await cache.get("key", "gone") == "gone"


async def test_ttl_expires_values(url: str) -> None:
    async with open_cache(cache_settings(url, cache_namespace="ttl")) as cache:
        assert await cache.set("short", 1, ttl=1)
        assert await cache.set("long", 2)
        deadline = asyncio.get_running_loop().time() + 5
        while await cache.get("short") is not None:
            assert asyncio.get_running_loop().time() < deadline, "value outlived its TTL"
            await asyncio.sleep(0.05)
        assert await cache.get("long") == 2


async def test_clearing_one_namespace_keeps_the_other(redis: Server) -> None:
    url = f"redis://127.0.0.1:{redis.port}/0"
    async with (
        open_cache(cache_settings(url, cache_namespace="one")) as one,
        open_cache(cache_settings(url, cache_namespace="two")) as two,
    ):
        await one.set("k", "from one")
        await two.set("k", "from two")
        assert await one.clear()
        assert await one.get("k") is None
        assert await two.get("k") == "from two"

{%- if cookiecutter.include_redis_jobs %}


async def test_clearing_the_cache_keeps_the_jobs_in_the_same_database(redis: Server) -> None:
    from {{ cookiecutter.__package_slug }}.sources import redis_jobs

    url = f"redis://127.0.0.1:{redis.port}/0"
    # Default names: the cache namespace and the job stream both start with the package name.
    settings = cache_settings(url, jobs_redis_url=url)
    stream = redis_jobs.stream_name(settings)
    with redis_jobs.Jobs(settings) as jobs:
        jobs.submit_many(range(5))
        jobs.client.xgroup_create(stream, settings.jobs_group, id="0")
        jobs.client.xreadgroup(settings.jobs_group, "c", {stream: ">"}, count=2)
        async with open_cache(settings) as cache:
            assert await cache.set("k", "v")
            assert await cache.clear()
            assert await cache.get("k") is None
        assert jobs.stats() == redis_jobs.JobStats(stream, waiting=3, pending=2, dead=0)
        assert jobs.client.xlen(stream) == 5
        jobs.client.delete(stream)
{%- endif %}


async def test_keys_that_differ_stay_apart(url: str) -> None:
    calls: list[str] = []

    @cached(ttl=60)
    async def echo(text: str) -> str:
        calls.append(text)
        return text

    async with open_cache(cache_settings(url, cache_namespace=f"keys{os.getpid()}")) as cache:
        # memcached cannot hold spaces or long keys; aiocache would map "a b" to "a_b"
        for key in ("a b", "a_b", "x" * 300, "x" * 301):
            assert await cache.set(key, key)
        for key in ("a b", "a_b", "x" * 300, "x" * 301):
            assert await cache.get(key) == key
        assert [await echo("a b"), await echo("a_b"), await echo("a b")] == ["a b", "a_b", "a b"]
        assert calls == ["a b", "a_b"]
        assert await cache.delete("a b")
        assert await cache.get("a_b") == "a_b"


async def test_a_mistake_in_the_call_raises_and_is_not_an_outage(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_cache(cache_settings(url, cache_namespace="mistakes")) as cache:
        with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
            await cache.set("k", lambda: 1)  # cannot be pickled
        with pytest.raises(TypeError, match="ttl -1 must be None or a whole number"):
            await cache.set("k", 1, ttl=-1)
        assert await cache.set("forever", 1, ttl=0)  # 0: no expiry
        assert await cache.get("forever") == 1
    assert "carrying on without it" not in caplog.text
    assert "reachable again" not in caplog.text


async def test_a_server_never_reached_is_never_reported_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with open_cache(cache_settings(f"redis://127.0.0.1:{free_port()}/0")) as cache:
        assert await cache.set("k", 1) is False
        assert await cache.get("k", "miss") == "miss"
    assert "cache set failed, carrying on without it" in caplog.text
    assert "reachable again" not in caplog.text


def test_cached_refuses_what_it_cannot_cache() -> None:
    async def fetch(n: int) -> int:
        return n

    def blocking(n: int) -> int:
        return n

    with pytest.raises(TypeError, match=r"write @cached\(\) with parentheses"):
        cached(fetch)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ttl '60' must be None or a whole number"):
        cached(ttl="60")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ttl -5 must be None"):
        cached(ttl=-5)
    with pytest.raises(TypeError, match=r"cached\(\) needs an async function"):
        cached()(blocking)  # type: ignore[arg-type]


async def test_an_inner_cache_gives_the_outer_one_back() -> None:
    async with open_cache(fast_settings(cache_namespace="outer")) as outer:
        async with open_cache(fast_settings(cache_namespace="inner")) as inner:
            assert cache_module.current() is inner
        assert cache_module.current() is outer
    with pytest.raises(CacheError, match="no cache is open"):
        cache_module.current()


async def test_memcached_refuses_to_clear_the_whole_server(memcached: Server) -> None:
    async with open_cache(cache_settings(f"memcached://127.0.0.1:{memcached.port}")) as cache:
        with pytest.raises(CacheError, match="cannot clear one namespace"):
            await cache.clear()


async def test_disabled_cache_is_a_no_op() -> None:
    for url in ("memory://", "memcached://127.0.0.1:1"):
        async with open_cache(fast_settings(cache_url=url, cache_enabled=False)) as cache:
            assert not cache.enabled
            assert await cache.set("k", 1) is False
            assert await cache.get("k", "miss") == "miss"
            assert await cache.clear() is False


async def test_redis_over_tls_with_a_client_certificate_and_an_acl_user(tmp_path: Path) -> None:
    """As docs/cache.md says: rediss://, the CA, a client certificate the server requires,
    and a user limited to the namespace's keys and the commands the cache sends."""
    import redis as redis_py

    certs = certificates(tmp_path)
    tls = {"cache_tls_ca_file": str(certs.ca)}
    client_cert = {
        "cache_tls_cert_file": str(certs.client_cert),
        "cache_tls_key_file": str(certs.client_key),
    }
    mutual = ["--tls-auth-clients", "yes"]
    with running("redis", tmp_path, tls=certs, extra_args=mutual) as server:
        url = f"rediss://localhost:{server.port}/0"
        # The ACL of docs/cache.md.
        rules = ["on", ">secret", "~tls:cache:*", "-@all", "+get", "+set", "+setex", "+psetex"]
        rules += ["+del", "+keys"]
        with redis_py.Redis.from_url(
            url, ssl_ca_certs=str(certs.ca), ssl_certfile=str(certs.client_cert),
            ssl_keyfile=str(certs.client_key),
        ) as admin:  # fmt: skip
            admin.execute_command("ACL", "SETUSER", "cache", *rules)
            admin.set("other:key", "kept")
        user = {"cache_username": "cache", "cache_password": "secret", "cache_namespace": "tls"}
        settings = cache_settings(url, **tls, **client_cert, **user)
        async with open_cache(settings) as cache:
            assert await cache.set("k", {"v": 1})
            assert await cache.set("t", 2, ttl=60)
            assert await cache.get("k") == {"v": 1}
            assert await cache.delete("t")
            assert await cache.clear()
            assert await cache.get("k", "miss") == "miss"
            assert not cache._outage.down_since  # no call failed: none acted as a miss
        with redis_py.Redis.from_url(
            url, ssl_ca_certs=str(certs.ca), ssl_certfile=str(certs.client_cert),
            ssl_keyfile=str(certs.client_key),
        ) as admin:  # fmt: skip
            assert admin.get("other:key") == b"kept"
        # Without the client certificate the server ends the handshake: calls act as misses.
        async with open_cache(cache_settings(url, **tls, **user)) as cache:
            assert await cache.set("k", 1) is False
            assert cache._outage.down_since is not None
    with pytest.raises(ValidationError, match="is not rediss://"):
        cache_settings(f"redis://localhost:{server.port}/0", **tls)
    with pytest.raises(ValidationError, match="give both"):
        cache_settings(url, cache_tls_cert_file=str(certs.client_cert))


def test_password_stays_secret() -> None:
    settings = fast_settings(cache_url="redis://127.0.0.1:1/0", cache_password="hunter2")
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in repr(Cache(None, settings.cache_url, "ns", None))
    with pytest.raises(ValidationError, match="move it to CACHE_PASSWORD"):
        fast_settings(cache_url="redis://:hunter2@127.0.0.1:1/0")
    with pytest.raises(ValidationError, match="has scheme 'http'"):
        fast_settings(cache_url="http://example")


async def test_cached_decorator_and_module_helpers() -> None:
    calls: list[int] = []

    @cached(ttl=60)
    async def square(n: int) -> int:
        calls.append(n)
        return n * n

    with pytest.raises(CacheError, match="no cache is open in this process"):
        await square(2)
    async with open_cache(fast_settings()):
        assert [await square(3), await square(3), await square(4)] == [9, 9, 16]
        assert await cache_module.set("k", "v")
        assert await cache_module.get("k") == "v"
        assert await cache_module.delete("k")
    assert calls == [3, 4]


def redis_worker(url: str, journal: Journal, log: Path, kill: Server | None = None) -> Worker:
    async def context(settings: Settings) -> AsyncIterator[Cache]:
        handler = logging.FileHandler(log)
        logging.getLogger(cache_module.__name__).addHandler(handler)
        async with open_cache(settings) as cache:
            yield cache

    async def reader(item: int, ctx: Cache) -> None:
        if kill is not None and item == 100:
            os.kill(kill.pid, signal.SIGKILL)
        stored = await ctx.set(f"item-{item}", item * 2)
        journal.add(item, stored, os.getpid())

    settings = cache_settings(url, cache_namespace="drain")
    writer = writer_over(range(300))
    return Worker("t", reader=reader, writer=writer, context=context, settings=settings)


async def test_readers_in_worker_processes_fill_the_cache_the_parent_reads(
    redis: Server, journal: Journal, tmp_path: Path
) -> None:
    url = f"redis://127.0.0.1:{redis.port}/0"
    summary = await redis_worker(url, journal, tmp_path / "cache.log").drain()

    assert summary.succeeded == 300
    assert len(journal.column(2)) == 2  # two worker processes, each with its own cache
    async with open_cache(cache_settings(url, cache_namespace="drain")) as cache:
        values = [await cache.get(f"item-{n}") for n in range(300)]
    assert values == [n * 2 for n in range(300)]


async def test_redis_killed_mid_drain_fails_soft(tmp_path: Path, journal: Journal) -> None:
    log = tmp_path / "cache.log"
    with running("redis", tmp_path) as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        summary = await redis_worker(url, journal, log, kill=server).drain()

    assert (summary.succeeded, summary.failed) == (300, 0)
    stored = journal.column(1)
    assert stored["False"] > 0  # calls after the kill failed soft
    assert sum(stored.values()) == 300
    assert "cache set failed" in log.read_text()
