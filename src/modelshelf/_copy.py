"""Copy versions between shelves (a laptop shelf to ``s3://...``), moving only missing bytes."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from ._cache import cached_blob_from
from ._cleanup import gc_head
from ._manifest import blob_key
from ._refs import LATEST
from ._runs import run_prefix

if TYPE_CHECKING:
    from ._shelf import Shelf
    from ._storage import Storage
    from ._version import ArtifactVersion


def _copy_run(source: Storage, target: Storage, run_id: str) -> None:
    """Copy a run's records (not its outputs log: the target's commits write their own)."""
    prefix = run_prefix(run_id)
    if target.exists(f"{prefix}/run.json"):
        return
    keys = [k for k in source.find(prefix) if not k.startswith(f"{prefix}/outputs/")]
    for key, data in source.read_many(keys).items():
        if (
            key.endswith("/run.json")
            or key.endswith("/end.json")
            or "/history/" in key
            or "/inputs/" in key
        ):
            target.create(key, data)
        else:
            target.replace(key, data)


def copy(source: Shelf, ref: str, target: Shelf, *, aliases: bool) -> list[ArtifactVersion]:
    versions = [source.get(ref)] if ":" in ref else source.versions(ref)
    if source._storage.url == target._storage.url:
        raise ValueError(f"Source and target are the same shelf ({source.url!r}).")
    copied = []
    for v in versions:
        target._info(create=True)
        target._claim_name(v.name, v.type)
        gc_seen = gc_head(target._storage)

        def transfer(hexdigest: str) -> None:
            local = cached_blob_from(source._storage, hexdigest)
            target._storage.upload(local, blob_key, hexdigest)

        for hexdigest in sorted(v.manifest.blob_hexes()):
            if not target._storage.exists(blob_key(hexdigest)):
                transfer(hexdigest)
        if v.run_id is not None:
            with contextlib.suppress(FileNotFoundError):
                _copy_run(source._storage, target._storage, v.run_id)
        fields = {
            "description": v.description,
            "metadata": v.metadata,
            "tags": v.tags,
            "copied_from": {"shelf": source.url, "ref": v.ref, "digest": v.digest},
        }
        keep = [a for a in v.aliases if a != LATEST] if aliases else []
        new = target._commit(
            v.name,
            v.type,
            v.manifest,
            fields,
            aliases=keep,
            run=v.run_id,
            gc_seen=gc_seen,
            restore=transfer,
            created_at=v._record["created_at"],
        )
        copied.append(new)
    return copied
