"""``flaky://``: local disk seen through a generic fsspec filesystem that injects faults.

It is neither local disk to modelshelf (the protocol is not ``file``), nor an object store,
nor memory, so a shelf on it takes the generic storage path: create-if-absent opens the final
key with ``"xb"``, moves are fsspec's. ``FlakyFileSystem.fault_rate`` of the calls that write,
move, remove or read fail with ``EIO``; a failing write first writes part of its bytes, as a
connection dropped in the middle would. ``fault_rate = 0`` gives a well-behaved generic
backend.
"""

from __future__ import annotations

import errno
import random
from typing import Any, ClassVar

import fsspec
from fsspec.implementations.local import LocalFileSystem


class InjectedFault(OSError):
    def __init__(self, what: str) -> None:
        super().__init__(errno.EIO, f"injected fault: {what}")


class _FlakyFile:
    """A file opened for writing whose ``write`` may stop halfway and fail."""

    def __init__(self, fs: FlakyFileSystem, f: Any) -> None:
        self._fs, self._f = fs, f

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self._fs.roll():
            self._f.write(view[: len(view) // 2])
            self._f.flush()
            raise InjectedFault("write")
        return int(self._f.write(view))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _FlakyFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


class FlakyFileSystem(LocalFileSystem):
    protocol: ClassVar[tuple[str, ...]] = ("flaky",)  # type: ignore[misc]
    fault_rate: ClassVar[float] = 0.0
    faults: ClassVar[int] = 0
    rng: ClassVar[random.Random] = random.Random(0)

    @classmethod
    def roll(cls) -> bool:
        if cls.fault_rate and cls.rng.random() < cls.fault_rate:
            cls.faults += 1
            return True
        return False

    def _fail(self, what: str) -> None:
        if self.roll():
            raise InjectedFault(what)

    def _open(self, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        if "r" in mode:
            self._fail("open for reading")
            return super()._open(path, mode, *args, **kwargs)
        self._fail("open for writing")
        return _FlakyFile(self, super()._open(path, mode, *args, **kwargs))

    def cat_file(self, path: str, *args: Any, **kwargs: Any) -> Any:
        self._fail("read")
        return super().cat_file(path, *args, **kwargs)

    def mv(self, path1: str, path2: str, *args: Any, **kwargs: Any) -> None:
        self._fail("move")
        super().mv(path1, path2, *args, **kwargs)

    def rm_file(self, path: str) -> None:
        self._fail("remove")
        super().rm_file(path)

    def rm(self, path: Any, *args: Any, **kwargs: Any) -> None:
        self._fail("remove")
        super().rm(path, *args, **kwargs)


def register() -> None:
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
