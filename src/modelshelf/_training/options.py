"""``CheckpointOptions``: the arguments every ``ShelfCheckpoint`` shares, checked once.

The adapters take ``ShelfCheckpoint(name, **options)`` and forward the options here (as
dvclive's callbacks forward to ``Live``); ``signature_with`` gives each adapter a full
signature, so ``help()``, IDEs and LightningCLI still see every option with its default.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from .._errors import InvalidArgumentError
from .._format.names import validate_alias
from .._format.records import clean_metadata

MODES = ("auto", "min", "max")
SAVES = ("improved", "all")
IMPROVE_ON = ("artifact", "run")
#: what ``keep_last="auto"`` keeps when nothing is monitored (every checked epoch is saved)
AUTO_KEEP_LAST = 3


@dataclasses.dataclass
class CheckpointOptions:
    """What a ``ShelfCheckpoint`` does; each field is a keyword argument of every adapter.

    Attributes:
        shelf: the Shelf or its URL (default: the default shelf).
        monitor: the metric to improve; None saves every checked epoch. Each adapter has its
            framework's default (Keras ``val_loss``, fastai ``valid_loss``, Lightning None).
        mode: ``"min"``, ``"max"`` or ``"auto"`` (told from the metric's name).
        min_delta: how much the monitored value must improve by.
        save: ``"improved"`` (default with a monitor) or ``"all"`` (default without).
        every_n_epochs: check every n-th epoch.
        keep_last: keep only the newest n versions without aliases (and free their bytes);
            ``"auto"``: 3 when nothing is monitored, else all.
        improve_on: ``"artifact"``: improve on the artifact's ``best`` across trainings (when
            it was chosen on the same monitor and mode); ``"run"``: on this fit's own best.
        aliases: more aliases to set on each saved version.
        config: added to the run's recorded config.
        metadata: added to each version's metadata.
        save_weights_only: store the weights only (no training state: no resume).
        resume: restore model, optimizer and epoch from ``latest`` at fit start.
        background: write versions in a background thread.
        run: a Run to record into (default: a run of its own).
    """

    shelf: Any = None
    monitor: str | None = None
    mode: str = "auto"
    min_delta: float = 0.0
    save: str | None = None
    every_n_epochs: int = 1
    keep_last: int | str | None = "auto"
    aliases: Any = ()
    config: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    save_weights_only: bool = False
    resume: bool = False
    background: bool = True
    run: Any = None
    improve_on: str = "artifact"
    #: set by ``make_options``: whether ``monitor`` is the adapter's default (not passed)
    monitor_defaulted: bool = dataclasses.field(default=False, repr=False)
    #: set by ``make_options``: whether ``save`` was passed (else it follows ``monitor``)
    save_given: bool = dataclasses.field(default=True, repr=False)

    def __post_init__(self) -> None:
        if self.monitor is not None and not isinstance(self.monitor, str):
            raise InvalidArgumentError(f"monitor must be a metric name, not {self.monitor!r}.")
        if self.mode not in MODES:
            raise InvalidArgumentError(f"mode={self.mode!r}: use 'auto', 'min' or 'max'.")
        if self.save is None:
            self.save_given = False
            self.save = "improved" if self.monitor else "all"
        if self.improve_on not in IMPROVE_ON:
            raise InvalidArgumentError(
                f"improve_on={self.improve_on!r}: use 'artifact' (the artifact's best, across "
                "trainings) or 'run' (this training's own best)."
            )
        if self.save not in SAVES:
            raise InvalidArgumentError(f"save={self.save!r}: use 'improved' or 'all'.")
        if self.save == "improved" and self.monitor is None:
            raise InvalidArgumentError("save='improved' needs monitor= (the metric to improve).")
        if not isinstance(self.every_n_epochs, int) or self.every_n_epochs < 1:
            raise InvalidArgumentError(
                f"every_n_epochs must be an int >= 1, not {self.every_n_epochs!r}."
            )
        if (
            self.keep_last is not None
            and self.keep_last != "auto"
            and (
                not isinstance(self.keep_last, int)
                or isinstance(self.keep_last, bool)
                or self.keep_last < 1
            )
        ):
            raise InvalidArgumentError(
                f"keep_last must be 'auto', None or an int >= 1, not {self.keep_last!r}."
            )
        if not isinstance(self.min_delta, (int, float)) or self.min_delta < 0:
            raise InvalidArgumentError(f"min_delta must be a number >= 0, not {self.min_delta!r}.")
        self.min_delta = float(self.min_delta)
        self.aliases = [validate_alias(a) for a in self.aliases if a not in ("latest", "best")]
        self.config = clean_metadata(self.config, "config")
        self.metadata = clean_metadata(self.metadata)


_INTERNAL = frozenset({"monitor_defaulted", "save_given"})


def make_options(
    options: dict[str, Any], *, default_monitor: str | None = None
) -> CheckpointOptions:
    """``CheckpointOptions(**options)``, with a clear error for a misspelt option;
    ``default_monitor`` is the adapter's ``monitor`` when none is passed."""
    known = {f.name for f in dataclasses.fields(CheckpointOptions)} - _INTERNAL
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidArgumentError(
            f"ShelfCheckpoint got unknown option(s) {', '.join(unknown)}; it takes "
            f"{', '.join(sorted(known))}."
        )
    if "monitor" not in options:
        return CheckpointOptions(
            **options, monitor=default_monitor, monitor_defaulted=default_monitor is not None
        )
    return CheckpointOptions(**options)


def keep_last_for(keep_last: int | str | None, monitor: str | None) -> int | None:
    """``keep_last`` with ``"auto"`` resolved: bounded when every epoch is saved."""
    if keep_last == "auto":
        return AUTO_KEEP_LAST if monitor is None else None
    return keep_last  # type: ignore[return-value]


def signature_with(
    init: Callable[..., Any], *, default_monitor: str | None = None, **extra: Any
) -> inspect.Signature:
    """``init``'s signature with ``**options`` spelt out: every CheckpointOptions field as a
    keyword parameter with its default (``monitor``: the adapter's), then ``extra`` (an
    adapter's own options) likewise."""
    own = [p for p in inspect.signature(init).parameters.values() if p.kind is not p.VAR_KEYWORD]
    fields = [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=default_monitor if f.name == "monitor" else f.default,
            annotation=f.type,
        )
        for f in dataclasses.fields(CheckpointOptions)
        if f.name not in _INTERNAL
    ]
    extras = [
        inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
        for k, v in extra.items()
        if k not in {p.name for p in own}
    ]
    return inspect.Signature([*own, *fields, *extras])
