"""``Shelf``: the public facade. Each method checks its arguments and hands over to the
repository core or a feature module; no logic of its own lives here."""

from __future__ import annotations

import datetime as _dt
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any, overload

from ._config import default_root
from ._core import rename as renaming
from ._core.artifact import Artifact, as_artifact
from ._core.gc import DEFAULT_GRACE_SECONDS, GcReport
from ._core.gc import gc as run_gc
from ._core.labels import AliasEvent
from ._core.repository import Repository
from ._core.sources import LocalFile
from ._core.version import ArtifactVersion
from ._errors import InvalidArgumentError
from ._features import cleanup, tables
from ._features import diff as diffing
from ._features import lineage as graph
from ._features import watch as watching
from ._features.copy import copy as copy_versions
from ._features.diff import Diff
from ._features.fsck import FsckReport
from ._features.fsck import fsck as run_fsck
from ._features.lineage import Lineage
from ._features.runs import Run, metrics_at_commit, order_runs
from ._features.tables import PredictionComparison
from ._format.names import (
    LATEST,
    parse_ref,
    run_id_of,
    validate_alias,
    validate_name,
    validate_tag,
)
from ._format.records import clean_metadata
from ._models import load_model, log_model
from ._progress import shown


def with_run_metrics(repo: Any, metadata: dict[str, Any], run: Any) -> dict[str, Any]:
    """``metadata`` with ``"metrics"`` fixed now, when a run logs the version and none were
    given: the latest value of each metric the run has logged (a version's metrics are its
    own; the run's final summary may belong to a later version)."""
    if run is None or "metrics" in metadata:
        return metadata
    metrics = metrics_at_commit(repo, run)
    if not metrics:
        return metadata
    given = {  # numbers given with the version itself are its metrics too, and win
        k: v
        for k, v in metadata.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("model", "config")
    }
    return {**metadata, "metrics": {**metrics, **given}}


class Shelf:
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
        self._repo = Repository(url, storage_options, facade=self)
        self.url = self._repo.url

    def __repr__(self) -> str:
        return f"Shelf({self.url!r})"

    @property
    def repository(self) -> Repository:
        """The repository core under this shelf (for extensions: codecs, callbacks)."""
        return self._repo

    @property
    def id(self) -> str:
        """The shelf's unique id (created with the shelf; keys its local download cache)."""
        return self._repo.id

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
        artifact = as_artifact(artifact_or_path, name, type, self._repo.type_of)
        # 'latest' moves to every new version by itself; accept it here, as W&B users write it.
        aliases = [validate_alias(a) for a in aliases if a != LATEST]
        tags = sorted({validate_tag(t) for t in tags})
        meta = with_run_metrics(self._repo, {**artifact.metadata, **clean_metadata(metadata)}, run)
        desc = description if description is not None else artifact.description
        fields = {"description": desc, "metadata": meta, "tags": tags}
        entries = artifact.entries()
        local = sum(os.stat(e.path).st_size for e in entries.values() if isinstance(e, LocalFile))
        with shown(local, f"log {artifact.name}"):
            return self._repo.commit(
                artifact.name, artifact.type, entries, fields,
                aliases=aliases, run_id=run_id_of(run),
            )  # fmt: skip

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
        metadata = with_run_metrics(self._repo, clean_metadata(metadata), run)
        return log_model(
            self._repo, model, name, aliases=aliases, metadata=metadata, config=config,
            run_id=run_id_of(run), options=options,
        )  # fmt: skip

    def load_model(
        self,
        ref: str,
        *,
        model: Any = None,
        map_location: Any = "cpu",
        allow_pickle: bool = False,
        trust_recipe: bool = False,
    ) -> Any:
        """Return the model ``ref`` names, ready for inference (see ``ms.load_model``)."""
        return load_model(
            self._repo.get(ref), model=model, map_location=map_location,
            allow_pickle=allow_pickle, trust_recipe=trust_recipe,
        )  # fmt: skip

    # -- reading -------------------------------------------------------------------------
    def get(self, ref: str) -> ArtifactVersion:
        """Return the version ``ref`` names: ``name``, ``name:vN`` or ``name:alias``.

        Raises:
            InvalidReferenceError: ``ref`` is malformed.
            NotFoundError: no such artifact, version or alias (the message lists what exists).
        """
        return self._repo.get(ref)

    def versions(self, name: str) -> list[ArtifactVersion]:
        """Every version of ``name`` that was not deleted, oldest first."""
        return self._repo.versions(name)

    def artifacts(self, type: str | None = None, project: str | None = None) -> list[str]:
        """Names of the artifacts on the shelf, sorted; optionally of one type or project."""
        return self._repo.artifacts(type, project)

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        """Every move of ``alias`` (or of every alias) of ``name``, oldest first.

        ``latest`` moves with each new version; its history is derived from the versions.
        """
        validate_name(name)
        if alias is not None and alias != LATEST:
            validate_alias(alias)
        self._repo.check_live(name)
        return self._repo.labels.alias_history(name, alias)

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
        return Run.start(self._repo, name, job_type, config, project)

    def runs(
        self,
        *,
        job_type: str | None = None,
        status: str | None = None,
        project: str | None = None,
        order_by: str | None = None,
        descending: bool = False,
    ) -> list[Run]:
        """The runs on the shelf, optionally filtered; oldest first, or by the summary metric
        ``order_by`` (lowest first; ``descending=True`` for highest first), runs without it
        last."""
        return order_runs(Run.load_all(self._repo, job_type, status, project), order_by, descending)

    def get_run(self, run_id: str) -> Run:
        """The run with this id. Raises NotFoundError listing recent runs."""
        return Run.load(self._repo, run_id)

    def lineage(self, ref: str, *, direction: str = "both", depth: int | None = None) -> Lineage:
        """The runs and versions upstream (what made it) and/or downstream (what used it)."""
        return graph.build(self._repo, ref, direction, depth)

    def watch(
        self,
        name: str,
        on_version: Callable[[ArtifactVersion], Any],
        alias: str | None = None,
        poll: float = 2.0,
        *,
        cursor: str | os.PathLike[str] | None = None,
        stop: threading.Event | None = None,
        max_events: int | None = None,
    ) -> int:
        """Call ``on_version(version)`` once for each new committed version of ``name`` (or,
        with ``alias``, each move of that alias to a version), polling every ``poll`` seconds.

        ``cursor``: a local file that keeps what was handled, so that a restarted watcher goes
        on after the last call that returned (without one, it starts from now). Returns the
        number of calls once ``stop`` is set or ``max_events`` calls were made.
        """
        return watching.watch(
            self._repo, name, on_version, alias=alias, poll=poll, cursor=cursor, stop=stop,
            max_events=max_events,
        )  # fmt: skip

    # -- comparing -----------------------------------------------------------------------
    def diff(self, a: str, b: str) -> Diff:
        """Files, metadata, config, metrics and tensors that differ from ``a`` to ``b``."""
        return diffing.diff(self._repo, a, b)

    def compare(
        self, refs_or_name: str | list[str], metrics: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """One row per version (ref, aliases, created, metrics, config that varies)."""
        return diffing.compare(self._repo, refs_or_name, metrics)

    def compare_predictions(self, a: str, b: str, labels: Any = None) -> PredictionComparison:
        """How often two versions' predictions agree, and (with ``labels``: a ref, a sequence,
        or a label column beside the predictions) how often each is right.

        Each version holds one table (CSV, JSONL, Parquet: its ``prediction``/``pred``/...
        column, else its last; rows matched on an ``id``/``key`` column when both have one,
        else by order) or one ``.npy`` (class scores become the arg-max class).
        """
        return tables.compare_predictions(self._repo, a, b, labels)

    def best(self, name: str, metric: str, mode: str = "min") -> ArtifactVersion:
        """The version of ``name`` with the lowest (``min``) or highest (``max``) ``metric``."""
        return diffing.best(self._repo, name, metric, mode)

    # -- clean-up ------------------------------------------------------------------------
    @overload
    def delete(self, ref: str, *, force: bool = False) -> ArtifactVersion: ...

    @overload
    def delete(
        self, ref: str, *, force: bool = False, all_versions: bool
    ) -> ArtifactVersion | list[ArtifactVersion]: ...

    def delete(
        self, ref: str, *, force: bool = False, all_versions: bool = False
    ) -> ArtifactVersion | list[ArtifactVersion]:
        """Delete one version (``name:v3``, ``name:alias``); it disappears from every listing,
        and gc frees its bytes.

        Version numbers are never reused. ``latest`` moves back by itself; a version with other
        aliases is refused unless ``force=True``, which removes them. A bare ``name`` names no
        one version and is refused; ``delete("name", all_versions=True)`` deletes every version
        and alias of the artifact (returning them), and its name stays reserved.
        """
        parsed = parse_ref(ref)
        bare = ":" not in ref  # parse_ref reads a bare name as name:latest
        if all_versions:
            if not bare:
                raise InvalidArgumentError(
                    f"all_versions=True deletes a whole artifact: give its name, not {ref!r}."
                )
            return cleanup.delete_all(self._repo, parsed.name)
        if bare:
            raise InvalidArgumentError(
                f"{ref!r} names an artifact, not a version: delete '{ref}:vN' (or "
                f"'{ref}:latest'), or the whole artifact with all_versions=True."
            )
        return cleanup.delete(self._repo, ref, force=force)

    def rename(self, old: str, new: str) -> None:
        """Rename the artifact ``old`` to ``new``, with all its versions, aliases and their
        history, tags, notes, metadata and lineage.

        Afterwards ``old`` raises NotFoundError saying ``'old' was renamed to 'new'``, and a
        training still writing to ``old`` stops with that error at its next version; a version
        it was committing meanwhile appears under ``new``. The old name stays reserved. A
        rename interrupted by a crash leaves both names working; running it again finishes it.
        Renaming back to a name the artifact had before is allowed.
        """
        renaming.rename(self._repo, old, new)

    def prune(
        self,
        name: str,
        *,
        keep_last: int | None = None,
        keep_aliased: bool = True,
        dry_run: bool = False,
        older_than: _dt.timedelta | float | None = None,
        unused: bool = False,
    ) -> list[ArtifactVersion]:
        """Delete the versions of ``name`` that every given rule selects: all but the newest
        ``keep_last``; those created more than ``older_than`` ago (a timedelta or seconds);
        with ``unused=True``, those no run used and that hold no alias (``latest`` included).
        Aliased versions are kept unless ``keep_aliased=False``.

        Returns the versions deleted (or, with ``dry_run``, that would be);
        ``freed_bytes(versions)`` says what gc would free after.
        """
        return cleanup.prune(
            self._repo, name, keep_last=keep_last, keep_aliased=keep_aliased, dry_run=dry_run,
            older_than=older_than, unused=unused,
        )  # fmt: skip

    def freed_bytes(self, versions: list[ArtifactVersion]) -> int:
        """The bytes gc would free once ``versions`` are deleted (their blobs that no other
        version on the shelf holds)."""
        return cleanup.freed_bytes(self._repo, versions)

    def gc(self, *, dry_run: bool = False, grace_period: float = DEFAULT_GRACE_SECONDS) -> GcReport:
        """Free the blobs and manifests that no version needs.

        Blobs held by a writer in flight, or younger than ``grace_period`` seconds, are kept.
        """
        return run_gc(self._repo, dry_run=dry_run, grace_period=grace_period)

    def fsck(self, *, repair: bool = False) -> FsckReport:
        """Check every record, manifest and blob of the shelf; report the damage per version.

        ``repair=True`` sets the damage aside without deleting anything: damaged bytes move
        under ``quarantine/``, torn records give way to void ones, and versions that lost bytes
        are marked quarantined, so that gc works again. Run it while no one writes.
        """
        return run_fsck(self._repo, repair=repair)

    def copy(
        self, ref: str, to: Shelf | str | os.PathLike[str], *, aliases: bool = False
    ) -> list[ArtifactVersion]:
        """Copy a version (``name:v3``) or every version (``name``) to another shelf.

        Metadata, tags, description and the run that logged each version travel along, and
        with ``aliases=True`` its aliases; only blobs the target lacks are sent.
        """
        target = to if isinstance(to, Shelf) else Shelf(to)
        return copy_versions(self._repo, ref, target._repo, aliases=aliases)  # noqa: SLF001
