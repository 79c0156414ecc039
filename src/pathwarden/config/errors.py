"""The one exception the configuration package raises."""

from __future__ import annotations

from collections.abc import Sequence


class ConfigError(Exception):
    """A configuration problem, with where it is and what to do about it.

    ``str()`` has one line per problem, each shaped like
    ``pathwarden.yaml:14:5: connections.test-db.port: <message>`` when the
    problem can be located in the file. ``problems`` holds those lines.
    """

    def __init__(self, message: str, *, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems: tuple[str, ...] = tuple(problems) or (message,)
