"""Multi-process and crash tests: separate programs share one spool folder.

Children are separate Python programs (subprocess) that report through their stdout; a
child is killed with SIGKILL only after it said it reached the point under test.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import {{ cookiecutter.__package_slug }}.spool as spool_module
from {{ cookiecutter.__package_slug }}.spool import Consumer, Producer, recover

MODULE = spool_module.__name__
WAIT = 30.0  # upper bound for any single wait; the happy path takes well under a second

PRELUDE = """
import importlib, json, os, sys
spool = importlib.import_module(sys.argv[1])
root = sys.argv[2]
def say(*parts):  # one write per line: a forked child and its parent share this pipe
    os.write(1, (" ".join(map(str, parts)) + "\\n").encode())
"""

PRODUCER = (
    PRELUDE
    + """
name, count = sys.argv[3], int(sys.argv[4])
with spool.Producer(root, max_records=37, max_age=0.05) as producer:
    for i in range(count):
        producer.put(json.dumps([name, i]))
say("done")
"""
)

CONSUMER = (
    PRELUDE
    + """
out, done_flag = sys.argv[3], sys.argv[4]
with spool.Consumer(root) as consumer, open(out, "w") as sink:
    while True:
        batch = consumer.claim(timeout=0.05)
        if batch is None:
            if not os.path.exists(done_flag):
                continue
            batch = consumer.claim()  # producers are done: ready/ empty means finished
            if batch is None:
                break
        for record in batch:
            sink.write(record.data + "\\n")
        sink.flush()
        batch.ack()
say("done")
"""
)

CONSUMER_DIES_HOLDING = (
    PRELUDE
    + """
consumer = spool.Consumer(root)
for _ in range(2):
    batch = consumer.claim(timeout=10)
    keys = [r.key for r in batch]
    batch.ack()
    say("acked", json.dumps(keys))
batch = consumer.claim(timeout=10)
say("holding", batch.id, json.dumps([r.key for r in batch]))
sys.stdin.readline()
"""
)

CONSUMER_ACKS_ON_REQUEST = (
    PRELUDE
    + """
consumer = spool.Consumer(root)
batch = consumer.claim(timeout=10)
say("holding", batch.id, json.dumps([r.key for r in batch]))
assert sys.stdin.readline().strip() == "ack"
batch.ack()
say("acked")
"""
)

PRODUCER_DIES_MID_BATCH = (
    PRELUDE
    + """
write_buffer, count = int(sys.argv[3]), int(sys.argv[4])
producer = spool.Producer(root, max_records=10_000, max_age=None, write_buffer=write_buffer)
for i in range(30):
    producer.put(f"c{i}", key=f"c{i}")
producer.flush()
for i in range(30, 30 + count):
    producer.put("x" * 100, key=f"c{i}")
say("ready")
sys.stdin.readline()
"""
)

CONSUMER_FORKS_THEN_DIES = (
    PRELUDE
    + """
consumer = spool.Consumer(root)
batch = consumer.claim(timeout=10)
pid = os.fork()
if pid == 0:
    say("child", os.getpid())
    sys.stdin.readline()
    os._exit(0)
say("parent", batch.id)
sys.stdin.readline()
"""
)


class Child:
    """A Python program running one of the scripts above, read line by line."""

    def __init__(self, tmp_path: Path, script: str, *args: str) -> None:
        self.stderr_path = tmp_path / f"stderr-{id(self)}.txt"
        with open(self.stderr_path, "w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", script, MODULE, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, word: str, fields: int = 1) -> list[str]:
        """Wait (bounded) for the next line; check its first word; return ``fields`` more."""
        line = self.lines.get(timeout=WAIT)
        if line is None:
            self.proc.wait(WAIT)
            pytest.fail(f"child exited {self.proc.returncode}: {self.stderr_path.read_text()}")
        first, *rest = line.split(" ", fields)
        assert first == word, line
        return rest

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        assert self.proc.wait(WAIT) == 0, self.stderr_path.read_text()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(WAIT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._reader.join(WAIT)


@pytest.fixture
def children(tmp_path: Path) -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.stop()


def start(children: list[Child], tmp_path: Path, script: str, *args: str) -> Child:
    child = Child(tmp_path, script, *args)
    children.append(child)
    return child


def drain(root: Path) -> list[tuple[int, list[str]]]:
    """Claim and ack everything ready; return (attempts, keys) per batch."""
    consumer = Consumer(root)
    out = []
    while (batch := consumer.claim()) is not None:
        out.append((batch.attempts, [r.key for r in batch]))
        batch.ack()
    return out


def test_two_producers_two_consumers_deliver_exactly_what_went_in(
    tmp_path: Path, children: list[Child]
) -> None:
    root = tmp_path / "spool"
    done_flag = tmp_path / "producers-done"
    outs = [tmp_path / "out-1.txt", tmp_path / "out-2.txt"]
    consumers = [
        start(children, tmp_path, CONSUMER, str(root), str(o), str(done_flag)) for o in outs
    ]
    producers = [start(children, tmp_path, PRODUCER, str(root), name, "1500") for name in "AB"]
    for producer in producers:
        producer.expect("done")
        producer.finish()
    done_flag.touch()
    for consumer in consumers:
        consumer.expect("done")
        consumer.finish()
    got = Counter(line for out in outs for line in out.read_text().splitlines())
    expected = Counter(json.dumps([name, i]) for name in "AB" for i in range(1500))
    assert got == expected
    for folder in ("tmp", "ready", "claimed", "dead", "corrupt"):
        assert os.listdir(root / folder) == []


def test_kill_9_consumer_mid_batch_then_recover_while_another_consumer_lives(
    tmp_path: Path, children: list[Child]
) -> None:
    root = tmp_path / "spool"
    all_keys = [f"k{i}" for i in range(40)]
    with Producer(root, max_records=5) as producer:
        for key in all_keys:
            producer.put(key, key=key)

    doomed = start(children, tmp_path, CONSUMER_DIES_HOLDING, str(root))
    acked = [k for _ in range(2) for k in json.loads(doomed.expect("acked")[0])]
    doomed_id, doomed_keys = doomed.expect("holding", 2)
    survivor = start(children, tmp_path, CONSUMER_ACKS_ON_REQUEST, str(root))
    survivor_id, survivor_keys = survivor.expect("holding", 2)
    doomed.kill()

    result = recover(root)
    assert (result.requeued, result.republished, result.dead_lettered) == (1, 0, 0)
    assert os.listdir(root / "claimed") == [f"{survivor_id}.0"]  # the live claim stays
    survivor.send("ack")
    survivor.expect("acked")
    survivor.finish()
    acked += json.loads(survivor_keys)

    redelivered = drain(root)
    delivered = [k for _, keys in redelivered for k in keys]
    assert not set(acked) & set(delivered)  # nothing acked comes back
    assert (1, json.loads(doomed_keys)) in redelivered  # the dead claim, one attempt counted
    assert Counter(acked + delivered) == Counter(all_keys)  # nothing lost, nothing twice
    assert doomed_id not in survivor_id


@pytest.mark.parametrize(("write_buffer", "count"), [(0, 25), (65536, 2000)])
def test_kill_9_producer_mid_batch_then_recover_while_another_producer_lives(
    tmp_path: Path, children: list[Child], write_buffer: int, count: int
) -> None:
    root = tmp_path / "spool"
    args = (str(write_buffer), str(count))
    doomed = start(children, tmp_path, PRODUCER_DIES_MID_BATCH, str(root), *args)
    live = Producer(root, max_age=None, write_buffer=0)
    live.put("live-0", key="live-0")
    doomed.expect("ready")
    doomed.kill()

    result = recover(root)
    assert (result.requeued, result.republished) == (0, 1)
    assert recover(root) == type(result)(0, 0, 0, 0)  # the live open batch is left alone

    live.put("live-1", key="live-1")
    (published, *recovered) = drain(root)
    assert published == (0, [f"c{i}" for i in range(30)])  # published before the crash
    keys = [k for _, batch_keys in recovered for k in batch_keys]
    # Put but never published: what reached the file comes back, in order, without gaps.
    assert keys == [f"c{i}" for i in range(30, 30 + len(keys))]
    frame = 11 + len("c1000") + 100
    assert len(keys) >= count - write_buffer // frame
    assert os.listdir(root / "corrupt") == []
    live.close()
    assert drain(root) == [(0, ["live-0", "live-1"])]


def test_a_forked_child_does_not_keep_a_dead_parents_claim_alive(
    tmp_path: Path, children: list[Child]
) -> None:
    root = tmp_path / "spool"
    with Producer(root) as producer:
        producer.put("x", key="x")
    parent = start(children, tmp_path, CONSUMER_FORKS_THEN_DIES, str(root))
    lines: dict[str, str] = {}
    seen: list[str] = []
    while not {"child", "parent"} <= set(lines):  # parent and forked child race to print
        line = parent.lines.get(timeout=WAIT)
        assert line is not None, f"{seen}: {parent.stderr_path.read_text()}"
        seen.append(line)
        word, _, value = line.partition(" ")
        lines[word] = value
    child_pid = int(lines["child"])
    try:
        parent.kill()
        os.kill(child_pid, 0)  # the forked child still lives
        assert recover(root).requeued == 1
        assert drain(root) == [(1, ["x"])]
    finally:
        os.kill(child_pid, signal.SIGKILL)
