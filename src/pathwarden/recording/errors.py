"""Errors of the recording package: one flat hierarchy, no event content in messages."""

from __future__ import annotations


class RecordingError(Exception):
    """Writing, syncing, compressing or storing a recording failed.

    ``errno`` carries the operating system's error number when there is one.
    The message names the file and the operation, never the content of an event.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class RecordingFull(RecordingError):
    """The recording reached its hard size limit: refuse operations and end the session."""


class RecordingNotFound(RecordingError):
    """No stored recording at that location."""


class RecordingFormatError(ValueError):
    """Bytes that are not a valid recording line, or data that cannot be recorded."""
