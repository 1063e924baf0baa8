"""The exceptions modelshelf raises: one base class, each also the builtin it resembles."""

from __future__ import annotations


class ModelshelfError(Exception):
    """Base class of every error modelshelf raises on purpose."""


class InvalidReferenceError(ModelshelfError, ValueError):
    """A name, alias or reference does not follow the rules of SPEC §2."""

    def __init__(self, message: str, *, value: object = None) -> None:
        super().__init__(message)
        self.value = value


class InvalidMetadataError(ModelshelfError, ValueError):
    """Metadata, a description or a config that cannot be stored as JSON."""

    def __init__(self, message: str, *, value: object = None) -> None:
        super().__init__(message)
        self.value = value


class NotFoundError(ModelshelfError, LookupError):
    """An artifact, version, alias, file or run that does not exist."""

    def __init__(self, message: str, *, ref: str | None = None) -> None:
        super().__init__(message)
        self.ref = ref


class IntegrityError(ModelshelfError):
    """Bytes read back do not match their recorded digest, or a reference changed."""

    def __init__(self, message: str, *, ref: str | None = None, files: list[str] | None = None):
        super().__init__(message)
        self.ref = ref
        self.files = list(files or [])


class ConflictError(ModelshelfError):
    """An operation conflicts with what is on the shelf (type mismatch, aliased version, ...)."""


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
