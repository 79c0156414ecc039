"""Masking of one PostgreSQL session's responses.

Theory of operation: the session hands every buffer of server frames to
:meth:`PgMasker.begin_chunk`, which runs one hyperscan pass over the whole
buffer (:meth:`MaskEngine.candidates`). A DataRow is decoded only when a
candidate overlaps it or when its result has a column whose *name* is
sensitive (``password``, ``api_key`` ...): every other row is forwarded as the
server's bytes. A rewritten row gets new length prefixes.

Which column is which comes from the RowDescription. For the extended
protocol that message arrives in answer to a Describe, possibly long before
the Execute whose rows it describes (drivers cache it), so the session keeps
each prepared statement's description and combines it with the result
formats of the Bind (:func:`plan_for`).

Formats: text values of any type are masked as text. Binary values are
masked only for text-like types (text, varchar, json, jsonb ...) whose binary
form is the text itself; fixed binary types (integers, timestamps, uuid ...)
cannot hold a secret and are left alone; any other binary type (arrays,
composites, domains) holding what a detector confirms as a secret cannot be
rewritten safely, so the session is ended (:class:`MaskFailure`): fail closed.

COPY OUT text goes through a :class:`StreamMasker`, so a secret split across
CopyData messages is still masked; the stream is flushed at CopyDone (or at
the error that ends the COPY). Binary COPY cannot be rewritten: a confirmed
secret in it ends the session. NOTICE and ERROR texts are masked field by
field.

Counts of what was replaced go to the statement being answered, keyed
``"<column>:<detector>"`` (``notice:``, ``error:``, ``copy:`` for the
other places), for the audit trail: never the values.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ..masking import MaskEngine, StreamMasker
from ..protocols.postgres import messages as m

__all__ = ["UNKNOWN_BINARY", "ColumnPlan", "MaskFailure", "PgMasker", "plan_for"]

_I32 = struct.Struct("!i")
_U16 = struct.Struct("!H")
_HEADER = struct.Struct("!ci")

# Types whose binary send format is the value's text (jsonb: one version byte, then text).
TEXT_LIKE_BINARY = frozenset({
    18,    # char
    19,    # name
    25,    # text
    114,   # json
    142,   # xml
    705,   # unknown
    1042,  # bpchar
    1043,  # varchar
    3802,  # jsonb
    17,    # bytea: arbitrary bytes, rewriting them keeps the value a valid bytea
})
# Fixed binary layouts that cannot carry text: never rewritten.
NON_TEXT_BINARY = frozenset({
    16, 20, 21, 23, 26, 27, 28, 29, 600, 601, 602, 603, 604, 628, 650, 700, 701, 718,
    774, 790, 829, 869, 1082, 1083, 1114, 1184, 1186, 1266, 1560, 1562, 1700, 2950, 3220,
    3614, 3615, 3904, 3906, 3908, 3910, 3912, 3926, 5038,
})

_TEXT, _SKIP, _REFUSE = 0, 1, 2
# Fields of ErrorResponse/NoticeResponse that are codes or positions, not text.
_CODE_FIELDS = frozenset("SVCPpLFR")


# Values the server quotes in errors (constraint violations, bad input).
_KEY_VALUE = re.compile(r"(Key \((.*?)\)=\()(.*)(\))", re.S)
_FAILING_ROW = re.compile(r"(Failing row contains \().*(\)\.?)$", re.S)
_QUOTED_VALUE = re.compile(r'(: )"(?!\[MASKED)(.*)"$', re.S)
_COLUMN_MARK = "[MASKED:column]"


class MaskFailure(Exception):
    """A response holds a secret that cannot be masked safely: end the session."""


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    """How the values of one result column are masked."""

    name: str
    mode: int  # _TEXT, _SKIP or _REFUSE
    sensitive: bool  # its name masks every value
    # How a whole value is replaced under the name rule, keeping the type's format:
    # "text", "json", "jsonb", "bytea", or "null" (a type a marker would not parse as).
    whole: str = "text"
    binary: bool = False


Plan = tuple[ColumnPlan, ...]

_UNKNOWN_REFUSE = ColumnPlan("?", _REFUSE, False)

#: The plan of a result whose columns are unknown and may be binary: every
#: column refuses (a confirmed secret ends the session rather than corrupt a value).
UNKNOWN_BINARY: Plan = (_UNKNOWN_REFUSE,)


def plan_for(engine: MaskEngine, desc: m.RowDescription,
             result_formats: tuple[int, ...] | None = None) -> Plan:
    """The masking plan of a result described by ``desc``.

    ``result_formats`` are a Bind's result format codes (none: all text; one:
    for all columns; else one per column); None keeps the description's own.
    """
    plan = []
    for index, f in enumerate(desc.fields):
        fmt = f.format
        if result_formats is not None:
            if not result_formats:
                fmt = 0
            elif len(result_formats) == 1:
                fmt = result_formats[0]
            elif index < len(result_formats):
                fmt = result_formats[index]
        if fmt == 0 or f.type_oid in TEXT_LIKE_BINARY:
            mode = _TEXT
        elif f.type_oid in NON_TEXT_BINARY:
            mode = _SKIP
        else:
            mode = _REFUSE
        # Numbers, dates, uuids ... cannot hold a credential: the name rule skips them.
        sensitive = f.type_oid not in NON_TEXT_BINARY and engine.is_sensitive_key(f.name)
        whole = _WHOLE.get(f.type_oid, "null")
        plan.append(ColumnPlan(f.name, mode, sensitive, whole, fmt != 0))
    return tuple(plan)


# The name rule's replacement per type: a marker the client's parser accepts.
_WHOLE = {18: "text", 19: "text", 25: "text", 142: "text", 705: "text", 1042: "text",
          1043: "text", 114: "json", 3802: "jsonb", 17: "bytea"}


def _whole_value(col: ColumnPlan, marker: bytes) -> bytes | None:
    """The replacement of a whole value of ``col``; None sends NULL."""
    if col.whole == "text":
        return marker
    if col.whole in ("json", "jsonb"):
        doc = json.dumps(marker.decode("utf-8", "replace")).encode()
        return b"\x01" + doc if col.whole == "jsonb" and col.binary else doc
    if col.whole == "bytea":
        return marker if col.binary else b"\\x" + marker.hex().encode()
    return None


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    if len(spans) < 2:
        return spans
    spans.sort()
    out = [spans[0]]
    for start, end in spans[1:]:
        last_start, last_end = out[-1]
        if start <= last_end:
            if end > last_end:
                out[-1] = (last_start, end)
        else:
            out.append((start, end))
    return out


def _add(counts: dict[str, int], where: str, found: Mapping[str, int]) -> None:
    for detector, n in found.items():
        key = f"{where}:{detector}"
        counts[key] = counts.get(key, 0) + n


class PgMasker:
    """Per-session masking state: candidates of the current buffer, COPY stream."""

    __slots__ = ("_copy", "_copy_binary", "_copy_counts", "_index", "_spans", "engine")

    def __init__(self, engine: MaskEngine) -> None:
        self.engine = engine
        self._spans: list[tuple[int, int]] = []
        self._index = 0
        self._copy: StreamMasker | None = None
        self._copy_binary = False
        self._copy_counts: dict[str, int] = {}

    # -- candidates ---------------------------------------------------------------

    def begin_chunk(self, chunk: bytes) -> None:
        """Scan a buffer of whole frames once; later calls ask about its frames in order."""
        self._spans = _merged(self.engine.candidates(chunk))
        self._index = 0

    def hit(self, start: int, end: int) -> bool:
        """Whether a candidate overlaps ``chunk[start:end]``; frames are asked in order."""
        spans = self._spans
        i = self._index
        n = len(spans)
        while i < n and spans[i][1] <= start:
            i += 1
        self._index = i
        return i < n and spans[i][0] < end

    # -- rows ---------------------------------------------------------------------

    def data_row(self, payload: bytes | memoryview, plan: Plan | None, hit: bool,
                 counts: dict[str, int]) -> bytes | None:
        """A masked DataRow frame for ``payload``, or None to forward it unchanged.

        Only the values that change are copied: the row is rebuilt from
        slices of the original around them.
        """
        data = bytes(payload)
        (ncols,) = _U16.unpack_from(data, 0)
        pos = 2
        parts: list[bytes] = []
        last = 0  # start of the part of ``data`` not yet copied into ``parts``
        engine = self.engine
        unpack = _I32.unpack_from
        nplan = len(plan) if plan is not None else 0
        unknown = _UNKNOWN_REFUSE if plan is UNKNOWN_BINARY else None
        for index in range(ncols):
            (ln,) = unpack(data, pos)
            start = pos + 4
            if ln < 0:
                pos = start
                continue
            pos = start + ln
            col = plan[index] if plan is not None and index < nplan else unknown
            if col is not None and col.sensitive and col.mode != _SKIP:
                result = engine.mask_value(data[start:pos], col.name)
                if result.changed and col.whole != "text":
                    new = _whole_value(col, result.data)
                    parts.append(data[last : start - 4])
                    parts.append(_I32.pack(-1) if new is None else _I32.pack(len(new)) + new)
                    last = pos
                    _add(counts, col.name, result.counts)
                    continue
            elif hit and (col is None or col.mode != _SKIP):
                result = engine.mask(data[start:pos])
                if result.changed and col is not None and col.mode == _REFUSE:
                    raise MaskFailure(
                        f"column {col.name!r} is in a binary format pathwarden cannot "
                        "rewrite and holds what looks like a secret; request the result "
                        "in text format")
            else:
                continue
            if result.changed:
                new = result.data
                parts.append(data[last : start - 4])
                parts.append(_I32.pack(len(new)))
                parts.append(new)
                last = pos
                _add(counts, col.name if col is not None else f"column{index + 1}",
                     result.counts)
        if not parts:
            return None
        parts.append(data[last:])
        body = b"".join(parts)
        return _HEADER.pack(b"D", len(body) + 4) + body

    # -- other messages -------------------------------------------------------------------

    def row_description(self, desc: m.RowDescription, counts: dict[str, int]) -> bytes | None:
        """A RowDescription with masked column names (``select 1 as "<secret>"``), or None."""
        fields = []
        changed = False
        for f in desc.fields:
            name, found = self.engine.mask_text(f.name)
            if found:
                changed = True
                _add(counts, "column-name", found)
                f = replace(f, name=name)
            fields.append(f)
        return m.RowDescription(fields=tuple(fields)).encode() if changed else None

    def text_fields(self, kind: bytes, payload: bytes | memoryview,
                    counts: dict[str, int]) -> bytes | None:
        """A masked NotificationResponse or ParameterStatus frame, or None."""
        if kind == b"A":
            note = m.NotificationResponse.decode(bytes(payload))
            channel, found_c = self.engine.mask_text(note.channel)
            text, found_t = self.engine.mask_text(note.payload_text)
            if not found_c and not found_t:
                return None
            _add(counts, "notify", found_c)
            _add(counts, "notify", found_t)
            return m.NotificationResponse(process_id=note.process_id, channel=channel,
                                          payload_text=text).encode()
        ps = m.ParameterStatus.decode(bytes(payload))
        value, found = self.engine.mask_text(ps.value)
        if not found:
            return None
        _add(counts, "parameter", found)
        return m.ParameterStatus(name=ps.name, value=value).encode()

    # -- notices and errors -----------------------------------------------------------

    def fields_message(self, kind: bytes, payload: bytes | memoryview,
                       counts: dict[str, int], sensitive: bool = False) -> bytes | None:
        """A masked NoticeResponse/ErrorResponse frame, or None if nothing was masked.

        ``sensitive``: the statement reads or writes a column whose values are
        masked whole; the server quotes values in some errors (``invalid input
        syntax ...: "<value>"``, ``Failing row contains (...)``, ``Key
        (col)=(<value>)``), so those quoted values are masked too.
        """
        cls = m.ErrorResponse if kind == b"E" else m.NoticeResponse
        msg = cls.decode(bytes(payload))
        where = "error" if kind == b"E" else "notice"
        fields = dict(msg.fields)
        changed = False
        for code, text in msg.fields.items():
            if code in _CODE_FIELDS or not text:
                continue
            masked, found = self.engine.mask_text(text)
            quoted = self._quoted_values(masked, sensitive)
            if quoted is not None:
                masked = quoted
                found = {**found, "column": found.get("column", 0) + 1}
            if found:
                changed = True
                fields[code] = masked
                _add(counts, where, found)
        if not changed:
            return None
        return cls(fields=fields).encode()

    def _quoted_values(self, text: str, sensitive: bool) -> str | None:
        """``text`` with server-quoted values of sensitive columns masked, or None."""
        out = text
        key = _KEY_VALUE.search(out)
        if key is not None and (sensitive or any(
                self.engine.is_sensitive_key(c.strip().strip('"'))
                for c in key.group(2).split(","))):
            out = out[:key.start(3)] + _COLUMN_MARK + out[key.end(3):]
        if sensitive:
            out = _FAILING_ROW.sub(r"\1" + _COLUMN_MARK + r"\2", out)
            out = _QUOTED_VALUE.sub(r'\1"' + _COLUMN_MARK + '"', out)
        return out if out != text else None

    # -- COPY OUT ---------------------------------------------------------------------

    @property
    def copying(self) -> bool:
        return self._copy is not None or self._copy_binary

    def copy_out(self, payload: bytes | memoryview) -> None:
        """A CopyOutResponse: text COPY is streamed through the masker."""
        binary = bytes(payload[:1]) == b"\x01"
        self._copy_binary = binary
        self._copy = None if binary else self.engine.stream()
        self._copy_counts = {}

    def copy_data(self, payload: bytes | memoryview) -> bytes:
        """The CopyData frame(s) to send for one from the server (possibly none)."""
        data = bytes(payload)
        if self._copy_binary:
            if self.engine.candidates(data) and self.engine.mask(data).changed:
                raise MaskFailure("binary COPY output holds what looks like a secret and "
                                  "cannot be rewritten; use COPY in text or CSV format")
            return _HEADER.pack(b"d", len(data) + 4) + data
        assert self._copy is not None
        out = self._copy.feed(data)
        return _HEADER.pack(b"d", len(out) + 4) + out if out else b""

    def copy_end(self, counts: dict[str, int]) -> bytes:
        """What the stream still holds, as a CopyData frame, at the end of COPY OUT."""
        stream, self._copy, self._copy_binary = self._copy, None, False
        if stream is None:
            return b""
        out = stream.flush()
        _add(counts, "copy", stream.counts)
        return _HEADER.pack(b"d", len(out) + 4) + out if out else b""
