"""Transfer progress: code that moves bytes reports them; a front end (the CLI) listens.
And how a number of bytes reads to a person."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

_LISTENER: contextvars.ContextVar[Callable[[int], None] | None] = contextvars.ContextVar(
    "modelshelf_progress", default=None
)


def report(nbytes: int) -> None:
    """Tell the listener (if any) that ``nbytes`` more bytes were transferred."""
    listener = _LISTENER.get()
    if listener is not None and nbytes:
        listener(nbytes)


@contextlib.contextmanager
def listening(callback: Callable[[int], None]) -> Iterator[None]:
    """Send the bytes transferred inside the block to ``callback``."""
    token = _LISTENER.set(callback)
    try:
        yield
    finally:
        _LISTENER.reset(token)


def human_size(n: int | None) -> str:
    """``1536`` -> ``"1.5 KiB"``; None -> ``"-"``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)
