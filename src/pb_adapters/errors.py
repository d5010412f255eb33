"""The exception family raised by pb_adapters.

Every problem a user can act on derives from :class:`PbAdaptersError`; each class also derives
from the builtin exception a caller would expect (``ValueError``, ``KeyError``, ``OSError``...).
Problems with an artifact (a saved or downloaded adapter) raise :class:`ArtifactError` or a
subclass, so one ``except`` clause catches every refused load; file-system failures while reading
or writing raise :class:`StorageError`.
"""

from __future__ import annotations


class PbAdaptersError(Exception):
    """Base class of every error pb_adapters raises on purpose."""


class ConfigError(PbAdaptersError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class TargetingError(PbAdaptersError, ValueError):
    """The modules to mask could not be resolved, or a targeted module is not supported."""


class AdapterNotFoundError(PbAdaptersError, KeyError):
    """An adapter name was used that is not loaded on the model."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class ArtifactError(PbAdaptersError, ValueError):
    """An adapter artifact is missing, malformed, or does not fit the model it is loaded onto."""


class FormatVersionError(ArtifactError):
    """The artifact was written in a format version this release cannot read."""


class BaseModelMismatchError(ArtifactError):
    """The base model's weights differ from those the adapter was trained on."""


class HubError(PbAdaptersError):
    """Talking to the Hugging Face Hub failed in a way the user can fix."""


class StorageError(PbAdaptersError, OSError):
    """A file could not be read or written: the disk is full, access is denied, the path is
    unusable. ``errno`` and ``filename`` are those of the underlying :class:`OSError`."""


class TargetExistsError(StorageError, FileExistsError):
    """Something that is not a folder (a file, say) is in the way of a folder to write."""


class HubConnectionError(HubError, ConnectionError):
    """The Hub could not be reached or failed to answer (network, server error): trying again
    later, or fixing the connection, may succeed with the same command."""
