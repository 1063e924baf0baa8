"""Clean-up: delete and prune versions (gc itself is in the core, beside the commit path)."""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Any

from .._errors import ConflictError, InvalidArgumentError
from .._format.names import LATEST
from .._format.records import now

if TYPE_CHECKING:
    from .._core.repository import Repository
    from .._core.version import ArtifactVersion


def delete(repo: Repository, ref: str, *, force: bool) -> ArtifactVersion:
    """Delete one version (see ``Shelf.delete``)."""
    version = repo.get(ref)
    held = [a for a in version.aliases if a != LATEST]
    if held and not force:
        raise ConflictError(
            f"{version.ref} has the aliases {', '.join(held)}; move them first or pass "
            "force=True to remove them with the version."
        )
    if held:
        repo.labels.move_aliases(version.name, dict.fromkeys(held))
    repo.labels.mark_deleted(version.name, version.version)
    return version


def delete_all(repo: Repository, name: str) -> list[ArtifactVersion]:
    """Delete every version of ``name`` and all its aliases (see ``Shelf.delete``). The name
    stays reserved: its type and version numbers are never reused."""
    versions = repo.versions(name)
    held = {a for v in versions for a in v.aliases if a != LATEST}
    if held:
        repo.labels.move_aliases(name, dict.fromkeys(sorted(held)))
    for v in versions:
        repo.labels.mark_deleted(v.name, v.version)
    return versions


def prune(
    repo: Repository,
    name: str,
    *,
    keep_last: int | None,
    keep_aliased: bool,
    dry_run: bool,
    older_than: _dt.timedelta | float | None = None,
    unused: bool = False,
) -> list[ArtifactVersion]:
    """Delete the versions of ``name`` that every given rule selects (see ``Shelf.prune``)."""
    if keep_last is None and older_than is None and not unused:
        raise InvalidArgumentError(
            "Say what to prune: keep_last=N, older_than=<age> or unused=True (they combine)."
        )
    if keep_last is not None and (
        not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 0
    ):
        raise InvalidArgumentError(f"keep_last must be an int >= 0, not {keep_last!r}.")
    age = _age(older_than)
    versions = repo.versions(name)
    doomed = versions if keep_last is None else versions[: max(len(versions) - keep_last, 0)]
    if age is not None:
        cutoff = now() - age
        doomed = [v for v in doomed if v.created_at < cutoff]
    if unused:  # no run used it and it holds no alias, `latest` included
        doomed = [v for v in doomed if not v.aliases and not repo.used_by(v.name, v.version)]
    if keep_aliased:
        doomed = [v for v in doomed if not set(v.aliases) - {LATEST}]
    if not dry_run:
        for v in doomed:
            delete(repo, v.ref, force=True)
    return doomed


def _age(value: _dt.timedelta | float | None) -> _dt.timedelta | None:
    if value is None or isinstance(value, _dt.timedelta):
        age = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        age = _dt.timedelta(seconds=value)
    else:
        raise InvalidArgumentError(
            f"older_than must be a timedelta or seconds, not {value!r}.", value=value
        )
    if age is not None and age.total_seconds() < 0:
        raise InvalidArgumentError(f"older_than must not be negative, not {value!r}.")
    return age


def freed_bytes(repo: Repository, doomed: list[ArtifactVersion]) -> int:
    """The bytes gc would free once ``doomed`` are deleted: the blobs they hold that no
    other version on the shelf (of any artifact) holds."""
    gone = {(v.name, v.version) for v in doomed}
    kept: set[str] = set()
    for name in repo.artifacts():
        for v in repo.versions(name):
            if (v.name, v.version) not in gone:
                kept |= v.manifest.blob_hexes()
    sizes: dict[str, int] = {}
    for v in doomed:
        sizes.update(v.manifest.blob_sizes())
    return sum(n for h, n in sizes.items() if h not in kept)


def storage_report(repo: Repository, version: ArtifactVersion) -> dict[str, Any]:
    """How the bytes of ``version`` are stored, and what it shares with the other versions of
    its artifact (a safetensors file is stored in chunks: versions share unchanged tensors).

    ``blobs``, ``stored_bytes``: the blobs it needs and their bytes (referenced files hold
    none); ``own_bytes``: those no other version of the artifact holds; ``artifact_bytes``:
    what all its versions hold, counted per version; ``artifact_stored_bytes``: their blobs,
    each counted once; ``dedup_ratio``: the one over the other.
    """
    mine = version.manifest.blob_sizes()
    others: set[str] = set()
    every: dict[str, int] = {}
    logical = 0
    for v in repo.versions(version.name):
        sizes = v.manifest.blob_sizes()
        every.update(sizes)
        logical += sum(sizes.values())
        if v.version != version.version:
            others |= sizes.keys()
    stored = sum(every.values())
    return {
        "blobs": len(mine),
        "stored_bytes": sum(mine.values()),
        "own_bytes": sum(n for h, n in mine.items() if h not in others),
        "artifact_bytes": logical,
        "artifact_stored_bytes": stored,
        "dedup_ratio": round(logical / stored, 3) if stored else None,
    }
