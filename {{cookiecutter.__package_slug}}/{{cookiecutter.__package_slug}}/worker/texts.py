"""Texts about items and errors for logs and outcomes, built so that they cannot fail.

An item's `__repr__` or an exception's `__str__` is user code: it may raise. Every text the
runtime builds goes through these functions, so a broken one can never keep an item from
ending with an outcome.
"""

from __future__ import annotations

from typing import Any

LIMIT = 2000  # characters of an error text kept in an outcome


def shorten(value: Any, limit: int = 200) -> str:
    """Return `repr(value)`, cut to `limit` characters; never raises."""
    try:
        text = repr(value)
    except BaseException as exc:  # a broken __repr__ must not stop the runtime
        text = f"<{_type_name(value)} object; its repr raised {_type_name(exc)}>"
    if not isinstance(text, str):
        text = f"<{_type_name(value)} object>"
    return text if len(text) <= limit else f"{text[: limit - 15]}... ({len(text)} chars)"


def error_text(exc: BaseException, limit: int = LIMIT) -> str:
    """Return `Type: message` for an exception, cut to `limit` characters; never raises."""
    try:
        message = str(exc)
    except BaseException as inner:  # a broken __str__ must not stop the runtime
        message = f"<its str raised {_type_name(inner)}>"
    if not isinstance(message, str):
        message = "<its str is not a str>"
    return f"{_type_name(exc)}: {message}"[:limit]


def _type_name(value: Any) -> str:
    try:
        return str(type(value).__qualname__)
    except BaseException:  # a metaclass can make even this raise
        return "object"
