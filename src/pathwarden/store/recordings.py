"""The recordings index: where each finished session recording is, and the chain of sessions.

Each gateway (``gateway_id``) keeps its own chain: position 1, 2, ... with a
link that folds in the session's final event hash (recording/verify.py). A
row and the new signed head are written in one transaction, so the stored
head always signs the newest row. Pruning deletes the oldest rows of a chain
(and their sessions and statements) and stores a signed checkpoint at the cut.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from pathwarden.store.tables import (
    audit_checkpoints,
    audit_heads,
    recordings,
    sessions,
    statements,
)

__all__ = ["RecordingIndex", "RecordingRow"]


@dataclass(frozen=True, slots=True)
class RecordingRow:
    """One finished session recording in the index."""

    session_id: str
    gateway_id: str
    position: int
    final_hash: str
    link: str
    location: str
    events: int
    bytes: int
    stored_bytes: int
    complete: bool
    started_at: datetime
    ended_at: datetime


def _row(row: Row[Any]) -> RecordingRow:
    m = row._mapping
    return RecordingRow(
        session_id=m["session_id"], gateway_id=m["gateway_id"], position=int(m["position"]),
        final_hash=m["final_hash"], link=m["link"], location=m["location"],
        events=int(m["events"]), bytes=int(m["bytes"]), stored_bytes=int(m["stored_bytes"]),
        complete=bool(m["complete"]), started_at=m["started_at"], ended_at=m["ended_at"],
    )


class _Base(Protocol):
    _engine: AsyncEngine
    _writer: AsyncEngine

    def _errors(self, action: str, *, opening: bool = False,
                integrity_hint: str = "") -> contextlib.AbstractContextManager[None]: ...


class RecordingIndex:
    """Recordings, chain heads and checkpoints (mixed into SqlStore)."""

    async def chain_tail(self: _Base, gateway_id: str) -> tuple[int, str] | None:
        """The last position and link of ``gateway_id``'s chain, or None if it is empty."""
        query = (select(recordings.c.position, recordings.c.link)
                 .where(recordings.c.gateway_id == gateway_id)
                 .order_by(recordings.c.position.desc()).limit(1))
        with self._errors("reading the chain of sessions"):
            async with self._engine.connect() as conn:
                row = (await conn.execute(query)).first()
                if row is not None:
                    return int(row[0]), str(row[1])
                # Everything was pruned: the chain goes on from the checkpoint.
                cp = (await conn.execute(
                    select(audit_checkpoints.c.signed)
                    .where(audit_checkpoints.c.gateway_id == gateway_id)
                    .order_by(audit_checkpoints.c.position.desc()).limit(1))).first()
        if cp is None:
            return None
        from pathwarden.recording import Checkpoint

        checkpoint = Checkpoint.from_json(str(cp[0]))
        return checkpoint.position, checkpoint.link

    async def add_recording(self: _Base, row: RecordingRow, head: str) -> None:
        """Index a finished recording and store the signed head that now covers it."""
        values = {name: getattr(row, name) for name in RecordingRow.__slots__}
        with self._errors(f"indexing the recording of session {row.session_id}"):
            async with self._writer.begin() as conn:
                await conn.execute(recordings.insert().values(**values))
                done = await conn.execute(
                    update(audit_heads).where(audit_heads.c.gateway_id == row.gateway_id)
                    .values(position=row.position, signed=head))
                if done.rowcount == 0:
                    await conn.execute(audit_heads.insert().values(
                        gateway_id=row.gateway_id, position=row.position, signed=head))

    async def get_recording(self: _Base, session_id: str) -> RecordingRow | None:
        with self._errors(f"looking up the recording of session {session_id}"):
            async with self._engine.connect() as conn:
                found = (await conn.execute(
                    select(recordings).where(recordings.c.session_id == session_id))).first()
        return _row(found) if found is not None else None

    async def list_recordings(
        self: _Base, *, gateway_id: str | None = None, before: datetime | None = None,
        limit: int | None = None,
    ) -> list[RecordingRow]:
        """Recordings in chain order (per gateway, by position)."""
        query = select(recordings).order_by(recordings.c.gateway_id, recordings.c.position)
        if gateway_id is not None:
            query = query.where(recordings.c.gateway_id == gateway_id)
        if before is not None:
            query = query.where(recordings.c.ended_at < before)
        if limit is not None:
            query = query.limit(limit)
        with self._errors("listing recordings"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query)).all()
        return [_row(r) for r in rows]

    async def heads(self: _Base) -> dict[str, str]:
        """The signed head of every gateway's chain, as stored JSON."""
        with self._errors("reading chain heads"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(select(audit_heads))).all()
        return {str(r.gateway_id): str(r.signed) for r in rows}

    async def checkpoints(self: _Base) -> dict[str, str]:
        """The newest signed checkpoint of every pruned chain, as stored JSON."""
        newest = (select(audit_checkpoints.c.gateway_id,
                         func.max(audit_checkpoints.c.position).label("position"))
                  .group_by(audit_checkpoints.c.gateway_id).subquery())
        query = select(audit_checkpoints).join(
            newest, (audit_checkpoints.c.gateway_id == newest.c.gateway_id)
            & (audit_checkpoints.c.position == newest.c.position))
        with self._errors("reading checkpoints"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query)).all()
        return {str(r.gateway_id): str(r.signed) for r in rows}

    async def prune(self: _Base, gateway_id: str, up_to: int, checkpoint: str,
                    session_ids: Sequence[str]) -> None:
        """Drop ``gateway_id``'s chain up to position ``up_to`` and what it recorded.

        The checkpoint (signed, at ``up_to``) is stored in the same transaction,
        so the chain stays verifiable from there.
        """
        with self._errors(f"pruning the chain of {gateway_id}"):
            async with self._writer.begin() as conn:
                await conn.execute(audit_checkpoints.insert().values(
                    gateway_id=gateway_id, position=up_to, signed=checkpoint))
                await conn.execute(delete(recordings).where(
                    recordings.c.gateway_id == gateway_id, recordings.c.position <= up_to))
                for chunk in _chunks(list(session_ids), 500):
                    await conn.execute(delete(statements).where(
                        statements.c.session_id.in_(chunk)))
                    await conn.execute(delete(sessions).where(sessions.c.id.in_(chunk)))


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
