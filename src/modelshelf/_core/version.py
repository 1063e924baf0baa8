"""``ArtifactVersion``: one immutable version of an artifact, with its movable labels."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .._errors import IntegrityError, InvalidMetadataError, NotFoundError
from .._format.names import LATEST, run_id_of, validate_alias, validate_tag
from .._format.records import Record, clean_metadata, parse_time
from .._progress import shown
from . import download as _download

if TYPE_CHECKING:
    from .._format.manifest import Manifest
    from .repository import Repository


class FileInfo(NamedTuple):
    """Size and digest of one file of a version (``uri`` set for a reference)."""

    size: int
    digest: str | None
    uri: str | None = None


class ArtifactVersion:
    """One committed version of an artifact, such as ``digits-cnn:v3``.

    Content (files, digest, size, type, created_at) never changes. Aliases, tags, description
    and metadata can be changed with the methods below; each change is recorded on the shelf
    at once and reflected on this object.
    """

    def __init__(
        self,
        repo: Repository,
        name: str,
        record: Record,
        state: Record,
        aliases: list[str] | None,
        *,
        latest: bool = False,
        alias_map: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self._repo = repo
        self._record = record
        self.name = name  # what it was asked for by: its record keeps the name it was logged as
        self.version: int = int(record["version"])
        self.type: str = record["type"]
        self.digest: str = record["digest"]
        self.size: int = int(record["size"])
        self.created_at: _dt.datetime = parse_time(record["created_at"])
        self.run_id: str | None = record.get("run_id")
        # None: read by ``alias_map`` when first asked for (resolving ``name`` or ``name:vN``
        # needs no alias record); ``latest`` is known when the version is looked up
        if aliases is None and alias_map is None:
            raise TypeError("ArtifactVersion needs its aliases or what reads them")
        self._aliases = None if aliases is None else sorted(aliases)
        self._latest = latest if aliases is None else LATEST in aliases
        self._alias_map = alias_map
        self._apply_state(state)
        self._manifest: Manifest | None = None

    def _apply_state(self, state: Record) -> None:
        self.tags: list[str] = list(state.get("tags", []))
        self.description: str | None = state.get("description")
        self.metadata: dict[str, Any] = dict(state.get("metadata", {}))

    @property
    def aliases(self) -> list[str]:
        """Its aliases, ``latest`` included when it is the newest version (as of the lookup
        that returned it on a bucket; on a filesystem, of the first time this is asked for)."""
        if self._aliases is None:
            assert self._alias_map is not None  # checked when made
            held = self._alias_map()
            names = [a for a, v in held.items() if v == self.version]
            self._aliases = sorted([*names, *([LATEST] if self._latest else [])])
        return self._aliases

    @aliases.setter
    def aliases(self, names: list[str]) -> None:
        self._aliases = names

    @property
    def ref(self) -> str:
        """The exact reference of this version, e.g. ``"digits-cnn:v3"``."""
        return f"{self.name}:v{self.version}"

    @property
    def shelf(self) -> Any:
        """The ``Shelf`` this version is on."""
        return self._repo.facade

    def __repr__(self) -> str:
        aliases = f" aliases={self.aliases}" if self.aliases else ""
        return f"<ArtifactVersion {self.ref} type={self.type!r} size={self.size}{aliases}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ArtifactVersion):
            return NotImplemented
        return (self._repo.url, self.ref) == (other._repo.url, other.ref)

    def __hash__(self) -> int:
        return hash((self._repo.url, self.ref))

    # -- content -------------------------------------------------------------------------
    @property
    def manifest_hex(self) -> str:
        """What its commit record names as its manifest's sha256 (unchecked)."""
        return str(self._record.get("manifest"))

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            manifest = self._repo.manifest(self._record["manifest"])
            if manifest.digest() != self.digest:
                raise IntegrityError(
                    f"{self.ref}: its manifest does not hold the content its commit record names "
                    f"({self.digest}); the shelf was edited by hand or tampered with.",
                    ref=self.ref,
                )
            self._manifest = manifest
        return self._manifest

    @property
    def files(self) -> dict[str, FileInfo]:
        """Every file of the version: path -> (size, digest[, uri])."""
        return {
            path: FileInfo(e.size, e.digest, e.ref["uri"] if e.ref else None)
            for path, e in self.manifest.files.items()
        }

    def download(self, root: str | Path | None = None, *, verify: bool = True) -> Path:
        """Return a local folder holding the version's files.

        Without ``root`` the files land in the local cache (shared with other versions that
        hold the same bytes); with ``root`` they are copied there. With ``verify`` every file
        is checked against its digest, even if it was already cached.

        Raises:
            IntegrityError: a file does not match its digest, a reference changed, or a
                manifest path would escape the folder.
        """
        with shown(self.size, f"download {self.ref}"):
            return _download.download(
                self._repo, self, None if root is None else Path(root), verify=verify
            )

    def path(self, file: str) -> Path:
        """Return a local path to one file of the version (fetched and checked if needed)."""
        if file not in self.manifest.files:
            known = sorted(self.manifest.files)
            raise NotFoundError(
                f"{self.ref} has no file {file!r}; it holds: {', '.join(known[:20])}"
                + (f" and {len(known) - 20} more" if len(known) > 20 else ""),
                ref=self.ref,
            )
        return _download.download_file(self._repo, self, file)

    def verify(self) -> None:
        """Check every stored byte (and every reference) against its digest.

        Raises:
            IntegrityError: naming every file that is missing, corrupted or changed.
        """
        _download.verify_on_shelf(self._repo, self)

    # -- labels --------------------------------------------------------------------------
    def set_alias(self, alias: str, *, run: Any = None) -> ArtifactVersion:
        """Point ``alias`` at this version (moving it from another version if needed)."""
        validate_alias(alias)
        self._repo.labels.move_aliases(self.name, {alias: self.version}, run_id=run_id_of(run))
        if alias not in self.aliases:
            self.aliases = sorted([*self.aliases, alias])
        return self

    def remove_alias(self, alias: str, *, run: Any = None) -> ArtifactVersion:
        """Remove ``alias`` from this version."""
        validate_alias(alias)
        self._repo.labels.remove_alias(self.name, alias, self.version, run_id=run_id_of(run))
        self.aliases = [a for a in self.aliases if a != alias]
        return self

    def add_tags(self, *tags: str) -> ArtifactVersion:
        """Add tags (free-form labels; unlike aliases, many versions can share one)."""
        for tag in tags:
            validate_tag(tag)

        def change(state: Record) -> None:
            state["tags"] = sorted(set(state.get("tags", [])) | set(tags))

        self._apply_state(self._repo.labels.update_state(self.name, self.version, change))
        return self

    def remove_tags(self, *tags: str) -> ArtifactVersion:
        """Remove tags; tags the version does not have are ignored."""
        for tag in tags:
            validate_tag(tag)

        def change(state: Record) -> None:
            state["tags"] = sorted(set(state.get("tags", [])) - set(tags))

        self._apply_state(self._repo.labels.update_state(self.name, self.version, change))
        return self

    def set_description(self, text: str | None) -> ArtifactVersion:
        """Replace the version's description."""
        if text is not None and not isinstance(text, str):
            raise InvalidMetadataError(
                f"A description is a string or None, not {text.__class__.__name__}.", value=text
            )

        def change(state: Record) -> None:
            state["description"] = text

        self._apply_state(self._repo.labels.update_state(self.name, self.version, change))
        return self

    def update_metadata(self, metadata: dict[str, Any]) -> ArtifactVersion:
        """Merge ``metadata`` into the version's metadata (top-level keys are replaced)."""
        cleaned = clean_metadata(metadata)

        def change(state: Record) -> None:
            state["metadata"] = {**state.get("metadata", {}), **cleaned}

        self._apply_state(self._repo.labels.update_state(self.name, self.version, change))
        return self

    def remove_metadata(self, *keys: str) -> ArtifactVersion:
        """Remove top-level ``keys`` from the version's metadata (absent ones are ignored)."""
        gone = set(keys)

        def change(state: Record) -> None:
            state["metadata"] = {
                k: v for k, v in state.get("metadata", {}).items() if k not in gone
            }

        self._apply_state(self._repo.labels.update_state(self.name, self.version, change))
        return self

    # -- lineage -------------------------------------------------------------------------
    def logged_by(self) -> Any:
        """The run that logged this version (a ``Run``), or None."""
        if self.run_id is None:
            return None
        try:
            return self.shelf.get_run(self.run_id)
        except NotFoundError:
            return None  # logged with a run id whose run record is not on this shelf

    def used_by(self) -> list[Any]:
        """The runs that used this version as an input, oldest first."""
        runs = []
        for run_id in self._repo.used_by(self.name, self.version):
            try:
                runs.append(self.shelf.get_run(run_id))
            except NotFoundError:
                continue
        return sorted(runs, key=lambda r: (r.started_at, r.id))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (used by the CLI's ``--json``)."""
        return {
            "ref": self.ref,
            "name": self.name,
            "version": self.version,
            "type": self.type,
            "aliases": self.aliases,
            "tags": self.tags,
            "description": self.description,
            "metadata": self.metadata,
            "created_at": self.created_at.isoformat(),
            "digest": self.digest,
            "size": self.size,
            "run_id": self.run_id,
        }

    @property
    def is_latest(self) -> bool:
        return self._latest if self._aliases is None else LATEST in self._aliases
