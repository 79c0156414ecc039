"""The recording format: one header line, then one canonical JSON line per event.

Theory of operation
-------------------

A recording is an append-only stream of lines, each ending in ``\\n``, so a
crash can tear at most the last line. The first line is the header::

    {"created":1714731000.123456,"gateway":"gw-1","pwrec":1,"session":"b0c9b72dea5b3558"}

Every further line is an event::

    {"data":{...},"h":"<sha256 hex>","prev":"<sha256 hex>","seq":0,"t":1714731000.2,
     "type":"operation"}                                                  (on one line)

Lines are *canonical JSON*: keys sorted, no spaces, every non-ASCII character
escaped as ``\\uXXXX`` (so a line is pure ASCII, is the same bytes in any
encoding, and a lone surrogate survives), floats as Python's shortest
round-trip ``repr``, no NaN or infinity. ``h`` is
``sha256(prev + canonical({"data", "seq", "t", "type"}))`` in hex and ``prev``
is the previous event's ``h`` (for ``seq`` 0, the hash of the header line), so
editing, removing or reordering an event breaks the chain. The full
specification is ``docs/recording.md``.

Versions: the header's ``pwrec`` names the format version. Each version ever
written registers a :class:`FormatSpec` (header parser, line decoder, hash
function) in a registry that is never pruned, and :func:`read_header`
dispatches on it, so old recordings stay readable after the format moves on.
This module does no I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pathwarden.recording.errors import RecordingFormatError

FORMAT_VERSION = 1

#: Event types the gateway writes; the data fields of each are documented in
#: docs/recording.md. Readers accept any type matching ``TYPE_PATTERN``.
EVENT_TYPES = (
    "session_start", "operation", "decision", "approval", "result", "notice", "error",
    "truncated", "session_end", "term_output", "term_input", "resize", "exec", "channel",
    "exit", "file", "signal",
)

TYPE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_EVENT_KEYS = frozenset({"data", "h", "prev", "seq", "t", "type"})

# One encoder reused: json.dumps builds a new JSONEncoder per call when given options.
_ENCODER = json.JSONEncoder(
    ensure_ascii=True, allow_nan=False, sort_keys=True, separators=(",", ":"),
)
_encode = _ENCODER.encode
_float_repr = float.__repr__


@dataclass(frozen=True, slots=True)
class Event:
    """One recorded event, as written and as read back."""

    seq: int
    t: float
    type: str
    data: Mapping[str, Any]
    prev: str
    h: str


@dataclass(frozen=True, slots=True)
class Header:
    """The first line of a recording."""

    version: int
    session: str
    created: float
    gateway: str
    raw: bytes = field(repr=False)  # the header line as stored, without its newline
    extra: Mapping[str, Any] = field(default_factory=dict)  # fields this reader does not know

    @property
    def hash(self) -> str:
        """The hash the first event's ``prev`` must carry."""
        return header_hash(self.raw)


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong with a recording, named by kind and by the event's seq.

    Kinds: ``edited``, ``removed``, ``reordered``, ``truncated``, ``torn_tail``,
    ``bad_header``; for session chains also ``chain_broken`` and
    ``bad_signature`` (there ``seq`` is the chain position).
    """

    kind: str
    seq: int | None
    message: str


def canonical(value: Any) -> bytes:
    """The canonical JSON encoding of ``value`` (sorted keys, no spaces, ASCII)."""
    try:
        return _encode(value).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise RecordingFormatError(f"not recordable as JSON: {exc}") from None


def header_hash(header_line: bytes) -> str:
    """sha256 hex of the header line (a trailing newline is not hashed)."""
    if header_line.endswith(b"\n"):
        header_line = header_line[:-1]
    return hashlib.sha256(header_line).hexdigest()


def _hash_body(seq: int, t_json: str, type_json: str, data_json: str) -> str:
    # Equal to canonical({"data", "seq", "t", "type"}), assembled without a second dumps.
    return f'{{"data":{data_json},"seq":{seq},"t":{t_json},"type":{type_json}}}'


def event_hash(prev: str, seq: int, t: float, type: str, data: Mapping[str, Any]) -> str:
    """``sha256(prev + canonical({"data": data, "seq": seq, "t": t, "type": type}))`` in hex."""
    type_json = _check_fields(seq, t, type)
    body = _hash_body(seq, _float_repr(t), type_json, _encode_data(data))
    return hashlib.sha256((prev + body).encode("ascii")).hexdigest()


def _encode_data(data: Mapping[str, Any]) -> str:
    try:
        return _encode(data if isinstance(data, dict) else dict(data))
    except (TypeError, ValueError) as exc:
        raise RecordingFormatError(f"event data is not recordable as JSON: {exc}") from None


_INF = float("inf")
_type_json: dict[str, str] = {}  # checked event types -> their JSON string


def _type_to_json(type: str) -> str:
    cached = _type_json.get(type) if type.__class__ is str else None
    if cached is not None:
        return cached
    if type.__class__ is not str or not TYPE_PATTERN.match(type):
        raise RecordingFormatError(f"event type {type!r} is not a lower-case identifier")
    if len(_type_json) < 1024:
        _type_json[type] = _encode(type)
    return _encode(type)


def _check_fields(seq: int, t: float, type: str) -> str:
    """Validate the fixed fields; return the type as JSON."""
    if seq.__class__ is not int or seq < 0:
        raise RecordingFormatError(f"event seq {seq!r} is not a non-negative integer")
    if t.__class__ is not float or not -_INF < t < _INF:
        raise RecordingFormatError(f"event time {t!r} is not a finite float")
    return _type_to_json(type)


def build_event(
    seq: int, t: float, type: str, data: Mapping[str, Any], prev: str
) -> tuple[Event, bytes]:
    """The event and its complete line (with newline), hashing it onto ``prev``."""
    type_json = _check_fields(seq, t, type)
    data_json = _encode_data(data)
    t_json = _float_repr(t)
    h = hashlib.sha256(
        f'{prev}{{"data":{data_json},"seq":{seq},"t":{t_json},"type":{type_json}}}'.encode("ascii")
    ).hexdigest()
    line = (
        f'{{"data":{data_json},"h":"{h}","prev":"{prev}","seq":{seq},'
        f'"t":{t_json},"type":{type_json}}}\n'
    )
    return Event(seq, t, type, data, prev, h), line.encode("ascii")


def encode_event(seq: int, t: float, type: str, data: Mapping[str, Any], prev: str) -> bytes:
    """The complete line (with newline) of a new event chained onto ``prev``."""
    return build_event(seq, t, type, data, prev)[1]


def _line_of(event: Event, type_json: str) -> bytes:
    # The canonical line of an event as decoded, keeping its stored h (not recomputed).
    return (
        f'{{"data":{_encode_data(event.data)},"h":"{event.h}","prev":"{event.prev}",'
        f'"seq":{event.seq},"t":{_float_repr(event.t)},"type":{type_json}}}'
    ).encode("ascii")


def _reject_constant(name: str) -> Any:
    raise RecordingFormatError(f"{name} is not allowed in a recording")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise RecordingFormatError("an object has a duplicate key")
    return obj


def _load(line: bytes) -> Any:
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise RecordingFormatError("line has bytes outside ASCII") from None
    try:
        return json.loads(
            text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant,
        )
    except json.JSONDecodeError as exc:
        raise RecordingFormatError(f"line is not JSON ({exc.msg} at column {exc.colno})") from None


def _decode_event_v1(line: bytes) -> Event:
    if line.endswith(b"\n"):
        line = line[:-1]
    obj = _load(line)
    if not isinstance(obj, dict):
        raise RecordingFormatError("line is not a JSON object")
    if obj.keys() != _EVENT_KEYS:
        missing = sorted(_EVENT_KEYS - obj.keys())
        extra = sorted(obj.keys() - _EVENT_KEYS)
        raise RecordingFormatError(f"event keys wrong (missing {missing}, unexpected {extra})")
    seq, t, type, data, prev, h = (
        obj["seq"], obj["t"], obj["type"], obj["data"], obj["prev"], obj["h"],
    )
    type_json = _check_fields(seq, t, type)
    if not isinstance(data, dict):
        raise RecordingFormatError(f"event {seq}: data is not an object")
    for name, value in (("prev", prev), ("h", h)):
        if not isinstance(value, str) or not _HEX64.match(value):
            raise RecordingFormatError(f"event {seq}: {name} is not a sha256 hex digest")
    event = Event(seq, t, type, data, prev, h)
    if _line_of(event, type_json) != line:
        raise RecordingFormatError(f"event {seq}: line is not in canonical form")
    return event


def _parse_header_v1(line: bytes, obj: dict[str, Any]) -> Header:
    session, created, gateway = obj.get("session"), obj.get("created"), obj.get("gateway")
    if not isinstance(session, str) or not session:
        raise RecordingFormatError("header: session is not a non-empty string")
    if not isinstance(gateway, str):
        raise RecordingFormatError("header: gateway is not a string")
    if created.__class__ not in (int, float):
        raise RecordingFormatError("header: created is not a number")
    if canonical(obj) != line:
        raise RecordingFormatError("header: line is not in canonical form")
    extra = {k: v for k, v in obj.items() if k not in ("pwrec", "session", "created", "gateway")}
    return Header(1, session, float(created), gateway, line, extra)


@dataclass(frozen=True, slots=True)
class FormatSpec:
    """How to read one version of the format. Registered versions are never removed."""

    version: int
    parse_header: Callable[[bytes, dict[str, Any]], Header]
    decode_event: Callable[[bytes], Event]
    event_hash: Callable[[str, int, float, str, Mapping[str, Any]], str]


_FORMATS: dict[int, FormatSpec] = {}


def register_format(spec: FormatSpec) -> None:
    """Make recordings of ``spec.version`` readable."""
    _FORMATS[spec.version] = spec


def format_for(version: int) -> FormatSpec:
    """The reader of a format version, or :class:`RecordingFormatError` if unknown."""
    try:
        return _FORMATS[version]
    except KeyError:
        known = ", ".join(str(v) for v in sorted(_FORMATS))
        raise RecordingFormatError(
            f"recording format version {version} is not known to this pathwarden "
            f"(it reads {known}); upgrade pathwarden to read it"
        ) from None


register_format(FormatSpec(1, _parse_header_v1, _decode_event_v1, event_hash))


def encode_header(session_id: str, gateway_id: str, created: float) -> bytes:
    """The header line (with newline) of a new recording in the current version."""
    if not isinstance(session_id, str) or not session_id:
        raise RecordingFormatError("session id must be a non-empty string")
    return canonical({
        "pwrec": FORMAT_VERSION, "session": session_id, "created": created,
        "gateway": gateway_id,
    }) + b"\n"


def read_header(line: bytes) -> Header:
    """Parse a header line of any registered version (dispatching on ``pwrec``)."""
    if line.endswith(b"\n"):
        line = line[:-1]
    obj = _load(line)
    if not isinstance(obj, dict) or "pwrec" not in obj:
        raise RecordingFormatError("not a pathwarden recording (no pwrec header)")
    version = obj["pwrec"]
    if version.__class__ is not int:
        raise RecordingFormatError(f"header: pwrec {version!r} is not an integer")
    return format_for(version).parse_header(line, obj)


def decode_line(line: bytes, version: int = FORMAT_VERSION) -> Event:
    """Decode one event line of ``version``; :class:`RecordingFormatError` says what is wrong.

    The hash is not checked here (that is :func:`~pathwarden.recording.verify.verify_events`),
    but the line must be exactly the canonical encoding of what it holds.
    """
    return format_for(version).decode_event(line)
