"""Matches backend responses to the client requests that caused them.

Theory of operation: the server answers frontend messages strictly in order
(protocol documentation, "Extended Query" and "Pipelining"). Every request the
gateway forwards is pushed as a :class:`Unit` onto a FIFO; each backend message
is attributed to the unit at the head, and a unit ends on the message that the
protocol defines as its last answer (ReadyForQuery for Query, Sync and
FunctionCall; ParseComplete for Parse; CommandComplete, EmptyQueryResponse or
PortalSuspended for Execute ...). After an ErrorResponse in the extended
protocol the server discards messages until Sync, so the tracker drops the
units queued before the next Sync and reports them as skipped.

The tracker is pure bookkeeping: the proxy attaches a :class:`Tracked` value to
units that stand for statements and is told when each one completes, with its
command tag, row count and error. That is what the audit records and what lets
the proxy recognise the server's answer to a statement it substituted.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Any

from . import messages as m


class Unit(enum.Enum):
    QUERY = "query"
    PARSE = "parse"
    BIND = "bind"
    DESCRIBE = "describe"
    EXECUTE = "execute"
    CLOSE = "close"
    SYNC = "sync"
    FUNCTION = "function"


# Units that end with ReadyForQuery; all others end earlier and are extended-protocol.
_ENDS_AT_READY = frozenset({Unit.QUERY, Unit.SYNC, Unit.FUNCTION})

_DATA_ROW = ord(m.DataRow.TYPE)
_READY = ord(m.ReadyForQuery.TYPE)
_COMMAND_COMPLETE = ord(m.CommandComplete.TYPE)
_ERROR = ord(m.ErrorResponse.TYPE)
_EMPTY_QUERY = ord(m.EmptyQueryResponse.TYPE)
_PORTAL_SUSPENDED = ord(m.PortalSuspended.TYPE)
_NO_DATA = ord(m.NoData.TYPE)
_COPY_RESPONSES = frozenset(
    ord(c.TYPE) for c in (m.CopyInResponse, m.CopyOutResponse, m.CopyBothResponse))
# The message that ends each extended-protocol unit (Describe also ends at NoData).
_UNIT_END = {
    Unit.PARSE: ord(m.ParseComplete.TYPE),
    Unit.BIND: ord(m.BindComplete.TYPE),
    Unit.CLOSE: ord(m.CloseComplete.TYPE),
    Unit.DESCRIBE: ord(m.RowDescription.TYPE),
}
_NONE: list[Tracked] = []  # shared empty result; callers must not mutate it


@dataclass(slots=True, eq=False)
class Tracked:
    """One statement (or other request) awaiting its outcome."""

    seq: int
    kind: str
    text: str
    params: tuple[str | None, ...] = ()
    # Set when the gateway substituted the request; the server's error for it is
    # replaced by this ErrorResponse.
    denial: m.ErrorResponse | None = None
    tag: str | None = None
    rows: int = 0
    # DataRows seen since the last CommandComplete of this request.
    pending_rows: int = 0
    error: str | None = None
    error_code: str | None = None
    skipped: bool = False
    # Opaque data owned by the proxy (timings, the Operation ...).
    context: Any = None
    extra: dict[str, Any] | None = None
    # How the result's columns are masked (owned by the proxy's masking).
    columns: Any = None
    # What masking replaced in this request's response: {"<column>:<detector>": count}.
    masked: dict[str, int] | None = None
    # The first rows of the result (masked), kept for the session recording.
    sample: list[list[str | None]] | None = None


class ResponseTracker:
    """FIFO of forwarded requests awaiting backend answers."""

    __slots__ = ("_pending", "in_copy")

    def __init__(self) -> None:
        self._pending: deque[tuple[Unit, Tracked | None]] = deque()
        self.in_copy = False

    def __len__(self) -> int:
        return len(self._pending)

    def expect(self, unit: Unit, tracked: Tracked | None = None) -> None:
        """Register a forwarded request whose answer comes later."""
        self._pending.append((unit, tracked))

    def head(self) -> Tracked | None:
        """The statement the next backend message belongs to, if any."""
        if not self._pending:
            return None
        return self._pending[0][1]

    def on_backend(self, msg: m.Message) -> list[Tracked]:
        """Attribute one backend message; return the statements it completed."""
        return self.on_frame(ord(msg.TYPE), msg.payload())

    def on_frame(self, t: int, payload: bytes | memoryview) -> list[Tracked]:
        """Like :meth:`on_backend`, for an undecoded frame: its type byte and payload.

        Only CommandComplete and ErrorResponse payloads are decoded.
        """
        pending = self._pending
        if not pending:
            return _NONE
        unit, tracked = pending[0]
        if t == _DATA_ROW:
            if tracked is not None:
                tracked.pending_rows += 1
            return _NONE
        if t == _READY:
            self.in_copy = False
            done: list[Tracked] = []
            # Anything still queued before the unit that ends here was skipped.
            while pending:
                u, tr = pending.popleft()
                if u is Unit.QUERY or u is Unit.SYNC or u is Unit.FUNCTION:
                    if tr is not None:
                        done.append(tr)
                    break
                if tr is not None:
                    tr.skipped = True
                    done.append(tr)
            return done
        if t == _COMMAND_COMPLETE:
            if tracked is not None:
                cc = m.CommandComplete.decode(bytes(payload))
                tracked.tag = cc.tag
                n = cc.rows
                # The tag's count is authoritative (INSERT ... RETURNING sends rows too).
                tracked.rows += tracked.pending_rows if n is None else n
                tracked.pending_rows = 0
            self.in_copy = False
            if unit is Unit.EXECUTE:
                return self._pop()
            return _NONE
        if t == _ERROR:
            return self._on_error(unit, tracked, m.ErrorResponse.decode(bytes(payload)))
        if t in _COPY_RESPONSES:
            self.in_copy = True
            return _NONE
        if unit is Unit.EXECUTE:
            if t in (_EMPTY_QUERY, _PORTAL_SUSPENDED):
                if tracked is not None and t == _PORTAL_SUSPENDED:
                    tracked.tag = "(suspended)"
                    tracked.rows += tracked.pending_rows
                    tracked.pending_rows = 0
                return self._pop()
            return _NONE
        if unit is Unit.SYNC or unit is Unit.QUERY or unit is Unit.FUNCTION:
            return _NONE
        if _UNIT_END[unit] == t or (unit is Unit.DESCRIBE and t == _NO_DATA):
            return self._pop()
        return _NONE

    def _pop(self) -> list[Tracked]:
        _, tracked = self._pending.popleft()
        return [tracked] if tracked is not None else []

    def _on_error(self, unit: Unit, tracked: Tracked | None, err: m.ErrorResponse) -> list[Tracked]:
        self.in_copy = False
        if tracked is not None:
            tracked.rows += tracked.pending_rows
            tracked.pending_rows = 0
        if tracked is not None and tracked.error is None:
            tracked.error = err.message
            tracked.error_code = err.code
        if unit in _ENDS_AT_READY:
            return []  # the unit still ends at ReadyForQuery
        # Extended protocol: the server skips to the next Sync.
        done: list[Tracked] = []
        self._pending.popleft()
        if tracked is not None:
            done.append(tracked)
        while self._pending and self._pending[0][0] is not Unit.SYNC:
            _, t = self._pending.popleft()
            if t is not None:
                t.skipped = True
                done.append(t)
        return done
