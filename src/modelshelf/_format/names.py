"""Artifact names, aliases, tags, references and run ids: parsing and the rules they follow."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .._errors import InvalidReferenceError

_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_NAME_RE = re.compile(rf"(?:{_PART}/)?{_PART}")
_ALIAS_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")
_VERSION_RE = re.compile(r"v(\d+)")

NAME_RULE = (
    "a name is '[project/]name' where each part starts with a letter or digit and has at most "
    "128 of the characters A-Z a-z 0-9 . _ -"
)
ALIAS_RULE = (
    "an alias starts with a letter, has at most 64 of the characters A-Z a-z 0-9 . _ -, "
    "and is not a version like 'v3'"
)
REF_RULE = "a reference is '[project/]name[:selector]' where the selector is 'vN' or an alias"

LATEST = "latest"


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid artifact name, else raise InvalidReferenceError."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name.split("/"):
        raise InvalidReferenceError(f"Invalid artifact name {name!r}: {NAME_RULE}.", value=name)
    return name


def validate_alias(alias: object) -> str:
    """Return ``alias`` if it is a valid alias, else raise InvalidReferenceError."""
    if not isinstance(alias, str) or not _ALIAS_RE.fullmatch(alias) or _VERSION_RE.fullmatch(alias):
        hint = ""
        if isinstance(alias, str) and _VERSION_RE.fullmatch(alias):
            hint = " Versions are numbered by the shelf; choose a name such as 'best' or 'prod'."
        raise InvalidReferenceError(f"Invalid alias {alias!r}: {ALIAS_RULE}.{hint}", value=alias)
    return alias


def validate_tag(tag: object) -> str:
    """Return ``tag`` if it is a non-empty single-line string of at most 128 characters."""
    if (
        not isinstance(tag, str)
        or not tag.strip()
        or len(tag) > 128
        or any(c in tag for c in "\n\r\t")
    ):
        raise InvalidReferenceError(
            f"Invalid tag {tag!r}: a tag is a non-empty string of at most 128 characters "
            "without tabs or line breaks.",
            value=tag,
        )
    return tag


@dataclass(frozen=True)
class Ref:
    """A parsed reference: the artifact name and either a version number or an alias."""

    name: str
    version: int | None = None
    alias: str | None = None

    @property
    def basename(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:v{self.version}"
        return f"{self.name}:{self.alias or LATEST}"


def parse_ref(ref: object) -> Ref:
    """Parse ``[project/]name[:selector]``; a missing selector means ``latest``."""
    if not isinstance(ref, str):
        raise InvalidReferenceError(f"Invalid reference {ref!r}: {REF_RULE}.", value=ref)
    name, sep, selector = ref.partition(":")
    try:
        validate_name(name)
    except InvalidReferenceError:
        raise InvalidReferenceError(
            f"Invalid reference {ref!r}: {REF_RULE}; {NAME_RULE}.", value=ref
        ) from None
    if not sep:
        return Ref(name, alias=LATEST)
    match = _VERSION_RE.fullmatch(selector)
    if match:
        if len(match.group(1)) > 1 and match.group(1).startswith("0"):
            raise InvalidReferenceError(
                f"Invalid reference {ref!r}: {REF_RULE}; write versions without leading "
                f"zeros, e.g. '{name}:v{int(match.group(1))}'.",
                value=ref,
            )
        return Ref(name, version=int(match.group(1)))
    if not _ALIAS_RE.fullmatch(selector):
        raise InvalidReferenceError(
            f"Invalid reference {ref!r}: {REF_RULE}; the selector {selector!r} is neither a "
            f"version ('v0', 'v1', ...) nor an alias, and {ALIAS_RULE}.",
            value=ref,
        )
    return Ref(name, alias=selector)


_RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
RUN_ID_RULE = (
    "a run id starts with a letter or digit and has at most 128 of the characters A-Z a-z 0-9 . _ -"
)


def is_run_id(value: object) -> bool:
    """Whether ``value`` is a well-formed run id (generated ones look like
    ``20261127-232700-3f9a1c``)."""
    return isinstance(value, str) and _RUN_ID_RE.fullmatch(value) is not None


def run_id_of(run: Any) -> str | None:
    """A run's id, from a Run or an id string (None for no run)."""
    if run is None:
        return None
    run_id = getattr(run, "id", run)
    if not isinstance(run_id, str):
        raise InvalidReferenceError(f"run must be a Run or a run id string, not {run!r}.")
    if not is_run_id(run_id):
        raise InvalidReferenceError(f"Invalid run id {run_id!r}: {RUN_ID_RULE}.", value=run_id)
    return run_id
