"""Transfer progress: code that moves bytes reports them; a front end (the CLI, or a bar the
library shows itself) listens. And how a number of bytes reads to a person."""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

#: Transfers smaller than this show no progress bar.
PROGRESS_MIN_BYTES = 4 * 1024 * 1024

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


def watched_by() -> str | None:
    """Who can see a progress bar: ``"notebook"`` (Jupyter, Colab), ``"terminal"`` (stderr is
    one), or None (a log file, a CI job, a test; or ``MODELSHELF_PROGRESS=0``)."""
    if os.environ.get("MODELSHELF_PROGRESS", "").strip().lower() in ("0", "false", "no", "off"):
        return None
    if "google.colab" in sys.modules:
        return "notebook"
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython is not None else None
    if type(shell).__name__ == "ZMQInteractiveShell":
        return "notebook"
    stderr = sys.stderr
    return "terminal" if stderr is not None and stderr.isatty() else None


@contextlib.contextmanager
def shown(total: int, what: str) -> Iterator[None]:
    """A progress bar over the transfers inside the block, when they move at least
    PROGRESS_MIN_BYTES and someone watches: tqdm.auto's in a notebook (a widget where
    ipywidgets is installed), Rich's on a terminal. None where the caller listens already
    (the CLI draws its own), or where the library it needs is not installed."""
    where = watched_by() if total >= PROGRESS_MIN_BYTES and _LISTENER.get() is None else None
    bar: Any = None
    with contextlib.ExitStack() as stack:
        if where == "notebook":
            with contextlib.suppress(ImportError):
                from tqdm.auto import tqdm

                bar = stack.enter_context(
                    tqdm(total=total, desc=what, unit="B", unit_scale=True, unit_divisor=1024,
                         leave=False)
                )  # fmt: skip
                stack.enter_context(listening(bar.update))
        elif where == "terminal":
            with contextlib.suppress(ImportError):
                from rich.console import Console
                from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

                columns = ("{task.description}", BarColumn(), DownloadColumn(),
                           TransferSpeedColumn())  # fmt: skip
                progress = stack.enter_context(
                    Progress(*columns, console=Console(stderr=True), transient=True)
                )
                task = progress.add_task(what, total=total)
                stack.enter_context(listening(lambda n: progress.advance(task, n)))
        yield


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
