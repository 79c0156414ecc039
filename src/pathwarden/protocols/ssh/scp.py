"""The legacy scp protocol (``scp -O``) as a sans-I/O parser for the SSH gateway.

Theory of operation
-------------------

With ``-O`` (and before OpenSSH 9.0 always) ``scp`` runs ``scp -t TARGET``
(upload) or ``scp -f SOURCE...`` (download) on the server over an exec
channel; :func:`parse_scp_command` recognises that command line
(:func:`parse_scp_command_line` from the raw command string, refusing shell
syntax the target's shell would interpret). The two ends then speak the rcp
protocol: the *sender* (the client for an upload, the server for a download)
sends control lines, each answered by the *receiver* with one byte, ``\\0``
for yes, or an error line (``\\1message\\n``; ``\\2message\\n`` is fatal):

- ``T<mtime> 0 <atime> 0`` the times of the next file or directory (``-p``),
- ``C<mode> <size> <name>`` a file: ``<size>`` bytes of data follow the
  receiver's yes, then a ``\\0`` (or an error line) from the sender, answered
  once more by the receiver,
- ``D<mode> 0 <name>`` enter a directory (``-r``), ``E`` leave it,
- ``\\1message`` / ``\\2message`` the sender's own errors ("No such file").

:class:`ScpStream` is fed the sender's bytes and returns :class:`ScpEvent`
values: ``times``, ``file`` (at the C line, before any data: the moment to
decide), ``file_end``, ``dir_enter``, ``dir_leave`` and ``error``. File data is
skipped by count, never copied. A control line that is not one of the above,
a mode that is not four octal digits, a size out of range, a name that is
empty, ``.``, ``..``, contains ``/`` or a NUL byte, or a line over 4 KiB
raises :class:`ScpProtocolError` and the stream stays broken (fail closed):
OpenSSH's receiver refuses the same names.

Whether data follows a C line depends on the receiver's answer: a refused
file is skipped by the sender. With ``track_acks=True`` the stream also reads
the answers the sender receives (:meth:`ScpStream.feed_acks`, including the
gateway's own refusals, :func:`error_reply`) and pairs them with the sender's
lines exactly as the sender does, one answer per T, C, D and E line, per
file's end and for the receiver's first "ready" byte; a refused C line then
produces a failed ``file_end`` and no data is expected, a refused D line a
failed ``dir_leave``. Without it every answer is taken as yes, which is what
OpenSSH does between two healthy ends.

Nothing here touches sockets, clocks or asyncio.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

#: Longest control or error line accepted, newline excluded.
MAX_LINE: Final = 4096
#: Deepest directory nesting accepted in a recursive copy.
MAX_DEPTH: Final = 1024
_MAX_SIZE: Final = 2**63 - 1  # off_t

UPLOAD: Final = "upload"
DOWNLOAD: Final = "download"

_FILE_OR_DIR = re.compile(rb"([CD])([0-7]{4}) ([0-9]{1,19}) (.+)", re.DOTALL)
_TIMES = re.compile(rb"T([0-9]{1,19}) ([0-9]{1,6}) ([0-9]{1,19}) ([0-9]{1,6})")
# OpenSSH scp's options that take an argument (getopt "...D:F:J:M:P:S:c:i:l:o:X:").
_ARG_OPTIONS: Final = frozenset("DFJMPSciloX")
# Characters the target's shell would interpret in an scp command line.
_SHELL_SYNTAX: Final = frozenset("$`;&|<>(){}*?[]~#!\n\r\0")


class ScpProtocolError(Exception):
    """The peer sent something that is not the scp protocol.

    The gateway ends the channel: nothing after a bad line is forwarded.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- the command line ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScpCommand:
    """An ``scp -t`` / ``scp -f`` server invocation."""

    direction: str  # "upload" (-t) or "download" (-f)
    recursive: bool
    preserve: bool
    #: The upload's target or the download's sources, as given.
    targets: tuple[str, ...]
    #: -d: the upload's target must be a directory.
    target_is_dir: bool = False
    verbose: bool = False


def parse_scp_command(argv: Sequence[str]) -> ScpCommand | None:
    """The scp server invocation in ``argv``, or None if it is not one.

    Options are read as OpenSSH's scp reads them (up to the first operand or
    ``--``). An invocation with -t or -f but also an option the client never
    sends to the server, both -t and -f, or the wrong number of paths raises
    :class:`ScpProtocolError`.
    """
    if not argv or posixpath.basename(argv[0]) != "scp":
        return None
    flags: set[str] = set()
    unknown: list[str] = []
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        i += 1
        for j, ch in enumerate(arg[1:], start=2):
            if ch in "dfprtv":
                flags.add(ch)
                continue
            unknown.append(ch)
            if ch in _ARG_OPTIONS:  # its argument: the rest of the word or the next one
                if j == len(arg):
                    i += 1
                break
    if "t" not in flags and "f" not in flags:
        return None  # scp run as a client on the target: not a transfer to decode
    if unknown:
        raise ScpProtocolError(
            f"scp server invocation with option(s) {', '.join('-' + c for c in unknown)}; "
            "an scp client only sends -t or -f with -r, -p, -d, -v")
    if "t" in flags and "f" in flags:
        raise ScpProtocolError("scp server invocation with both -t and -f")
    targets = tuple(argv[i:])
    if "t" in flags and len(targets) != 1:
        raise ScpProtocolError(
            f"scp -t takes exactly one target, got {len(targets)}: {list(targets)!r}")
    if not targets:
        raise ScpProtocolError("scp -f without a source path")
    return ScpCommand(
        UPLOAD if "t" in flags else DOWNLOAD, "r" in flags, "p" in flags, targets,
        target_is_dir="d" in flags, verbose="v" in flags)


def parse_scp_command_line(command: str) -> ScpCommand | None:
    """:func:`parse_scp_command` of an exec channel's command string.

    The target runs the string through the user's shell, so a path the policy
    sees must be the path the shell passes on: a command with characters the
    shell would expand or act on (``$ ` ; & | < > ( ) { } * ? [ ] ~ # !``,
    newlines) raises :class:`ScpProtocolError`. Quotes and backslashes are
    undone as POSIX sh does; a string they leave unbalanced raises too. Wildcard
    downloads need SFTP (``scp`` without ``-O``), where the client expands them
    and each file is checked. None when the first word is not ``scp``.
    """
    try:
        argv = shlex.split(command, posix=True)
    except ValueError as exc:
        raise ScpProtocolError(f"scp command line cannot be split: {exc}") from None
    if not argv or posixpath.basename(argv[0]) != "scp":
        return None
    bad = sorted({c for c in command if c in _SHELL_SYNTAX})
    if bad:
        raise ScpProtocolError(
            f"scp command line {command!r} contains shell syntax {''.join(bad)!r}: "
            "the target's shell would change the paths after the policy checked them")
    return parse_scp_command(argv)


def error_reply(message: str, *, fatal: bool = False) -> bytes:
    """A receiver's refusal (``\\1scp: message\\n``; ``\\2`` when fatal).

    The gateway sends it to the sender in place of the receiver's answer to a
    refused line (and feeds it to :meth:`ScpStream.feed_acks`).
    """
    text = message.replace("\n", " ").replace("\r", " ")
    return (b"\2" if fatal else b"\1") + b"scp: " + text.encode("utf-8", "surrogateescape") + b"\n"


# --- the stream ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScpEvent:
    """One step of an scp transfer.

    ``kind``: ``file`` (a C line: path, size, mode), ``file_end`` (its data
    were sent: ok, message), ``dir_enter`` (a D line: path, mode),
    ``dir_leave`` (its E line, or its refusal), ``times`` (a T line: mtime,
    atime) or ``error`` (an error line: message, fatal).
    """

    kind: str
    path: str = ""
    size: int = 0
    mode: int | None = None
    mtime: int | None = None
    atime: int | None = None
    ok: bool = True
    message: str = ""
    fatal: bool = False
    #: Offset in the sender's stream just past the bytes that produced the event.
    end: int = 0


# Parser states.
_LINE = 0  # reading a control line
_DATA = 1  # skipping a file's data
_STATUS = 2  # the sender's byte after a file's data
_DONE = 3  # after a fatal error: the sender has exited

# What each answer the sender waits for refers to.
_INIT, _T, _C, _D, _E, _END = "init", "T", "C", "D", "E", "end"


@dataclass(slots=True, eq=False)
class _Expect:
    what: str
    path: str = ""
    size: int = 0
    ok: bool = True  # file end: the sender's own status
    message: str = ""


def _decode(b: bytes) -> str:
    return b.decode("utf-8", "replace").rstrip("\r")


class ScpStream:
    """Parses the sender's side of one scp transfer.

    ``direction`` is ``"upload"`` (the client sends) or ``"download"``;
    ``base`` is prefixed to the paths of events (the upload's target
    directory, or the download's source directory), default none.
    """

    __slots__ = ("_ack_line", "_acks", "_current", "_error", "_expect", "_line",
                 "_remaining", "_stack", "_state", "_status_error", "base", "direction",
                 "files", "max_line", "offset", "track_acks")

    def __init__(self, direction: str, base: str = "", *, track_acks: bool = False,
                 max_line: int = MAX_LINE) -> None:
        if direction not in (UPLOAD, DOWNLOAD):
            raise ValueError(f"direction must be {UPLOAD!r} or {DOWNLOAD!r}, not {direction!r}")
        self.direction = direction
        self.base = base
        self.track_acks = track_acks
        self.max_line = max_line
        #: Files whose data arrived whole (and, with track_acks, were accepted).
        self.files: list[tuple[str, int]] = []
        #: Bytes of the sender's stream consumed so far.
        self.offset = 0
        self._state = _LINE
        self._line = bytearray()
        self._remaining = 0
        self._current: tuple[str, int] = ("", 0)
        self._stack: list[str] = []
        self._status_error = False
        self._error: ScpProtocolError | None = None
        self._expect: deque[_Expect] = deque()
        self._acks: deque[tuple[bool, str, bool]] = deque()
        self._ack_line: bytearray | None = None
        if track_acks:
            self._expect.append(_Expect(_INIT))

    @property
    def depth(self) -> int:
        """Directories entered and not yet left."""
        return len(self._stack)

    def _fail(self, problem: str) -> ScpProtocolError:
        sender = "client" if self.direction == UPLOAD else "server"
        self._error = ScpProtocolError(f"scp {self.direction}: the {sender} {problem}")
        return self._error

    def feed(self, data: bytes | bytearray) -> list[ScpEvent]:
        """Add bytes from the sender; return the events they complete."""
        if self._error is not None:
            raise self._error
        out: list[ScpEvent] = []
        base = self.offset
        pos = 0
        n = len(data)
        try:
            while pos < n:
                if self._expect and self._expect[-1].what in (_C, _D):
                    waiting = self._expect[-1]
                    raise self._fail(
                        f"sent more bytes before the receiver answered its "
                        f"{waiting.what} line for {waiting.path!r}")
                state = self._state
                if state == _DATA:
                    take = min(self._remaining, n - pos)
                    pos += take
                    self._remaining -= take
                    if not self._remaining:
                        self._state = _STATUS
                    continue
                if state == _STATUS:
                    b = data[pos]
                    pos += 1
                    if b == 0:
                        self._file_done(True, "", base + pos, out)
                    elif b in (1, 2):
                        self._status_error = True
                        self._line.append(b)
                        self._state = _LINE
                    else:
                        raise self._fail(
                            f"sent byte {b:#04x} after the data of {self._current[0]!r}; "
                            "expected \\0 or an error line")
                    continue
                if state == _DONE:
                    raise self._fail("sent more bytes after a fatal error")
                nl = data.find(b"\n", pos)
                stop = n if nl < 0 else nl
                if len(self._line) + stop - pos > self.max_line:
                    raise self._fail(f"sent a line over {self.max_line} bytes; "
                                     "scp control lines are short")
                self._line += data[pos:stop]
                if nl < 0:
                    pos = n
                    break
                pos = nl + 1
                line = bytes(self._line)
                self._line.clear()
                self._on_line(line, base + pos, out)
        finally:
            self.offset = base + pos
        return out

    def _on_line(self, line: bytes, end: int, out: list[ScpEvent]) -> None:
        if self._status_error:  # the sender failed while reading a file
            self._status_error = False
            self._file_done(False, _decode(line[1:]), end, out, fatal=line[0] == 2)
            return
        if not line:
            raise self._fail("sent an empty line; expected a C, D, E or T control line")
        first = line[0]
        if first in (1, 2):
            out.append(ScpEvent("error", message=_decode(line[1:]), ok=False,
                                fatal=first == 2, end=end))
            if first == 2:
                self._state = _DONE
            return
        if first == ord("T"):
            m = _TIMES.fullmatch(line)
            if m is None or int(m[2]) > 999_999 or int(m[4]) > 999_999:
                raise self._fail(f"sent a malformed times line {line[:80]!r}; "
                                 "expected T<mtime> <usec> <atime> <usec>")
            out.append(ScpEvent("times", mtime=int(m[1]), atime=int(m[3]), end=end))
            self._await(_Expect(_T), out, end)
            return
        if first == ord("E"):
            if line != b"E":
                raise self._fail(f"sent a malformed end-of-directory line {line[:80]!r}")
            if not self._stack:
                raise self._fail("left a directory it never entered (E without D)")
            path = self._join()
            self._stack.pop()
            out.append(ScpEvent("dir_leave", path, end=end))
            self._await(_Expect(_E, path), out, end)
            return
        if first not in (ord("C"), ord("D")):
            raise self._fail(f"sent {line[:80]!r}; expected a C, D, E or T control line")
        m = _FILE_OR_DIR.fullmatch(line)
        if m is None:
            raise self._fail(
                f"sent a malformed {chr(first)} line {line[:80]!r}; expected "
                f"{chr(first)}<four octal digits> <size> <name>")
        size = int(m[3])
        if size > _MAX_SIZE:
            raise self._fail(f"sent a file size {size} out of range")
        raw_name = m[4]
        if b"\0" in raw_name or b"/" in raw_name or raw_name in (b".", b".."):
            raise self._fail(f"sent the file name {raw_name[:80]!r}; a name must not be "
                             "'.' or '..' or contain '/' or NUL")
        name = raw_name.decode("utf-8", "surrogateescape")
        mode = int(m[2], 8)
        if first == ord("D"):
            if len(self._stack) >= MAX_DEPTH:
                raise self._fail(f"nested directories deeper than {MAX_DEPTH}")
            self._stack.append(name)
            path = self._join()
            out.append(ScpEvent("dir_enter", path, mode=mode, end=end))
            self._await(_Expect(_D, path), out, end)
            return
        path = self._join(name)
        self._current = (path, size)
        out.append(ScpEvent("file", path, size, mode=mode, end=end))
        if size:
            self._remaining = size
            self._state = _DATA
        else:
            self._state = _STATUS
        self._await(_Expect(_C, path, size), out, end)

    def _join(self, name: str | None = None) -> str:
        parts = [*self._stack, name] if name is not None else self._stack
        return posixpath.join(self.base, *parts) if self.base else posixpath.join(*parts)

    def _file_done(self, ok: bool, message: str, end: int, out: list[ScpEvent], *,
                   fatal: bool = False) -> None:
        path, size = self._current
        self._state = _DONE if fatal else _LINE
        if self.track_acks:
            self._await(_Expect(_END, path, size, ok, message), out, end)
            return
        if ok:
            self.files.append((path, size))
        out.append(ScpEvent("file_end", path, size, ok=ok, message=message, fatal=fatal,
                            end=end))

    # --- the receiver's answers ---------------------------------------------

    def _await(self, expect: _Expect, out: list[ScpEvent], end: int) -> None:
        if self.track_acks:
            self._expect.append(expect)
            self._match(out, end)

    def feed_acks(self, data: bytes | bytearray) -> list[ScpEvent]:
        """Add the answers the sender receives (``track_acks=True`` only).

        Feed each answer before it is forwarded to the sender, so that it is
        known before the sender can act on it.
        """
        if not self.track_acks:
            raise ValueError("feed_acks needs an ScpStream made with track_acks=True")
        if self._error is not None:
            raise self._error
        pos = 0
        n = len(data)
        while pos < n:
            if self._ack_line is None:
                b = data[pos]
                pos += 1
                if b == 0:
                    self._acks.append((True, "", False))
                    continue
                # \1 or \2 starts an error line; OpenSSH's sender also reads any
                # other byte as the start of an error message.
                self._ack_line = bytearray([b]) if b in (1, 2) else bytearray([1, b])
            nl = data.find(b"\n", pos)
            stop = n if nl < 0 else nl
            if len(self._ack_line) + stop - pos > self.max_line:
                receiver = "server" if self.direction == UPLOAD else "client"
                raise self._fail_ack(f"the {receiver} sent an error line over "
                                     f"{self.max_line} bytes")
            self._ack_line += data[pos:stop]
            if nl < 0:
                break
            pos = nl + 1
            line = self._ack_line
            self._ack_line = None
            self._acks.append((False, _decode(bytes(line[1:])), line[0] == 2))
        out: list[ScpEvent] = []
        self._match(out, self.offset)
        return out

    def _fail_ack(self, problem: str) -> ScpProtocolError:
        self._error = ScpProtocolError(f"scp {self.direction}: {problem}")
        return self._error

    def _match(self, out: list[ScpEvent], end: int) -> None:
        """Pair the sender's waits with answers, oldest first, as the sender does."""
        expect, acks = self._expect, self._acks
        while expect and acks:
            e = expect.popleft()
            ok, message, fatal = acks.popleft()
            if fatal:
                self._state = _DONE  # the sender exits on a fatal answer
            if e.what == _END:
                good = ok and e.ok
                if good:
                    self.files.append((e.path, e.size))
                out.append(ScpEvent("file_end", e.path, e.size, ok=good,
                                    message=message or e.message, fatal=fatal, end=end))
            elif ok:
                continue
            elif e.what == _C:
                # Refused before any data: the sender skips this file.
                if self._state != _DONE:
                    self._state = _LINE
                self._remaining = 0
                out.append(ScpEvent("file_end", e.path, e.size, ok=False, message=message,
                                    fatal=fatal, end=end))
            elif e.what == _D:
                # Refused: the sender skips the directory's contents and its E.
                self._stack.pop()
                out.append(ScpEvent("dir_leave", e.path, ok=False, message=message,
                                    fatal=fatal, end=end))
            else:
                out.append(ScpEvent("error", e.path, ok=False, message=message,
                                    fatal=fatal, end=end))
