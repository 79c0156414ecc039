"""Batched audit writer: sessions and statements into the store, off the hot path.

Theory of operation: sessions call :meth:`AuditWriter.statement` and friends,
which only append to in-memory lists (no I/O, no awaiting), so a statement
costs the gateway a list append. A background task flushes the lists to the
store every ``flush_interval`` or as soon as ``max_batch`` records wait, in one
transaction per batch. A failed flush keeps the records and retries with
backoff; if the backlog passes ``max_backlog`` the oldest statement records are
dropped and the loss is counted and logged, never silent. :meth:`close`
flushes what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

from ..model import SessionRecord, StatementRecord

log = logging.getLogger(__name__)


class AuditStore(Protocol):
    async def upsert_sessions(self, records: Sequence[SessionRecord]) -> None: ...

    async def insert_statements(self, records: Sequence[StatementRecord]) -> None: ...


class AuditWriter:
    """Queues audit records and writes them to the store in batches."""

    def __init__(
        self, store: AuditStore, *, flush_interval: float = 0.2, max_batch: int = 500,
        max_backlog: int = 200_000,
    ) -> None:
        self._store = store
        self._interval = flush_interval
        self._max_batch = max_batch
        self._max_backlog = max_backlog
        self._sessions: dict[str, SessionRecord] = {}
        self._statements: list[StatementRecord] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.dropped = 0
        self.failures = 0

    # -- sink API (synchronous, never blocks) --------------------------------

    def session_started(self, record: SessionRecord) -> None:
        self._sessions[record.id] = record
        self._poke()

    def session_ended(self, record: SessionRecord) -> None:
        self._sessions[record.id] = record
        self._poke()

    def statement(self, record: StatementRecord) -> None:
        self._statements.append(record)
        if len(self._statements) >= self._max_batch:
            self._poke()

    def _poke(self) -> None:
        self._wake.set()

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-writer")

    async def flush(self) -> None:
        """Write everything queued so far (raises if the store fails).

        Flushes are serialised: two concurrent batches could commit out of
        order and let an older session row overwrite its end.
        """
        async with self._lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        while self._sessions or self._statements:
            sessions = list(self._sessions.values())
            self._sessions = {}
            statements = self._statements[: self._max_batch * 4]
            del self._statements[: len(statements)]
            try:
                if sessions:
                    await self._store.upsert_sessions(sessions)
                if statements:
                    await self._store.insert_statements(statements)
            except BaseException:
                # Put them back in front so order and content survive the retry; a
                # session record queued meanwhile is newer and wins.
                for s in sessions:
                    self._sessions.setdefault(s.id, s)
                self._statements[:0] = statements
                raise

    async def _run(self) -> None:
        backoff = self._interval
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            self._wake.clear()
            try:
                await self.flush()
                backoff = self._interval
            except Exception as exc:
                self.failures += 1
                log.error("audit store write failed (%s); %d statements queued, retrying in %.1fs",
                          exc, len(self._statements), backoff)
                self._trim()
                # Sleep, but wake early for close().
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=backoff)
                backoff = min(backoff * 2, 10.0)

    def _trim(self) -> None:
        excess = len(self._statements) - self._max_backlog
        if excess > 0:
            del self._statements[:excess]
            self.dropped += excess
            log.error("audit backlog full: dropped %d statement records (total dropped %d)",
                      excess, self.dropped)

    async def close(self) -> None:
        """Stop the background task and write what is left."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            # Let a batch in progress commit: cancelling it mid-transaction would
            # leave the store locked for the final flush below.
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=30)
            except (TimeoutError, Exception):
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
            self._task = None
        try:
            await self.flush()
        except Exception as exc:
            log.error("final audit flush failed (%s); %d statements and %d sessions not written",
                      exc, len(self._statements), len(self._sessions))
