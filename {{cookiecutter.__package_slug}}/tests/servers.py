"""Real cache servers for the tests: started on a free loopback port, stopped by PID.

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
    name: str, tmp_path: Path, port: int | None = None, extra_args: Sequence[str] = ()
) -> Iterator[Server]:
    """Run `redis` or `memcached` on a free (or given) loopback port until the block ends.

    `extra_args` are appended to the command line (for redis, later options win:
    `["--appendonly", "yes"]` makes it keep its data across a restart in `tmp_path`).
    """
    port = port or _free_port()
    if name == "redis":
        command = [
            _binary("redis-server"),
            "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
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
