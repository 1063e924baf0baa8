"""``Shelf``: named, typed artifacts with immutable versions and movable aliases."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from . import _hashcache
from ._artifact import Artifact, LocalFile, validate_type
from ._cleanup import DEFAULT_GRACE_SECONDS, GcReport, gc_head, settle_with_gc
from ._cleanup import gc as run_gc
from ._config import FORMAT_VERSION, default_root
from ._copy import copy as copy_versions
from ._diff import Diff
from ._diff import best as pick_best
from ._diff import compare as make_compare
from ._diff import diff as make_diff
from ._errors import ConflictError, IntegrityError, InvalidReferenceError, NotFoundError
from ._labels import LabelsMixin, initial_state, run_id_of
from ._layout import (
    ROOT_RECORD,
    clean_metadata,
    digest_key,
    info_key,
    isoformat,
    lease_key,
    manifest_key,
    name_from_prefix,
    now,
    versions_prefix,
    writer_info,
)
from ._lineage import Lineage
from ._lineage import build as build_lineage
from ._log import SeqLog, dumps, loads
from ._manifest import HEX_RE, FileEntry, Manifest, blob_key
from ._refs import LATEST, Ref, parse_ref, validate_alias, validate_name, validate_tag
from ._runs import Run, list_runs, load_run, record_edge, start_run
from ._storage import ChangedWhileReading, Storage
from ._version import ArtifactVersion

logger = logging.getLogger("modelshelf")


class Shelf(LabelsMixin):
    """A shelf of versioned artifacts in a folder of any fsspec filesystem.

    Args:
        root: a local path or fsspec URL (``s3://bucket/prefix``, ``memory://x``, ...);
            default ``$MODELSHELF_ROOT`` or ``~/.modelshelf``.
        storage_options: passed to the fsspec filesystem (credentials, endpoint, ...).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        url = os.fspath(root) if root is not None else default_root()
        self._storage = Storage.open_url(url, storage_options)
        self.url = self._storage.url
        self._root_info: dict[str, Any] | None = None
        self._init_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Shelf({self.url!r})"

    # -- the root record -----------------------------------------------------------------
    def _info(self, *, create: bool) -> dict[str, Any] | None:
        if self._root_info is not None:
            return self._root_info
        with self._init_lock:
            data = self._storage.try_read(ROOT_RECORD)
            if data is None and create:
                record = {
                    "format": FORMAT_VERSION,
                    "id": uuid.uuid4().hex,
                    "created_at": isoformat(now()),
                    "created_by": writer_info(),
                }
                self._storage.create(ROOT_RECORD, dumps(record))
                data = self._storage.read(ROOT_RECORD)  # another process may have won
            if data is None:
                return None
            info = loads(data, self._storage.describe(ROOT_RECORD))
            if int(info.get("format", 0)) > FORMAT_VERSION:
                raise ConflictError(
                    f"The shelf {self.url!r} uses format {info['format']}, newer than this "
                    f"modelshelf understands ({FORMAT_VERSION}). Upgrade modelshelf."
                )
            self._root_info = info
            return info

    @property
    def id(self) -> str:
        """The shelf's unique id (created with the shelf; keys its local download cache)."""
        info = self._info(create=True)
        assert info is not None
        return str(info["id"])

    # -- logging -------------------------------------------------------------------------
    def log_artifact(
        self,
        artifact_or_path: Artifact | str | os.PathLike[str],
        name: str | None = None,
        type: str | None = None,
        *,
        aliases: Iterable[str] = (),
        tags: Iterable[str] = (),
        metadata: dict[str, Any] | None = None,
        description: str | None = None,
        run: Any = None,
    ) -> ArtifactVersion:
        """Store an artifact (or a file or folder path) as its next version.

        Content identical to an existing version creates no new version: that version is
        returned, with ``aliases`` and ``tags`` applied, and a warning is logged.

        Raises:
            InvalidReferenceError: a bad name, type, alias or tag.
            InvalidMetadataError: metadata that cannot be stored as JSON.
            ConflictError: the name exists with another type.
        """
        artifact = self._as_artifact(artifact_or_path, name, type)
        # 'latest' moves to every new version by itself; accept it here, as W&B users write it.
        aliases = [validate_alias(a) for a in aliases if a != LATEST]
        tags = sorted({validate_tag(t) for t in tags})
        meta = {**artifact.metadata, **clean_metadata(metadata)}
        desc = description if description is not None else artifact.description
        run_id_of(run)

        self._info(create=True)
        self._claim_name(artifact.name, artifact.type)
        gc_seen = gc_head(self._storage)  # before any blob is looked at: see _cleanup
        manifest, sources = self._store_files(artifact)

        def restore(hexdigest: str) -> None:
            self._put_blob(LocalFile(sources[hexdigest]))

        fields = {"description": desc, "metadata": meta, "tags": tags}
        return self._commit(
            artifact.name, artifact.type, manifest, fields,
            aliases=aliases, run=run, gc_seen=gc_seen, restore=restore,
        )  # fmt: skip

    def _commit(
        self,
        name: str,
        type: str,
        manifest: Manifest,
        fields: dict[str, Any],
        *,
        aliases: list[str],
        run: Any,
        gc_seen: int,
        restore: Callable[[str], None],
        created_at: str | None = None,
    ) -> ArtifactVersion:
        """Commit a version whose blobs are stored (steps 3-7 of docs/format.md)."""
        digest = manifest.digest()
        existing = self._find_identical(name, digest)
        if existing is not None:
            logger.warning(
                "%s holds the same content as this log; no new version was created.", existing.ref
            )
            if fields.get("tags"):
                existing.add_tags(*fields["tags"])
            if aliases:
                self._move_aliases(name, dict.fromkeys(aliases, existing.version), run=run)
            return self.get(existing.ref)
        lease = uuid.uuid4().hex
        blobs = manifest.blob_hexes()
        lease_record = {"at": isoformat(now()), "by": writer_info(), "blobs": sorted(blobs)}
        self._storage.replace(lease_key(lease), dumps(lease_record), durable=False)
        try:
            settle_with_gc(self._storage, gc_seen, blobs, restore)
            manifest_hex = manifest.sha256()
            self._storage.create(manifest_key(manifest_hex), manifest.to_bytes())
            record = {
                "name": name,
                "type": type,
                "digest": digest,
                "manifest": manifest_hex,
                "size": manifest.size,
                "file_count": len(manifest.files),
                "created_at": created_at or isoformat(now()),
                "created_by": writer_info(),
                "run_id": run_id_of(run),
                **fields,
            }
            log = SeqLog(self._storage, versions_prefix(name))
            version, _ = log.append(lambda n, _head: {**record, "version": n})
        finally:
            self._storage.delete(lease_key(lease))
        with contextlib.suppress(OSError):
            self._storage.replace(digest_key(name, digest), str(version).encode(), durable=False)
        if record["run_id"] is not None:
            record_edge(self._storage, record["run_id"], "outputs", name, version)
        if aliases:
            self._move_aliases(name, dict.fromkeys(aliases, version), run=run)
        return self.get(f"{name}:v{version}")

    def _as_artifact(
        self, item: Artifact | str | os.PathLike[str], name: str | None, type: str | None
    ) -> Artifact:
        if isinstance(item, Artifact):
            if name is not None and name != item.name:
                validate_name(name)
                item.name = name
            if type is not None:
                item.type = validate_type(type)
            return item
        if not isinstance(item, (str, os.PathLike)):
            raise InvalidReferenceError(
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
            info = self._storage.try_read(info_key(validate_name(name)))
            type = loads(info, name)["type"] if info else "artifact"
        art = Artifact(name, type)
        if path.is_dir():
            art.add_dir(path)
        else:
            art.add_file(path)
        return art

    def _claim_name(self, name: str, type: str) -> None:
        data = self._storage.try_read(info_key(name))
        if data is None:
            record = {"name": name, "type": type, "created_at": isoformat(now())}
            if self._storage.create(info_key(name), dumps(record)):
                return
            data = self._storage.read(info_key(name))  # created by another writer meanwhile
        existing = loads(data, name)
        if existing["type"] != type:
            raise ConflictError(
                f"{name!r} is an artifact of type {existing['type']!r}, not {type!r}. "
                f"Log it with type={existing['type']!r} or choose another name."
            )

    def _store_files(self, artifact: Artifact) -> tuple[Manifest, dict[str, Path]]:
        """Store every local file as a blob (skipping those already stored).

        Returns the manifest and, for each blob, a local file holding its bytes.
        """
        files: dict[str, FileEntry] = {}
        sources: dict[str, Path] = {}
        for rel, item in sorted(artifact.entries().items()):
            if isinstance(item, FileEntry):
                files[rel] = item
                continue
            hexdigest, size = self._put_blob(item)
            files[rel] = FileEntry(size=size, digest=f"sha256:{hexdigest}")
            sources[hexdigest] = item.path
        return Manifest(files), sources

    def _put_blob(self, item: LocalFile) -> tuple[str, int]:
        st = os.stat(item.path)
        cached = _hashcache.lookup(item.path, st)
        if cached is None and self._storage.object_store:
            cached = _hashcache.file_digest(item.path)  # hash first: skip uploads of known bytes
        if cached is not None and self._storage.exists(blob_key(cached)):
            return cached, st.st_size
        changed = ConflictError(
            f"{str(item.path)!r} changed while it was being stored; log it again."
        )
        try:
            hexdigest = self._storage.upload(item.path, blob_key, cached)
        except ChangedWhileReading:
            raise changed from None
        after = os.stat(item.path)
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            raise changed
        _hashcache.remember(item.path, hexdigest, st)
        return hexdigest, st.st_size

    def _find_identical(self, name: str, digest: str) -> ArtifactVersion | None:
        data = self._storage.try_read(digest_key(name, digest))
        if data is None:
            return None
        try:
            version = self.get(f"{name}:v{int(data)}")
        except (NotFoundError, ValueError):
            return None
        return version if version.digest == digest else None

    # -- reading -------------------------------------------------------------------------
    def get(self, ref: str) -> ArtifactVersion:
        """Return the version ``ref`` names: ``name``, ``name:vN`` or ``name:alias``.

        Raises:
            InvalidReferenceError: ``ref`` is malformed.
            NotFoundError: no such artifact, version or alias (the message lists what exists).
        """
        parsed = parse_ref(ref)
        self._info(create=False)
        aliases = self._alias_map(parsed.name)
        latest = self._latest(parsed.name)
        if latest is None:
            head, _ = SeqLog(self._storage, versions_prefix(parsed.name)).head()
            if head >= 0:
                raise NotFoundError(
                    f"Every version of {parsed.name!r} (v0 to v{head}) was deleted; log a new "
                    "one to use the name again.",
                    ref=str(ref),
                )
            raise self._missing_artifact(parsed)
        if parsed.version is not None:
            number = parsed.version
        elif parsed.alias == LATEST:
            number = latest
        elif parsed.alias in aliases:
            number = aliases[parsed.alias]
        else:
            shown = ", ".join(sorted({LATEST, *aliases})) or "none"
            raise NotFoundError(
                f"{parsed.name!r} has no alias {parsed.alias!r}. Its aliases: {shown}; its "
                f"newest version is v{latest}.",
                ref=str(ref),
            )
        record = SeqLog(self._storage, versions_prefix(parsed.name)).get(number)
        state = self._state(parsed.name, number, record) if record else None
        if record is None or state is None or state.get("deleted"):
            gone = "was deleted" if record is not None else "does not exist"
            raise NotFoundError(
                f"{parsed.name}:v{number} {gone}. The newest version of {parsed.name!r} is "
                f"v{latest}; aliases: {', '.join(sorted({LATEST, *aliases}))}.",
                ref=str(ref),
            )
        if record.get("name") != parsed.name or record.get("version") != number:
            raise IntegrityError(
                f"The commit record of {parsed.name}:v{number} names "
                f"{record.get('name')!r} v{record.get('version')!r}; the shelf was edited by hand "
                "or tampered with.",
                ref=str(ref),
            )
        return self._version(record, state, aliases, latest)

    def _version(
        self,
        record: dict[str, Any],
        state: dict[str, Any],
        aliases: dict[str, int],
        latest: int | None,
    ) -> ArtifactVersion:
        n = int(record["version"])
        names = [a for a, v in aliases.items() if v == n]
        if n == latest:
            names.append(LATEST)
        return ArtifactVersion(self, record, state, sorted(names))

    def _missing_artifact(self, parsed: Ref) -> NotFoundError:
        names = self.artifacts()
        near = [n for n in names if parsed.basename.lower() in n.lower()] or names
        listing = ", ".join(near[:10]) if near else "the shelf is empty"
        return NotFoundError(
            f"No artifact named {parsed.name!r} on {self.url}. Artifacts: {listing}"
            + (f" (and {len(near) - 10} more)" if len(near) > 10 else "")
            + ".",
            ref=str(parsed),
        )

    def versions(self, name: str) -> list[ArtifactVersion]:
        """Every version of ``name`` that was not deleted, oldest first."""
        validate_name(name)
        self._info(create=False)
        records = SeqLog(self._storage, versions_prefix(name)).all()
        if not records:
            raise self._missing_artifact(Ref(name))
        aliases = self._alias_map(name)
        states = self._all_states(name)
        live = [(rec, states.get(n, initial_state(rec))) for n, rec in records]
        live = [(rec, st) for rec, st in live if not st.get("deleted")]
        latest = int(live[-1][0]["version"]) if live else None
        return [self._version(rec, st, aliases, latest) for rec, st in live]

    def artifacts(self, type: str | None = None, project: str | None = None) -> list[str]:
        """Names of the artifacts on the shelf, sorted; optionally of one type or project."""
        self._info(create=False)
        projects = self._storage.listdir("artifacts")
        if project is not None:
            validate_name(project)
            projects = [project] if project in projects else []
        names = [
            name_from_prefix(p, base)
            for p in projects
            for base in self._storage.listdir(f"artifacts/{p}")
        ]
        if type is None:
            return sorted(names)
        infos = self._storage.read_many([info_key(n) for n in names])
        return sorted(
            n
            for n in names
            if info_key(n) in infos and loads(infos[info_key(n)], n).get("type") == type
        )

    def _latest(self, name: str) -> int | None:
        log = SeqLog(self._storage, versions_prefix(name))
        n, record = log.head()
        while n >= 0 and record is not None:
            state = self._state(name, n, record)
            if not state.get("deleted"):
                return n
            n -= 1
            record = log.get(n)
        return None

    @functools.lru_cache(maxsize=256)  # noqa: B019 - manifests are immutable
    def _load_manifest(self, hexdigest: str) -> Manifest:
        if not HEX_RE.fullmatch(hexdigest):
            raise IntegrityError(f"Malformed manifest digest {hexdigest!r} in a commit record.")
        key = manifest_key(hexdigest)
        try:
            data = self._storage.read(key)
        except FileNotFoundError:
            raise IntegrityError(
                f"The manifest {self._storage.describe(key)} is missing."
            ) from None
        return Manifest.from_bytes(data, self._storage.describe(key))

    # -- models --------------------------------------------------------------------------
    def log_model(
        self,
        model: Any,
        name: str | None = None,
        *,
        aliases: Iterable[str] = (),
        metadata: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        run: Any = None,
        **options: Any,
    ) -> ArtifactVersion:
        """Log a model as the next version of ``name`` (type ``"model"``).

        Takes a ``torch.nn.Module`` (``LightningModule`` included; weights as safetensors),
        a ``keras.Model`` (its ``.keras`` archive), a fastai ``Learner`` (the model's weights
        and the learner's settings), or a file or folder path. The metadata's ``"model"`` key
        records the framework, versions, parameter count and how to rebuild the model.

        Options: ``init_args={...}`` (torch, fastai): the arguments that rebuild a plain
        ``nn.Module`` (a ``LightningModule`` uses its ``hparams``); ``export=True`` (fastai):
        also store fastai's pickled export of the whole Learner.
        """
        from ._model import log_model

        return log_model(
            self, model, name, aliases=aliases, metadata=metadata, config=config, run=run,
            options=options,
        )  # fmt: skip

    def load_model(
        self,
        ref: str,
        *,
        model: Any = None,
        map_location: Any = "cpu",
        allow_pickle: bool = False,
    ) -> Any:
        """Return the model ``ref`` names, ready for inference (see ``ms.load_model``)."""
        from ._model import load_model

        return load_model(
            self, ref, model=model, map_location=map_location, allow_pickle=allow_pickle
        )

    # -- runs and lineage ----------------------------------------------------------------
    def run(
        self,
        name: str | None = None,
        *,
        job_type: str = "train",
        config: dict[str, Any] | None = None,
        project: str | None = None,
    ) -> Run:
        """Start a run; use it as ``with shelf.run(...) as run:``.

        An exception inside the ``with`` marks the run ``failed``; a process that dies
        without finishing shows as ``crashed``.
        """
        return start_run(self, name, job_type, config, project)

    def runs(
        self, *, job_type: str | None = None, status: str | None = None, project: str | None = None
    ) -> list[Run]:
        """The runs on the shelf, oldest first, optionally filtered."""
        return list_runs(self, job_type, status, project)

    def get_run(self, run_id: str) -> Run:
        """The run with this id. Raises NotFoundError listing recent runs."""
        return load_run(self, run_id)

    def lineage(self, ref: str, *, direction: str = "both", depth: int | None = None) -> Lineage:
        """The runs and versions upstream (what made it) and/or downstream (what used it)."""
        return build_lineage(self, ref, direction, depth)

    # -- comparing -----------------------------------------------------------------------
    def diff(self, a: str, b: str) -> Diff:
        """Files, metadata, config, metrics and tensors that differ from ``a`` to ``b``."""
        return make_diff(self, a, b)

    def compare(
        self, refs_or_name: str | list[str], metrics: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """One row per version (ref, aliases, created, metrics, config that varies)."""
        return make_compare(self, refs_or_name, metrics)

    def best(self, name: str, metric: str, mode: str = "min") -> ArtifactVersion:
        """The version of ``name`` with the lowest (``min``) or highest (``max``) ``metric``."""
        return pick_best(self, name, metric, mode)

    # -- clean-up ------------------------------------------------------------------------
    def delete(self, ref: str, *, force: bool = False) -> ArtifactVersion:
        """Delete one version; it disappears from every listing, and gc frees its bytes.

        Version numbers are never reused. ``latest`` moves back by itself; a version with other
        aliases is refused unless ``force=True``, which removes them.
        """
        version = self.get(ref)
        held = [a for a in version.aliases if a != LATEST]
        if held and not force:
            raise ConflictError(
                f"{version.ref} has the aliases {', '.join(held)}; move them first or pass "
                "force=True to remove them with the version."
            )
        if held:
            self._move_aliases(version.name, dict.fromkeys(held))

        def change(state: dict[str, Any]) -> None:
            state["deleted"] = True

        self._update_state(version.name, version.version, change)
        return version

    def prune(
        self, name: str, *, keep_last: int, keep_aliased: bool = True, dry_run: bool = False
    ) -> list[ArtifactVersion]:
        """Delete all but the newest ``keep_last`` versions (and, by default, aliased ones).

        Returns the versions deleted (or, with ``dry_run``, that would be).
        """
        if not isinstance(keep_last, int) or keep_last < 0:
            raise InvalidReferenceError(f"keep_last must be an int >= 0, not {keep_last!r}.")
        versions = self.versions(name)
        old = versions[: max(len(versions) - keep_last, 0)]
        doomed = [v for v in old if not (keep_aliased and set(v.aliases) - {LATEST})]
        if not dry_run:
            for v in doomed:
                self.delete(v.ref, force=True)
        return doomed

    def gc(self, *, dry_run: bool = False, grace_period: float = DEFAULT_GRACE_SECONDS) -> GcReport:
        """Free the blobs and manifests that no version needs.

        Blobs held by a writer in flight, or younger than ``grace_period`` seconds, are kept.
        """
        return run_gc(self, dry_run=dry_run, grace_period=grace_period)

    def copy(
        self, ref: str, to: Shelf | str | os.PathLike[str], *, aliases: bool = False
    ) -> list[ArtifactVersion]:
        """Copy a version (``name:v3``) or every version (``name``) to another shelf.

        Metadata, tags, description and the run that logged each version travel along, and
        with ``aliases=True`` its aliases; only blobs the target lacks are sent.
        """
        target = to if isinstance(to, Shelf) else Shelf(to)
        return copy_versions(self, ref, target, aliases=aliases)
