"""Real servers for the tests: started on a free loopback port, stopped by PID; Redis also
over TLS only, with certificates made here (`certificates`).

Under CI=true a missing server binary fails the test run; elsewhere the tests that need it
are skipped with the command that installs it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

INSTALL = "sudo apt-get install redis-server memcached"


@dataclass(frozen=True)
class Certificates:
    """PEM files for TLS on loopback: a CA, the server's certificate and key, a client's
    certificate and key signed by the same CA, and another CA that signed none of them."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def certificates(folder: Path, names: Sequence[str] = ("localhost", "127.0.0.1")) -> Certificates:
    """Make a CA and the certificates it signs (with trustme) in `folder`; the server's
    certificate is for `names`."""
    import trustme  # only the TLS tests need it

    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert(*names)
    client = ca.issue_cert("worker@example.com")
    made = Certificates(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
        other_ca=folder / "other-ca.pem",
    )
    ca.cert_pem.write_to_path(str(made.ca))
    server.cert_chain_pems[0].write_to_path(str(made.server_cert))
    server.private_key_pem.write_to_path(str(made.server_key))
    client.cert_chain_pems[0].write_to_path(str(made.client_cert))
    client.private_key_pem.write_to_path(str(made.client_key))
    other.cert_pem.write_to_path(str(made.other_ca))
    return made


@dataclass
class Server:
    """A running server process and where it listens."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """Stop the server at once (SIGKILL) and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def _binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is not installed (CI=true requires it): {INSTALL}")
        pytest.skip(f"{name} is not installed: {INSTALL}")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_listening(server: Server, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@contextmanager
def running(
    name: str,
    tmp_path: Path,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    tls: Certificates | None = None,
) -> Iterator[Server]:
    """Run `redis` or `memcached` on a free (or given) loopback port until the block ends.

    `extra_args` are appended to the command line (for redis, later options win:
    `["--appendonly", "yes"]` makes it keep its data across a restart in `tmp_path`). With
    `tls`, redis serves TLS only on that port, with the server certificate of `tls`, and asks
    for no client certificate unless `extra_args` say `--tls-auth-clients yes`.
    """
    port = port or _free_port()
    if name == "redis":
        ports = ["--port", str(port)]
        if tls is not None:
            ports = [
                "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(tls.server_cert),
                "--tls-key-file", str(tls.server_key), "--tls-ca-cert-file", str(tls.ca),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        command = [
            _binary("redis-server"),
            *ports, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(tmp_path),
        ]  # fmt: skip
    else:
        command = [_binary("memcached"), "-l", "127.0.0.1", "-p", str(port), "-U", "0"]
        if os.geteuid() == 0:
            command += ["-u", "root"]
    command += list(extra_args)
    server = Server(subprocess.Popen(command, stdout=subprocess.DEVNULL), port)
    try:
        _wait_listening(server)
        yield server
    finally:
        server.kill()
