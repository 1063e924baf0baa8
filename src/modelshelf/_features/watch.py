"""Watching an artifact: call back once for each new committed version, or for each move of
an alias, polling with a few small reads per cycle (no listing), on any backend.

A cursor file (optional) keeps what was handled, written after each callback returns, so a
watcher that restarts goes on after the last one it finished. Versions are seen only once
their commit record reads whole: one still being written is waited for, and one torn by a
crash (undecodable and settled) is passed over, as readers of the versions log do.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import InvalidArgumentError
from .._format.names import LATEST, validate_alias, validate_name
from .._format.records import UnreadableRecord
from .._format.seqlog import settled

if TYPE_CHECKING:
    from .._core.repository import Repository
    from .._core.version import ArtifactVersion

logger = logging.getLogger("modelshelf")


@dataclass
class Cursor:
    """What a watcher has handled: the newest version, or how many moves of its alias."""

    version: int = -1
    moves: int = 0

    @classmethod
    def load(cls, path: Path) -> Cursor | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise InvalidArgumentError(f"The watch cursor {path} cannot be read ({exc}).") from None
        version, moves = data.get("version"), data.get("moves")
        if not (isinstance(version, int) and isinstance(moves, int)):
            raise InvalidArgumentError(f"The watch cursor {path} is not one modelshelf wrote.")
        return cls(version, moves)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": self.version, "moves": self.moves}))
        os.replace(tmp, path)  # whole or not at all


def watch(
    repo: Repository,
    name: str,
    on_version: Callable[[ArtifactVersion], Any],
    *,
    alias: str | None = None,
    poll: float = 2.0,
    cursor: str | os.PathLike[str] | None = None,
    stop: threading.Event | None = None,
    max_events: int | None = None,
) -> int:
    """Call ``on_version`` for each new version of ``name`` (or each move of ``alias`` to a
    version); return how many calls were made, once ``stop`` is set or ``max_events`` were
    made. Without a cursor file (or with a new one) it starts from what is there now."""
    validate_name(name)
    repo.check_live(name)
    if alias == LATEST:
        alias = None  # latest moves with each new version: the same events
    if alias is not None:
        validate_alias(alias)
    if not isinstance(poll, (int, float)) or isinstance(poll, bool) or poll <= 0:
        raise InvalidArgumentError(f"poll must be a number of seconds > 0, not {poll!r}.")
    path = Path(cursor) if cursor is not None else None
    state = Cursor.load(path) if path is not None else None
    if state is None:
        state = Cursor(version=repo.labels.versions_log(name).head()[0])
        state.moves = len(repo.labels.alias_history(name, alias)) if alias is not None else 0
        if path is not None:
            state.save(path)
    stop = stop or threading.Event()
    seen = _Seen()
    fired = 0
    while not stop.is_set():
        for version in _new_versions(repo, name, alias, state, seen):
            on_version(version)
            fired += 1
            if path is not None:
                state.save(path)
            if max_events is not None and fired >= max_events:
                return fired
            if stop.is_set():
                return fired
        stop.wait(poll)
    return fired


@dataclass
class _Seen:
    """What this watcher has looked at, between polls (not kept across restarts)."""

    alias_head: int | None = None  # the alias log's head at the last full read
    undecodable: dict[str, tuple[float, int]] = field(default_factory=dict)  # for ``settled``


def _new_versions(
    repo: Repository, name: str, alias: str | None, state: Cursor, seen: _Seen
) -> Iterator[ArtifactVersion]:
    """The versions to call back for now, in order; ``state`` advances as each is yielded
    (so the caller saves it after handling one)."""
    if alias is not None:
        # One head probe per cycle; the history is read only when the alias log grew.
        log = repo.labels.log(repo.labels.keys(name).aliases)
        head = log.head()[0]
        if head == seen.alias_head:
            return
        # If the head decodes now, so does every record before it, and the history read
        # next holds all their moves; if not (being written, or torn by a crash), the
        # history is read again at the next poll.
        whole = True
        if head >= 0:
            try:
                log.raw(head)
            except UnreadableRecord:
                whole = False
        for event in repo.labels.alias_history(name, alias)[state.moves :]:
            state.moves += 1
            if event.version is not None:
                yield repo.get(f"{name}:v{event.version}")
        if whole:
            seen.alias_head = head
        return
    versions = repo.labels.versions_log(name)
    head = versions.head()[0]
    n = state.version + 1
    while n <= head:
        record = versions.readable(n)
        if record is None:
            if not settled(repo.storage, versions.key(n), seen.undecodable):
                return  # still being written: wait for it, and keep the order
            state.version = n  # torn by a crash: never a version
            n += 1
            continue
        state.version = n
        if not repo.labels.state(name, n, record).get("deleted"):
            yield repo.get(f"{name}:v{n}")
        n += 1
