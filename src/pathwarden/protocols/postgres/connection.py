"""Sans-I/O PostgreSQL v3 connection state machines.

Theory of operation (after h11): a connection object is fed bytes with
:meth:`receive_data` and hands back whole, validated messages from
:meth:`next_event` (or :data:`NEED_DATA`). :meth:`send` checks that a message
may be sent in the current phase and returns its bytes. Nothing here touches
sockets, clocks or asyncio.

pathwarden plays both roles of the protocol:

- :class:`ServerConnection` faces the client: it receives *frontend* messages
  (the startup packets, then typed messages) and sends backend messages.
- :class:`ClientConnection` faces the upstream server: it receives *backend*
  messages and sends frontend messages.

Phases and the messages allowed in each are data (:data:`FRONTEND_PHASES`,
:data:`BACKEND_PHASES`), so the whole state machine reads in one place. A
message not allowed in the current phase, an unknown type byte, a frame that
exceeds the size limit or a payload that does not decode raises
:class:`RemoteProtocolError`; once raised, the connection stays broken and
raises again, so nothing past a bad frame is ever handed out for forwarding.

The single-byte answers to SSLRequest/GSSENCRequest ('S'/'N'/'G') are not
framed messages; the I/O shell reads them itself before feeding this core.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

from . import messages as m
from .errors import PROGRAM_LIMIT_EXCEEDED, LocalProtocolError, RemoteProtocolError

_U32 = struct.Struct("!I")

# PostgreSQL's own limit for a startup packet (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_PACKET = 10_000
# Default frame limit for what a client may send. The server itself accepts up
# to 1 GB for some messages; a CI pipeline rarely needs more than this, and the
# gateway must hold a whole frame to inspect it.
DEFAULT_MAX_FRONTEND_MESSAGE = 256 * 1024 * 1024
DEFAULT_MAX_BACKEND_MESSAGE = 1024 * 1024 * 1024


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


class Phase(enum.Enum):
    STARTUP = "startup"  # untyped packets (frontend only)
    AUTHENTICATING = "authenticating"
    READY = "ready"
    CLOSED = "closed"
    ERROR = "error"


_AUTH_FRONTEND: frozenset[type[m.Message]] = frozenset({m.PasswordMessage, m.Terminate})
_READY_FRONTEND: frozenset[type[m.Message]] = frozenset({
    m.Query, m.Parse, m.Bind, m.Describe, m.Close, m.Execute, m.Sync, m.Flush,
    m.Terminate, m.CopyData, m.CopyDone, m.CopyFail, m.FunctionCall,
})

#: Which frontend messages each phase accepts.
FRONTEND_PHASES: dict[Phase, frozenset[type[m.Message]]] = {
    Phase.STARTUP: frozenset(),
    Phase.AUTHENTICATING: _AUTH_FRONTEND,
    Phase.READY: _READY_FRONTEND,
    Phase.CLOSED: frozenset(),
}

_AUTH_BACKEND: frozenset[type[m.Message]] = frozenset({
    m.Authentication, m.ErrorResponse, m.NoticeResponse, m.NegotiateProtocolVersion,
    m.ParameterStatus, m.BackendKeyData, m.ReadyForQuery,
})

#: Which backend messages each phase accepts (READY: every backend message but
#: the authentication exchange and key data).
BACKEND_PHASES: dict[Phase, frozenset[type[m.Message]]] = {
    Phase.AUTHENTICATING: _AUTH_BACKEND,
    Phase.READY: frozenset(
        c for c in m.BACKEND_TYPES.values()
        if c not in (m.Authentication, m.BackendKeyData, m.NegotiateProtocolVersion)
    ),
    Phase.CLOSED: frozenset(),
}

#: Phase changes caused by a message, keyed by (phase, message class).
TRANSITIONS: dict[tuple[Phase, type[m.Message] | type[m.StartupPacket]], Phase] = {
    (Phase.STARTUP, m.StartupMessage): Phase.AUTHENTICATING,
    (Phase.STARTUP, m.CancelRequest): Phase.CLOSED,
    (Phase.AUTHENTICATING, m.ReadyForQuery): Phase.READY,
    (Phase.AUTHENTICATING, m.Terminate): Phase.CLOSED,
    (Phase.READY, m.Terminate): Phase.CLOSED,
}


class _Framer:
    """Shared buffering: splits a byte stream into typed frames."""

    _PHASES: dict[Phase, frozenset[type[m.Message]]] = {}
    _TABLE: dict[int, type[m.Message]] = {}
    _SIDE = ""

    def __init__(self, max_message_size: int, phase: Phase) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_message_size = max_message_size
        self._error: RemoteProtocolError | None = None
        self.phase = phase

    @property
    def phase(self) -> Phase:
        return self._phase

    @phase.setter
    def phase(self, phase: Phase) -> None:
        # Resolve the phase tables once per change, not once per message.
        self._phase = phase
        self._allowed = self._PHASES.get(phase, frozenset())
        self._allowed_types = frozenset(ord(c.TYPE) for c in self._allowed)
        self._next: dict[type[m.Message] | type[m.StartupPacket], Phase] = {
            cls: nxt for (p, cls), nxt in TRANSITIONS.items() if p is phase
        }

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the peer."""
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > 65536:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet handed out as messages."""
        return len(self._buf) - self._pos

    def _fail(self, err: RemoteProtocolError) -> RemoteProtocolError:
        self._error = err
        self.phase = Phase.ERROR
        return err

    def _typed_frame(self) -> tuple[int, bytes, bytes] | None:
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 5:
            return None
        t = buf[pos]
        if t not in self._allowed_types:
            # Refuse on the header, before buffering a body that will be refused anyway.
            raise self._bad_type(t, self._SIDE)
        (length,) = _U32.unpack_from(buf, pos + 1)
        if length < 4:
            raise self._fail(RemoteProtocolError(f"invalid message length {length}"))
        if length + 1 > self.max_message_size:
            raise self._fail(RemoteProtocolError(
                f"message of {length + 1} bytes exceeds the limit of "
                f"{self.max_message_size} bytes", PROGRAM_LIMIT_EXCEEDED))
        end = pos + 1 + length
        if len(buf) < end:
            return None
        raw = bytes(buf[pos:end])
        self._pos = end
        return t, raw, raw[5:]

    def _bad_type(self, t: int, side: str) -> RemoteProtocolError:
        cls = self._TABLE.get(t)
        if cls is None:
            return self._fail(RemoteProtocolError(
                f"invalid {side} message type {chr(t)!r} (0x{t:02x})"))
        return self._fail(RemoteProtocolError(
            f"unexpected {side} message {cls.__name__} during {self._phase.value}"))

    def _decode(self, t: int, raw: bytes, payload: bytes, side: str) -> m.Message:
        cls = self._TABLE.get(t)
        if cls is None or cls not in self._allowed:
            raise self._bad_type(t, side)
        try:
            msg = cls.decode(payload, raw)
        except RemoteProtocolError as exc:
            raise self._fail(exc) from None
        if self._next:
            nxt = self._next.get(cls)
            if nxt is not None:
                self.phase = nxt
        return msg


class ServerConnection(_Framer):
    """The gateway's side facing a PostgreSQL client."""

    _PHASES = FRONTEND_PHASES
    _TABLE = m.FRONTEND_TYPES
    _SIDE = "frontend"

    def __init__(self, max_message_size: int = DEFAULT_MAX_FRONTEND_MESSAGE) -> None:
        super().__init__(max_message_size, Phase.STARTUP)

    def next_event(self) -> m.Message | m.StartupPacket | _NeedData:
        """The next whole frontend message, or NEED_DATA."""
        if self._error is not None:
            raise self._error
        if self.phase is Phase.STARTUP:
            return self._startup_packet()
        if self.phase is Phase.CLOSED:
            if self.buffered:
                raise self._fail(RemoteProtocolError("data after Terminate"))
            return NEED_DATA
        frame = self._typed_frame()
        if frame is None:
            return NEED_DATA
        t, raw, payload = frame
        return self._decode(t, raw, payload, "frontend")

    def _startup_packet(self) -> m.StartupPacket | _NeedData:
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 4:
            return NEED_DATA
        (length,) = _U32.unpack_from(buf, pos)
        if length < 8 or length > MAX_STARTUP_PACKET:
            raise self._fail(RemoteProtocolError(f"invalid length of startup packet: {length}"))
        if len(buf) - pos < length:
            return NEED_DATA
        raw = bytes(buf[pos : pos + length])
        self._pos = pos + length
        try:
            pkt = m.decode_startup_packet(raw[4:], raw)
        except RemoteProtocolError as exc:
            raise self._fail(exc) from None
        nxt = self._next.get(type(pkt))
        if nxt is not None:
            self.phase = nxt
        return pkt

    def send(self, msg: m.Message) -> bytes:
        """Bytes for a backend message we send to the client; tracks the phase."""
        if type(msg) not in m.BACKEND_TYPES.values():
            raise LocalProtocolError(f"{type(msg).__name__} is not a backend message")
        if self.phase in (Phase.CLOSED, Phase.ERROR) and not isinstance(msg, m.ErrorResponse):
            raise LocalProtocolError(f"cannot send {type(msg).__name__}: connection closed")
        data = _encode(msg)
        nxt = self._next.get(type(msg))
        if nxt is not None:
            self.phase = nxt
        return data


class ClientConnection(_Framer):
    """The gateway's side facing the upstream PostgreSQL server."""

    _PHASES = BACKEND_PHASES
    _TABLE = m.BACKEND_TYPES
    _SIDE = "backend"

    def __init__(self, max_message_size: int = DEFAULT_MAX_BACKEND_MESSAGE) -> None:
        super().__init__(max_message_size, Phase.AUTHENTICATING)

    def next_event(self) -> m.Message | _NeedData:
        """The next whole backend message, or NEED_DATA."""
        if self._error is not None:
            raise self._error
        frame = self._typed_frame()
        if frame is None:
            return NEED_DATA
        t, raw, payload = frame
        return self._decode(t, raw, payload, "backend")

    def read_frames(self) -> tuple[bytes, list[int]]:
        """Every complete buffered frame at once, undecoded: the relay's fast path.

        Returns the frames' bytes and the offset of each frame in them (its type
        byte is ``data[offset]``). Framing, sizes and types are validated exactly
        as :meth:`next_event` does; payloads are left for the caller to decode
        (with the classes in :mod:`messages`) only where it needs them.
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        start = pos = self._pos
        n = len(buf)
        starts: list[int] = []
        allowed = self._allowed_types
        limit = self.max_message_size
        unpack = _U32.unpack_from
        while n - pos >= 5:
            t = buf[pos]
            (length,) = unpack(buf, pos + 1)
            if t not in allowed or length < 4 or length + 1 > limit:
                if starts:
                    break  # hand out the good frames first; the next call raises
                self._pos = pos
                self._typed_frame()  # raises the precise error
            end = pos + 1 + length
            if end > n:
                break
            starts.append(pos - start)
            pos = end
            if self._next:
                nxt = self._next.get(self._TABLE[t])
                if nxt is not None:
                    self.phase = nxt
                    allowed = self._allowed_types
        if not starts:
            return b"", starts
        self._pos = pos
        return bytes(buf[start:pos]), starts

    def send(self, msg: m.Message | m.StartupPacket) -> bytes:
        """Bytes for a frontend message we send upstream."""
        if isinstance(msg, m.StartupPacket):
            return _encode(msg)
        if type(msg) not in m.FRONTEND_TYPES.values():
            raise LocalProtocolError(f"{type(msg).__name__} is not a frontend message")
        if self.phase is Phase.CLOSED:
            raise LocalProtocolError(f"cannot send {type(msg).__name__}: connection closed")
        data = _encode(msg)
        if isinstance(msg, m.Terminate):
            self.phase = Phase.CLOSED
        return data


def _encode(msg: m.Message | m.StartupPacket) -> bytes:
    try:
        return m.frame_of(msg)
    except (ValueError, struct.error, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode {type(msg).__name__}: {exc}") from None


def is_need_data(ev: object) -> bool:
    return ev is NEED_DATA
