"""Copy versions between shelves (a laptop shelf to ``s3://...``), moving only missing bytes."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from .._core.download import cached_blob_from
from .._core.sources import CopiedFile
from .._errors import ConflictError
from .._format.layout import RunKeys
from .._format.names import LATEST
from .._format.records import isoformat
from .._storage import Storage

if TYPE_CHECKING:
    from .._core.repository import Repository
    from .._core.version import ArtifactVersion


def _copy_run(source: Storage, target: Storage, run_id: str) -> None:
    """Copy a run's records (not its outputs log: the target's commits write their own)."""
    keys = RunKeys(run_id)
    if target.exists(keys.record):
        return
    outputs = f"{keys.edges('outputs')}/"
    wanted = [k for k in source.find(keys.prefix) if not k.startswith(outputs)]
    for key, data in source.read_many(wanted).items():
        if keys.write_once(key):
            target.create(key, data)
        else:
            target.replace(key, data)


def copy(
    source: Repository, ref: str, target: Repository, *, aliases: bool
) -> list[ArtifactVersion]:
    """Copy ``ref`` (one version, or every version of a name) from ``source`` to ``target``."""
    versions = [source.get(ref)] if ":" in ref else source.versions(ref)
    if source.url == target.url:
        raise ConflictError(f"Source and target are the same shelf ({source.url!r}).")
    copied = []
    for v in versions:
        if v.run_id is not None:
            with contextlib.suppress(FileNotFoundError):
                _copy_run(source.storage, target.storage, v.run_id)
        fields = {
            "description": v.description,
            "metadata": v.metadata,
            "tags": v.tags,
            "copied_from": {"shelf": source.url, "ref": v.ref, "digest": v.digest},
        }
        files = {
            rel: CopiedFile(source.storage, entry, cached_blob_from)
            for rel, entry in v.manifest.files.items()
        }
        keep = [a for a in v.aliases if a != LATEST] if aliases else []
        new = target.commit(
            v.name, v.type, files, fields, aliases=keep, run_id=v.run_id,
            created_at=isoformat(v.created_at),
        )  # fmt: skip
        copied.append(new)
    return copied
