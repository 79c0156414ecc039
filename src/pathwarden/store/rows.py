"""Conversion between store rows and the records the rest of pathwarden uses.

JSON columns hold the variable-length parts (connection scopes, claims, bind
parameters); enums are stored by value so that adding a member needs no
migration.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC
from types import MappingProxyType
from typing import Any

from sqlalchemy import Row

from pathwarden.model import Protocol, SessionRecord, StatementRecord, Verdict
from pathwarden.store.base import TokenRecord
from pathwarden.store.tables import _SQLITE_FORMAT as SQLITE_TIME_FORMAT

__all__ = [
    "session_record",
    "session_row",
    "statement_record",
    "token_record",
    "token_row",
]


def token_row(rec: TokenRecord) -> dict[str, Any]:
    return {
        "token_ref": rec.token_ref,
        "identity": rec.identity,
        "issued_at": rec.issued_at,
        "expires_at": rec.expires_at,
        "connections": list(rec.connections) if rec.connections is not None else None,
        "claims": dict(rec.claims),
        "revoked_at": rec.revoked_at,
        "revoked_reason": rec.revoked_reason,
    }


def token_record(row: Row[Any]) -> TokenRecord:
    m = row._mapping
    return TokenRecord(
        token_ref=m["token_ref"],
        identity=m["identity"],
        issued_at=m["issued_at"],
        expires_at=m["expires_at"],
        connections=tuple(m["connections"]) if m["connections"] is not None else None,
        claims=MappingProxyType(dict(m["claims"] or {})),
        revoked_at=m["revoked_at"],
        revoked_reason=m["revoked_reason"],
    )


def session_row(rec: SessionRecord) -> dict[str, Any]:
    return {
        "id": rec.id,
        "protocol": str(rec.protocol),
        "identity": rec.identity,
        "token_ref": rec.token_ref,
        "client_addr": rec.client_addr,
        "connection": rec.connection,
        "started_at": rec.started_at,
        "ended_at": rec.ended_at,
        "bytes_from_client": rec.bytes_from_client,
        "bytes_to_client": rec.bytes_to_client,
        "end_reason": rec.end_reason,
        "claims": dict(rec.claims),
    }


def session_record(row: Row[Any]) -> SessionRecord:
    m = row._mapping
    return SessionRecord(
        id=m["id"],
        protocol=Protocol(m["protocol"]),
        identity=m["identity"],
        token_ref=m["token_ref"],
        client_addr=m["client_addr"],
        connection=m["connection"],
        started_at=m["started_at"],
        ended_at=m["ended_at"],
        bytes_from_client=m["bytes_from_client"],
        bytes_to_client=m["bytes_to_client"],
        end_reason=m["end_reason"],
        claims=_str_mapping(m["claims"]),
    )


STATEMENT_COLUMNS = (
    "session_id", "seq", "kind", "text", "params", "verdict", "reason", "policy", "action",
    "started_at", "duration_ms", "command_tag", "rows", "error", "masked",
)
_JSON_COLUMNS = ("params", "masked")
# Built from the fixed column names above; no input reaches these strings.
INSERT_STATEMENTS_SQLITE = (
    f"INSERT INTO statements ({', '.join(STATEMENT_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('?' for _ in STATEMENT_COLUMNS)}) "
    "ON CONFLICT (session_id, seq) DO NOTHING"
)
INSERT_STATEMENTS_PG = (
    f"INSERT INTO statements ({', '.join(STATEMENT_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('%s::json' if c in _JSON_COLUMNS else '%s' for c in STATEMENT_COLUMNS)}) "
    "ON CONFLICT (session_id, seq) DO NOTHING"
)


def statement_tuple(rec: StatementRecord, sqlite: bool) -> tuple[Any, ...]:
    """One statement as driver parameters in ``STATEMENT_COLUMNS`` order (the fast path)."""
    started = rec.started_at
    if started.tzinfo is None:
        raise ValueError(f"naive datetime {started.isoformat()} given to the store")
    started = started.astimezone(UTC)
    return (
        rec.session_id, rec.seq, rec.kind, rec.text, json.dumps(list(rec.params)),
        str(rec.verdict), rec.reason, rec.policy, rec.action,
        started.strftime(SQLITE_TIME_FORMAT) if sqlite else started,
        rec.duration_ms, rec.command_tag, rec.rows, rec.error,
        json.dumps(dict(rec.masked)) if rec.masked else None,
    )


def statement_record(row: Row[Any]) -> StatementRecord:
    m = row._mapping
    return StatementRecord(
        session_id=m["session_id"],
        seq=m["seq"],
        kind=m["kind"],
        text=m["text"],
        params=tuple(m["params"] or ()),
        verdict=Verdict(m["verdict"]),
        reason=m["reason"],
        started_at=m["started_at"],
        duration_ms=m["duration_ms"],
        command_tag=m["command_tag"],
        rows=m["rows"],
        error=m["error"],
        policy=m["policy"],
        action=m["action"],
        masked=dict(m["masked"]) if m["masked"] else None,
    )


def _str_mapping(value: Mapping[str, str] | None) -> dict[str, str]:
    return dict(value or {})
