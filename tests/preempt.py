"""Simulated preemption for the resume tests: SIGKILL this process once a version is logged."""

from __future__ import annotations

import os
import signal
import time

import modelshelf as ms


def kill_when_logged(shelf: ms.Shelf, ref: str, timeout: float = 60) -> None:
    """Wait until ``ref`` is on the shelf (background writes finish), then SIGKILL ourselves."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            shelf.get(ref)
        except ms.NotFoundError:
            time.sleep(0.05)
            continue
        os.kill(os.getpid(), signal.SIGKILL)
    raise TimeoutError(f"{ref} was never logged")
