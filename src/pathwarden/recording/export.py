"""Audit records as JSON lines: statements for a SIEM, recording events as they are stored.

Theory of operation
-------------------

The store's sessions and statements are the audit index; :func:`statement_record`
turns one statement (with its session) into one flat-ish JSON object with
stable field names modelled on the Elastic Common Schema (``@timestamp``,
``event.*``, ``client.*``) plus ``session.*``, ``identity.*``, ``db.*`` and
``pathwarden.*``. The names are a contract with whoever ingests them: they are
documented in ``docs/audit-export.md`` and only ever added to. An SSH
session's operations are statements too (``event.category`` says what kind:
``process`` for a command or shell, ``file`` for SFTP and scp, ``network``
for forwarding); its ``file`` recording events (one per file operation, with
path and byte count) become lines of their own with :func:`file_record`
(``event.dataset`` ``pathwarden.file``). Terminal output is not exported: it
is in the recording, for ``pathwarden replay``.

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

from pathwarden.model import Protocol, SessionRecord, StatementRecord, Verdict
from pathwarden.recording.format import Event, canonical

__all__ = [
    "EXPORT_DATASET",
    "FILE_DATASET",
    "event_dict",
    "event_line",
    "file_line",
    "file_record",
    "split_address",
    "statement_line",
    "statement_record",
    "timestamp",
]

#: ``event.dataset`` of an exported statement.
EXPORT_DATASET = "pathwarden.statement"
#: ``event.dataset`` of an exported file operation of an SSH session.
FILE_DATASET = "pathwarden.file"

_EVENT_TYPE = {Verdict.ALLOW: "allowed", Verdict.DENY: "denied", Verdict.APPROVE: "denied"}
#: ``event.category`` of an SSH operation by its kind; any other kind is forwarding.
_SSH_CATEGORY = {"exec": "process", "shell": "process", "sftp": "file", "scp": "file"}


def _category(protocol: Protocol, kind: str) -> list[str]:
    if protocol == Protocol.SSH:
        return [_SSH_CATEGORY.get(kind, "network")]
    return ["database"]


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
    return {
        "@timestamp": timestamp(st.started_at),
        "event": {
            "kind": "event",
            "category": _category(session.protocol, st.kind),
            "type": [_EVENT_TYPE[st.verdict]],
            "action": st.action,
            "outcome": "failure" if failed else "success",
            "dataset": EXPORT_DATASET,
            "id": f"{st.session_id}:{st.seq}",
            "sequence": st.seq,
            "duration": None if st.duration_ms is None else round(st.duration_ms * 1_000_000),
        },
        **_session_fields(session),
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


def _session_fields(session: SessionRecord) -> dict[str, Any]:
    """The ``session``, ``identity``, ``client`` and ``connection`` of every exported line."""
    ip, port = split_address(session.client_addr)
    return {
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
    }


def file_record(session: SessionRecord, event: Event) -> dict[str, Any]:
    """A ``file`` recording event of an SSH session as an export object.

    ``event.id`` is ``<session>:file:<recording seq>`` (statements use
    ``<session>:<sequence>``, so the two never collide); ``file.target_path`` is
    the new name of a rename.
    """
    d = event.data
    paths = [p for p in d.get("paths") or [] if isinstance(p, str)]
    path = d.get("path") if isinstance(d.get("path"), str) else None
    if not path and paths:
        path = paths[0]
    op = d.get("op") if isinstance(d.get("op"), str) else "unknown"
    denied = d.get("verdict") == "deny"
    ok = d.get("ok") is True
    return {
        "@timestamp": timestamp(datetime.fromtimestamp(event.t, UTC)),
        "event": {
            "kind": "event",
            "category": ["file"],
            "type": ["denied" if denied else "allowed"],
            "action": op,
            "outcome": "success" if ok and not denied else "failure",
            "dataset": FILE_DATASET,
            "id": f"{session.id}:file:{event.seq}",
            "sequence": event.seq,
            "duration": None,
        },
        **_session_fields(session),
        "file": {
            "path": path,
            "target_path": paths[1] if op == "rename" and len(paths) == 2 else None,
        },
        "pathwarden": {
            "kind": "file",
            "decision": "deny" if denied else "allow",
            "channel": _int(d.get("channel")),
            "paths": paths,
            "bytes": _int(d.get("bytes")),
            "bytes_read": _int(d.get("bytes_read")),
            "bytes_written": _int(d.get("bytes_written")),
            "ok": ok,
            "error": d.get("error") if isinstance(d.get("error"), str) else None,
        },
    }


def _int(value: Any) -> int | None:
    return value if value.__class__ is int else None


def file_line(session: SessionRecord, event: Event) -> str:
    """:func:`file_record` as one JSON line (keys sorted, UTF-8, no trailing newline)."""
    return json.dumps(file_record(session, event), sort_keys=True, ensure_ascii=False,
                      separators=(",", ":"), allow_nan=False)


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
