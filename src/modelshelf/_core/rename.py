"""Renaming an artifact: a pointer under the new name, then a tombstone under the old one.

No version, alias or label record moves (docs/format.md, "Renaming"). A rename writes two
records, each with create-if-absent:

1. ``artifacts/<new>/artifact.json`` with ``stored_as``: the folder that holds the versions
   (the name the artifact was first logged under). From here on both names work.
2. ``artifacts/<old>/renamed.json`` with ``to``: the old name now says where it went.

A kill between the two leaves both names whole; running the rename again finishes it. A
writer that resolved the old name before the tombstone commits into the same folder, so its
version appears under the new name; one that comes after it gets NotFoundError.

Renaming back onto a name the artifact had before (the first one, or one that an earlier
rename gave it) removes that name's tombstone before the other name gets its own.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .._errors import ConflictError, InvalidArgumentError
from .._format.layout import ArtifactKeys
from .._format.names import Ref, validate_name
from .._format.records import (
    PointerInfo,
    RenamedRecord,
    UnreadableRecord,
    dumps,
    isoformat,
    loads,
    now,
    writer_info,
)
from .._format.seqlog import settled

if TYPE_CHECKING:
    from .repository import Repository


def rename(repo: Repository, old: str, new: str) -> None:
    """Give the artifact ``old`` the name ``new`` (see ``Shelf.rename``)."""
    validate_name(old)
    validate_name(new)
    if old == new:
        raise InvalidArgumentError(f"Cannot rename {old!r} to itself.", value=new)
    repo.info(create=False)
    repo.check_live(old)  # NotFoundError: it was renamed already, and says where to
    info = repo.artifact_info(old, wait=True)
    if info is None:
        raise repo.missing_artifact(Ref(old))
    stored = repo.labels.stored_as(old)
    if stored_under(repo, new) != stored:
        pointer: PointerInfo = {
            "name": new, "type": str(info["type"]), "created_at": isoformat(now()),
            "stored_as": stored, "renamed_from": old,
        }  # fmt: skip
        created = repo.storage.create(ArtifactKeys(new).info, dumps(pointer))
        if not created and stored_under(repo, new) != stored:  # another artifact's, meanwhile
            raise _taken(new)
    # ``new`` reaches the versions now: from this rename, from one that was interrupted, or
    # because it is a name the artifact had before (then its tombstone goes first).
    repo.storage.delete(ArtifactKeys(new).renamed)
    record: RenamedRecord = {"to": new, "at": isoformat(now()), "by": writer_info()}
    tombstone = ArtifactKeys(old).renamed
    if repo.storage.create(tombstone, dumps(record)):
        return
    went = _tombstone_target(repo, tombstone)
    if went is None:  # torn by a crash: this rename rewrites it
        repo.storage.replace(tombstone, dumps(record))
        return
    if went != new:  # a concurrent rename of ``old`` won: ``new`` gives way to it
        lost: RenamedRecord = {"to": str(went), "at": isoformat(now()), "by": writer_info()}
        repo.storage.create(ArtifactKeys(new).renamed, dumps(lost))
        raise ConflictError(
            f"{old!r} was renamed to {went!r} by another process while this rename ran."
        )


def _tombstone_target(repo: Repository, key: str) -> object | None:
    """Where the tombstone at ``key`` says the name went; None when it is torn by a crash.

    Where records are written in place (a generic filesystem), a concurrent rename's
    tombstone can be met half-written: it is waited for until it decodes, or until it is
    settled (torn). Taking it for torn at once would let both renames win."""
    first_seen: dict[str, tuple[float, int]] = {}
    while True:
        try:
            return loads(repo.storage.read(key), repo.storage.describe(key)).get("to")
        except FileNotFoundError:
            return None
        except UnreadableRecord:
            if settled(repo.storage, key, first_seen):
                return None
            time.sleep(0.05)


def stored_under(repo: Repository, name: str) -> str | None:
    """The folder ``name`` reaches, or None if ``name`` is not an artifact's name at all.
    ConflictError if its record cannot be read (being written, or torn)."""
    key = ArtifactKeys(name).info
    data = repo.storage.try_read(key)
    if data is None:
        return None
    try:
        loads(data, repo.storage.describe(key))
    except UnreadableRecord:
        raise ConflictError(
            f"The record of {name!r} is being written or was torn by a crash; try again, or "
            "run `modelshelf fsck --repair`."
        ) from None
    return repo.labels.stored_as(name)


def _taken(new: str) -> ConflictError:
    return ConflictError(
        f"Cannot rename to {new!r}: an artifact of that name exists. Rename or delete it "
        "first, or choose another name (a deleted artifact keeps its name)."
    )
