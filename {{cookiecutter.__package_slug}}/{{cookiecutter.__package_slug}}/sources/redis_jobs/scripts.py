"""The jobs stream's Lua scripts, read from `lua/` at import. Each step is one atomic script,
so no state is half-changed; each file says its KEYS, ARGV and reply. The shared functions of
`helpers.lua` come first in the scripts that use them."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

LUA = Path(__file__).with_name("lua")


def _read(name: str) -> str:
    return (LUA / f"{name}.lua").read_text(encoding="utf-8")


HELPERS = _read("helpers")
LOCATE = HELPERS + _read("locate")
FETCH = HELPERS + _read("fetch")
ACK = _read("ack")
SETTLE = HELPERS + _read("settle")
RELEASE = HELPERS + _read("release")
RENEW = HELPERS + _read("renew")
SUBMIT_KEYED = _read("submit_keyed")
SCHEDULE = _read("schedule")
REPLAY = HELPERS + _read("replay")
EVERY = _read("every")
STATUS = LOCATE + _read("status")
CANCEL = LOCATE + _read("cancel")


@cache
def sha(lua: str) -> str:
    """The SHA-1 Redis knows a script by (EVALSHA)."""
    return hashlib.sha1(lua.encode()).hexdigest()
