"""Writing a live recording: one ``os.write`` per event, so the event is in the kernel first.

Theory of operation
-------------------

The gateway writes an event *before* it acts on what the event describes
(forwarding a statement, releasing a result). :meth:`RecordingWriter.append`
returns only when the whole line is in the kernel's page cache: that survives
``kill -9`` of the gateway without a disk sync per statement. Surviving a
power loss is a separate policy (``fsync: off | interval | always``):
:class:`GroupSync` lets one caller fsync every dirty recording every few
milliseconds (group commit across sessions), and ``always`` is an
:meth:`RecordingWriter.fsync` after each append.

Lines are whole or absent. A failed or short write is rolled back with
``ftruncate`` to the last good offset before the error is raised; if even
that fails the writer is *broken* and refuses every later append, so no event
is ever chained onto a torn line.

Limits: past ``soft_limit`` bytes non-essential events (result samples,
terminal output) are dropped and counted, never silently: the first drop
writes a ``truncated`` event and the totals are written in a final
``truncated`` event before ``session_end`` (or at close). Essential events go
on until ``hard_limit``, then :class:`RecordingFull`; ``truncated`` and
``session_end`` may use a small reserve beyond it so a full recording can
still be ended properly.

:meth:`RecordingWriter.finish` compresses the live file into its final
``.pwrec.gz`` atomically and removes the live file.

Threading: ``append``/``close``/``finish`` belong to one thread (the gateway's
event loop); ``fsync`` and :meth:`GroupSync.sync_all` may run in a worker
thread, and a close waits for an fsync in progress.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import gzip
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathwarden.recording.errors import RecordingError, RecordingFormatError, RecordingFull
from pathwarden.recording.format import Event, build_event, encode_header, header_hash
from pathwarden.recording.reader import read_recording

MiB = 1024 * 1024
#: Room beyond ``hard_limit`` for the closing ``truncated`` and ``session_end`` events.
END_RESERVE = 64 * 1024
#: gzip level for finished recordings: level 6 costs about twice level 1's time
#: for about 15% smaller files on statement traffic (benchmarks/recording_write).
COMPRESS_LEVEL = 6
_CLOSING_TYPES = frozenset({"truncated", "session_end"})
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class FinishedRecording:
    """A recording compressed to its final place."""

    path: Path
    final_hash: str  # h of the last event (the header hash if there was none)
    events: int
    bytes: int  # size of the live file
    compressed_bytes: int


def _write_all(fd: int, data: bytes) -> int:
    """Write all of ``data``; return how much was written before an OSError, if any."""
    view = memoryview(data)
    done = 0
    while done < len(data):
        n = os.write(fd, view[done:])
        if n <= 0:  # a regular file that accepts nothing is full
            raise OSError(errno_mod.ENOSPC, os.strerror(errno_mod.ENOSPC))
        done += n
    return done


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each with mode 0700."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700)
            os.chmod(d, 0o700)  # exact, whatever the umask


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _PartialWrite(Exception):
    def __init__(self, written: int, cause: OSError) -> None:
        super().__init__(written)
        self.written = written
        self.cause = cause


class RecordingWriter:
    """Appends events to one live recording file. Create with :meth:`create`."""

    def __init__(
        self, fd: int, path: Path, session_id: str, header_line: bytes, *,
        soft_limit: int, hard_limit: int, clock: Callable[[], float],
    ) -> None:
        self._fd = fd
        self._path = path
        self.session_id = session_id
        self._soft = soft_limit
        self._hard = hard_limit
        self._clock = clock
        self._head = header_hash(header_line)
        self._seq = 0
        self._bytes = len(header_line)
        self._synced = 0
        self._flushed = self._bytes  # end of the last complete write (what fsync may claim)
        self._closed = False
        self._broken = False
        self._ended = False
        self._lock = threading.Lock()  # guards the fd against close during fsync
        # drops past the soft limit: totals, and what the first truncated event reported
        self.dropped_events = 0
        self.dropped_bytes = 0
        self._reported_events = 0
        self._pending: list[bytes] = []

    @classmethod
    def create(
        cls, path: Path, session_id: str, gateway_id: str, *,
        soft_limit: int = 64 * MiB, hard_limit: int = 80 * MiB,
        clock: Callable[[], float] = time.time,
    ) -> RecordingWriter:
        """Create ``path`` (which must not exist, mode 0600) and write the header."""
        if not 0 < soft_limit <= hard_limit:
            raise ValueError(f"need 0 < soft_limit <= hard_limit, got {soft_limit}, {hard_limit}")
        header = encode_header(session_id, gateway_id, round(float(clock()), 6))
        try:
            make_private_dirs(path.parent)
            fd = os.open(path, _OPEN_FLAGS, 0o600)
        except OSError as exc:
            raise RecordingError(
                f"cannot create the recording {path}: {exc.strerror}", exc.errno,
            ) from None
        try:
            _write_all(fd, header)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise RecordingError(
                f"cannot write the header of the recording {path}: {exc.strerror}", exc.errno,
            ) from None
        return cls(fd, path, session_id, header, soft_limit=soft_limit, hard_limit=hard_limit,
                   clock=clock)

    # -- state -----------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def head(self) -> str:
        """h of the last event written (the header hash before the first event)."""
        return self._head

    @property
    def seq(self) -> int:
        """The seq the next event gets, which is also the number of events written."""
        return self._seq

    @property
    def bytes_written(self) -> int:
        """Size of the live file, header included."""
        return self._bytes

    @property
    def dirty(self) -> bool:
        """Written since the last fsync."""
        return not self._closed and self._synced < self._flushed

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def broken(self) -> bool:
        """A failed write could not be rolled back: every append now raises."""
        return self._broken

    def fileno(self) -> int:
        return self._fd

    # -- appending -------------------------------------------------------------

    def append(
        self, type: str, data: Mapping[str, Any], *, essential: bool = True
    ) -> Event | None:
        """Write one event; return it, or None if a non-essential event was dropped.

        Returns once the line is in the kernel. Raises :class:`RecordingFull` past
        the hard limit and :class:`RecordingError` on an I/O error; either way the
        file then holds no part of the event.
        """
        self._check_writable()
        saved = self._snapshot()
        try:
            event = self._add(type, data, essential)
            self._flush(saved[2])
        except BaseException:
            self._restore(saved)
            raise
        return event

    def append_many(
        self, items: Sequence[tuple[str, Mapping[str, Any], bool]]
    ) -> list[Event | None]:
        """Write several ``(type, data, essential)`` events with one write(), all or none.

        For events that must reach the file together before the gateway acts, such
        as an operation and its decision; it saves a system call per event.
        """
        self._check_writable()
        saved = self._snapshot()
        try:
            events = [self._add(type, data, essential) for type, data, essential in items]
            self._flush(saved[2])
        except BaseException:
            self._restore(saved)
            raise
        return events

    def _now(self) -> float:
        return round(float(self._clock()), 6)

    def _check_writable(self) -> None:
        if self._broken:
            raise RecordingError(
                f"the recording {self._path} is broken by an earlier write error; "
                "no further events can be recorded"
            )
        if self._closed:
            raise RecordingError(f"the recording {self._path} is closed")

    def _snapshot(self) -> tuple[int, str, int, int, int, int, bool]:
        return (self._seq, self._head, self._bytes, self.dropped_events, self.dropped_bytes,
                self._reported_events, self._ended)

    def _restore(self, saved: tuple[int, str, int, int, int, int, bool]) -> None:
        (self._seq, self._head, self._bytes, self.dropped_events, self.dropped_bytes,
         self._reported_events, self._ended) = saved
        self._pending.clear()

    def _add(self, type: str, data: Mapping[str, Any], essential: bool) -> Event | None:
        """Plan one event: advance the state and queue its line for :meth:`_flush`."""
        if self._ended:
            raise RecordingError(f"the recording {self._path} already has its session_end")
        event, line = build_event(self._seq, self._now(), type, data, self._head)
        size = len(line)
        if not essential and (self.dropped_events or self._bytes + size > self._soft):
            # once dropping has started it goes on, so samples do not reappear halfway
            self.dropped_events += 1
            self.dropped_bytes += size
            if self.dropped_events == 1:
                self._add_truncated(final=False)
            return None
        if type == "session_end" and self.dropped_events > self._reported_events:
            self._add_truncated(final=True)
            event, line = build_event(self._seq, self._now(), type, data, self._head)
            size = len(line)
        limit = self._hard + (END_RESERVE if type in _CLOSING_TYPES else 0)
        if self._bytes + size > limit:
            raise RecordingFull(
                f"the recording {self._path} reached its hard limit of {self._hard} bytes; "
                "end the session (raise the recording hard limit to allow longer sessions)"
            )
        self._pending.append(line)
        self._head = event.h
        self._seq += 1
        self._bytes += size
        if type == "session_end":
            self._ended = True
        return event

    def _add_truncated(self, *, final: bool) -> None:
        self._reported_events = self.dropped_events
        self._add("truncated", {
            "dropped_events": self.dropped_events, "dropped_bytes": self.dropped_bytes,
            "reason": "soft_limit", "soft_limit": self._soft, "final": final,
        }, True)

    def _flush(self, good: int) -> None:
        """Write the queued lines in one go, or roll the file back to ``good`` bytes."""
        pending = self._pending
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        try:
            _write_all(self._fd, data)
        except OSError as exc:
            # Some bytes may have reached the file: cut back to the last whole line.
            self._rollback(good)
            raise RecordingError(
                f"writing to the recording {self._path} failed: {exc.strerror}", exc.errno,
            ) from None
        self._flushed = self._bytes

    def _rollback(self, good: int) -> None:
        try:
            if os.fstat(self._fd).st_size != good:
                os.ftruncate(self._fd, good)
                if os.fstat(self._fd).st_size != good:
                    raise OSError(errno_mod.EIO, "size after ftruncate is wrong")
        except OSError:
            self._broken = True

    # -- durability and the end ------------------------------------------------

    def fsync(self) -> None:
        """Flush the file to disk (for power-loss durability; not needed against kill -9)."""
        with self._lock:
            if self._closed:
                return
            upto = self._flushed  # not _bytes: an append in another thread may be mid-write
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise RecordingError(
                    f"fsync of the recording {self._path} failed: {exc.strerror}", exc.errno,
                ) from None
            self._synced = max(self._synced, upto)

    def close(self) -> None:
        """Write the final drop counts if any are unreported, then close the file."""
        if self._closed:
            return
        try:
            if not self._broken and not self._ended and (
                self.dropped_events > self._reported_events
            ):
                saved = self._snapshot()
                try:
                    self._add_truncated(final=True)
                    self._flush(saved[2])
                except BaseException:
                    self._restore(saved)
                    raise
        finally:
            with self._lock:
                self._closed = True
                os.close(self._fd)

    def finish(self, dest: Path, *, level: int = COMPRESS_LEVEL) -> FinishedRecording:
        """Close, gzip the live file into ``dest`` atomically, then remove the live file."""
        self.close()
        compressed = _compress_and_remove(self._path, dest, level)
        return FinishedRecording(dest, self._head, self._seq, self._bytes, compressed)

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _compress_and_remove(live: Path, dest: Path, level: int) -> int:
    """gzip ``live`` into ``dest`` (tmp, fsync, rename, fsync dir), remove ``live``;
    return the compressed size."""
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        make_private_dirs(dest.parent)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as raw:
            os.fchmod(fd, 0o600)
            with (
                open(live, "rb") as src,
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=level,
                              mtime=0) as gz,
            ):
                while chunk := src.read(MiB):
                    gz.write(chunk)
            raw.flush()
            os.fsync(fd)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
        compressed = os.stat(dest).st_size
        os.unlink(live)
        _fsync_dir(live.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise RecordingError(
            f"finishing the recording {live} into {dest} failed: {exc.strerror}", exc.errno,
        ) from None
    return compressed


def finish_orphan(live: Path, dest: Path, *, level: int = COMPRESS_LEVEL) -> FinishedRecording:
    """Finish a live recording left by a gateway that died: compress it as it is.

    Nothing is appended or cut, so the evidence of the crash stays (a verifier
    reports ``truncated`` and any ``torn_tail``); the final hash is that of the
    last whole event, ready for the session chain. An unreadable header raises
    :class:`RecordingFormatError` and leaves the file for a person to look at.
    """
    rec = read_recording(live)
    if rec.header is None:
        reason = rec.problems[0].message if rec.problems else "no header"
        raise RecordingFormatError(f"{live} cannot be finished: {reason}")
    final_hash = rec.events[-1].h if rec.events else rec.header.hash
    size = os.stat(live).st_size
    compressed = _compress_and_remove(live, dest, level)
    return FinishedRecording(dest, final_hash, len(rec.events), size, compressed)


@dataclass(slots=True)
class SyncReport:
    synced: int = 0
    failed: list[tuple[RecordingWriter, RecordingError]] = field(default_factory=list)


class GroupSync:
    """Group commit: fsync every registered writer that has unsynced bytes.

    The caller runs :meth:`sync_all` every N milliseconds (in a worker thread:
    fsync blocks). Closed writers are forgotten on the next call.
    """

    def __init__(self) -> None:
        self._writers: dict[int, RecordingWriter] = {}

    def add(self, writer: RecordingWriter) -> None:
        self._writers[id(writer)] = writer

    def discard(self, writer: RecordingWriter) -> None:
        self._writers.pop(id(writer), None)

    def __len__(self) -> int:
        return len(self._writers)

    def dirty(self) -> list[RecordingWriter]:
        return [w for w in list(self._writers.values()) if w.dirty]

    def sync_all(self) -> SyncReport:
        """fsync the dirty writers; failures are reported, not raised, so one bad disk
        does not stop the others from syncing."""
        report = SyncReport()
        for key, writer in list(self._writers.items()):
            if writer.closed:
                self._writers.pop(key, None)
                continue
            if not writer.dirty:
                continue
            try:
                writer.fsync()
            except RecordingError as exc:
                report.failed.append((writer, exc))
            else:
                report.synced += 1
        return report
