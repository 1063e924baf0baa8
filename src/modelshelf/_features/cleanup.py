"""Clean-up: delete and prune versions (gc itself is in the core, beside the commit path)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._errors import ConflictError, InvalidArgumentError
from .._format.names import LATEST

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


def prune(
    repo: Repository, name: str, *, keep_last: int, keep_aliased: bool, dry_run: bool
) -> list[ArtifactVersion]:
    """Delete all but the newest ``keep_last`` versions (see ``Shelf.prune``)."""
    if not isinstance(keep_last, int) or keep_last < 0:
        raise InvalidArgumentError(f"keep_last must be an int >= 0, not {keep_last!r}.")
    versions = repo.versions(name)
    old = versions[: max(len(versions) - keep_last, 0)]
    doomed = [v for v in old if not (keep_aliased and set(v.aliases) - {LATEST})]
    if not dry_run:
        for v in doomed:
            delete(repo, v.ref, force=True)
    return doomed
