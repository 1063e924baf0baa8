"""Aliases and the mutable labels of versions (tags, description, metadata).

Both are logs of whole snapshots on the shelf (docs/format.md): a change appends the next
snapshot, computed from the head, with create-if-absent; a writer that loses a race retries
on the new head, so concurrent changes are never lost.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._errors import ConflictError, NotFoundError
from ._layout import (
    aliases_prefix,
    isoformat,
    now,
    parse_time,
    state_prefix,
    versions_prefix,
    writer_info,
)
from ._log import SeqLog, dumps, loads
from ._refs import LATEST, validate_alias, validate_name
from ._version import AliasEvent

if TYPE_CHECKING:
    from ._storage import Storage


def run_id_of(run: Any) -> str | None:
    """A run's id, from a Run or an id string."""
    if run is None:
        return None
    run_id = getattr(run, "id", run)
    if not isinstance(run_id, str):
        from ._errors import InvalidReferenceError

        raise InvalidReferenceError(f"run must be a Run or a run id string, not {run!r}.")
    return run_id


def initial_state(record: dict[str, Any]) -> dict[str, Any]:
    """The labels a version has before any change: those of its commit record."""
    return {
        "tags": list(record.get("tags", [])),
        "description": record.get("description"),
        "metadata": dict(record.get("metadata", {})),
    }


class LabelsMixin:
    """The alias and label operations of a Shelf."""

    _storage: Storage

    # -- mutable state: tags, description, metadata --------------------------------------
    def _state(self, name: str, version: int, record: dict[str, Any]) -> dict[str, Any]:
        _, head = SeqLog(self._storage, state_prefix(name, version), hint=False).head()
        return head if head is not None else initial_state(record)

    def _all_states(self, name: str) -> dict[int, dict[str, Any]]:
        prefix = state_prefix(name, 0).rsplit("/", 1)[0]
        latest: dict[int, str] = {}
        for key in self._storage.find(prefix):
            parts = key.split("/")
            latest[int(parts[-2])] = max(latest.get(int(parts[-2]), ""), key)
        got = self._storage.read_many(list(latest.values()))
        return {n: loads(got[k], k) for n, k in latest.items() if k in got}

    def _update_state(
        self, name: str, version: int, change: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        record = SeqLog(self._storage, versions_prefix(name)).get(version)
        if record is None:
            raise NotFoundError(f"{name}:v{version} does not exist.", ref=f"{name}:v{version}")

        def make(_n: int, head: dict[str, Any] | None) -> dict[str, Any] | None:
            base = head if head is not None else initial_state(record)
            state: dict[str, Any] = copy.deepcopy(base)
            if state.get("deleted"):
                raise NotFoundError(f"{name}:v{version} was deleted.", ref=f"{name}:v{version}")
            before = json.dumps(state, sort_keys=True)
            change(state)
            if json.dumps(state, sort_keys=True) == before:
                return None
            state["at"] = isoformat(now())
            return state

        log = SeqLog(self._storage, state_prefix(name, version), hint=False)
        if log.head()[1] is None:
            # The first change: start the log with the state as committed, then change it.
            log.storage.create(log.key(0), dumps(initial_state(record)))
        return log.append(make)[1]

    # -- aliases -------------------------------------------------------------------------
    def _alias_map(self, name: str) -> dict[str, int]:
        _, head = SeqLog(self._storage, aliases_prefix(name)).head()
        return {k: int(v) for k, v in (head or {}).get("aliases", {}).items()}

    def _move_aliases(self, name: str, moves: dict[str, int | None], *, run: Any = None) -> None:
        for alias in moves:
            validate_alias(alias)
        if LATEST in moves:
            raise ConflictError(
                "'latest' is managed by the shelf: it always points to the newest version. "
                "Choose another alias, such as 'best' or 'production'."
            )
        run_id = run_id_of(run)
        versions = SeqLog(self._storage, versions_prefix(name))
        for alias, target in moves.items():
            if target is not None and versions.get(target) is None:
                raise NotFoundError(f"Cannot set {alias!r}: {name}:v{target} does not exist.")

        def make(_n: int, head: dict[str, Any] | None) -> dict[str, Any] | None:
            current = dict((head or {}).get("aliases", {}))
            at = isoformat(now())
            events = []
            for alias, target in moves.items():
                previous = current.get(alias)
                if previous == target:
                    continue
                if target is None:
                    current.pop(alias, None)
                else:
                    current[alias] = target
                events.append(
                    {"alias": alias, "from": previous, "to": target, "at": at, "run_id": run_id}
                )
            if not events:
                return None
            return {"aliases": current, "events": events, "by": writer_info()}

        SeqLog(self._storage, aliases_prefix(name)).append(make)

    def _remove_alias(self, name: str, alias: str, version: int, *, run: Any = None) -> None:
        current = self._alias_map(name).get(alias)
        if current != version:
            where = f"it points to v{current}" if current is not None else "it is not set"
            raise NotFoundError(f"{name}:v{version} has no alias {alias!r} ({where}).")
        self._move_aliases(name, {alias: None}, run=run)

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        """Every move of ``alias`` (or of every alias) of ``name``, oldest first.

        ``latest`` moves with each new version; its history is derived from the versions.
        """
        validate_name(name)
        if alias is not None and alias != LATEST:
            validate_alias(alias)
        events = []
        for _n, record in SeqLog(self._storage, aliases_prefix(name)).all():
            for e in record.get("events", []):
                if alias is None or e["alias"] == alias:
                    events.append(
                        AliasEvent(
                            e["alias"], e["to"], parse_time(e["at"]), e.get("run_id"), e["from"]
                        )
                    )
        if alias in (None, LATEST):
            previous = None
            for _n, rec in SeqLog(self._storage, versions_prefix(name)).all():
                n = int(rec["version"])
                events.append(
                    AliasEvent(
                        LATEST, n, parse_time(rec["created_at"]), rec.get("run_id"), previous
                    )
                )
                previous = n
        return sorted(events, key=lambda e: e.at)
