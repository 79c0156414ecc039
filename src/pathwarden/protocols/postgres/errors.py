"""Protocol errors raised by the sans-I/O PostgreSQL core.

A :class:`RemoteProtocolError` means the peer sent bytes that are not a valid
message where one was expected; a :class:`LocalProtocolError` means pathwarden
itself tried to send something invalid. Both carry the SQLSTATE the gateway
reports to the client (``08P01`` protocol_violation unless stated otherwise).
They are the only exceptions the core raises on any input.
"""

from __future__ import annotations

PROTOCOL_VIOLATION = "08P01"
PROGRAM_LIMIT_EXCEEDED = "54000"


class ProtocolError(Exception):
    """Base class: a violation of the PostgreSQL v3 wire protocol."""

    def __init__(self, message: str, sqlstate: str = PROTOCOL_VIOLATION) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


class RemoteProtocolError(ProtocolError):
    """The peer sent something that is not valid protocol."""


class LocalProtocolError(ProtocolError):
    """pathwarden tried to send something that is not valid protocol."""
