"""PostgreSQL v3 wire messages as frozen values.

Theory of operation: every message of the protocol (PostgreSQL documentation,
"Frontend/Backend Protocol", chapter 55 "Message Formats") is a class here,
named after the wire message. Each class knows its type byte, how to decode
its payload (``decode``, raising :class:`RemoteProtocolError` on anything
malformed) and how to encode itself (``encode``, returning the whole frame).

Messages decoded from the wire keep the exact frame they came from in ``raw``
so the proxy can forward them untouched without re-encoding; messages built by
pathwarden have an empty ``raw`` and are encoded on demand (:func:`frame_of`).

Type bytes are shared between directions with different meanings ('S' is Sync
from the frontend and ParameterStatus from the backend), so there are two
decode tables, :data:`FRONTEND_TYPES` and :data:`BACKEND_TYPES`.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Self

from .errors import RemoteProtocolError

_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_I16 = struct.Struct("!h")
_U16 = struct.Struct("!H")
_HDR = struct.Struct("!cI")

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
PROTOCOL_3_0 = 196608  # (3 << 16) | 0
PROTOCOL_3_2 = 196610


# --- payload readers -------------------------------------------------------


class _Reader:
    """Cursor over one message payload; every read checks bounds."""

    __slots__ = ("buf", "name", "pos")

    def __init__(self, buf: bytes, name: str) -> None:
        self.buf = buf
        self.pos = 0
        self.name = name

    def _fail(self, what: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"malformed {self.name} message: {what}")

    def int32(self) -> int:
        if self.pos + 4 > len(self.buf):
            raise self._fail("truncated int32")
        (v,) = _I32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(v)

    def int16(self) -> int:
        if self.pos + 2 > len(self.buf):
            raise self._fail("truncated int16")
        (v,) = _I16.unpack_from(self.buf, self.pos)
        self.pos += 2
        return int(v)

    def byte(self) -> int:
        if self.pos >= len(self.buf):
            raise self._fail("truncated byte")
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def bytes_(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise self._fail("truncated value")
        v = self.buf[self.pos : self.pos + n]
        self.pos += n
        return bytes(v)

    def cstring(self) -> str:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise self._fail("unterminated string")
        raw = self.buf[self.pos : end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            # Non-UTF-8 client encodings are rare in CI; keep the bytes visible.
            return raw.decode("latin-1")

    def rest(self) -> bytes:
        v = self.buf[self.pos :]
        self.pos = len(self.buf)
        return bytes(v)

    def count(self, item_size: int) -> int:
        # Counts are unsigned on the wire: the server reads them with
        # pq_getmsgint(msg, 2), so up to 65535 parameters are legal.
        n = self.int16() & 0xFFFF
        if n * item_size > len(self.buf) - self.pos:
            raise self._fail(f"count {n} exceeds message size")
        return n

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise self._fail(f"{len(self.buf) - self.pos} unexpected trailing bytes")


def _cstr(s: str) -> bytes:
    b = s.encode("utf-8")
    if b"\0" in b:
        raise ValueError("string contains a NUL byte")
    return b + b"\0"


def _frame(type_byte: bytes, payload: bytes) -> bytes:
    return _HDR.pack(type_byte, len(payload) + 4) + payload


# --- base ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """Base of all typed messages."""

    TYPE: ClassVar[bytes] = b""
    raw: bytes = field(default=b"", compare=False, repr=False, kw_only=True)

    def payload(self) -> bytes:
        return b""

    def encode(self) -> bytes:
        return _frame(self.TYPE, self.payload())

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        _Reader(payload, cls.__name__).end()
        return cls(raw=raw)


def frame_of(msg: Message | StartupPacket) -> bytes:
    """The bytes of ``msg`` on the wire: the original frame if it has one."""
    raw: bytes = msg.raw
    return raw if raw else msg.encode()


# --- untyped startup packets (frontend) ------------------------------------


@dataclass(frozen=True, slots=True)
class StartupPacket:
    """Base of the untyped packets a client may send first."""

    raw: bytes = field(default=b"", compare=False, repr=False, kw_only=True)

    def body(self) -> bytes:
        raise NotImplementedError

    def encode(self) -> bytes:
        body = self.body()
        return _I32.pack(len(body) + 4) + body


@dataclass(frozen=True, slots=True)
class SSLRequest(StartupPacket):
    def body(self) -> bytes:
        return _I32.pack(SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest(StartupPacket):
    def body(self) -> bytes:
        return _I32.pack(GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest(StartupPacket):
    process_id: int = 0
    secret_key: bytes = b""

    def body(self) -> bytes:
        return _I32.pack(CANCEL_REQUEST_CODE) + _I32.pack(self.process_id) + self.secret_key


@dataclass(frozen=True, slots=True)
class StartupMessage(StartupPacket):
    protocol_version: int = PROTOCOL_3_0
    params: Mapping[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        out = [_I32.pack(self.protocol_version)]
        for k, v in self.params.items():
            out.append(_cstr(k))
            out.append(_cstr(v))
        out.append(b"\0")
        return b"".join(out)


def decode_startup_packet(body: bytes, raw: bytes) -> StartupPacket:
    """Decode an untyped packet (length prefix already removed)."""
    r = _Reader(body, "startup")
    code = r.int32()
    if code == SSL_REQUEST_CODE:
        r.end()
        return SSLRequest(raw=raw)
    if code == GSSENC_REQUEST_CODE:
        r.end()
        return GSSENCRequest(raw=raw)
    if code == CANCEL_REQUEST_CODE:
        pid = r.int32()
        secret = r.rest()
        if not 4 <= len(secret) <= 256:
            raise RemoteProtocolError("malformed CancelRequest: bad secret key length")
        return CancelRequest(raw=raw, process_id=pid, secret_key=secret)
    major = code >> 16
    if major != 3:
        raise RemoteProtocolError(
            f"unsupported frontend protocol {major}.{code & 0xFFFF}: "
            "pathwarden speaks protocol 3"
        )
    params: dict[str, str] = {}
    while True:
        key = r.cstring()
        if key == "":
            break
        params[key] = r.cstring()
    r.end()
    if "user" not in params:
        raise RemoteProtocolError("no PostgreSQL user name specified in startup packet")
    return StartupMessage(raw=raw, protocol_version=code, params=params)


# --- frontend messages -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query(Message):
    TYPE: ClassVar[bytes] = b"Q"
    text: str = ""

    def payload(self) -> bytes:
        return _cstr(self.text)

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        # The hot path of simple-protocol clients: one NUL, at the very end.
        if payload[-1:] == b"\0" and payload.find(b"\0") == len(payload) - 1:
            try:
                return cls(text=payload[:-1].decode("utf-8"), raw=raw)
            except UnicodeDecodeError:
                pass
        r = _Reader(payload, "Query")
        text = r.cstring()
        r.end()
        return cls(text=text, raw=raw)


@dataclass(frozen=True, slots=True)
class Parse(Message):
    TYPE: ClassVar[bytes] = b"P"
    name: str = ""
    query: str = ""
    param_types: tuple[int, ...] = ()

    def payload(self) -> bytes:
        types = b"".join(_U32.pack(t) for t in self.param_types)
        return _cstr(self.name) + _cstr(self.query) + _U16.pack(len(self.param_types)) + types

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        r = _Reader(payload, "Parse")
        name = r.cstring()
        query = r.cstring()
        n = r.count(4)
        types = tuple(r.int32() & 0xFFFFFFFF for _ in range(n))
        r.end()
        return cls(name=name, query=query, param_types=types, raw=raw)


@dataclass(frozen=True, slots=True)
class Bind(Message):
    TYPE: ClassVar[bytes] = b"B"
    portal: str = ""
    statement: str = ""
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()

    def payload(self) -> bytes:
        out = [_cstr(self.portal), _cstr(self.statement), _U16.pack(len(self.param_formats))]
        out.extend(_I16.pack(f) for f in self.param_formats)
        out.append(_U16.pack(len(self.params)))
        for p in self.params:
            if p is None:
                out.append(_I32.pack(-1))
            else:
                out.append(_I32.pack(len(p)))
                out.append(p)
        out.append(_U16.pack(len(self.result_formats)))
        out.extend(_I16.pack(f) for f in self.result_formats)
        return b"".join(out)

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        r = _Reader(payload, "Bind")
        portal = r.cstring()
        stmt = r.cstring()
        pf = tuple(r.int16() for _ in range(r.count(2)))
        n = r.count(4)
        params: list[bytes | None] = []
        for _ in range(n):
            ln = r.int32()
            if ln == -1:
                params.append(None)
            elif ln < -1:
                raise RemoteProtocolError("malformed Bind message: negative parameter length")
            else:
                params.append(r.bytes_(ln))
        rf = tuple(r.int16() for _ in range(r.count(2)))
        r.end()
        for f in (*pf, *rf):
            if f not in (0, 1):
                raise RemoteProtocolError(f"malformed Bind message: unknown format code {f}")
        if len(pf) not in (0, 1, len(params)):
            raise RemoteProtocolError(
                f"bind message has {len(pf)} parameter formats but {len(params)} parameters"
            )
        return cls(
            portal=portal, statement=stmt, param_formats=pf, params=tuple(params),
            result_formats=rf, raw=raw,
        )

    def param_format(self, i: int) -> int:
        if not self.param_formats:
            return 0
        if len(self.param_formats) == 1:
            return self.param_formats[0]
        return self.param_formats[i]


def _describe_kind(r: _Reader, what: str) -> str:
    k = r.byte()
    if k not in (ord("S"), ord("P")):
        raise RemoteProtocolError(f"malformed {what} message: invalid target type {k!r}")
    return chr(k)


@dataclass(frozen=True, slots=True)
class Describe(Message):
    TYPE: ClassVar[bytes] = b"D"
    kind: str = "S"  # 'S' statement, 'P' portal
    name: str = ""

    def payload(self) -> bytes:
        return self.kind.encode() + _cstr(self.name)

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        r = _Reader(payload, "Describe")
        kind = _describe_kind(r, "Describe")
        name = r.cstring()
        r.end()
        return cls(kind=kind, name=name, raw=raw)


@dataclass(frozen=True, slots=True)
class Close(Message):
    TYPE: ClassVar[bytes] = b"C"
    kind: str = "S"
    name: str = ""

    def payload(self) -> bytes:
        return self.kind.encode() + _cstr(self.name)

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        r = _Reader(payload, "Close")
        kind = _describe_kind(r, "Close")
        name = r.cstring()
        r.end()
        return cls(kind=kind, name=name, raw=raw)


@dataclass(frozen=True, slots=True)
class Execute(Message):
    TYPE: ClassVar[bytes] = b"E"
    portal: str = ""
    max_rows: int = 0

    def payload(self) -> bytes:
        return _cstr(self.portal) + _I32.pack(self.max_rows)

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        r = _Reader(payload, "Execute")
        portal = r.cstring()
        n = r.int32()
        r.end()
        return cls(portal=portal, max_rows=n, raw=raw)


@dataclass(frozen=True, slots=True)
class Sync(Message):
    TYPE: ClassVar[bytes] = b"S"


@dataclass(frozen=True, slots=True)
class Flush(Message):
    TYPE: ClassVar[bytes] = b"H"


@dataclass(frozen=True, slots=True)
class Terminate(Message):
    TYPE: ClassVar[bytes] = b"X"


@dataclass(frozen=True, slots=True)
class CopyData(Message):
    TYPE: ClassVar[bytes] = b"d"
    data: bytes = b""

    def payload(self) -> bytes:
        return self.data

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        return cls(data=bytes(payload), raw=raw)


@dataclass(frozen=True, slots=True)
class CopyDone(Message):
    TYPE: ClassVar[bytes] = b"c"


@dataclass(frozen=True, slots=True)
class CopyFail(Message):
    TYPE: ClassVar[bytes] = b"f"
    message: str = ""

    def payload(self) -> bytes:
        return _cstr(self.message)

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        r = _Reader(payload, "CopyFail")
        msg = r.cstring()
        r.end()
        return cls(message=msg, raw=raw)


@dataclass(frozen=True, slots=True)
class FunctionCall(Message):
    TYPE: ClassVar[bytes] = b"F"
    function_oid: int = 0
    arg_formats: tuple[int, ...] = ()
    args: tuple[bytes | None, ...] = ()
    result_format: int = 0

    def payload(self) -> bytes:
        out = [_U32.pack(self.function_oid), _U16.pack(len(self.arg_formats))]
        out.extend(_I16.pack(f) for f in self.arg_formats)
        out.append(_U16.pack(len(self.args)))
        for a in self.args:
            out.append(_I32.pack(-1) if a is None else _I32.pack(len(a)) + a)
        out.append(_I16.pack(self.result_format))
        return b"".join(out)

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        r = _Reader(payload, "FunctionCall")
        oid = r.int32() & 0xFFFFFFFF
        af = tuple(r.int16() for _ in range(r.count(2)))
        args: list[bytes | None] = []
        for _ in range(r.count(4)):
            ln = r.int32()
            if ln < -1:
                raise RemoteProtocolError("malformed FunctionCall message: negative length")
            args.append(None if ln == -1 else r.bytes_(ln))
        rf = r.int16()
        r.end()
        return cls(function_oid=oid, arg_formats=af, args=tuple(args), result_format=rf, raw=raw)


@dataclass(frozen=True, slots=True)
class PasswordMessage(Message):
    """'p': a password, SASLInitialResponse or SASLResponse; meaning depends on context."""

    TYPE: ClassVar[bytes] = b"p"
    data: bytes = b""

    def payload(self) -> bytes:
        return self.data

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        return cls(data=bytes(payload), raw=raw)

    def password(self) -> str:
        """The cleartext password (AuthenticationCleartextPassword response)."""
        r = _Reader(self.data, "PasswordMessage")
        pw = r.cstring()
        r.end()
        return pw


# --- backend messages ------------------------------------------------------

AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


@dataclass(frozen=True, slots=True)
class Authentication(Message):
    TYPE: ClassVar[bytes] = b"R"
    code: int = AUTH_OK
    data: bytes = b""

    def payload(self) -> bytes:
        return _I32.pack(self.code) + self.data

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        r = _Reader(payload, "Authentication")
        code = r.int32()
        return cls(code=code, data=r.rest(), raw=raw)

    def sasl_mechanisms(self) -> list[str]:
        r = _Reader(self.data, "AuthenticationSASL")
        out: list[str] = []
        while True:
            m = r.cstring()
            if not m:
                return out
            out.append(m)


@dataclass(frozen=True, slots=True)
class ParameterStatus(Message):
    TYPE: ClassVar[bytes] = b"S"
    name: str = ""
    value: str = ""

    def payload(self) -> bytes:
        return _cstr(self.name) + _cstr(self.value)

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        r = _Reader(payload, "ParameterStatus")
        name = r.cstring()
        value = r.cstring()
        r.end()
        return cls(name=name, value=value, raw=raw)


@dataclass(frozen=True, slots=True)
class BackendKeyData(Message):
    TYPE: ClassVar[bytes] = b"K"
    process_id: int = 0
    secret_key: bytes = b""

    def payload(self) -> bytes:
        return _I32.pack(self.process_id) + self.secret_key

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        r = _Reader(payload, "BackendKeyData")
        pid = r.int32()
        key = r.rest()
        if not 4 <= len(key) <= 256:
            raise RemoteProtocolError("malformed BackendKeyData: bad secret key length")
        return cls(process_id=pid, secret_key=key, raw=raw)


@dataclass(frozen=True, slots=True)
class ReadyForQuery(Message):
    TYPE: ClassVar[bytes] = b"Z"
    status: str = "I"  # I idle, T in transaction, E failed transaction

    def payload(self) -> bytes:
        return self.status.encode()

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        if payload not in (b"I", b"T", b"E"):
            raise RemoteProtocolError("malformed ReadyForQuery: bad transaction status")
        return cls(status=payload.decode(), raw=raw)


@dataclass(frozen=True, slots=True)
class FieldDescription:
    name: str
    table_oid: int
    column: int
    type_oid: int
    type_size: int
    type_modifier: int
    format: int


@dataclass(frozen=True, slots=True)
class RowDescription(Message):
    TYPE: ClassVar[bytes] = b"T"
    fields: tuple[FieldDescription, ...] = ()

    def payload(self) -> bytes:
        out = [_U16.pack(len(self.fields))]
        for f in self.fields:
            out.append(_cstr(f.name))
            out.append(struct.pack("!IhIhih", f.table_oid, f.column, f.type_oid,
                                   f.type_size, f.type_modifier, f.format))
        return b"".join(out)

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        r = _Reader(payload, "RowDescription")
        n = r.count(19)
        fields = []
        for _ in range(n):
            name = r.cstring()
            fields.append(FieldDescription(
                name, r.int32() & 0xFFFFFFFF, r.int16(), r.int32() & 0xFFFFFFFF,
                r.int16(), r.int32(), r.int16(),
            ))
        r.end()
        return cls(fields=tuple(fields), raw=raw)


@dataclass(frozen=True, slots=True)
class DataRow(Message):
    """One result row; values are decoded only when asked (:meth:`values`)."""

    TYPE: ClassVar[bytes] = b"D"
    data: bytes = b""  # the payload: int16 count, then (int32 len, bytes) per column

    def payload(self) -> bytes:
        return self.data

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        return cls(data=payload, raw=raw)

    @classmethod
    def from_values(cls, values: list[bytes | None]) -> DataRow:
        out = [_U16.pack(len(values))]
        for v in values:
            out.append(_I32.pack(-1) if v is None else _I32.pack(len(v)) + v)
        return DataRow(data=b"".join(out))

    def values(self) -> list[bytes | None]:
        r = _Reader(self.data, "DataRow")
        out: list[bytes | None] = []
        for _ in range(r.count(4)):
            ln = r.int32()
            if ln < -1:
                raise RemoteProtocolError("malformed DataRow: negative length")
            out.append(None if ln == -1 else r.bytes_(ln))
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class CommandComplete(Message):
    TYPE: ClassVar[bytes] = b"C"
    tag: str = ""

    def payload(self) -> bytes:
        return _cstr(self.tag)

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        if payload[-1:] == b"\0" and payload.find(b"\0") == len(payload) - 1:
            return cls(tag=payload[:-1].decode("utf-8", "replace"), raw=raw)
        r = _Reader(payload, "CommandComplete")
        tag = r.cstring()
        r.end()
        return cls(tag=tag, raw=raw)

    @property
    def rows(self) -> int | None:
        """Row count carried by the tag (SELECT 5, INSERT 0 5, UPDATE 3 ...), if any."""
        head, _, last = self.tag.rpartition(" ")
        if head and last.isascii() and last.isdigit():
            return int(last)
        return None


# Error and notice field codes (protocol "Error and Notice Message Fields").
FIELD_SEVERITY = "S"
FIELD_SEVERITY_V = "V"
FIELD_CODE = "C"
FIELD_MESSAGE = "M"
FIELD_DETAIL = "D"
FIELD_HINT = "H"


@dataclass(frozen=True, slots=True)
class _FieldsMessage(Message):
    fields: Mapping[str, str] = field(default_factory=dict)

    def payload(self) -> bytes:
        out = [k.encode("ascii") + _cstr(v) for k, v in self.fields.items()]
        out.append(b"\0")
        return b"".join(out)

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        r = _Reader(payload, cls.__name__)
        fields: dict[str, str] = {}
        while True:
            code = r.byte()
            if code == 0:
                break
            fields[chr(code)] = r.cstring()
        r.end()
        return cls(fields=fields, raw=raw)

    @property
    def code(self) -> str:
        return self.fields.get(FIELD_CODE, "")

    @property
    def message(self) -> str:
        return self.fields.get(FIELD_MESSAGE, "")

    @property
    def severity(self) -> str:
        return self.fields.get(FIELD_SEVERITY_V) or self.fields.get(FIELD_SEVERITY, "")

    @classmethod
    def build(
        cls, code: str, message: str, *, severity: str = "ERROR",
        detail: str | None = None, hint: str | None = None,
    ) -> Self:
        fields = {FIELD_SEVERITY: severity, FIELD_SEVERITY_V: severity,
                  FIELD_CODE: code, FIELD_MESSAGE: message}
        if detail:
            fields[FIELD_DETAIL] = detail
        if hint:
            fields[FIELD_HINT] = hint
        return cls(fields=fields)


@dataclass(frozen=True, slots=True)
class ErrorResponse(_FieldsMessage):
    TYPE: ClassVar[bytes] = b"E"


@dataclass(frozen=True, slots=True)
class NoticeResponse(_FieldsMessage):
    TYPE: ClassVar[bytes] = b"N"


@dataclass(frozen=True, slots=True)
class NotificationResponse(Message):
    TYPE: ClassVar[bytes] = b"A"
    process_id: int = 0
    channel: str = ""
    payload_text: str = ""

    def payload(self) -> bytes:
        return _I32.pack(self.process_id) + _cstr(self.channel) + _cstr(self.payload_text)

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        r = _Reader(payload, "NotificationResponse")
        pid = r.int32()
        ch = r.cstring()
        text = r.cstring()
        r.end()
        return cls(process_id=pid, channel=ch, payload_text=text, raw=raw)


@dataclass(frozen=True, slots=True)
class ParseComplete(Message):
    TYPE: ClassVar[bytes] = b"1"


@dataclass(frozen=True, slots=True)
class BindComplete(Message):
    TYPE: ClassVar[bytes] = b"2"


@dataclass(frozen=True, slots=True)
class CloseComplete(Message):
    TYPE: ClassVar[bytes] = b"3"


@dataclass(frozen=True, slots=True)
class NoData(Message):
    TYPE: ClassVar[bytes] = b"n"


@dataclass(frozen=True, slots=True)
class PortalSuspended(Message):
    TYPE: ClassVar[bytes] = b"s"


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse(Message):
    TYPE: ClassVar[bytes] = b"I"


@dataclass(frozen=True, slots=True)
class ParameterDescription(Message):
    TYPE: ClassVar[bytes] = b"t"
    type_oids: tuple[int, ...] = ()

    def payload(self) -> bytes:
        return _U16.pack(len(self.type_oids)) + b"".join(_U32.pack(o) for o in self.type_oids)

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        r = _Reader(payload, "ParameterDescription")
        # The count is unsigned on the wire since PostgreSQL 14 allows 65535 params.
        n = r.int16() & 0xFFFF
        if n * 4 != len(payload) - 2:
            raise RemoteProtocolError("malformed ParameterDescription: bad count")
        oids = tuple(r.int32() & 0xFFFFFFFF for _ in range(n))
        return cls(type_oids=oids, raw=raw)


@dataclass(frozen=True, slots=True)
class _CopyResponse(Message):
    format: int = 0
    column_formats: tuple[int, ...] = ()

    def payload(self) -> bytes:
        return (bytes([self.format]) + _U16.pack(len(self.column_formats))
                + b"".join(_I16.pack(f) for f in self.column_formats))

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        r = _Reader(payload, cls.__name__)
        fmt = r.byte()
        cols = tuple(r.int16() for _ in range(r.count(2)))
        r.end()
        return cls(format=fmt, column_formats=cols, raw=raw)


@dataclass(frozen=True, slots=True)
class CopyInResponse(_CopyResponse):
    TYPE: ClassVar[bytes] = b"G"


@dataclass(frozen=True, slots=True)
class CopyOutResponse(_CopyResponse):
    TYPE: ClassVar[bytes] = b"H"


@dataclass(frozen=True, slots=True)
class CopyBothResponse(_CopyResponse):
    TYPE: ClassVar[bytes] = b"W"


@dataclass(frozen=True, slots=True)
class FunctionCallResponse(Message):
    TYPE: ClassVar[bytes] = b"V"
    value: bytes | None = None

    def payload(self) -> bytes:
        if self.value is None:
            return _I32.pack(-1)
        return _I32.pack(len(self.value)) + self.value

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        r = _Reader(payload, "FunctionCallResponse")
        ln = r.int32()
        value = None if ln == -1 else r.bytes_(ln)
        r.end()
        return cls(value=value, raw=raw)


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion(Message):
    TYPE: ClassVar[bytes] = b"v"
    newest_minor: int = 0
    unrecognized: tuple[str, ...] = ()

    def payload(self) -> bytes:
        return (_I32.pack(self.newest_minor) + _I32.pack(len(self.unrecognized))
                + b"".join(_cstr(o) for o in self.unrecognized))

    @classmethod
    def decode(cls, payload: bytes, raw: bytes = b"") -> Self:
        r = _Reader(payload, "NegotiateProtocolVersion")
        minor = r.int32()
        n = r.int32()
        if n < 0 or n > len(payload):
            raise RemoteProtocolError("malformed NegotiateProtocolVersion: bad count")
        opts = tuple(r.cstring() for _ in range(n))
        r.end()
        return cls(newest_minor=minor, unrecognized=opts, raw=raw)


FRONTEND_TYPES: dict[int, type[Message]] = {
    ord(c.TYPE): c
    for c in (Query, Parse, Bind, Describe, Close, Execute, Sync, Flush, Terminate,
              CopyData, CopyDone, CopyFail, FunctionCall, PasswordMessage)
}

BACKEND_TYPES: dict[int, type[Message]] = {
    ord(c.TYPE): c
    for c in (Authentication, ParameterStatus, BackendKeyData, ReadyForQuery, RowDescription,
              DataRow, CommandComplete, ErrorResponse, NoticeResponse, NotificationResponse,
              ParseComplete, BindComplete, CloseComplete, NoData, PortalSuspended,
              EmptyQueryResponse, ParameterDescription, CopyInResponse, CopyOutResponse,
              CopyBothResponse, CopyData, CopyDone, FunctionCallResponse,
              NegotiateProtocolVersion)
}
