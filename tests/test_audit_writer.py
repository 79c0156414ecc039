"""The batched audit writer: nothing queued is lost, and a session's end is never undone."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from pathwarden.audit.writer import AuditWriter
from pathwarden.model import Protocol, SessionRecord, StatementRecord, Verdict
from pathwarden.store import open_store


def _session(sid: str) -> SessionRecord:
    return SessionRecord(id=sid, protocol=Protocol.POSTGRES, identity="ci-test", token_ref=None,
                         client_addr="127.0.0.1:1", connection="test-db",
                         started_at=datetime.now(UTC))


def _statement(sid: str, seq: int) -> StatementRecord:
    return StatementRecord(session_id=sid, seq=seq, kind="query", text=f"select {seq}",
                           params=(), verdict=Verdict.ALLOW, reason="ok",
                           started_at=datetime.now(UTC), duration_ms=0.1,
                           command_tag="SELECT 1", rows=1)


def test_close_writes_everything_queued_even_during_a_flush(tmp_path: Path) -> None:
    async def go() -> None:
        store = await open_store(f"sqlite:///{tmp_path / 'audit.db'}")
        writer = AuditWriter(store, flush_interval=0.001, max_batch=10)
        writer.start()
        rec = _session("s1")
        writer.session_started(rec)
        for i in range(1, 2001):
            writer.statement(_statement("s1", i))
            if i % 100 == 0:
                await asyncio.sleep(0)  # let background batches start
        rec.ended_at = datetime.now(UTC)
        rec.end_reason = "client terminated"
        writer.session_ended(rec)
        await writer.close()
        stored = await store.list_statements("s1")
        session = await store.get_session("s1")
        await store.close()
        assert [s.seq for s in stored] == list(range(1, 2001))
        assert session is not None and session.end_reason == "client terminated"
        assert writer.dropped == 0

    asyncio.run(go())


class SlowFirstUpsert:
    """A stand-in store whose first session write stalls, to force two batches to overlap.

    A fake on purpose: the interleaving it forces cannot be arranged reliably
    with a real database.
    """

    def __init__(self) -> None:
        self.rows: dict[str, tuple[datetime | None, str | None]] = {}
        self.calls = 0

    async def upsert_sessions(self, records: Sequence[SessionRecord]) -> None:
        values = {r.id: (r.ended_at, r.end_reason) for r in records}  # taken now
        self.calls += 1
        if self.calls == 1:
            await asyncio.sleep(0.2)
        self.rows.update(values)

    async def insert_statements(self, records: Sequence[StatementRecord]) -> None:
        return None


def test_concurrent_flushes_cannot_write_a_stale_session_over_its_end() -> None:
    async def go() -> None:
        store = SlowFirstUpsert()
        writer = AuditWriter(store, flush_interval=10)
        rec = _session("s2")
        writer.session_started(rec)
        first = asyncio.create_task(writer.flush())
        await asyncio.sleep(0.01)
        rec.ended_at = datetime.now(UTC)
        rec.end_reason = "client terminated"
        writer.session_ended(rec)
        await writer.flush()
        await first
        assert store.rows["s2"] == (rec.ended_at, "client terminated")

    asyncio.run(go())


def test_a_failing_store_keeps_records_for_the_retry(tmp_path: Path) -> None:
    class FailingOnce(SlowFirstUpsert):
        async def insert_statements(self, records: Sequence[StatementRecord]) -> None:
            if not getattr(self, "failed", False):
                self.failed = True
                raise OSError("disk full")
            self.stored = [r.seq for r in records]

    async def go() -> None:
        store = FailingOnce()
        writer = AuditWriter(store, flush_interval=0.01)
        writer.session_started(_session("s3"))
        writer.statement(_statement("s3", 1))
        writer.statement(_statement("s3", 2))
        writer.start()
        for _ in range(200):
            await asyncio.sleep(0.01)
            if getattr(store, "stored", None):
                break
        await writer.close()
        assert store.stored == [1, 2]
        assert writer.failures == 1

    asyncio.run(go())
