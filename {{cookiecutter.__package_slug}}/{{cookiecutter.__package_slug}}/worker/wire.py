"""The frames a parent and its worker processes exchange over one socket pair.

A frame is a fixed header (kind, sequence number, attempts, payload length) followed by the
payload: a pickled item on the way to a worker process (with tracing, after its trace
carrier and a newline), an error text on the way back.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

HEADER = struct.Struct("!BQHI")


class Kind(enum.IntEnum):
    """What a frame means."""

    # parent -> worker process
    ITEM = 1  # run the reader on this item
    RETIRE = 2  # finish every item you hold, then exit (process recycling)
    STOP = 3  # finish what is running, hand back what has not started, then exit
    # worker process -> parent
    READY = 10  # the context is open; send items
    SUCCEEDED = 11
    FAILED = 12  # payload: the error text
    NOT_STARTED = 13  # handed back at STOP
    CONTEXT_FAILED = 14  # payload: the error text; the process exits
    READ = 15  # with a commit step: the reader is done with these items (payload: their
    # sequence numbers, see `encode_seqs`), their commits run
    TIMED_OUT = 16  # FAILED because the reader overran READER_TIMEOUT; payload: the error text
    STARTED = 17  # these items start (payload: their sequence numbers), before their readers
    SLOTS = 18  # the process's reader slots are now `seq` (adaptive slots)
    GAVE_UP = 19  # FAILED for good (worker.Permanent): no other attempt; payload: the error


class Frame(NamedTuple):
    """One decoded frame."""

    kind: int
    seq: int
    attempts: int
    payload: bytes


def encode(kind: Kind, seq: int = 0, attempts: int = 0, payload: bytes = b"") -> bytes:
    """Return the bytes of one frame."""
    return HEADER.pack(kind, seq, attempts, len(payload)) + payload


def encode_seqs(kind: Kind, seqs: list[int]) -> bytes:
    """Return one frame whose payload is the sequence numbers `seqs`."""
    return encode(kind, payload=struct.pack(f"!{len(seqs)}Q", *seqs))


def decode_seqs(payload: bytes) -> tuple[int, ...]:
    """The sequence numbers in the payload of a frame made by `encode_seqs`."""
    return struct.unpack(f"!{len(payload) // 8}Q", payload)


class FrameReader:
    """Collects received bytes and returns the complete frames among them."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """Add `data` and return every frame now complete, in order."""
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        position, size, header = 0, len(buffer), HEADER.size
        while size - position >= header:
            kind, seq, attempts, length = HEADER.unpack_from(buffer, position)
            end = position + header + length
            if end > size:
                break
            frames.append(Frame(kind, seq, attempts, bytes(buffer[position + header : end])))
            position = end
        del buffer[:position]
        return frames
