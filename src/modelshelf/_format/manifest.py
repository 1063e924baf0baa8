"""The manifest of a version: every file's path, size and digest, or where it is referenced.

A file entry is one of
- a blob: ``{"size": N, "digest": "sha256:<hex>"}``, its bytes at ``blobs/sha256/<aa>/<hex>``;
- chunked: the same plus ``"chunks": [{"digest": ..., "size": ...}, ...]``, the file being the
  concatenation of those blobs (a safetensors file cut on tensor boundaries, see
  ``_format.safetensors``: versions that share tensors share those chunks);
- a reference: ``{"size": N, "digest": "sha256:<hex>" | null, "ref": {"uri": ..., "etag": ...}}``,
  its bytes staying at ``uri``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import IntegrityError, InvalidReferenceError

MANIFEST_FORMAT = 1
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
HEX_RE = re.compile(r"[0-9a-f]{64}")


def check_digest(value: object, where: str) -> str:
    """Return ``value`` if it is ``sha256:<64 hex>``; a digest also names files, so check it."""
    if not isinstance(value, str) or not _DIGEST_RE.fullmatch(value):
        raise IntegrityError(f"{where} has a malformed digest {value!r}; expected 'sha256:<hex>'.")
    return value


def check_relpath(path: str, *, what: str = "file name") -> str:
    """Return ``path`` if it is a safe relative POSIX path inside a version, else raise."""
    bad = (
        not isinstance(path, str)
        or not path
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or (len(path) > 1 and path[1] == ":")
        or any(part in ("", ".", "..") for part in path.split("/"))
    )
    if bad:
        raise InvalidReferenceError(
            f"Invalid {what} {path!r}: a file inside a version is a relative path with '/' "
            "separators and no empty, '.' or '..' parts.",
            value=path,
        )
    return path


def _manifest_path(path: object, where: str) -> str:
    """A path read from a manifest, refused unless it is a safe relative path."""
    try:
        return check_relpath(path)  # type: ignore[arg-type]
    except InvalidReferenceError:
        raise IntegrityError(
            f"Refusing the manifest path {path!r} in {where}: a file inside a version is a "
            "relative path with no '..' parts. The shelf may have been tampered with.",
            files=[str(path)],
        ) from None


def safe_join(root: Path, relpath: str) -> Path:
    """Join a manifest path under ``root``, refusing any that would escape it."""
    try:
        check_relpath(relpath)
    except InvalidReferenceError:
        raise IntegrityError(
            f"Refusing the manifest path {relpath!r}: it would be written outside the "
            f"download folder {str(root)!r}. The shelf may have been tampered with.",
            files=[str(relpath)],
        ) from None
    target = (root / relpath).resolve()
    if not target.is_relative_to(root.resolve()):
        raise IntegrityError(
            f"Refusing the manifest path {relpath!r}: it resolves outside {str(root)!r} "
            "(through a symbolic link).",
            files=[relpath],
        )
    return root / relpath


@dataclass(frozen=True)
class FileEntry:
    """One file of a version."""

    size: int
    digest: str | None  # "sha256:<hex>", None for a reference recorded without a checksum
    chunks: tuple[tuple[str, int], ...] = ()
    ref: dict[str, Any] | None = None

    @property
    def hex(self) -> str | None:
        return self.digest.split(":", 1)[1] if self.digest else None

    def identity(self) -> str:
        """What makes two entries the same content, for the version digest."""
        if self.digest:
            return self.digest
        assert self.ref is not None
        return f"ref:{self.ref.get('uri')}:{self.ref.get('etag')}:{self.size}"

    def blob_hexes(self) -> set[str]:
        """The blobs this file needs on the shelf (none for a reference)."""
        if self.ref is not None:
            return set()
        if self.chunks:
            return {d.split(":", 1)[1] for d, _ in self.chunks}
        return {self.hex} if self.hex else set()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"size": self.size, "digest": self.digest}
        if self.chunks:
            out["chunks"] = [{"digest": d, "size": s} for d, s in self.chunks]
        if self.ref is not None:
            out["ref"] = self.ref
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> FileEntry:
        chunks = tuple(
            (check_digest(c["digest"], where), int(c["size"])) for c in data.get("chunks", ())
        )
        ref = data.get("ref")
        digest = data.get("digest")
        if digest is not None or ref is None:
            check_digest(digest, where)
        if ref is not None and not (isinstance(ref, dict) and isinstance(ref.get("uri"), str)):
            raise IntegrityError(f"{where} has a malformed reference {ref!r}.")
        size = int(data["size"])
        if size < 0:
            raise IntegrityError(f"{where} has a negative size.")
        if chunks and (
            ref is not None or any(n < 0 for _, n in chunks) or sum(n for _, n in chunks) != size
        ):
            raise IntegrityError(
                f"{where} has chunks that do not make up its {size} bytes "
                f"({[n for _, n in chunks][:8]}...)."
            )
        return cls(size=size, digest=digest, chunks=chunks, ref=ref)


@dataclass
class Manifest:
    """The files of a version, by relative path."""

    files: dict[str, FileEntry] = field(default_factory=dict)

    def digest(self) -> str:
        """The version's content digest: sha256 over sorted (path, content identity)."""
        lines = [[p, e.identity()] for p, e in sorted(self.files.items())]
        return "sha256:" + hashlib.sha256(json.dumps(lines).encode()).hexdigest()

    @property
    def size(self) -> int:
        return sum(e.size for e in self.files.values())

    def blob_hexes(self) -> set[str]:
        """Every blob this manifest needs on the shelf."""
        return {h for e in self.files.values() for h in e.blob_hexes()}

    def blob_sizes(self) -> dict[str, int]:
        """Every blob this manifest needs on the shelf, and its size."""
        sizes: dict[str, int] = {}
        for entry in self.files.values():
            if entry.chunks:
                sizes.update((d.split(":", 1)[1], n) for d, n in entry.chunks)
            elif entry.hex and entry.ref is None:
                sizes[entry.hex] = entry.size
        return sizes

    def to_bytes(self) -> bytes:
        body = {
            "format": MANIFEST_FORMAT,
            "files": {p: e.to_json() for p, e in sorted(self.files.items())},
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> Manifest:
        try:
            body = json.loads(data)
            if int(body.get("format", 0)) > MANIFEST_FORMAT:
                raise IntegrityError(
                    f"The manifest {where} uses format {body['format']}, newer than this "
                    f"modelshelf understands ({MANIFEST_FORMAT}). Upgrade modelshelf."
                )
            files = {
                _manifest_path(p, where): FileEntry.from_json(
                    e, f"The manifest {where}, file {p!r},"
                )
                for p, e in body["files"].items()
            }
        except IntegrityError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise IntegrityError(f"The manifest {where} is malformed ({exc!r:.200}).") from None
        return cls(files)

    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()
