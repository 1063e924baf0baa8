"""``Artifact``: the files, folders and references that will become one version."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._errors import (
    ConflictError,
    InvalidArgumentError,
    InvalidMetadataError,
    InvalidReferenceError,
    NotFoundError,
)
from .._format.manifest import FileEntry, check_relpath
from .._format.names import validate_name
from .._format.records import clean_metadata
from . import references
from .sources import LocalFile

_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def validate_type(type: object) -> str:
    if not isinstance(type, str) or not _TYPE_RE.fullmatch(type):
        raise InvalidReferenceError(
            f"Invalid artifact type {type!r}: a type such as 'model', 'dataset' or "
            "'predictions' starts with a letter or digit and has at most 64 of the characters "
            "A-Z a-z 0-9 . _ -.",
            value=type,
        )
    return type


class Artifact:
    """A named, typed collection of files to log as a new version.

    Example:
        >>> art = ms.Artifact("digits", "dataset", metadata={"rows": 1797})
        >>> art.add_dir("data/")
        >>> version = shelf.log_artifact(art)
    """

    def __init__(
        self,
        name: str,
        type: str,
        *,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.name = validate_name(name)
        self.type = validate_type(type)
        if description is not None and not isinstance(description, str):
            raise InvalidMetadataError(
                f"description must be a string, not {description.__class__.__name__}.",
                value=description,
            )
        self.description = description
        self.metadata = clean_metadata(metadata)
        self._entries: dict[str, LocalFile | FileEntry] = {}

    def __repr__(self) -> str:
        return f"Artifact({self.name!r}, {self.type!r}, files={len(self._entries)})"

    @property
    def files(self) -> list[str]:
        """The paths the version will hold, sorted."""
        return sorted(self._entries)

    def _add(self, name: str, item: LocalFile | FileEntry) -> None:
        check_relpath(name)
        if name in self._entries:
            raise ConflictError(
                f"{self!r} already holds a file named {name!r}; pass name= to store it under "
                "another path."
            )
        prefix = name + "/"
        clash = next(
            (p for p in self._entries if p.startswith(prefix) or name.startswith(p + "/")), None
        )
        if clash is not None:
            raise ConflictError(
                f"Cannot add {name!r}: {clash!r} is already in {self!r}, and a path cannot be "
                "both a file and a folder."
            )
        self._entries[name] = item

    def add_file(self, path: str | os.PathLike[str], name: str | None = None) -> Artifact:
        """Add one local file, stored as ``name`` (default: its file name)."""
        p = Path(path)
        if not p.is_file():
            what = "a folder (use add_dir)" if p.is_dir() else "missing"
            raise NotFoundError(f"Cannot add {str(path)!r}: it is {what}.")
        self._add(name if name is not None else p.name, LocalFile(p))
        return self

    def add_dir(self, path: str | os.PathLike[str], name: str | None = None) -> Artifact:
        """Add every file under a local folder, under ``name/`` (default: at the top level)."""
        root = Path(path)
        if not root.is_dir():
            what = "a file (use add_file)" if root.is_file() else "missing"
            raise NotFoundError(f"Cannot add the folder {str(path)!r}: it is {what}.")
        if name is not None:
            check_relpath(name, what="folder name")
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for fname in filenames:
                full = Path(dirpath) / fname
                if full.is_file():  # skips broken links, sockets, fifos
                    found.append(full)
        if not found:
            raise NotFoundError(f"Cannot add the folder {str(path)!r}: it holds no files.")
        for full in sorted(found):
            rel = full.relative_to(root).as_posix()
            self._add(f"{name}/{rel}" if name else rel, LocalFile(full))
        return self

    def add_reference(self, uri: str, name: str | None = None, checksum: bool = True) -> Artifact:
        """Record a file (or every file under a folder/prefix) that stays at ``uri``.

        Supports ``file://``, ``s3://``, ``gs://``, ``http(s)://``. The size and ETag are
        recorded, and with ``checksum=True`` the sha256 too (the target is read once).
        """
        if not isinstance(uri, str) or "://" not in uri:
            raise InvalidReferenceError(
                f"Invalid reference URI {uri!r}: give a URI such as 's3://bucket/key', "
                "'https://host/file' or 'file:///absolute/path'.",
                value=uri,
            )
        if name is not None:
            check_relpath(name)
        for rel, entry in references.scan(uri, name, checksum).items():
            self._add(rel, entry)
        return self

    def entries(self) -> dict[str, LocalFile | FileEntry]:
        return dict(self._entries)


def as_artifact(
    item: Artifact | str | os.PathLike[str],
    name: str | None,
    type: str | None,
    type_of: Callable[[str], str | None],
) -> Artifact:
    """What ``log_artifact`` was given, as an Artifact (a path is named after its file, and
    typed as the artifact of that name already is, else ``artifact``)."""
    if isinstance(item, Artifact):
        if name is not None and name != item.name:
            validate_name(name)
            item.name = name
        if type is not None:
            item.type = validate_type(type)
        return item
    if not isinstance(item, (str, os.PathLike)):
        raise InvalidArgumentError(
            f"log_artifact takes an Artifact or a path, not {item.__class__.__name__}.",
            value=item,
        )
    path = Path(item)
    if name is None:
        name = path.resolve().name
        try:
            validate_name(name)
        except InvalidReferenceError:
            raise InvalidReferenceError(
                f"Cannot name an artifact after {str(item)!r}; pass name=.", value=item
            ) from None
    if type is None:
        type = type_of(validate_name(name)) or "artifact"
    art = Artifact(name, type)
    if path.is_dir():
        art.add_dir(path)
    else:
        art.add_file(path)
    return art
