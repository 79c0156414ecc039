"""Masking output that arrives in pieces, with a bounded hold-back.

No detector's confirmation crosses a line break except a PEM private-key
body and a Kubernetes env pair (``- name: DB_PASSWORD`` then ``value: ...``
on the next line), so whole lines can be masked and released as soon as
their newline arrives: ``feed`` releases everything up to the last newline
that is not inside an open ``-----BEGIN ... PRIVATE KEY-----`` block and
holds the rest; when the last complete line is a ``name:`` line with a
sensitive key, it is held too, until the line after it is complete.

Two bounds keep memory flat:

* a line longer than ``max_hold`` is cut about ``max_hold / 2`` bytes from
  its end, moved back to whitespace and never inside a prefilter hit or a
  confirmed match, and the part before the cut is released masked;
* a private-key block still open after ``max_hold`` bytes is released
  masked (its body so far becomes the marker) and the rest of its body is
  dropped as it arrives, up to its ``-----END`` line.

The concatenated output equals ``engine.mask`` of the whole stream, except
for a secret longer than ``max_hold / 2`` on a line longer than
``max_hold``, a configured literal containing a line break, and a
private-key block longer than ``max_hold`` with no ``-----END`` line (the
stream drops more of what follows it than ``mask`` would).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from pathwarden.masking.detectors import ENV_NAME, PEM_BEGIN, PEM_BODY

if TYPE_CHECKING:
    from pathwarden.masking.engine import MaskEngine, _Span

log = logging.getLogger(__name__)

_BEGIN_RX = re.compile(PEM_BEGIN)
_BODY_RX = re.compile(PEM_BODY)
# What an over-long block's body may hold while it is dropped: a superset of PEM_BODY.
_SWALLOW_RX = re.compile(rb"(?:(?!-----END)[A-Za-z0-9+/=\s\\:,.\-])*")
_END_PREFIX = b"-----END"
# A complete line that may be the first half of a name/value pair.
_NAME_LINE_RX = re.compile(rb"(?<![A-Za-z0-9_\-])" + ENV_NAME + rb"\r?\n")
_PEM_DETECTORS = frozenset({"private-key", "gcp-service-account"})
#: An open block's body may stop this close to the end of the held data (a
#: partial ``-----END ... PRIVATE KEY-----`` line) and still count as open.
_OPEN_SLACK = 48
_ERROR_MARKER = b"[MASKED:error]"
# Characters tokens, keys and passwords are made of, at the end of held output.
_TRAILING_RUN = re.compile(rb"[A-Za-z0-9+/=_.~:@-]+\Z")


class StreamMasker:
    """``feed`` pieces, get back what may be released now; ``flush`` at the end."""

    def __init__(self, engine: MaskEngine, max_hold: int = 16384) -> None:
        if max_hold < 256:
            raise ValueError("max_hold must be at least 256 bytes")
        self._engine = engine
        self._max_hold = max_hold
        self._buf = b""
        self._swallow = False
        self._pem = bool(_PEM_DETECTORS & set(engine.detector_names))
        self._pairs = "generic-assignment" in engine.detector_names
        self._counts: dict[str, int] = {}

    @property
    def counts(self) -> Mapping[str, int]:
        """Replacements so far, by detector name."""
        return MappingProxyType(self._counts)

    @property
    def held(self) -> int:
        """Bytes held back, not yet released."""
        return len(self._buf)

    @property
    def pending(self) -> bytes:
        """The bytes held back (not masked yet)."""
        return self._buf

    def feed(self, data: bytes) -> bytes:
        """Take the next piece; return the masked bytes that may be released now."""
        try:
            return self._feed(data)
        except Exception as exc:
            return self._failed(exc)

    def flush(self) -> bytes:
        """Release everything still held, masked."""
        try:
            buf, self._buf = self._buf, b""
            if self._swallow:
                self._swallow = False
                return b""  # the rest of an over-long private-key body
            return self._mask(buf)
        except Exception as exc:
            return self._failed(exc)

    def release_partial(self, hold_run: int = 0) -> bytes:
        """Release held bytes now, masked, except an open private-key block.

        For interactive output (a prompt, keystroke echo) after it stopped
        arriving: a partial line is masked on its own and released instead of
        waiting for its line end. What an open block holds, or a ``name:``
        line waiting for its value line, stays held; with ``hold_run``, so does
        a trailing run of at least that many token characters (the first part
        of a secret whose rest has not arrived yet).
        """
        try:
            buf = self._buf
            if self._swallow or not buf:
                return b""
            open_at = self._open_block(buf)
            cut = len(buf) if open_at < 0 else open_at
            if cut == len(buf) and self._pairs and buf.endswith(b"\n"):
                cut = self._hold_name_line(buf, cut)
            if hold_run and cut == len(buf):
                run = _TRAILING_RUN.search(buf)
                if run is not None and run.end() - run.start() >= hold_run:
                    cut = run.start()
            if not cut:
                return b""
            self._buf = buf[cut:]
            return self._mask(buf[:cut])
        except Exception as exc:
            return self._failed(exc)

    def _failed(self, exc: Exception) -> bytes:
        log.error("stream masking failed (%s); the held output was replaced",
                  type(exc).__name__)
        self._buf = b""
        self._swallow = False
        self._add({"error": 1})
        return _ERROR_MARKER

    def _add(self, counts: Mapping[str, int]) -> None:
        for name, n in counts.items():
            self._counts[name] = self._counts.get(name, 0) + n

    def _mask(self, data: bytes) -> bytes:
        if not data:
            return data
        result = self._engine.mask(data)
        if result.counts:
            self._add(result.counts)
        return result.data

    def _feed(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        while buf:
            if self._swallow:
                buf, ended = self._drop_body(buf)
                if not ended:
                    break
            open_at = self._open_block(buf)
            limit = len(buf) if open_at < 0 else open_at
            cut = buf.rfind(b"\n", 0, limit) + 1
            if cut and self._pairs:
                cut = self._hold_name_line(buf, cut)
            if cut:
                out.append(self._mask(buf[:cut]))
                buf = buf[cut:]
                open_at = open_at - cut if open_at >= 0 else -1
            if len(buf) <= self._max_hold:
                break
            if open_at >= 0:
                # Release the block masked up to where its body stops (perhaps a
                # partial END line), then drop the rest of the body as it arrives.
                begin = _BEGIN_RX.match(buf, open_at)
                body = _BODY_RX.match(buf, begin.end()) if begin is not None else None
                end = body.end() if body is not None else len(buf)
                out.append(self._mask(buf[:end]))
                buf = buf[end:]
                self._swallow = True
                continue
            cut, spans = self._forced_cut(buf)
            out.append(self._release(buf, cut, spans))
            buf = buf[cut:]
            break
        self._buf = buf
        return b"".join(out)

    def _hold_name_line(self, buf: bytes, cut: int) -> int:
        """``cut``, or the start of the line ending there when it is the ``name:``
        half of a name/value pair whose value line is not complete yet."""
        lo = max(0, cut - 1 - 512)
        start = buf.rfind(b"\n", lo, cut - 1) + 1
        if (not start and lo) or b"name" not in buf[start:cut]:
            return cut
        m = _NAME_LINE_RX.search(buf, start, cut)
        if m is None or m.end() != cut:
            return cut
        key = m.group("key").decode("utf-8", "surrogateescape")
        return start if self._engine.is_sensitive_key(key) else cut

    def _open_block(self, buf: bytes) -> int:
        """Where an unterminated private-key block starts in ``buf``, or -1."""
        if not self._pem or b"PRIVATE KEY" not in buf:
            return -1
        pos = len(buf)
        while True:
            pos = buf.rfind(b"-----BEGIN", 0, pos)
            if pos < 0:
                return -1
            m = _BEGIN_RX.match(buf, pos)
            if m is not None:
                body = _BODY_RX.match(buf, m.end())
                if body is not None and body.end() >= len(buf) - _OPEN_SLACK:
                    return pos
                return -1

    def _drop_body(self, buf: bytes) -> tuple[bytes, bool]:
        """Drop the body of an over-long block; (rest, whether the body ended)."""
        m = _SWALLOW_RX.match(buf)
        end = m.end() if m is not None else 0
        if end < len(buf):
            self._swallow = False
            return buf[end:], True
        for keep in range(min(len(_END_PREFIX) - 1, len(buf)), 0, -1):
            if _END_PREFIX.startswith(buf[-keep:]):
                return buf[-keep:], False
        return b"", False

    def _forced_cut(self, buf: bytes) -> tuple[int, list[_Span]]:
        """A cut about max_hold/2 from the end of an over-long line, outside any match."""
        engine = self._engine
        hits = engine._scan(buf)
        spans = engine._analyse(buf, hits) if hits else []
        intervals = sorted([(s, e) for _, s, e in hits] +
                           [(sp.ctx_start, sp.ctx_end) for sp in spans])
        union: list[list[int]] = []
        for s, e in intervals:
            if union and s < union[-1][1]:
                union[-1][1] = max(union[-1][1], e)
            else:
                union.append([s, e])

        def outside(c: int) -> int:
            for s, e in union:
                if s < c < e:
                    return s
            return c

        c = outside(len(buf) - self._max_hold // 2)
        space = max(buf.rfind(b" ", max(0, c - 256), c), buf.rfind(b"\t", max(0, c - 256), c))
        if space >= 0:
            c = outside(space + 1)
        if c <= 0 or len(buf) - c > self._max_hold:
            c = len(buf)
        return c, [sp for sp in spans if sp.end <= c]

    def _release(self, buf: bytes, cut: int, spans: list[_Span]) -> bytes:
        if not spans:
            return buf[:cut]
        out, counts = self._engine._render(buf[:cut], spans)
        self._add(counts)
        return out
