"""Reading recordings: live ``.pwrec`` files, finished ``.pwrec.gz`` files, and damaged ones.

Theory of operation
-------------------

Whether a file is gzip is decided by its magic bytes, not its name. Both kinds
become one stream of bytes split on ``\\n`` only (never on other line
separators a string type might honour). The first line is the header,
parsed by the version it names (:func:`~pathwarden.recording.format.read_header`);
every further complete line is an event.

Damage is reported, not raised, and everything before it is returned: a last
line without its newline is a ``torn_tail`` (a crash in the middle of a write,
or zero bytes left by a power loss); a gzip stream that ends early or is
corrupt is ``truncated`` at the point where it stops (deflate cannot resume
after damage, so what follows is lost); a complete line that does not decode
is ``edited``. Chain checks (hashes, order, gaps) are in :mod:`.verify`.

:func:`follow` tails a live file for ``replay --follow``.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pathwarden.recording.errors import RecordingFormatError
from pathwarden.recording.format import Event, Header, Problem, format_for, read_header

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
#: A line longer than this is treated as damage (the writer's hard limit is far below).
MAX_LINE = 256 * 1024 * 1024


@dataclass(slots=True)
class Recording:
    """A recording as read: the header (None if unreadable), the events, what is wrong."""

    header: Header | None
    events: list[Event]
    complete: bool  # ends with session_end
    problems: list[Problem] = field(default_factory=list)


def _raw_chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(_CHUNK):
        yield chunk


def _gunzip(chunks: Iterable[bytes], problems: list[Problem]) -> Iterator[bytes]:
    """Decompress concatenated gzip members, reporting (not raising) where they break."""
    d = zlib.decompressobj(wbits=31)
    started = False
    consumed = 0  # compressed bytes fed so far, for messages
    for chunk in chunks:
        data = chunk
        while data:
            if not started and not data.strip(b"\0"):
                data = b""  # zero padding after the last member, as gzip(1) allows
                break
            started = True
            try:
                out = d.decompress(data, _CHUNK)
            except zlib.error as exc:
                problems.append(Problem(
                    "truncated", None,
                    f"the gzip stream is corrupt near compressed byte {consumed} ({exc}); "
                    "nothing after that point can be read",
                ))
                return
            if out:
                yield out
            if d.eof:
                consumed += len(data) - len(d.unused_data)
                data = d.unused_data
                d = zlib.decompressobj(wbits=31)
                started = False
            elif d.unconsumed_tail:
                consumed += len(data) - len(d.unconsumed_tail)
                data = d.unconsumed_tail
            else:
                consumed += len(data)
                data = b""
    if started:
        while tail := d.decompress(b"", _CHUNK):  # drain what is buffered
            yield tail
        if not d.eof:
            problems.append(Problem(
                "truncated", None,
                f"the gzip stream ends at compressed byte {consumed} before its end marker: "
                "the file was cut",
            ))


def _lines(chunks: Iterable[bytes]) -> Iterator[tuple[bytes, bool]]:
    """(line without newline, complete) for each line; only the last can be incomplete."""
    pending: list[bytes] = []
    pending_size = 0
    for chunk in chunks:
        start = 0
        while True:
            i = chunk.find(b"\n", start)
            if i < 0:
                if start < len(chunk):
                    pending.append(chunk[start:])
                    pending_size += len(chunk) - start
                    if pending_size > MAX_LINE:
                        raise RecordingFormatError(f"a line is longer than {MAX_LINE} bytes")
                break
            if pending:
                pending.append(chunk[start:i])
                line = b"".join(pending)
                pending, pending_size = [], 0
            else:
                line = chunk[start:i]
            yield line, True
            start = i + 1
    if pending:
        yield b"".join(pending), False


def _byte_chunks(f: BinaryIO, problems: list[Problem]) -> Iterator[bytes]:
    first = f.read(_CHUNK)
    if not first:
        return
    if first.startswith(_GZIP_MAGIC):
        def raw() -> Iterator[bytes]:
            yield first
            yield from _raw_chunks(f)
        yield from _gunzip(raw(), problems)
    else:
        yield first
        yield from _raw_chunks(f)


def _read(
    f: BinaryIO, problems: list[Problem], on_header: Callable[[Header | None], None],
) -> Iterator[Event]:
    next_seq = 0
    try:
        for event in _read_lines(_lines(_byte_chunks(f, problems)), problems, on_header):
            next_seq = event.seq + 1
            yield event
    except RecordingFormatError as exc:  # an over-long line
        problems.append(Problem("edited", next_seq, str(exc)))
    finally:
        _name_gzip_damage(problems, next_seq)


def _name_gzip_damage(problems: list[Problem], next_seq: int) -> None:
    # A gzip problem is found by the decompressor, which knows no seq: it gets the
    # seq of the first event not read, and the torn line it leaves is not reported twice.
    damaged = [p for p in problems if p.kind == "truncated" and p.seq is None]
    if not damaged:
        return
    torn = [p for p in problems if p.kind == "torn_tail"]
    seq = torn[0].seq if torn else next_seq
    problems[:] = [
        Problem(p.kind, seq, p.message) if p in damaged else p
        for p in problems if p not in torn
    ]


def _read_lines(
    lines: Iterator[tuple[bytes, bool]], problems: list[Problem],
    on_header: Callable[[Header | None], None],
) -> Iterator[Event]:
    for line, complete in lines:
        if not complete:
            problems.append(Problem(
                "bad_header", None, "the header line is incomplete (the file was cut)",
            ))
            on_header(None)
            return
        try:
            header = read_header(line)
        except RecordingFormatError as exc:
            problems.append(Problem("bad_header", None, f"the header is unreadable: {exc}"))
            on_header(None)
            return
        on_header(header)
        break
    else:
        problems.append(Problem("bad_header", None, "the file is empty"))
        on_header(None)
        return
    decode = format_for(header.version).decode_event
    next_seq = 0
    for lineno, (line, complete) in enumerate(lines, start=2):
        if not complete:
            zeros = " (zero bytes, as a power loss leaves)" if not line.strip(b"\0") else ""
            problems.append(Problem(
                "torn_tail", next_seq,
                f"line {lineno} is incomplete: {len(line)} bytes without a newline{zeros}; "
                "an append was interrupted and did not return",
            ))
            return
        try:
            event = decode(line)
        except RecordingFormatError as exc:
            problems.append(Problem(
                "edited", next_seq, f"line {lineno} is not a valid event: {exc}",
            ))
            next_seq += 1
            continue
        next_seq = event.seq + 1
        yield event


def iter_events(path: Path, problems: list[Problem] | None = None) -> Iterator[Event]:
    """Yield the events of a recording as they are read; problems go into ``problems``."""
    sink: list[Problem] = [] if problems is None else problems
    with open(path, "rb") as f:
        yield from _read(f, sink, lambda _h: None)


def read_recording(path: Path) -> Recording:
    """Read a whole recording, live or finished, damaged or not."""
    problems: list[Problem] = []
    headers: list[Header | None] = []
    with open(path, "rb") as f:
        events = list(_read(f, problems, headers.append))
    header = headers[0] if headers else None
    complete = bool(events) and events[-1].type == "session_end"
    return Recording(header, events, complete, problems)


def follow(
    path: Path, poll: float = 0.2, *, idle_timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Event]:
    """Yield the events of a live recording as they are appended, until ``session_end``.

    Also stops when the live file has been removed (finished) and fully read, or
    after ``idle_timeout`` seconds without a new event. A finished ``.pwrec.gz`` is
    read to its end. A line that does not decode raises :class:`RecordingFormatError`.
    """
    with open(path, "rb") as f:
        if f.read(2) == _GZIP_MAGIC:
            f.seek(0)
            for event in _read(f, [], lambda _h: None):
                yield event
            return
        f.seek(0)
        buf = b""
        header: Header | None = None
        idle_since = time.monotonic()
        while True:
            data = f.read(_CHUNK)
            if data:
                buf += data
                *complete, buf = buf.split(b"\n")
                for line in complete:
                    if header is None:
                        header = read_header(line)
                        continue
                    event = format_for(header.version).decode_event(line)
                    yield event
                    if event.type == "session_end":
                        return
                idle_since = time.monotonic()
                continue
            if os.fstat(f.fileno()).st_nlink == 0:
                return  # finished and removed, and everything is read
            if idle_timeout is not None and time.monotonic() - idle_since > idle_timeout:
                return
            sleep(poll)
