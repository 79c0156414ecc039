"""Terminal sessions in a recording: asciicast v2 export and a readable transcript.

Theory of operation
-------------------

An SSH session's recording (docs/recording.md, "Terminal sessions") holds, per
channel, a ``channel`` event when the request (shell, exec, subsystem) was
accepted or refused, then ``term_output`` (what the client saw, masked, as
text), ``term_input`` (keystrokes or stdin), ``resize`` and finally ``exit``.
Channels are numbered by the gateway and interleave freely in the event stream.
Everything here is a pure function (or a small state machine) over
:class:`~pathwarden.recording.format.Event` objects: no files, no clock, no
terminal; the CLI does the reading, the waiting and the writing.

* :func:`channels` summarises the channels of a session, in the order they
  were opened.
* :func:`to_asciicast` turns one channel into asciicast v2 lines
  (https://docs.asciinema.org/manual/asciicast/v2/): a header object, then
  ``[t, "o" | "i" | "r", data]`` arrays with ``t`` in seconds since the
  channel was opened, never decreasing (a wall clock stepping back is
  flattened). Output of a channel without a pty has its bare ``\\n`` turned
  into ``\\r\\n``, which is what a pty would have done, so the player does not
  draw a staircase. The default channel is the first with a pty, else the first
  with output; a session with neither raises :class:`NoTerminalChannel`, which
  lists the channels there are.
* :class:`TerminalTranscript` renders the terminal events of a session for a
  reader: a ``$ command`` line per exec channel, its output, ``[exit N]``,
  and a ``[channel N: ...]`` line whenever another channel's output follows.
  ``plain=False`` passes the output through untouched (for a real terminal,
  which interprets it); ``plain=True`` (a file or a pipe) interprets the
  little that makes lines readable (carriage return, backspace, erase in line,
  cursor left/right), drops every other control and escape sequence, and hides
  full-screen programs (alternate screen) behind one line. Escape sequences
  split across events are reassembled.

Recorded text may hold lone surrogates (the recording format keeps them); they
cannot be written as UTF-8 and become U+FFFD in everything produced here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pathwarden.recording.format import Event

__all__ = [
    "DEFAULT_SIZE",
    "ChannelInfo",
    "NoTerminalChannel",
    "TerminalError",
    "TerminalTranscript",
    "channels",
    "select_channel",
    "to_asciicast",
]

#: Columns and rows of a channel that has no pty.
DEFAULT_SIZE = (80, 24)

_SURROGATE = re.compile("[\ud800-\udfff]")
_BARE_LF = re.compile(r"(?<!\r)\n")
_ALT_SCREEN = re.compile(r"\x1b\[\?(?:1049|1047|47)([hl])")
#: Complete escape sequences: CSI, OSC (BEL or ST), DCS/SOS/PM/APC (ST), designations,
#: and the two-character ones.
_ESCAPE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
    r"|\x1b[PX^_][^\x1b]*\x1b\\"
    r"|\x1b[()*+#% ][ -~]"
    r"|\x1b[0-OQ-WYZ\\`-~]"
)
#: What an escape sequence cut off by the end of an event can look like so far.
_ESCAPE_PREFIX = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?|[PX^_][^\x1b]*\x1b?|[()*+#% ])?\Z"
)
_SPECIAL = re.compile("[\x00-\x1f\x7f-\x9f]")  # controls: everything else is printed
_MAX_PENDING = 4096  # a longer unfinished escape sequence is dropped


class TerminalError(ValueError):
    """The recording cannot be shown as a terminal session; the message says why."""


class NoTerminalChannel(TerminalError):
    """No channel to export: none with a pty or output, or not the one asked for.

    ``channels`` holds the session's channels, so a caller can offer them.
    """

    def __init__(self, message: str, channels: tuple[ChannelInfo, ...]) -> None:
        super().__init__(message)
        self.channels = channels


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """One channel of a terminal session, as its events describe it."""

    number: int
    request: str | None  # shell, exec, subsystem; None when no channel event was recorded
    command: str | None  # exec only (masked)
    subsystem: str | None  # subsystem only
    term: str | None  # the pty's terminal type; None without a pty
    cols: int | None
    rows: int | None
    pty: bool
    refused: str | None  # why the request was refused, if it was
    started: float  # time of the channel event (or of its first event)
    start_seq: int
    output: bool  # has term_output
    exit_status: int | None
    exit_signal: str | None

    def describe(self) -> str:
        """``0 shell (pty xterm 80x24, output)``: for messages that list channels."""
        what = self.request or "unknown request"
        if self.command is not None:
            what += f" {_clean(self.command)!r}"
        if self.subsystem is not None:
            what += f" {_clean(self.subsystem)}"
        facts = [f"pty {self.term or '?'} {self.cols}x{self.rows}" if self.pty else "no pty",
                 "output" if self.output else "no output"]
        if self.refused is not None:
            facts.append(f"refused: {_clean(self.refused)}")
        return f"{self.number} {what} ({', '.join(facts)})"


def _clean(text: str) -> str:
    """Text that can be written as UTF-8: lone surrogates become U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


def _channel_of(data: Mapping[str, Any]) -> int | None:
    number = data.get("channel")
    return number if number.__class__ is int else None


def _positive(value: Any) -> int | None:
    return value if value.__class__ is int and value > 0 else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def channels(events: Iterable[Event]) -> list[ChannelInfo]:
    """The channels of a session in the order they were opened.

    A channel number that is opened again (a second ``channel`` event) is listed
    once per opening. Output for a number without a ``channel`` event still
    makes a channel (without a request), so nothing recorded goes unlisted.
    """
    found: list[dict[str, Any]] = []
    current: dict[int, dict[str, Any]] = {}
    for event in events:
        d = event.data
        number = _channel_of(d)
        if number is None:
            continue
        if event.type == "channel":
            pty = d.get("pty")
            info: dict[str, Any] = {
                "number": number, "request": _text(d.get("request")),
                "command": _text(d.get("command")), "subsystem": _text(d.get("subsystem")),
                "term": _text(pty.get("term")) if isinstance(pty, dict) else None,
                "cols": _positive(pty.get("cols")) if isinstance(pty, dict) else None,
                "rows": _positive(pty.get("rows")) if isinstance(pty, dict) else None,
                "pty": isinstance(pty, dict), "refused": _text(d.get("refused")),
                "started": event.t, "start_seq": event.seq, "output": False,
                "exit_status": None, "exit_signal": None,
            }
            found.append(info)
            current[number] = info
            continue
        info = current.get(number) or {}
        if not info and event.type in ("term_output", "term_input", "resize", "exit"):
            info = {"number": number, "request": None, "command": None, "subsystem": None,
                    "term": None, "cols": None, "rows": None, "pty": False, "refused": None,
                    "started": event.t, "start_seq": event.seq, "output": False,
                    "exit_status": None, "exit_signal": None}
            found.append(info)
            current[number] = info
        if event.type == "term_output":
            info["output"] = True
        elif event.type == "exit":
            status = d.get("status")
            info["exit_status"] = status if status.__class__ is int else None
            info["exit_signal"] = _text(d.get("signal"))
    return [ChannelInfo(**info) for info in found]


def _session_start(events: Iterable[Event]) -> Mapping[str, Any]:
    for event in events:
        if event.type == "session_start":
            return event.data
    return {}


def select_channel(events: Iterable[Event], channel: int | None = None, *,
                   session: str | None = None) -> ChannelInfo:
    """The channel :func:`to_asciicast` exports: ``channel``, or the default one.

    The default is the first channel with a pty, else the first with output
    (refused channels without output are passed over). Raises
    :class:`NoTerminalChannel` naming the session's channels when there is none.
    """
    recorded = list(events)
    protocol = _text(_session_start(recorded).get("protocol"))
    return _pick(channels(recorded), channel, session, protocol)


def _pick(infos: list[ChannelInfo], wanted: int | None, session: str | None,
          protocol: str | None) -> ChannelInfo:
    who = f"session {session}" if session else "the session"
    listed = "; ".join(c.describe() for c in infos)
    if wanted is not None:
        for info in infos:
            if info.number == wanted:
                if info.refused is not None and not info.output:
                    raise NoTerminalChannel(
                        f"channel {wanted} of {who} was refused ({_clean(info.refused)}): "
                        f"it has no terminal to export; its channels: {listed}", tuple(infos))
                return info
        have = f"its channels: {listed}" if infos else "it has no channels"
        raise NoTerminalChannel(f"{who} has no channel {wanted}; {have}", tuple(infos))
    usable = [c for c in infos if c.refused is None or c.output]
    for info in usable:
        if info.pty:
            return info
    for info in usable:
        if info.output:
            return info
    if not infos:
        kind = f" ({protocol} sessions have no terminal)" if protocol and protocol != "ssh" \
            else ""
        raise NoTerminalChannel(f"{who} has no terminal channel: it has no channels{kind}",
                                ())
    raise NoTerminalChannel(
        f"{who} has no terminal channel (none with a pty or with output); its channels: "
        f"{listed}", tuple(infos))


def _time(value: float) -> float:
    return round(value, 6)


def to_asciicast(events: Iterable[Event], channel: int | None = None, *,
                 session: str | None = None) -> Iterator[str]:
    """One channel of a terminal session as asciicast v2 lines (without newlines).

    ``channel`` picks the channel by number; by default the first channel with a
    pty, else the first with output. ``session`` (the session id) goes into the
    title. Raises :class:`NoTerminalChannel` (before the first line) when there
    is no such channel, and :class:`TerminalError` for an event of the channel
    whose fields are not what docs/recording.md says.
    """
    recorded = list(events)
    start = _session_start(recorded)
    chosen = select_channel(recorded, channel, session=session)
    if chosen.pty and (chosen.cols is None or chosen.rows is None):
        raise TerminalError(f"event {chosen.start_seq}: the pty of channel {chosen.number} has "
                            "no valid cols and rows (positive integers)")
    width, height = (chosen.cols, chosen.rows) if chosen.pty else DEFAULT_SIZE
    title = f"{start.get('identity', '?')}@{start.get('connection', '?')}"
    if session:
        title += f" session {session}"
    title += f" channel {chosen.number}"
    header: dict[str, Any] = {
        "version": 2, "width": width, "height": height, "timestamp": int(chosen.started),
        "title": _clean(title),
    }
    if chosen.command is not None:
        header["command"] = _clean(chosen.command)
    if chosen.pty and chosen.term:
        header["env"] = {"TERM": _clean(chosen.term)}
    yield json.dumps(header, ensure_ascii=False)
    yield from _cast_events(recorded, chosen)


def _cast_events(recorded: list[Event], chosen: ChannelInfo) -> Iterator[str]:
    last = 0.0
    after_cr = False  # the last output ended in \r (a \n following it is already a CRLF)
    for event in recorded:
        if event.seq < chosen.start_seq or _channel_of(event.data) != chosen.number:
            continue
        d = event.data
        if event.type == "channel":
            if event.seq == chosen.start_seq:
                continue
            return  # the number was opened again: that is another channel
        if event.type in ("term_output", "term_input"):
            data = d.get("data")
            if not isinstance(data, str):
                raise TerminalError(f"event {event.seq} ({event.type}): data is not text")
            if not data:
                continue
            code = "o" if event.type == "term_output" else "i"
            if code == "o" and not chosen.pty:
                data, after_cr = _crlf(data, after_cr)
        elif event.type == "resize":
            cols, rows = _positive(d.get("cols")), _positive(d.get("rows"))
            if cols is None or rows is None:
                raise TerminalError(f"event {event.seq} (resize): cols and rows are not "
                                    "positive integers")
            code, data = "r", f"{cols}x{rows}"
        else:
            continue
        last = max(_time(event.t - chosen.started), last)
        yield json.dumps([last, code, _clean(data)], ensure_ascii=False)


def _crlf(data: str, after_cr: bool) -> tuple[str, bool]:
    """Bare ``\\n`` as ``\\r\\n`` (what a pty's output processing does)."""
    if after_cr and data.startswith("\n"):
        converted = "\n" + _BARE_LF.sub("\r\n", data[1:])
    else:
        converted = _BARE_LF.sub("\r\n", data)
    return converted, data.endswith("\r")


# -- transcript -------------------------------------------------------------------------


_VERDICT_WORD = {"deny": "DENY", "approve": "APPROVE", "approval": "APPROVE"}


@dataclass(slots=True)
class _Screen:
    """What plain rendering keeps per channel: the line being written, and escapes."""

    chars: list[str]
    col: int = 0
    pending: str = ""  # an escape sequence cut off by the end of an event
    alternate: bool = False  # a full-screen program is running: its output is not shown


@dataclass(slots=True)
class _Channel:
    number: int
    label: str  # "$ ls -l", "[channel 0: shell, xterm 80x24]"
    pty: bool
    screen: _Screen
    saw_escape: bool = False
    alternate_raw: bool = False  # raw rendering: the alternate screen is on


class TerminalTranscript:
    """Renders a terminal session's events as text, one event at a time.

    :meth:`feed` returns what to write for an event, or ``None`` for events
    that are not about terminals (``session_start``, ``approval``,
    ``session_end`` ...), which the caller shows its own way after writing
    :meth:`break_line`. :meth:`close` returns what is still to be written at
    the end (a pending line, or the sequences that restore a real terminal).

    With ``plain=False`` output goes through unchanged, for a terminal; with
    ``plain=True`` it is reduced to lines of text (see the module docstring).
    ``channel`` limits the output to one channel (other channels' events
    return ``""``).
    """

    def __init__(self, *, plain: bool, channel: int | None = None) -> None:
        self.plain = plain
        self.only = channel
        self._channels: dict[int, _Channel] = {}
        self._ops: dict[Any, Mapping[str, Any]] = {}
        self._denials: dict[Any, Any] = {}  # op_seq -> the reason shown with its verdict
        self._current: int | None = None  # the channel whose output was written last
        self._at_line_start = True

    # -- the caller's interface

    def feed(self, event: Event) -> str | None:
        """The text to write for ``event``; ``None`` if it is not a terminal event."""
        handler = _HANDLERS.get(event.type)
        if handler is None:
            return None
        number = _channel_of(event.data)
        if self.only is not None and number is not None and number != self.only:
            return ""
        return handler(self, event)

    def break_line(self) -> str:
        """A newline if the last text written did not end a line; then it did."""
        if self._at_line_start:
            return ""
        self._at_line_start = True
        return "\n"

    def close(self) -> str:
        """What is still to be written when the events end."""
        parts = [self._finish(ch) for ch in self._channels.values()]
        return "".join(parts)

    # -- helpers

    def _emit(self, text: str) -> str:
        if text:
            self._at_line_start = text.endswith("\n")
        return text

    def _line(self, text: str) -> str:
        """A line of the transcript's own (a header, an exit), on a line of its own."""
        return self._emit(self.break_line() + _clean(text) + "\n")

    def _channel(self, number: int) -> _Channel:
        ch = self._channels.get(number)
        if ch is None:  # output without a channel event
            ch = _Channel(number, f"[channel {number}]", False, _Screen([]))
            self._channels[number] = ch
        return ch

    def _switch_to(self, ch: _Channel) -> str:
        if self._current == ch.number:
            return ""
        self._current = ch.number
        return self._line(ch.label if ch.label.startswith("[") else f"[channel {ch.number}: "
                          f"{ch.label}]")

    def _finish(self, ch: _Channel) -> str:
        """A channel ends: its pending line (plain), the terminal's state restored (raw)."""
        if self.plain:
            screen = ch.screen
            rest = "".join(screen.chars).rstrip(" ")
            screen.chars, screen.col, screen.pending = [], 0, ""
            if not rest:
                return ""
            return self._switch_to(ch) + self._emit(_clean(rest) + "\n")
        restore = ""
        if ch.alternate_raw:
            restore += "\x1b[?1049l"
            ch.alternate_raw = False
        if ch.saw_escape:
            restore += "\x1b[0m\x1b[?25h"
            ch.saw_escape = False
        if restore:  # does not move the cursor: the line state stays as it was
            return restore
        return ""

    # -- event handlers

    def _on_channel(self, event: Event) -> str:
        d = event.data
        number = _channel_of(d)
        if number is None:
            return ""
        old = self._channels.get(number)
        text = self._finish(old) if old is not None else ""
        request = _text(d.get("request")) or "channel"
        pty = d.get("pty")
        if request == "exec":
            label = f"$ {_text(d.get('command')) or ''}"
        elif request == "subsystem":
            label = f"[channel {number}: subsystem {_text(d.get('subsystem')) or '?'}]"
        else:
            label = f"[channel {number}: {request}"
            if isinstance(pty, dict):
                label += (f", {_text(pty.get('term')) or 'pty'} "
                          f"{pty.get('cols')}x{pty.get('rows')}")
            label += "]"
        ch = _Channel(number, label, isinstance(pty, dict), _Screen([]))
        self._channels[number] = ch
        self._current = number
        text += self._line(label)
        refused = _text(d.get("refused"))
        if refused is not None:
            op_seq = d.get("op_seq")
            said = op_seq is not None and self._denials.get(op_seq) == refused
            text += self._line("[refused]" if said else f"[refused: {refused}]")
        return text

    def _on_term_output(self, event: Event) -> str:
        number = _channel_of(event.data)
        data = event.data.get("data")
        if number is None or not isinstance(data, str):
            return self._line(f"[event {event.seq}: term_output without a channel and text]")
        ch = self._channel(number)
        if not data:
            return ""
        if not self.plain:
            for match in _ALT_SCREEN.finditer(data):
                ch.alternate_raw = match.group(1) == "h"
            ch.saw_escape = ch.saw_escape or "\x1b" in data
            return self._switch_to(ch) + self._emit(_clean(data))
        lines, notes = _render(ch.screen, data)
        if not lines and not notes:
            return ""
        text = self._switch_to(ch)
        for line in lines:
            text += self._emit(_clean(line) + "\n")
        for note in notes:
            text += self._line(note)
        return text

    def _on_quiet(self, event: Event) -> str:
        return ""  # input is echoed in the output; a resize shows in what follows

    def _on_exit(self, event: Event) -> str:
        d = event.data
        number = _channel_of(d)
        text = self._finish(self._channel(number)) if number is not None else ""
        status, signal = d.get("status"), _text(d.get("signal"))
        if signal:
            what = f"exit signal {signal}"
            if d.get("core_dumped") is True:
                what += ", core dumped"
        elif status.__class__ is int:
            what = f"exit {status}"
        else:
            what = "exit, status unknown"
        message = _text(d.get("message"))
        if message:
            what += f": {message}"
        return text + self._about(event) + self._line(f"[{what}]")

    def _on_file(self, event: Event) -> str:
        d = event.data
        op = _text(d.get("op")) or "file"
        paths = d.get("paths")
        if op == "rename" and isinstance(paths, list) and len(paths) == 2:
            where = f"{paths[0]} -> {paths[1]}"
        else:
            where = _text(d.get("path")) or ""
        facts = []
        size = d.get("bytes")
        if size.__class__ is int and size > 0:
            facts.append(f"{size} bytes")
        if d.get("verdict") == "deny":
            facts.append("DENIED")
        elif d.get("ok") is False:
            facts.append("failed")
        tail = f" ({', '.join(facts)})" if facts else ""
        return self._about(event) + self._line(f"[file {op} {where}{tail}]")

    def _on_signal(self, event: Event) -> str:
        signal = _text(event.data.get("signal")) or "?"
        return self._about(event) + self._line(f"[signal {signal} sent by the client]")

    def _about(self, event: Event) -> str:
        """The marker of the event's channel, if other output was shown since."""
        number = _channel_of(event.data)
        return self._switch_to(self._channel(number)) if number is not None else ""

    def _on_operation(self, event: Event) -> str:
        self._ops[event.data.get("op_seq")] = event.data
        return ""

    def _on_decision(self, event: Event) -> str:
        d = event.data
        verdict = str(d.get("verdict"))
        if verdict == "allow":
            return ""
        op = self._ops.get(d.get("op_seq"), {})
        self._denials[d.get("op_seq")] = d.get("reason")
        word = _VERDICT_WORD.get(verdict, verdict.upper())
        where = f"policy {d.get('policy') or '-'}"
        if d.get("rule") is not None:
            where += f", rule {d.get('rule')}"
        return self._line(f"[{word} {op.get('kind', 'operation')}: {op.get('text', '')} "
                          f"({where}): {d.get('reason', '')}]")


_HANDLERS = {
    "channel": TerminalTranscript._on_channel,
    "term_output": TerminalTranscript._on_term_output,
    "term_input": TerminalTranscript._on_quiet,
    "resize": TerminalTranscript._on_quiet,
    "exit": TerminalTranscript._on_exit,
    "file": TerminalTranscript._on_file,
    "signal": TerminalTranscript._on_signal,
    "operation": TerminalTranscript._on_operation,
    "decision": TerminalTranscript._on_decision,
}


def _render(screen: _Screen, data: str) -> tuple[list[str], list[str]]:
    """Plain rendering of output: the lines it completes, and notes to show after them."""
    lines: list[str] = []
    notes: list[str] = []
    text = screen.pending + data
    screen.pending = ""
    i, n = 0, len(text)
    while i < n:
        special = _SPECIAL.search(text, i)
        end = special.start() if special is not None else n
        if end > i:
            if not screen.alternate:
                _put(screen, text[i:end])
            i = end
            continue
        c = text[i]
        if c == "\x1b":
            match = _ESCAPE.match(text, i)
            if match is None:
                if _ESCAPE_PREFIX.match(text, i) and n - i <= _MAX_PENDING:
                    screen.pending = text[i:]
                    break
                i += 1  # not an escape sequence: drop the ESC
                continue
            _escape(screen, match.group(), lines, notes)
            i = match.end()
            continue
        i += 1
        if screen.alternate:
            continue
        if c == "\n":
            lines.append("".join(screen.chars).rstrip(" "))
            screen.chars, screen.col = [], 0
        elif c == "\r":
            screen.col = 0
        elif c == "\b":
            screen.col = max(0, screen.col - 1)
        elif c == "\t":
            _put(screen, c)
    return lines, notes


def _put(screen: _Screen, run: str) -> None:
    """Printable text at the cursor, overwriting what is there."""
    chars = screen.chars
    if screen.col > len(chars):
        chars.extend(" " * (screen.col - len(chars)))
    chars[screen.col:screen.col + len(run)] = run
    screen.col += len(run)


def _count(params: str, default: int = 1) -> int:
    head = params.split(";", 1)[0]
    return int(head) if head.isdigit() and int(head) > 0 else default


def _escape(screen: _Screen, seq: str, lines: list[str], notes: list[str]) -> None:
    """The few escape sequences that matter for a line of text; the rest are dropped."""
    alt = _ALT_SCREEN.fullmatch(seq)
    if alt is not None:
        entering = alt.group(1) == "h"
        if entering and not screen.alternate:
            rest = "".join(screen.chars).rstrip(" ")
            if rest:
                lines.append(rest)
            screen.chars, screen.col = [], 0
            notes.append("[full-screen program: its screen is not shown here; replay on a "
                         "terminal or export with --cast]")
        screen.alternate = entering
        return
    if screen.alternate or not seq.startswith("\x1b[") or len(seq) < 3:
        return
    final, params = seq[-1], seq[2:-1]
    if params.startswith("?"):
        return
    if final == "K":
        mode = params or "0"
        if mode == "0":
            del screen.chars[screen.col:]
        elif mode == "1":
            for k in range(min(screen.col + 1, len(screen.chars))):
                screen.chars[k] = " "
        elif mode == "2":
            screen.chars = []
    elif final == "C":
        screen.col += _count(params)
    elif final == "D":
        screen.col = max(0, screen.col - _count(params))
    elif final == "G":
        screen.col = _count(params) - 1
