"""Audit records as JSON lines: statements for a SIEM, recording events as they are stored.

Theory of operation
-------------------

The store's sessions and statements are the audit index; :func:`statement_record`
turns one statement (with its session) into one flat-ish JSON object with
stable field names modelled on the Elastic Common Schema (``@timestamp``,
``event.*``, ``client.*``) plus ``session.*``, ``identity.*``, ``db.*`` and
``pathwarden.*``. The names are a contract with whoever ingests them: they are
documented in ``docs/audit-export.md`` and only ever added to.

:func:`event_dict` and :func:`event_line` give a recording's events in the
canonical form of ``docs/recording.md``, so a header line followed by the
event lines is again a verifiable recording.

Pure functions: no I/O, no clock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pathwarden.model import SessionRecord, StatementRecord, Verdict
from pathwarden.recording.format import Event, canonical

__all__ = [
    "EXPORT_DATASET",
    "event_dict",
    "event_line",
    "split_address",
    "statement_line",
    "statement_record",
    "timestamp",
]

#: ``event.dataset`` of an exported statement.
EXPORT_DATASET = "pathwarden.statement"

_EVENT_TYPE = {Verdict.ALLOW: "allowed", Verdict.DENY: "denied", Verdict.APPROVE: "denied"}


def timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with microseconds and a ``Z``: ``2026-05-03T10:15:00.123456Z``."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()} cannot be exported")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def split_address(address: str) -> tuple[str | None, int | None]:
    """``ip:port`` (``[v6]:port`` or ``v6:port`` too) as (ip, port); (None, None) if not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None, None
    host = host.strip("[]")
    return (host or None), int(port)


def statement_record(session: SessionRecord, st: StatementRecord) -> dict[str, Any]:
    """One statement of ``session`` as an export object (see docs/audit-export.md)."""
    masked: Mapping[str, int] = st.masked or {}
    failed = st.verdict is not Verdict.ALLOW or st.error is not None
    ip, port = split_address(session.client_addr)
    return {
        "@timestamp": timestamp(st.started_at),
        "event": {
            "kind": "event",
            "category": ["database"],
            "type": [_EVENT_TYPE[st.verdict]],
            "action": st.action,
            "outcome": "failure" if failed else "success",
            "dataset": EXPORT_DATASET,
            "id": f"{st.session_id}:{st.seq}",
            "sequence": st.seq,
            "duration": None if st.duration_ms is None else round(st.duration_ms * 1_000_000),
        },
        "session": {
            "id": session.id,
            "protocol": str(session.protocol),
            "started": timestamp(session.started_at),
            "ended": timestamp(session.ended_at) if session.ended_at is not None else None,
            "end_reason": session.end_reason,
        },
        "identity": {
            "name": session.identity,
            "token_ref": session.token_ref,
            "claims": dict(sorted(session.claims.items())),
        },
        "client": {"address": session.client_addr, "ip": ip, "port": port},
        "connection": {"name": session.connection},
        "db": {
            "statement": st.text,
            "params": list(st.params),
            "command_tag": st.command_tag,
            "rows": st.rows,
            "error": st.error,
        },
        "pathwarden": {
            "kind": st.kind,
            "decision": st.verdict.value,
            "policy": st.policy,
            "reason": st.reason,
            "masked": dict(sorted(masked.items())),
            "masked_total": sum(masked.values()),
        },
    }


def statement_line(session: SessionRecord, st: StatementRecord) -> str:
    """:func:`statement_record` as one JSON line (keys sorted, UTF-8, no trailing newline)."""
    return json.dumps(statement_record(session, st), sort_keys=True, ensure_ascii=False,
                      separators=(",", ":"), allow_nan=False)


def event_dict(event: Event) -> dict[str, Any]:
    """A recording event as the object its line holds."""
    return {"seq": event.seq, "t": event.t, "type": event.type, "data": dict(event.data),
            "prev": event.prev, "h": event.h}


def event_line(event: Event) -> str:
    """The canonical line of ``event`` (without newline): the bytes the recording stores."""
    return canonical(event_dict(event)).decode("ascii")
