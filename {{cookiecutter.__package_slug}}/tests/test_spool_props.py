"""Property tests (hypothesis) of the spool's framing, corruption handling and order."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from {{ cookiecutter.__package_slug }}.spool import MAGIC, Consumer, Producer, Record

PROPS = settings(max_examples=40, deadline=None)

records_st = st.lists(
    st.tuples(
        st.one_of(st.binary(max_size=64), st.text(max_size=32)),
        st.one_of(st.none(), st.text(max_size=8)),
    ),
    max_size=40,
)


@contextmanager
def spool_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="spool-prop-") as name:
        yield Path(name)


def consume_all(root: Path) -> list[list[Record]]:
    consumer = Consumer(root, fsync=False)
    out = []
    while (batch := consumer.claim()) is not None:
        out.append(list(batch))
        batch.ack()
    return out


@PROPS
@given(
    items=records_st,
    max_records=st.integers(1, 10),
    max_bytes=st.integers(1, 300),
)
def test_every_record_comes_back_once_in_order_with_its_type_and_key(
    items: list[tuple[bytes | str, str | None]], max_records: int, max_bytes: int
) -> None:
    with spool_dir() as root:
        with Producer(root, max_records=max_records, max_bytes=max_bytes, fsync=False) as p:
            for data, key in items:
                p.put(data, key=key)
        batches = consume_all(root)
    assert all(0 < len(b) <= max_records for b in batches)
    flat = [r for b in batches for r in b]
    assert [r.data for r in flat] == [data for data, _ in items]
    assert [type(r.data) for r in flat] == [type(data) for data, _ in items]
    for record, (_, key) in zip(flat, items, strict=True):
        if key is not None:
            assert record.key == key
    derived = [r.key for r, (_, key) in zip(flat, items, strict=True) if key is None]
    assert len(set(derived)) == len(derived)


def publish(root: Path, items: list[bytes]) -> tuple[Path, list[int]]:
    """Publish one batch; return its path and the end offset of every frame."""
    ends, off = [], len(MAGIC)
    with Producer(root, max_records=1000, max_bytes=1 << 20, fsync=False) as producer:
        for item in items:
            producer.put(item)
            off += 11 + len(item)
            ends.append(off)
    (name,) = os.listdir(root / "ready")
    return root / "ready" / name, ends


@PROPS
@given(items=st.lists(st.binary(max_size=40), min_size=1, max_size=20), data=st.data())
def test_a_torn_batch_delivers_exactly_its_complete_prefix(
    items: list[bytes], data: st.DataObject
) -> None:
    with spool_dir() as root:
        path, ends = publish(root, items)
        raw = path.read_bytes()
        cut = data.draw(st.integers(len(MAGIC), len(raw)), label="cut")
        path.write_bytes(raw[:cut])
        batches = consume_all(root)
        complete = sum(1 for end in ends if end <= cut)
        assert [r.data for b in batches for r in b] == items[:complete]
        quarantined = {
            name: (root / "corrupt" / name).read_bytes() for name in os.listdir(root / "corrupt")
        }
    start = ends[complete - 1] if complete else len(MAGIC)
    if cut > start:
        ((name, tail),) = quarantined.items()
        assert name.endswith(f"@{start}.bad")
        assert tail == raw[start:cut]
    else:
        assert quarantined == {}


@PROPS
@given(items=st.lists(st.binary(max_size=40), min_size=1, max_size=20), data=st.data())
def test_a_flipped_byte_is_never_delivered_and_costs_at_most_the_rest(
    items: list[bytes], data: st.DataObject
) -> None:
    with spool_dir() as root:
        path, ends = publish(root, items)
        raw = bytearray(path.read_bytes())
        pos = data.draw(st.integers(len(MAGIC), len(raw) - 1), label="pos")
        raw[pos] ^= data.draw(st.integers(1, 255), label="xor")
        path.write_bytes(bytes(raw))
        batches = consume_all(root)
    hit = next(i for i, end in enumerate(ends) if pos < end)
    starts = [len(MAGIC), *ends[:-1]]
    flat = [r for b in batches for r in b]
    indexes = [starts.index(int(r.key.rsplit("/", 1)[1])) for r in flat]
    assert hit not in indexes
    assert indexes[:hit] == list(range(hit))  # everything before the damage arrives
    assert indexes == sorted(set(indexes))
    assert [r.data for r in flat] == [items[i] for i in indexes]


@PROPS
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 2), st.integers(1, 4)),
        min_size=1,
        max_size=12,
    )
)
def test_batches_are_claimed_in_publish_order_across_producers(
    steps: list[tuple[int, int]],
) -> None:
    """Each step: one of three producers puts a few records and flushes (publishes)."""
    with spool_dir() as root:
        producers = [Producer(root, max_records=100, max_age=None, fsync=False) for _ in range(3)]
        expected = []
        for n, (who, count) in enumerate(steps):
            batch = [f"{who}:{n}:{i}" for i in range(count)]
            for item in batch:
                producers[who].put(item)
            producers[who].flush()
            expected.append(batch)
        for producer in producers:
            producer.close()
        batches = consume_all(root)
    assert [[r.data for r in b] for b in batches] == expected
