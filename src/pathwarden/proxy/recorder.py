"""Session recordings in the gateway: write-ahead events, finishing, the chain of sessions.

Theory of operation: each session gets a :class:`SessionRecording`, an
append-only file in ``<recordings>/live/`` (recording/writer.py). Before the
session forwards an operation it calls :meth:`SessionRecording.operation`,
which writes the operation and its decision with one ``write()``; in strict
mode (the default) an operation whose event cannot be written is refused.
Results follow when the server has answered. A power-loss policy
(``recording.fsync``) syncs the files that were written to, every few
milliseconds across all sessions (group commit), or after each operation.

When the session ends, :class:`Recorder` compresses the file in a worker
thread, hands it to the storage (files or S3), and indexes it: the session's
final event hash is folded into this gateway's chain of sessions, and the new
chain head is signed with the gateway's key, in the same store transaction as
the index row. Live files left by a gateway that died are finished the same
way when the next one starts (they verify as ``truncated``, which is what
happened).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..config.recording import RecordingSettings, S3StorageConfig
from ..model import Decision, Operation, SessionRecord
from ..recording import (
    GENESIS_LINK,
    FileStorage,
    FinishedRecording,
    GroupSync,
    RecordingError,
    RecordingFormatError,
    RecordingFull,
    RecordingStorage,
    RecordingWriter,
    S3Storage,
    SignedHead,
    chain_link,
    finish_orphan,
    read_recording,
    sign_head,
)
from ..store import RecordingRow, Store, StoreError

log = logging.getLogger(__name__)

__all__ = [
    "Recorder", "SessionRecording", "default_gateway_id", "recording_root", "storage_for",
]


def default_gateway_id(data_dir: Path) -> str:
    """This gateway's chain name: its host name and a digest of its data directory."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]
    return f"{socket.gethostname()[:48]}-{digest}"


def recording_root(settings: RecordingSettings, data_dir: Path) -> Path:
    """The recording directory: ``recording.dir``, or ``<data_dir>/recordings``."""
    return settings.dir or data_dir / "recordings"


class SessionRecording:
    """One session's recording, used from the event loop."""

    __slots__ = ("_recorder", "failed", "full", "sample_bytes", "sample_rows", "writer")

    def __init__(self, recorder: Recorder, writer: RecordingWriter) -> None:
        self._recorder = recorder
        self.writer = writer
        self.sample_rows = recorder.settings.sample_rows
        self.sample_bytes = recorder.settings.sample_bytes
        self.failed = False  # an event could not be written (logged once)
        self.full = False

    def _fail(self, exc: RecordingError) -> None:
        if not self.failed:
            log.error("session recording %s: %s", self.writer.path.name, exc)
        self.failed = True

    def operation(self, op: Operation, decision: Decision, text: str,
                  params: tuple[str | None, ...]) -> str | None:
        """Write an operation and its decision before it is forwarded.

        Returns None when it may go ahead, or why it must be refused (strict mode).
        """
        data: dict[str, Any] = {"op_seq": op.seq, "kind": op.kind, "text": text,
                                "action": op.action}
        if params:
            data["params"] = list(params)
        verdict = {"op_seq": op.seq, "verdict": decision.verdict.value,
                   "reason": decision.reason}
        if decision.policy:
            verdict["policy"] = decision.policy
        if decision.rule is not None:
            verdict["rule"] = decision.rule
        try:
            self.writer.append_many([("operation", data, True), ("decision", verdict, True)])
            if self._recorder.fsync_each:
                self.writer.fsync()
        except RecordingFull:
            self.full = True
            return ("this session's recording reached recording.max_session_bytes; "
                    "reconnect to continue")
        except RecordingError as exc:
            self._fail(exc)
            if self._recorder.settings.strict:
                return "the audit record could not be written (recording.strict)"
        return None

    def close(self, record: SessionRecord) -> None:
        """The session ended: write ``session_end`` and finish the recording."""
        self._recorder.close(self, record)

    def result(self, data: dict[str, Any], sample: dict[str, Any] | None) -> None:
        """Record a statement's outcome; its row sample only while under the size limit."""
        try:
            if sample is not None and self.writer.append(
                    "result", {**data, "sample": sample}, essential=False) is not None:
                return
            self.writer.append("result", data)
        except RecordingError as exc:
            self._fail(exc)

    def event(self, type: str, data: dict[str, Any], essential: bool = True) -> None:
        """Record an event after the fact (results, the session's end): never refuses."""
        try:
            self.writer.append(type, data, essential=essential)
        except RecordingError as exc:
            self._fail(exc)


class Recorder:
    """The gateway's recordings: live files, finishing, storage and the chain."""

    def __init__(self, settings: RecordingSettings, data_dir: Path, store: Store,
                 signing_key: Ed25519PrivateKey | None, gateway_id: str | None = None) -> None:
        self.settings = settings
        self.root = recording_root(settings, data_dir)
        self.live_dir = self.root / "live"
        self.store = store
        self.signing_key = signing_key
        self.gateway_id = gateway_id or settings.gateway_id or default_gateway_id(data_dir)
        self.storage = storage_for(settings, self.root)
        self.fsync_each = settings.fsync == "always"
        self.sync = GroupSync()
        self._chain_lock = asyncio.Lock()
        self._finishing: set[asyncio.Task[None]] = set()
        self._sync_task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Create the directories, finish recordings a crashed gateway left, start syncing."""
        self.live_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for live in sorted(self.live_dir.glob("*.pwrec")):
            await self._recover(live)
        for done in sorted(self.live_dir.glob("*.pwrec.gz")):
            # Finished but not stored or indexed when the last gateway stopped.
            await self._finish(None, done.name.removesuffix(".pwrec.gz"), complete=True,
                               live=done)
        if self.settings.fsync == "interval":
            self._sync_task = asyncio.get_running_loop().create_task(self._sync_loop())

    async def stop(self) -> None:
        """Wait for recordings being finished; stop the sync task."""
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
            self._sync_task = None
        await asyncio.to_thread(self.sync.sync_all)

    async def _sync_loop(self) -> None:
        interval = self.settings.fsync_interval.total_seconds()
        while True:
            await asyncio.sleep(interval)
            if self.sync.dirty():
                report = await asyncio.to_thread(self.sync.sync_all)
                for writer, error in report.failed:
                    log.error("fsync of recording %s failed: %s", writer.path.name, error)

    # -- sessions ------------------------------------------------------------------

    def open(self, record: SessionRecord, protocol: str) -> SessionRecording:
        """Start a session's recording with its ``session_start`` event.

        Raises :class:`RecordingError` if the file cannot be created or written.
        """
        max_bytes = int(self.settings.max_session_bytes)
        writer = RecordingWriter.create(
            self.live_dir / f"{record.id}.pwrec", record.id, self.gateway_id,
            soft_limit=max_bytes, hard_limit=max_bytes + max_bytes // 4)
        try:
            writer.append("session_start", {
                "identity": record.identity, "token_ref": record.token_ref,
                "claims": dict(record.claims), "client": record.client_addr,
                "connection": record.connection, "protocol": protocol,
            })
        except BaseException:
            writer.close()
            raise
        self.sync.add(writer)
        return SessionRecording(self, writer)

    def close(self, recording: SessionRecording, record: SessionRecord) -> None:
        """Write ``session_end``, then finish and index the recording in the background."""
        recording.event("session_end", {
            "reason": record.end_reason, "bytes_from_client": record.bytes_from_client,
            "bytes_to_client": record.bytes_to_client})
        self.sync.discard(recording.writer)
        span = (record.started_at, record.ended_at or datetime.now(UTC))
        task = asyncio.get_running_loop().create_task(
            self._finish(recording.writer, record.id, complete=True, span=span))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _finish(self, writer: RecordingWriter | None, session_id: str, *,
                      complete: bool, live: Path | None = None,
                      span: tuple[datetime, datetime] | None = None) -> None:
        dest = self.live_dir / f"{session_id}.pwrec.gz"
        try:
            if writer is not None:
                finished = await asyncio.to_thread(writer.finish, dest)
            elif live is not None and live.suffix == ".gz":
                finished = await asyncio.to_thread(_finished_file, live)
            else:
                assert live is not None
                finished = await asyncio.to_thread(finish_orphan, live, dest)
            if writer is None and await self.store.get_recording(session_id) is not None:
                await asyncio.to_thread(finished.path.unlink, missing_ok=True)
                return  # indexed before the last gateway stopped
            started, ended = span if span is not None else await asyncio.to_thread(
                _span, finished.path)
            location = await asyncio.to_thread(
                self.storage.put, session_id, started.date(), finished.path)
            await self._index(session_id, finished, location, started, ended, complete)
            # Stored and indexed: only now may the local copy go (until then readers
            # find it here, and a restart finishes it again).
            await asyncio.to_thread(finished.path.unlink, missing_ok=True)
        except (RecordingError, StoreError, OSError, ValueError) as exc:
            # The file stays in live/ (or as .pwrec.gz there): the next start retries.
            log.error("recording of session %s could not be finished: %s", session_id, exc)

    async def _index(self, session_id: str, finished: FinishedRecording, location: str,
                     started: datetime, ended: datetime, complete: bool) -> None:
        async with self._chain_lock:
            tail = await self.store.chain_tail(self.gateway_id)
            position, prev = (tail[0] + 1, tail[1]) if tail is not None else (1, GENESIS_LINK)
            link = chain_link(prev, session_id, finished.final_hash)
            head = (sign_head(self.signing_key, self.gateway_id, position, link, time.time())
                    .to_json() if self.signing_key is not None else "")
            await self.store.add_recording(RecordingRow(
                session_id=session_id, gateway_id=self.gateway_id, position=position,
                final_hash=finished.final_hash, link=link, location=location,
                events=finished.events, bytes=finished.bytes,
                stored_bytes=finished.compressed_bytes, complete=complete,
                started_at=started, ended_at=ended), head)
            if head:
                await asyncio.to_thread(append_head, self.root, head)

    async def _recover(self, live: Path) -> None:
        session_id = live.name.removesuffix(".pwrec")
        log.warning("finishing the recording of session %s left by a gateway that stopped "
                    "unexpectedly", session_id)
        await self._finish(None, session_id, complete=False, live=live)
        try:
            rec = await self.store.get_session(session_id)
            if rec is not None and rec.ended_at is None:
                rec.ended_at = datetime.now(UTC)
                rec.end_reason = "gateway stopped unexpectedly (recording recovered)"
                await self.store.upsert_sessions([rec])
        except StoreError as exc:
            log.error("session %s could not be marked ended: %s", session_id, exc)

    async def wait_finished(self) -> None:
        """Wait until every ended session's recording is stored and indexed (tests, CLI)."""
        while self._finishing:
            await asyncio.gather(*list(self._finishing), return_exceptions=True)


#: Every signed head this gateway wrote, one JSON line each, beside the recordings:
#: a copy outside the store, so that rolling the store's head back shows (ship it
#: to write-once storage or a SIEM for the strongest guarantee).
HEADS_FILE = "heads.jsonl"


def append_head(root: Path, head: str) -> None:
    """Append a signed head to the head journal (created 0600)."""
    fd = os.open(root / HEADS_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                 0o600)
    try:
        os.write(fd, head.encode() + b"\n")
    finally:
        os.close(fd)


def last_heads(root: Path) -> dict[str, str]:
    """The newest journalled head per gateway (empty when there is no journal)."""
    newest: dict[str, tuple[int, str]] = {}
    try:
        lines = (root / HEADS_FILE).read_text().splitlines()
    except FileNotFoundError:
        return {}
    for line in lines:
        try:
            head = SignedHead.from_json(line)
        except (RecordingFormatError, ValueError):
            continue  # a torn last line after a crash
        if head.position >= newest.get(head.gateway, (0, ""))[0]:
            newest[head.gateway] = (head.position, line)
    return {gateway: line for gateway, (_, line) in newest.items()}


def _finished_file(path: Path) -> FinishedRecording:
    rec = read_recording(path)
    if rec.header is None:
        raise RecordingError(f"{path.name}: unreadable recording", None)
    final = rec.events[-1].h if rec.events else rec.header.hash
    return FinishedRecording(path, final, len(rec.events), 0, path.stat().st_size)


def _span(path: Path) -> tuple[datetime, datetime]:
    rec = read_recording(path)
    start = rec.header.created if rec.header is not None else time.time()
    end = rec.events[-1].t if rec.events else start
    return datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)


def storage_for(settings: RecordingSettings, root: Path) -> RecordingStorage:
    """The storage of finished recordings that ``recording.storage`` configures."""
    cfg = settings.storage
    if isinstance(cfg, S3StorageConfig):
        return S3Storage(
            cfg.bucket, cfg.prefix, endpoint_url=cfg.endpoint_url, region=cfg.region,
            access_key=cfg.access_key.reveal() if cfg.access_key is not None else None,
            secret_key=cfg.secret_key.reveal() if cfg.secret_key is not None else None)
    return FileStorage(root)
