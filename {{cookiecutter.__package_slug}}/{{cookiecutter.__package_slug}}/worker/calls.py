"""How the worker calls user code: signature checks up front, keyword arguments, context opening.

QuasiQueue calls `writer(desired=..., settings=...)`, `reader(item=..., ctx=..., settings=...)`
and `context(settings=...)` with keyword arguments, passing only the ones a function names.
The checks here run when the worker is built, so a wrong signature fails at once with a
message instead of failing on every item in a worker process.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any, cast

from .errors import SignatureError

WRITER_ARGS = ("desired", "settings")
READER_ARGS = ("item", "ctx", "settings")
CONTEXT_ARGS = ("settings",)


def _accepted(function: Callable[..., Any], role: str, allowed: tuple[str, ...]) -> frozenset[str]:
    """Return which of `allowed` the function takes; raise if it needs anything else."""
    if not callable(function):
        raise SignatureError(f"{role} must be a function, got {function!r}")
    signature = inspect.signature(function)
    call = f"{role}({', '.join(f'{name}=...' for name in allowed)})"
    shown = f"{getattr(function, '__name__', role)}{signature}"
    takes: set[str] = set()
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            takes.update(allowed)
        elif parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        elif parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            if parameter.default is inspect.Parameter.empty:
                raise SignatureError(
                    f"{shown} cannot be called as {call}: parameter {name!r} is positional-only "
                    "and arguments are passed by keyword; remove the '/'"
                )
        elif name in allowed:
            takes.add(name)
        elif parameter.default is inspect.Parameter.empty:
            raise SignatureError(
                f"{shown} cannot be called as {call}: parameter {name!r} is required; "
                f"name the parameters from {', '.join(allowed)} (all by keyword)"
            )
    return frozenset(takes)


def check_writer(writer: Callable[..., Any]) -> frozenset[str]:
    """Check the writer: an async generator function taking `desired` and/or `settings`."""
    takes = _accepted(writer, "writer", WRITER_ARGS)
    if not inspect.isasyncgenfunction(writer):
        raise SignatureError(
            f"writer {writer!r} must be an async generator function "
            "(`async def writer(desired, settings):` that `yield`s items)"
        )
    return takes


def check_reader(reader: Callable[..., Any]) -> frozenset[str]:
    """Check the reader: a sync or async function taking `item`, and maybe `ctx`, `settings`."""
    takes = _accepted(reader, "reader", READER_ARGS)
    if "item" not in takes:
        shown = f"{getattr(reader, '__name__', 'reader')}{inspect.signature(reader)}"
        raise SignatureError(
            f"{shown} cannot be called as reader(item=..., ctx=..., settings=...): "
            "add a parameter named 'item'"
        )
    return takes


def check_context(context: Callable[..., Any] | None) -> frozenset[str]:
    """Check the context function, if any: it may take `settings`."""
    if context is None:
        return frozenset()
    return _accepted(context, "context", CONTEXT_ARGS)


def keywords(takes: frozenset[str], **values: Any) -> dict[str, Any]:
    """Return the subset of `values` that a function takes."""
    return {name: value for name, value in values.items() if name in takes}


async def open_context(
    stack: AsyncExitStack, context: Callable[..., Any] | None, settings: Any
) -> Any:
    """Open the per-process context and register its close step on `stack`.

    `context` may be a plain or async function returning the context, or a (sync or async)
    generator function that yields it once: the code after its `yield` is the close step,
    run when the process ends or is recycled.
    """
    if context is None:
        return None
    kwargs = keywords(check_context(context), settings=settings)
    if inspect.isasyncgenfunction(context):
        manager = asynccontextmanager(cast(Callable[..., AsyncIterator[Any]], context))
        return await stack.enter_async_context(manager(**kwargs))
    if inspect.isgeneratorfunction(context):
        return stack.enter_context(contextmanager(context)(**kwargs))
    result = context(**kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result
