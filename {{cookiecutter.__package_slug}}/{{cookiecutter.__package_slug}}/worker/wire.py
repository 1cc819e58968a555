"""The frames a parent and its worker processes exchange over one socket pair.

A frame is a fixed header (kind, sequence number, attempts, payload length, carrier length)
followed by the carrier, then the payload. An item on its way to a worker process carries
its pickled self as the payload and, with tracing, the trace context it was fetched in as the
carrier; on the way back the payload is an error text, or sequence numbers.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

HEADER = struct.Struct("!BQHIH")


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
    READER_DONE = 15  # these items' readers ended, their commits run (payload: their seqs)
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
    carrier: bytes


def encode(
    kind: Kind, seq: int = 0, attempts: int = 0, payload: bytes = b"", carrier: bytes = b""
) -> bytes:
    """Return the bytes of one frame."""
    return HEADER.pack(kind, seq, attempts, len(payload), len(carrier)) + carrier + payload


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
            kind, seq, attempts, length, carried = HEADER.unpack_from(buffer, position)
            start = position + header
            end = start + carried + length
            if end > size:
                break
            carrier = bytes(buffer[start : start + carried]) if carried else b""
            frames.append(Frame(kind, seq, attempts, bytes(buffer[start + carried : end]), carrier))
            position = end
        del buffer[:position]
        return frames
