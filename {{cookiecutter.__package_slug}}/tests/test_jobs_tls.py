"""Redis jobs on a Redis run as in production: TLS only (`--port 0 --tls-port`), certificates
made here (trustme), a client certificate the server may require, and an ACL user that may
touch only the project's keys, with the ACL line of docs/operations.md.

The commands run as users run them (`python -m {{ cookiecutter.__package_slug }}.qq ...`,
settings from the environment); the worker also runs in this process (`Worker.drain`) for
failures, retries, delays and dead letters."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from jobs_support import PROJECT, jobs_worker, new_stream, settings_for
from pydantic import ValidationError
from servers import Certificates, Server, certificates, running
from support import free_port

from {{ cookiecutter.__package_slug }}.settings import Settings, problems
from {{ cookiecutter.__package_slug }}.sources.redis_jobs import (
    Every,
    Job,
    Jobs,
    JobStats,
    RedisJobs,
    connect_async,
)
from {{ cookiecutter.__package_slug }}.sources.redis_jobs.recurring import Ticker, standings
from {{ cookiecutter.__package_slug }}.worker import Permanent

PREFIX = "{{ cookiecutter.__env_prefix }}"
USER, PASSWORD = "jobs-worker", "worker-password"
ADMIN = {"username": "admin", "password": "admin-password"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def server(certs: Certificates, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """TLS only, no client certificate asked for, the default user as it comes."""
    with running("redis", tmp_path_factory.mktemp("redis"), tls=certs) as server:
        yield server


def tls_settings(port: int, stream: str, certs: Certificates, **overrides: Any) -> Settings:
    url = f"rediss://localhost:{port}/0"
    return settings_for(
        port, stream, jobs_redis_url=url, jobs_tls_ca_file=str(certs.ca), **overrides
    )


def tls_env(port: int, stream: str, certs: Certificates, **settings: str) -> dict[str, str]:
    """A command's environment: none of the project's variables but these."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(PREFIX)}
    env |= {
        "PYTHONPATH": str(PROJECT),
        f"{PREFIX}JOBS_REDIS_URL": f"rediss://localhost:{port}/0",
        f"{PREFIX}JOBS_STREAM": stream,
        f"{PREFIX}JOBS_TLS_CA_FILE": str(certs.ca),
        f"{PREFIX}SOURCE_CONNECT_TIMEOUT": "1",
        f"{PREFIX}EMPTY_QUEUE_SLEEP_TIME": "0.05",
    }
    return env | {PREFIX + name.upper(): value for name, value in settings.items()}


def qq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "{{ cookiecutter.__package_slug }}.qq", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line a failed command printed (exit 2, no traceback); before it, a drain
    logs only its start and that it waits for Redis."""
    assert result.returncode == 2, result.stdout + result.stderr
    *before, line = result.stderr.splitlines()
    assert line.startswith("error: "), line
    assert all(" draining " in text or " waiting up to " in text for text in before), before
    return line


def drained(env: dict[str, str]) -> tuple[int, int]:
    """Run `qq drain`; (succeeded, failed) from its summary."""
    summary = json.loads(ok(qq(env, "drain")).splitlines()[-1])
    return summary["succeeded"], summary["failed"]


# ---- TLS ---------------------------------------------------------------------------------------
def test_submit_stats_dead_and_the_worker_over_tls(server: Server, certs: Certificates) -> None:
    stream = new_stream()
    env = tls_env(server.port, stream, certs)
    assert len(ok(qq(env, "submit", '{"n": 1}', '{"n": 2}')).split()) == 2
    assert json.loads(ok(qq(env, "stats")))["waiting"] == 2
    with Jobs(tls_settings(server.port, stream, certs)) as jobs:  # as the worker buries one
        jobs.client.xadd(jobs.dead, {"job": "j0", "payload": "{}", "attempts": 3, "error": "e"})
    [letter] = [json.loads(line) for line in ok(qq(env, "dead", "list")).splitlines()]
    assert (letter["job"], letter["error"]) == ("j0", "e")
    assert ok(qq(env, "dead", "replay", letter["id"])).strip() == "replayed 1"
    assert drained(env) == (3, 0)  # the parent and the worker processes, all over TLS
    assert json.loads(ok(qq(env, "stats"))) == JobStats(stream, 0, 0, 0).__dict__


async def test_retries_delays_and_dead_letters_over_tls(
    server: Server, certs: Certificates
) -> None:
    stream = new_stream()
    settings = tls_settings(server.port, stream, certs)
    with Jobs(settings) as jobs:
        jobs.submit_many([{"n": n} for n in range(20)])
        jobs.submit({"n": 20}, delay=0)  # scheduled, due now: a fetch moves it

    def read(item: Job) -> None:
        if item.payload["n"] == 1:
            raise Permanent("no good")
        if item.payload["n"] == 2 and item.attempt == 1:
            raise RuntimeError("once")

    summary = await jobs_worker(settings, read).drain()
    assert (summary.succeeded, summary.failed) == (20, 2)
    with Jobs(settings) as jobs:
        assert jobs.stats() == JobStats(stream, 0, 0, 1)


def test_a_wrong_ca_fails_with_one_line_naming_the_setting(
    server: Server, certs: Certificates
) -> None:
    env = tls_env(server.port, new_stream(), certs, jobs_tls_ca_file=str(certs.other_ca))
    for args in (["submit", "1"], ["stats"], ["dead", "list"], ["drain"]):
        line = error_line(qq(env, *args))
        assert "certificate verify failed" in line, line
        assert f"a CA in {PREFIX}JOBS_TLS_CA_FILE={certs.other_ca})" in line, line
    del env[f"{PREFIX}JOBS_TLS_CA_FILE"]  # the system's CAs: none signed it
    line = error_line(qq(env, "stats"))
    assert f"set {PREFIX}JOBS_TLS_CA_FILE to the CA bundle that signed it" in line, line


def test_an_unreachable_tls_port_fails_with_one_line_naming_the_url(certs: Certificates) -> None:
    port = free_port()  # nothing listens there
    env = tls_env(port, new_stream(), certs, jobs_username=USER, jobs_password=PASSWORD)
    for args in (["stats"], ["drain"]):
        line = error_line(qq(env, *args))
        assert f"Redis at rediss://localhost:{port}/0 ({PREFIX}JOBS_REDIS_URL)" in line, line
        assert PASSWORD not in line


def test_a_scheme_that_does_not_fit_the_port_is_named(
    server: Server, certs: Certificates, tmp_path: Path
) -> None:
    env = tls_env(server.port, new_stream(), certs)
    env[f"{PREFIX}JOBS_REDIS_URL"] = f"redis://localhost:{server.port}/0"  # a TLS port
    del env[f"{PREFIX}JOBS_TLS_CA_FILE"]
    line = error_line(qq(env, "stats"))
    assert f"if that port is the server's TLS port, use rediss:// in {PREFIX}JOBS_REDIS_URL" in line
    with running("redis", tmp_path) as plain:  # rediss:// to a port without TLS
        line = error_line(qq(tls_env(plain.port, new_stream(), certs), "stats"))
        assert f"rediss:// needs the server's TLS port: is that the port in {PREFIX}" in line


def test_the_password_stays_out_of_reprs(certs: Certificates) -> None:
    login = {"jobs_username": USER, "jobs_password": PASSWORD}
    settings = tls_settings(free_port(), new_stream(), certs, **login)
    with Jobs(settings) as jobs:
        shown = [repr(settings), str(settings), repr(jobs), repr(RedisJobs(settings))]
    assert [text for text in shown if PASSWORD in text] == []
    assert USER in repr(settings)  # a user name is not a secret


def test_the_host_name_is_checked_unless_turned_off(tmp_path: Path) -> None:
    elsewhere = certificates(tmp_path, names=["redis.internal.example"])
    with running("redis", tmp_path, tls=elsewhere) as server:
        env = tls_env(server.port, new_stream(), elsewhere)
        line = error_line(qq(env, "stats"))
        assert f"or set {PREFIX}JOBS_TLS_CHECK_HOSTNAME=false" in line, line
        env[f"{PREFIX}JOBS_TLS_CHECK_HOSTNAME"] = "false"  # the CA is still checked
        assert json.loads(ok(qq(env, "stats")))["waiting"] == 0
        env[f"{PREFIX}JOBS_TLS_CA_FILE"] = str(elsewhere.other_ca)
        assert "certificate verify failed" in error_line(qq(env, "stats"))


def test_a_server_that_asks_for_a_client_certificate(certs: Certificates, tmp_path: Path) -> None:
    mutual = ["--tls-auth-clients", "yes"]
    with running("redis", tmp_path, tls=certs, extra_args=mutual) as server:
        env = tls_env(server.port, new_stream(), certs)
        for args in (["stats"], ["drain"]):  # the blocking client, and the worker's asyncio one
            line = error_line(qq(env, *args))
            assert f"set {PREFIX}JOBS_TLS_CERT_FILE and {PREFIX}JOBS_TLS_KEY_FILE" in line, line
        env |= {
            f"{PREFIX}JOBS_TLS_CERT_FILE": str(certs.client_cert),
            f"{PREFIX}JOBS_TLS_KEY_FILE": str(certs.client_key),
        }
        ok(qq(env, "submit", '{"n": 1}'))
        assert drained(env) == (1, 0)


def test_tls_settings_are_checked_as_they_load(certs: Certificates, tmp_path: Path) -> None:
    def refusal(**values: Any) -> str:
        with pytest.raises(ValidationError) as caught:
            Settings(_env_file=None, **{"jobs_redis_url": "rediss://localhost/0", **values})
        [line] = problems(caught.value)
        return line

    assert refusal(jobs_tls_ca_file=str(tmp_path / "none.pem")) == (
        f"{PREFIX}JOBS_TLS_CA_FILE={str(tmp_path / 'none.pem')!r}: no such file"
    )
    assert refusal(jobs_tls_cert_file=str(certs.client_cert)).startswith(
        f"{PREFIX}JOBS_TLS_CERT_FILE and {PREFIX}JOBS_TLS_KEY_FILE: give both"
    )
    assert "key values mismatch" in refusal(
        jobs_tls_cert_file=str(certs.client_cert), jobs_tls_key_file=str(certs.server_key)
    )
    assert "holds no PEM certificate" in refusal(jobs_tls_ca_file=str(certs.client_key))
    assert refusal(jobs_redis_url="redis://localhost/0", jobs_tls_ca_file=str(certs.ca)) == (
        f"{PREFIX}JOBS_TLS_CA_FILE is set but {PREFIX}JOBS_REDIS_URL is not rediss://: use "
        "rediss:// for TLS, or leave the TLS settings empty"
    )
    assert refusal(jobs_redis_url="rediss://localhost/0?ssl_cert_reqs=none") == (
        f"{PREFIX}JOBS_REDIS_URL sets ssl_cert_reqs: use the {PREFIX}JOBS_TLS_* settings"
    )
    assert "keep one" in refusal(jobs_redis_url="rediss://me@localhost/0", jobs_username="me")
    assert refusal(jobs_username="me") == (
        f"a Redis user needs {PREFIX}JOBS_PASSWORD (any value for a nopass user)"
    )
    # From the environment: one line, exit 2, before anything connects.
    env = tls_env(free_port(), new_stream(), certs, jobs_tls_key_file=str(tmp_path))
    line = error_line(qq(env, "stats"))
    assert line == f"error: {PREFIX}JOBS_TLS_KEY_FILE={str(tmp_path)!r}: not a file"


# ---- an ACL user -------------------------------------------------------------------------------
def acl_rules(stream: str, password: str) -> list[str]:
    """The rules of the ACL line in docs/operations.md, for `stream` and `password`."""
    text = (PROJECT / "docs" / "operations.md").read_text()
    [line] = [line for line in text.splitlines() if line.startswith("ACL SETUSER ")]
    keys, secret = "~{{ cookiecutter.__package_slug }}:jobs*", ">PASSWORD"
    rules = shlex.split(line)[3:]  # after ACL SETUSER <name>
    assert keys in rules, line  # the project's stream
    assert secret in rules, line  # a placeholder
    return [f"~{stream}*" if r == keys else f">{password}" if r == secret else r for r in rules]


@pytest.fixture(scope="module")
def acl_server(
    certs: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, str]]:
    """TLS, the default user off, an admin, and the ACL user of the docs for one stream."""
    stream = new_stream()
    with running("redis", tmp_path_factory.mktemp("redis"), tls=certs) as server:
        with admin(server, certs, username=None, password=None) as client:  # the default user
            rules = ["on", f">{ADMIN['password']}", "~*", "&*", "+@all"]
            client.execute_command("ACL", "SETUSER", ADMIN["username"], *rules)
            client.execute_command("ACL", "SETUSER", USER, *acl_rules(stream, PASSWORD))
            client.execute_command("ACL", "SETUSER", "default", "off")
        yield server, stream


def admin(server: Server, certs: Certificates, **login: Any) -> redis.Redis:
    url = f"rediss://localhost:{server.port}/0"
    return redis.Redis.from_url(url, ssl_ca_certs=str(certs.ca), **{**ADMIN, **login})


async def test_an_acl_user_limited_to_the_projects_keys_runs_every_command(
    acl_server: tuple[Server, str], certs: Certificates
) -> None:
    server, stream = acl_server
    env = tls_env(server.port, stream, certs, jobs_username=USER, jobs_password=PASSWORD)
    first, second = ok(qq(env, "submit", '{"n": 1}', '{"n": 2}')).split()
    assert ok(qq(env, "submit", "--key", "k", '{"n": 3}')).strip() != ""
    assert "already submitted" in ok(qq(env, "submit", "--key", "k", '{"n": 3}'))
    ok(qq(env, "submit", "--delay", "0", '{"n": 4}'))  # scheduled, due now
    assert json.loads(ok(qq(env, "stats")))["scheduled"] == 1
    # Status and cancel: a waiting job and a scheduled one, cancelled before the worker runs.
    [waiting] = ok(qq(env, "submit", '{"n": 5}')).split()
    assert ok(qq(env, "status", waiting)) == f"{waiting}: waiting (attempt 1)\n"
    assert ok(qq(env, "cancel", waiting)) == f"{waiting}: cancelled\n"
    [later] = ok(qq(env, "submit", "--delay", "3600", '{"n": 6}')).split()
    assert ok(qq(env, "cancel", later)) == f"{later}: cancelled\n"

    # The worker, its failures, retries and lease renewals, in this process with the same user.
    settings = tls_settings(server.port, stream, certs, jobs_username=USER, jobs_password=PASSWORD)

    def read(item: Job) -> None:
        if item.payload["n"] == 1:
            time.sleep(settings.jobs_claim_idle)  # its lease is renewed (every claim_idle / 4)
        if item.payload["n"] == 2:
            raise Permanent("no good")
        if item.payload["n"] == 3 and item.attempt == 1:
            raise RuntimeError("once")

    summary = await jobs_worker(settings, read).drain()
    assert (summary.succeeded, summary.failed) == (3, 2)
    with admin(server, certs) as client:  # renewals and claims ran (as this user: no other)
        ran = client.info("commandstats")
    assert {"cmdstat_xclaim", "cmdstat_xautoclaim", "cmdstat_hset"} <= set(ran)
    assert ok(qq(env, "status", first)).startswith(f"{first}: succeeded (attempt 1)")
    assert ok(qq(env, "status", second)).startswith(f"{second}: failed after 1 attempt(s)")
    [letter] = [json.loads(line) for line in ok(qq(env, "dead", "list")).splitlines()]
    assert ok(qq(env, "dead", "replay", letter["id"])).strip() == "replayed 1"
    assert ok(qq(env, "status", second)) == f"{second}: waiting (attempt 1)\n"
    assert drained(env) == (1, 0)
    with Jobs(settings) as jobs:  # as the worker buries one
        jobs.client.xadd(jobs.dead, {"job": "j0", "payload": "{}", "attempts": 3, "error": "e"})
    assert ok(qq(env, "dead", "purge", "--older-than", "3600")).strip() == "purged 0"
    assert ok(qq(env, "dead", "purge", "--all")).strip() == "purged 1"
    assert json.loads(ok(qq(env, "stats"))) == JobStats(stream, 0, 0, 0).__dict__

    # Recurring jobs: a serving instance claims a period and adds its job; stats reads them.
    schedules = [Every("tick", seconds=60)]
    client, ticker, now = connect_async(settings), Ticker(schedules, stream), time.time()
    try:
        await ticker.tick(client, now)  # a new schedule starts with its next period
        [claim] = await ticker.tick(client, now + 60)
    finally:
        await client.aclose()
    assert len(claim.jobs) == 1, claim
    with Jobs(settings) as jobs:
        assert standings(jobs.client, stream, schedules)["tick"].last == claim.period
    assert drained(env) == (1, 0)  # the period's job

    # What KEDA's redis-streams trigger runs (lagCount: XINFO GROUPS; the others: XPENDING,
    # XLEN), as this user; and nothing outside the project's keys.
    with admin(server, certs, username=USER, password=PASSWORD) as keda:
        assert keda.ping()
        assert [group["lag"] for group in keda.xinfo_groups(stream)] == [0]
        assert keda.xpending(stream, "workers")["pending"] == 0
        with admin(server, certs) as client:
            assert keda.xlen(stream) == client.xlen(stream)
        with pytest.raises(redis.exceptions.NoPermissionError):
            keda.xlen("elsewhere:jobs")
        with pytest.raises(redis.exceptions.NoPermissionError):
            keda.flushall()

    # The default user is off: without the user the password is refused.
    del env[f"{PREFIX}JOBS_USERNAME"]
    line = error_line(qq(env, "stats"))
    assert f"check {PREFIX}JOBS_USERNAME and {PREFIX}JOBS_PASSWORD" in line, line
    assert PASSWORD not in line


def test_a_command_the_acl_refuses_stops_the_worker_with_one_line(
    acl_server: tuple[Server, str], certs: Certificates
) -> None:
    server, _ = acl_server
    stream = new_stream()
    rules = acl_rules(stream, "other")
    rules.remove("+xautoclaim")
    with admin(server, certs) as client:
        client.execute_command("ACL", "SETUSER", "no-claims", *rules)
    login = {"jobs_username": "no-claims", "jobs_password": "other", "log_level": "WARNING"}
    env = tls_env(server.port, stream, certs, **login)
    ok(qq(env, "submit", '{"n": 1}'))
    line = error_line(qq(env, "drain"))
    assert f"the user {PREFIX}JOBS_USERNAME may not do this" in line, line
