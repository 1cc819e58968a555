"""Single-process tests of the spool: batching, backpressure, ack/nack, quarantine, recovery."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from {{ cookiecutter.__package_slug }} import spool
from {{ cookiecutter.__package_slug }}.spool import (
    MAGIC,
    Batch,
    Consumer,
    Producer,
    Record,
    SpoolError,
    SpoolFull,
    recover,
)
from {{ cookiecutter.__package_slug }}.spool import consumer as spool_consumer


def listing(root: Path, folder: str) -> list[str]:
    return sorted(os.listdir(root / folder))


def drain(consumer: Consumer) -> list[list[Record]]:
    """Claim and ack every ready batch; return their records per batch."""
    batches = []
    while (batch := consumer.claim()) is not None:
        batches.append(list(batch))
        batch.ack()
    return batches


def test_roundtrip_keeps_types_order_and_keys(tmp_path: Path) -> None:
    with Producer(tmp_path, max_records=3) as producer:
        producer.put("text")
        producer.put(b"\x00bytes")
        producer.put(bytearray(b"ba"))
        producer.put("keyed", key="order-17")
        producer.put(b"", key="")
    batches = drain(Consumer(tmp_path))
    assert [len(b) for b in batches] == [3, 2]
    records = [r for b in batches for r in b]
    assert [r.data for r in records] == ["text", b"\x00bytes", b"ba", "keyed", b""]
    assert [r.key for r in records[3:]] == ["order-17", ""]
    derived = [r.key for r in records[:3]]
    assert len(set(derived)) == 3
    assert all(k.startswith(f"{k.split('/')[0]}/") for k in derived)
    assert listing(tmp_path, "ready") == listing(tmp_path, "claimed") == []
    assert listing(tmp_path, "tmp") == []


def test_batches_are_cut_by_bytes_and_oversize_records_travel_alone(tmp_path: Path) -> None:
    with Producer(tmp_path, max_records=1000, max_bytes=100) as producer:
        for i in range(10):
            producer.put(b"x" * 30 + bytes([i]))  # 31 bytes + 11 bytes of framing = 42
        producer.put(b"y" * 500)
    sizes = [len(b) for b in drain(Consumer(tmp_path))]
    assert sizes == [2, 2, 2, 2, 2, 1]


def test_flush_publishes_a_partial_batch_and_close_is_final(tmp_path: Path) -> None:
    producer = Producer(tmp_path, max_age=None)
    consumer = Consumer(tmp_path)
    producer.put("a")
    assert consumer.claim() is None  # still in the open batch
    producer.flush()
    batch = consumer.claim()
    assert batch is not None
    assert [r.data for r in batch] == ["a"]
    batch.ack()
    producer.put("b")
    producer.close()
    producer.close()
    assert [[r.data for r in b] for b in drain(consumer)] == [["b"]]
    with pytest.raises(SpoolError, match="closed"):
        producer.put("c")


def test_an_unused_producer_leaves_no_files(tmp_path: Path) -> None:
    with Producer(tmp_path):
        pass
    for folder in ("tmp", "ready", "claimed", "dead", "corrupt"):
        assert listing(tmp_path, folder) == []


def test_max_age_publishes_an_idle_batch(tmp_path: Path) -> None:
    with Producer(tmp_path, max_records=1000, max_age=0.05) as producer:
        producer.put("late")
        batch = Consumer(tmp_path).claim(timeout=10)  # bounded wait, no flush called
        assert batch is not None
        assert [r.data for r in batch] == ["late"]
        batch.ack()


def test_put_raises_spoolfull_after_timeout_without_adding(tmp_path: Path) -> None:
    producer = Producer(tmp_path, max_records=1, max_ready=1, max_age=None, timeout=1.0)
    for i in range(6):  # one in ready/, four pending, one full and open
        producer.put(f"r{i}")
    with pytest.raises(SpoolFull, match="max_ready=1"):
        producer.put("refused")
    consumer = Consumer(tmp_path)
    got: list[bytes | str] = []
    while len(got) < 6:
        batch = consumer.claim(timeout=10)
        assert batch is not None
        got += [r.data for r in batch]
        batch.ack()
    producer.close()
    assert got == [f"r{i}" for i in range(6)]
    assert drain(consumer) == []


def test_put_blocks_while_ready_is_full_and_resumes(tmp_path: Path) -> None:
    producer = Producer(tmp_path, max_records=1, max_ready=1, max_age=None)
    finished = threading.Event()

    def produce() -> None:
        for i in range(10):
            producer.put(f"r{i}")
        finished.set()

    thread = threading.Thread(target=produce)
    thread.start()
    try:
        assert not finished.wait(0.3)  # blocked by backpressure
        assert len(listing(tmp_path, "ready")) == 1
        consumer = Consumer(tmp_path)
        got: list[bytes | str] = []
        while len(got) < 5:  # each ack makes room for one more; 6 fit before the first
            batch = consumer.claim(timeout=10)
            assert batch is not None
            got += [r.data for r in batch]
            batch.ack()
        assert finished.wait(10)
    finally:
        thread.join(10)
        producer.close()
    got += [r.data for b in drain(consumer) for r in b]
    assert got == [f"r{i}" for i in range(10)]


def test_batches_published_within_one_second_keep_fifo_order(tmp_path: Path) -> None:
    with Producer(tmp_path, max_records=1, fsync=False) as producer:
        for i in range(60):
            producer.put(str(i))
    names = listing(tmp_path, "ready")
    assert len(names) == 60
    assert len({n[:10] for n in names}) <= 2  # within about one second
    assert [b[0].data for b in drain(Consumer(tmp_path))] == [str(i) for i in range(60)]


def test_two_consumers_never_hold_the_same_batch(tmp_path: Path) -> None:
    with Producer(tmp_path, max_records=1) as producer:
        producer.put("first")
        producer.put("second")
    one, two = Consumer(tmp_path), Consumer(tmp_path)
    a, b = one.claim(), two.claim()
    assert a is not None
    assert b is not None
    assert [a.records[0].data, b.records[0].data] == ["first", "second"]
    assert Consumer(tmp_path).claim() is None  # both are held
    assert listing(tmp_path, "claimed") == sorted([f"{a.id}.0", f"{b.id}.0"])
    a.ack()
    b.ack()


def test_nack_keeps_the_place_counts_attempts_and_keeps_keys(tmp_path: Path) -> None:
    with Producer(tmp_path, max_records=2) as producer:
        for i in range(4):
            producer.put(str(i))
    consumer = Consumer(tmp_path, max_attempts=5)
    first = consumer.claim()
    assert first is not None
    keys = [r.key for r in first]
    first.nack("boom")
    again = consumer.claim()
    assert again is not None
    assert again.id == first.id
    assert again.attempts == 1
    assert [r.key for r in again] == keys
    again.ack()
    rest = consumer.claim()
    assert rest is not None
    assert [r.data for r in rest] == ["2", "3"]
    assert rest.attempts == 0
    rest.ack()


def test_dead_letter_after_max_attempts_with_error_text(tmp_path: Path) -> None:
    with Producer(tmp_path) as producer:
        producer.put("poison")
    consumer = Consumer(tmp_path, max_attempts=2)
    batch = consumer.claim()
    assert batch is not None
    batch.nack("first failure")
    batch = consumer.claim()
    assert batch is not None
    assert batch.attempts == 1
    try:
        raise RuntimeError("second failure")
    except RuntimeError as exc:
        batch.nack(exc)
    assert consumer.claim() is None
    dead = listing(tmp_path, "dead")
    assert dead == [f"{batch.id}.2", f"{batch.id}.2.error"]
    text = (tmp_path / "dead" / f"{batch.id}.2.error").read_text()
    assert "RuntimeError: second failure" in text
    assert "failed 2 time(s)" in text


def test_release_counts_no_attempt_and_close_releases(tmp_path: Path) -> None:
    with Producer(tmp_path) as producer:
        producer.put("x")
    consumer = Consumer(tmp_path)
    batch = consumer.claim()
    assert batch is not None
    batch.release()
    with Consumer(tmp_path) as other:
        held = other.claim()
        assert held is not None
        assert held.attempts == 0
    batch = consumer.claim()
    assert batch is not None
    assert batch.attempts == 0
    batch.ack()


def test_batch_context_manager_acks_nacks_and_releases(tmp_path: Path) -> None:
    with Producer(tmp_path, max_records=1) as producer:
        producer.put("ok")
        producer.put("fails")
    consumer = Consumer(tmp_path)
    batch = consumer.claim()
    assert batch is not None
    with batch:
        pass
    assert batch.done
    batch = consumer.claim()
    assert batch is not None
    with pytest.raises(ValueError, match="bad item"), batch:
        raise ValueError("bad item")
    batch = consumer.claim()
    assert batch is not None
    assert batch.attempts == 1
    with pytest.raises(KeyboardInterrupt), batch:
        raise KeyboardInterrupt
    batch = consumer.claim()
    assert batch is not None
    assert batch.attempts == 1
    assert [r.data for r in batch] == ["fails"]
    batch.ack()
    assert consumer.claim() is None


def test_misuse_gives_clear_errors(tmp_path: Path) -> None:
    with Producer(tmp_path, max_records=1) as producer:
        producer.put("a")
        producer.put("b")
    consumer = Consumer(tmp_path)
    batch = consumer.claim()
    assert batch is not None
    with pytest.raises(SpoolError, match="first"):
        consumer.claim()
    batch.ack()
    with pytest.raises(SpoolError, match="already finished"):
        batch.nack()
    consumer.close()
    with pytest.raises(SpoolError, match="closed"):
        consumer.claim()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_records": 0}, "max_records=0"),
        ({"max_bytes": 1.5}, "max_bytes=1.5"),
        ({"max_age": -1}, "max_age=-1"),
        ({"max_ready": True}, "max_ready=True"),
        ({"timeout": "1"}, "timeout='1'"),
    ],
)
def test_producer_rejects_bad_settings(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Producer(tmp_path, **kwargs)  # type: ignore[arg-type]


def test_bad_records_keys_and_settings_are_rejected(tmp_path: Path) -> None:
    with Producer(tmp_path) as producer:
        with pytest.raises(TypeError, match="record=123"):
            producer.put(123)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="key=5"):
            producer.put("x", key=5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="70000 bytes"):
            producer.put("x", key="k" * 70_000)
    with pytest.raises(ValueError, match="max_attempts=0"):
        Consumer(tmp_path, max_attempts=0)
    with pytest.raises(ValueError, match="timeout=-2"):
        Consumer(tmp_path).claim(timeout=-2)
    with pytest.raises(ValueError, match="root=''"):
        Consumer("")


def publish_one(root: Path, records: list[str]) -> Path:
    with Producer(root, max_records=1000) as producer:
        for record in records:
            producer.put(record)
    (name,) = listing(root, "ready")
    return root / "ready" / name


def test_a_corrupt_record_in_the_middle_is_quarantined_alone(tmp_path: Path) -> None:
    path = publish_one(tmp_path, ["aaaa", "bbbb", "cccc", "dddd"])
    raw = bytearray(path.read_bytes())
    frame = 11 + 4
    second = len(MAGIC) + frame
    raw[second + frame - 1] ^= 0xFF  # last data byte of the second record
    path.write_bytes(bytes(raw))
    consumer = Consumer(tmp_path)
    batch = consumer.claim()
    assert batch is not None
    assert [r.data for r in batch] == ["aaaa", "cccc", "dddd"]
    offsets = [len(MAGIC) + i * frame for i in (0, 2, 3)]
    assert [r.key for r in batch] == [f"{batch.id}/{off}" for off in offsets]
    (bad,) = listing(tmp_path, "corrupt")
    assert bad == f"{batch.id}@{second}.bad"
    assert (tmp_path / "corrupt" / bad).read_bytes() == bytes(raw[second : second + frame])
    batch.nack()
    again = consumer.claim()  # redelivery quarantines idempotently
    assert again is not None
    assert len(again) == 3
    again.ack()
    assert listing(tmp_path, "corrupt") == [bad]


def test_a_torn_tail_is_quarantined_and_the_prefix_delivered(tmp_path: Path) -> None:
    path = publish_one(tmp_path, ["aaaa", "bbbb", "cccc"])
    raw = path.read_bytes()
    path.write_bytes(raw[:-3])
    batch = Consumer(tmp_path).claim()
    assert batch is not None
    assert [r.data for r in batch] == ["aaaa", "bbbb"]
    tail_start = len(MAGIC) + 2 * 15
    assert (tmp_path / "corrupt" / f"{batch.id}@{tail_start}.bad").read_bytes() == raw[
        tail_start:-3
    ]
    batch.ack()


def test_foreign_and_fully_corrupt_files_are_not_delivered(tmp_path: Path) -> None:
    path = publish_one(tmp_path, ["only"])
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    foreign = tmp_path / "ready" / f"{'0' * 20}-{'a' * 16}.0"
    foreign.write_bytes(b"not a batch")
    (tmp_path / "ready" / "stray.txt").write_bytes(b"ignored")
    consumer = Consumer(tmp_path)
    assert consumer.claim() is None
    assert listing(tmp_path, "ready") == ["stray.txt"]
    assert listing(tmp_path, "claimed") == []
    corrupt = listing(tmp_path, "corrupt")
    assert f"{foreign.name}.bad" in corrupt
    assert len(corrupt) == 2


def test_recover_requeues_dead_claims_but_never_live_ones(tmp_path: Path) -> None:
    with Producer(tmp_path, max_records=1) as producer:
        for i in range(3):
            producer.put(str(i))
    live = Consumer(tmp_path)
    held = live.claim()
    assert held is not None
    # A claim whose owner is gone: a file in claimed/ that nobody has locked.
    orphan = listing(tmp_path, "ready")[0]
    os.rename(tmp_path / "ready" / orphan, tmp_path / "claimed" / orphan)
    result = recover(tmp_path, max_attempts=3)
    assert (result.requeued, result.dead_lettered) == (1, 0)
    assert listing(tmp_path, "claimed") == [f"{held.id}.0"]
    requeued = orphan.replace(".0", ".1")
    assert requeued in listing(tmp_path, "ready")
    held.ack()  # the live claim was not stolen
    os.rename(tmp_path / "ready" / requeued, tmp_path / "claimed" / orphan.replace(".0", ".2"))
    result = recover(tmp_path, max_attempts=3)
    assert (result.requeued, result.dead_lettered) == (0, 1)
    assert (
        "consumer holding it died"
        in (tmp_path / "dead" / orphan.replace(".0", ".3.error")).read_text()
    )


def test_recover_publishes_dead_producers_batches_but_not_live_ones(tmp_path: Path) -> None:
    source = publish_one(tmp_path, ["p", "q"])
    tmp = tmp_path / "tmp"
    shutil.move(source, tmp / "deadbeefdeadbeef-0000000001.open")
    (tmp / "deadbeefdeadbeef-0000000002.open").write_bytes(MAGIC)  # died before any put
    (tmp / ".deadbeefdeadbeef-0000000003.open.0a1b2c3d").write_bytes(MAGIC)  # died creating
    live = Producer(tmp_path, max_age=None)
    live.put("still open")
    result = recover(tmp_path)
    assert (result.republished, result.removed) == (1, 2)
    assert not [n for n in listing(tmp_path, "tmp") if "deadbeef" in n]
    assert recover(tmp_path) == type(result)(0, 0, 0, 0)  # the live batch is left alone
    consumer = Consumer(tmp_path)
    assert [[r.data for r in b] for b in drain(consumer)] == [["p", "q"]]
    live.close()
    assert [[r.data for r in b] for b in drain(consumer)] == [["still open"]]
    assert recover(tmp_path) == type(result)(0, 0, 0, 0)


def test_batch_repr_and_iteration(tmp_path: Path) -> None:
    with Producer(tmp_path) as producer:
        producer.put("a")
    batch = Consumer(tmp_path).claim()
    assert isinstance(batch, Batch)
    assert "records=1, held" in repr(batch)
    assert [r.data for r in batch] == ["a"]
    batch.ack()
    assert "done" in repr(batch)


# ----------------------------------------------------------------------------------------------
# entries that are not batch files: set aside in corrupt/, never raised, never blocked on

SHORT = 5.0  # bound for a call that must return at once
BATCH_LIKE = f"{'0' * 20}-{'a' * 16}"  # sorts before any real batch


@contextmanager
def bounded(call: Callable[[], object]) -> Iterator[list[object]]:
    """Run ``call`` in a thread; fail (instead of hanging) if it does not return in time.

    A call stuck opening a fifo is released by opening the fifo's other end.
    """
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(call()), daemon=True)
    thread.start()
    thread.join(SHORT)
    stuck = thread.is_alive()
    if stuck:
        for fifo in FIFOS:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(SHORT)
    assert not stuck, "the call blocked"
    assert result, "the call raised (see the thread's traceback)"
    yield result


FIFOS: list[Path] = []


def make_fifo(path: Path) -> None:
    os.mkfifo(path)
    FIFOS.append(path)


def make_bad_entries(folder: Path, suffix: str) -> list[str]:
    """A directory, a symlink to a directory, a symlink to a file, a dangling symlink, a fifo."""
    names = [f"{BATCH_LIKE[:-1]}{i}{suffix}" for i in range(5)]
    (folder / names[0]).mkdir()
    (folder / names[0] / "inside").write_bytes(b"x")
    (folder / names[1]).symlink_to(folder / names[0])
    target = folder.parent / "elsewhere"
    target.write_bytes(MAGIC)
    (folder / names[2]).symlink_to(target)
    (folder / names[3]).symlink_to(folder.parent / "missing")
    make_fifo(folder / names[4])
    return names


def test_claim_sets_aside_entries_that_are_not_batch_files(tmp_path: Path) -> None:
    publish_one(tmp_path, ["good"])
    bad = make_bad_entries(tmp_path / "ready", ".0")
    consumer = Consumer(tmp_path)
    with bounded(consumer.claim) as (batch,):
        assert isinstance(batch, Batch)
        assert [r.data for r in batch] == ["good"]
        batch.ack()
    assert listing(tmp_path, "ready") == listing(tmp_path, "claimed") == []
    assert listing(tmp_path, "corrupt") == sorted(f"{name}.bad" for name in bad)
    assert (tmp_path / "corrupt" / f"{bad[0]}.bad" / "inside").read_bytes() == b"x"
    assert (tmp_path / "elsewhere").read_bytes() == MAGIC  # a link's target is not touched
    assert recover(tmp_path) == type(recover(tmp_path))(0, 0, 0, 0)
    assert consumer.claim() is None


def test_claim_sets_aside_a_directory_again_and_again(tmp_path: Path) -> None:
    consumer = Consumer(tmp_path)
    for round_ in range(3):
        (tmp_path / "ready" / f"{BATCH_LIKE}.0").mkdir()
        with bounded(consumer.claim) as (batch,):
            assert batch is None
        assert listing(tmp_path, "ready") == []
        assert len(listing(tmp_path, "corrupt")) == round_ + 1  # a name clash gets a new name
        assert recover(tmp_path).requeued == 0


def test_claim_sets_aside_an_entry_it_may_not_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_one(tmp_path, ["good"])
    locked = tmp_path / "ready" / f"{BATCH_LIKE}.0"
    locked.write_bytes(MAGIC)
    real_open = os.open

    def refuse(path: str, flags: int, *args: int) -> int:
        if os.path.basename(path) == locked.name:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse)
    batch = Consumer(tmp_path).claim()
    assert batch is not None
    assert [r.data for r in batch] == ["good"]
    assert listing(tmp_path, "corrupt") == [f"{locked.name}.bad"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_claim_sets_aside_an_unreadable_file(tmp_path: Path) -> None:
    unreadable = tmp_path / "ready" / f"{BATCH_LIKE}.0"
    unreadable.write_bytes(MAGIC)
    unreadable.chmod(0)
    assert Consumer(tmp_path).claim() is None
    assert listing(tmp_path, "corrupt") == [f"{unreadable.name}.bad"]


def test_claim_sets_aside_a_batch_that_fails_to_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = publish_one(tmp_path, ["lost to a disk error"])

    def broken(fd: int) -> bytes:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool_consumer, "_read_all", broken)
    assert Consumer(tmp_path).claim() is None
    assert listing(tmp_path, "claimed") == []
    assert listing(tmp_path, "corrupt") == [f"{path.name}.bad"]


def test_recover_sets_aside_entries_that_are_not_batch_files(tmp_path: Path) -> None:
    Consumer(tmp_path).close()  # creates the folders
    claimed = make_bad_entries(tmp_path / "claimed", ".0")
    opened = [f"{'d' * 16}-{n:010d}.open" for n in range(3)]
    (tmp_path / "tmp" / opened[0]).mkdir()
    make_fifo(tmp_path / "tmp" / opened[1])
    (tmp_path / "tmp" / opened[2]).symlink_to(tmp_path / "elsewhere")
    dotted = f".{opened[0]}.0a1b2c3d"
    (tmp_path / "tmp" / dotted).mkdir()
    for folder in ("dead", "corrupt"):
        (tmp_path / folder / ".half-made").mkdir()
    with bounded(lambda: recover(tmp_path)) as (result,):
        assert isinstance(result, spool.Recovery)
        assert (result.requeued, result.republished, result.dead_lettered) == (0, 0, 0)
        assert result.quarantined == len(claimed) + len(opened) + 1
    assert listing(tmp_path, "claimed") == listing(tmp_path, "ready") == []
    assert listing(tmp_path, "tmp") == []
    expected = [f"{name}.bad" for name in [*claimed, *opened, dotted]] + [".half-made"]
    assert listing(tmp_path, "corrupt") == sorted(expected)
    assert listing(tmp_path, "dead") == [".half-made"]  # left alone, not an error
    assert recover(tmp_path) == spool.Recovery(0, 0, 0, 0, 0)
    assert Consumer(tmp_path).claim() is None
