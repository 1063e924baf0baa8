"""The exceptions modelshelf raises: one base class, each also the builtin it resembles.

Which class for which failure is written down in docs/errors.md.
"""

from __future__ import annotations


class ModelshelfError(Exception):
    """Base class of every error modelshelf raises on purpose."""


class InvalidArgumentError(ModelshelfError, ValueError):
    """An argument or option outside what it allows (``keep_last=-1``, ``mode="up"``, ...)."""

    def __init__(self, message: str, *, value: object = None) -> None:
        super().__init__(message)
        self.value = value


class InvalidReferenceError(InvalidArgumentError):
    """A name, alias, tag, type, file path or URI does not follow its rule."""


class InvalidMetadataError(InvalidArgumentError):
    """Metadata, a description, a config or a metric that cannot be stored as JSON."""


class NotFoundError(ModelshelfError, LookupError):
    """An artifact, version, alias, file or run that does not exist."""

    def __init__(self, message: str, *, ref: str | None = None) -> None:
        super().__init__(message)
        self.ref = ref


class IntegrityError(ModelshelfError):
    """What the shelf holds is damaged: bytes that do not match their digest, a record that
    is not valid, a missing manifest or blob, a reference whose target changed."""

    def __init__(self, message: str, *, ref: str | None = None, files: list[str] | None = None):
        super().__init__(message)
        self.ref = ref
        self.files = list(files or [])


class ConflictError(ModelshelfError):
    """An operation conflicts with the state of the shelf: a name of another type, an aliased
    version, a shelf format newer than this code, too many concurrent writers."""


class UnsafeLoadError(ModelshelfError):
    """Loading would unpickle a file, which can run arbitrary code."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class UnsupportedModelError(ModelshelfError, TypeError):
    """A model (or a version) that modelshelf cannot log or rebuild; the message says why."""


class MissingDependencyError(ModelshelfError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the {package!r} package, which is not installed. "
            f'Install it with: pip install "modelshelf[{extra}]"'
        )
        self.package = package
        self.extra = extra
