"""Domain errors. The CLI maps each family to an exit code in one place (controller.cli).

Exit codes: 2 = the input was wrong (usage, validation, not found) or the environment
refused (database not ready, disk full); 3 = a state change was refused by a precondition
(incompatible, stale revision, no champion, ...).
"""

from __future__ import annotations


class XltError(Exception):
    """Base of every error xlt reports to a user: one line, what was wrong and what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}; {hint}")

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}; {self.hint}"


class InvalidInput(XltError):
    """A value given by the user (option, file, tag) is not acceptable."""

    exit_code = 2


class NotFound(InvalidInput):
    """A named object (encoder, adapter, dataset, track) does not exist."""


class InvalidLanguage(InvalidInput):
    pass


class InvalidName(InvalidInput):
    """A task, language or encoder name outside the grammar of registry.names."""


class UnsafeInput(InvalidInput):
    """Input built to exhaust the parser: JSON nested too deep, a file too large."""


class ArtifactError(InvalidInput):
    """An artifact is of a refused format, missing, or fails its checksum."""


class RefusedChange(XltError):
    """A state change was refused because a precondition does not hold."""

    exit_code = 3


class AlreadyExists(RefusedChange):
    pass


class IncompatibleAdapter(RefusedChange):
    pass


class NoChampion(RefusedChange):
    pass


class StaleRevision(RefusedChange):
    pass


class InvalidTransition(RefusedChange):
    """The object's status does not allow the asked change (e.g. promote a rejected adapter)."""


class StorageError(XltError):
    """The machine refused a file operation (disk full, read-only, permission denied): the
    message names the path and the operating system's reason; nothing was recorded."""

    exit_code = 2


class DatabaseNotReady(XltError):
    """The database is unreachable or its schema is not at the current migration."""

    exit_code = 2
