"""Fork safety: a forked child closes its copies of our locked files (the parent keeps the
locks). Producers and consumers register here; the registry is this module's."""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class _ForkAware(Protocol):
    def _drop_after_fork(self) -> None: ...


_tracked: weakref.WeakSet[_ForkAware] | None = None


def _after_fork_in_child() -> None:
    for obj in list(_tracked or ()):
        obj._drop_after_fork()


def _track(obj: _ForkAware) -> None:
    global _tracked
    if _tracked is None:
        _tracked = weakref.WeakSet()
        os.register_at_fork(after_in_child=_after_fork_in_child)
    _tracked.add(obj)
