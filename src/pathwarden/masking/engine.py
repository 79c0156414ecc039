"""The masking engine: one Hyperscan pass, then a bounded confirmation per hit.

``engine_for(options)`` compiles every active prefilter (and each configured
literal) into one Hyperscan block-mode database, once per options value.
``mask(data)`` scans the data once; with no hit it returns the very object it
was given. Each hit is confirmed by its rule's Python regex:

* ``key = value`` rules match the value right after the delimiter;
* anchored rules (``Rule.anchor``: the prefilter fixes where the match
  begins) match once at that position;
* the others search a window around the hit, one search for every run of
  hits whose windows touch.

Per rule, hits inside an earlier match (accepted or rejected by the
validator) are not confirmed again, so the confirmation work of a call is
linear in its input: a few bytes handed to ``re`` and the validators per
input byte, even on input built to defeat it. A hard budget backs this up:
past ``WORK_PER_BYTE`` bytes per input byte (plus ``WORK_BASE``) the call
fails closed. ``last_work()`` reports what the last call used.

Confirmed spans that overlap merge into one, named after the most specific
detector; the spans are then replaced by a marker in one pass.

Anything that raises while masking fails closed: the whole input becomes
``[MASKED:error]`` and only the exception's type is logged.
"""

from __future__ import annotations

import bisect
import functools
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import hyperscan

from pathwarden.masking import detectors as _d
from pathwarden.masking.options import PII_DETECTORS, MaskOptions

if TYPE_CHECKING:
    from pathwarden.masking.stream import StreamMasker

log = logging.getLogger(__name__)

ERROR_MARKER = b"[MASKED:error]"
_EMPTY: Mapping[str, int] = MappingProxyType({})
_ERROR_COUNTS: Mapping[str, int] = MappingProxyType({"error": 1})
_LITERAL_PRIORITY = 100
#: Configured literals shorter than this are ignored: they would mask ordinary text.
MIN_LITERAL_LENGTH = 4
#: Markers of these detectors never keep the last four characters (a PEM body's tail).
_NO_TAIL = frozenset({"private-key", "gcp-service-account"})
#: What ends a key before its value: closing quote, blanks, the delimiter.
_KEY_TRAIL = b"\"'\\ \t:="
_BLANKS = frozenset(b" \t\r\n")
_INDENT = frozenset(b" \t\n")
#: Confirmation work allowed per call: this many bytes handed to regular
#: expressions and validators per input byte, plus WORK_BASE. The algorithm
#: stays far below it (a few bytes per input byte even on adversarial input);
#: past it the call fails closed.
WORK_PER_BYTE = 64
WORK_BASE = 1 << 16
#: Work charged for each regex or validator call on top of the bytes it examines.
_CALL_COST = 16


class WorkBudgetExceeded(RuntimeError):
    """Confirmation would examine too many bytes; the input is masked whole."""


class _Budget:
    __slots__ = ("left", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def spend(self, amount: int) -> None:
        self.left -= amount
        if self.left < 0:
            raise WorkBudgetExceeded


@dataclass(frozen=True, slots=True)
class MaskResult:
    """The masked bytes and how many replacements each detector made."""

    data: bytes
    counts: Mapping[str, int]

    @property
    def changed(self) -> bool:
        return bool(self.counts)


@dataclass(slots=True)
class _Span:
    start: int
    end: int
    name: str
    priority: int
    #: Extent of the whole confirmation match (key, delimiter, value): the stream
    #: masker never cuts inside it.
    ctx_start: int
    ctx_end: int


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    detector: _d.Detector
    rule: _d.Rule
    secret_groups: tuple[int, ...]
    has_key: bool


def _collect(rule_id: int, start: int, end: int, flags: int, hits: object) -> None:
    hits.append((rule_id, start, end))  # type: ignore[attr-defined]


# -------------------------------------------------------------- key names

_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_SEPARATORS = re.compile(r"[^A-Za-z0-9]+")

_STRONG_SUFFIXES = frozenset(
    {
        ("password",), ("passwd",), ("pwd",), ("passphrase",), ("secret",), ("apikey",),
        ("api", "key"), ("secret", "key"), ("private", "key"), ("password", "hash"),
        ("signing", "key"), ("encryption", "key"), ("master", "key"),
    }
)
_WEAK_SUFFIXES = frozenset(
    {
        ("token",), ("auth",), ("credentials",), ("credential",), ("authorization",),
        ("cookie",), ("access", "key"), ("session", "key"),
    }
)
#: Compounds that end in a sensitive word but name something public.
_NOT_SENSITIVE_SUFFIXES = frozenset(
    {("page", "token"), ("next", "token"), ("continuation", "token"), ("sync", "token"),
     ("pagination", "token"), ("resume", "token")}
)
_GLUED_STRONG = ("password", "passwd", "passphrase", "secret", "apikey")
_GLUED_WEAK = ("token",)


def key_words(name: str) -> tuple[str, ...]:
    """``DB_PASSWORD`` -> ('db', 'password'); ``nextPageToken`` -> ('next', 'page', 'token')."""
    words: list[str] = []
    for part in _SEPARATORS.split(name):
        words.extend(w.lower() for w in _CAMEL.findall(part))
    return tuple(words)


def _ends_with(words: tuple[str, ...], suffixes: frozenset[tuple[str, ...]]) -> bool:
    return words[-1:] in suffixes or words[-2:] in suffixes


class MaskEngine:
    """Masks secrets in bytes; build it with :func:`engine_for`.

    Sensitive key names (``is_sensitive_key``): the name is split into words
    on ``_``, ``-``, ``.``, other punctuation and camelCase, and it is
    sensitive when its *last* word (or last two words) is a sensitive word:
    password, passwd, pwd, passphrase, secret, api key, secret key, private
    key, password hash, signing/encryption/master key (strong), or token,
    auth, credential(s), authorization, cookie, access key, session key
    (weak). A last word that merely ends in password/passwd/passphrase/secret/
    apikey/token (``PGPASSWORD``, ``accesstoken``) counts too. So
    ``client_secret``, ``refresh_token`` and ``MYSQL_PWD`` are sensitive while
    ``token_count``, ``password_changed_at``, ``secret_santa``,
    ``tokens_used``, ``auth_method`` and ``private_key_id`` are not, nor are
    pagination tokens (``next_page_token``). Names in
    ``options.sensitive_keys`` are sensitive (and strong) when the name ends
    with their words; names in ``options.exempt_keys`` never are.
    A strong key masks any value that is not a placeholder; a weak key needs
    a random-looking value.
    """

    def __init__(self, options: MaskOptions) -> None:
        self.options = options
        active = self._active(options)
        self.detector_names: tuple[str, ...] = tuple(d.name for d in active)
        self._custom = tuple(w for w in (key_words(k) for k in options.sensitive_keys) if w)
        self._exempt = frozenset("".join(key_words(k)) for k in options.exempt_keys)
        self._exempt_values = frozenset(v.encode("utf-8", "surrogateescape")
                                        for v in options.exempt_values)
        self._strength_cache: dict[str, int] = {}
        self._bytes_cache: dict[bytes, int] = {}
        self._fixed = options.fixed_text.encode("utf-8", "surrogateescape")

        rules: list[_CompiledRule] = []
        for det in active:
            det_rules = det.rules
            if det.name == "generic-assignment" and options.sensitive_keys:
                words = b"|".join(re.escape(k.encode()) for k in sorted(options.sensitive_keys))
                det_rules = (*det_rules, _d.assignment_rule(words))
            for rule in det_rules:
                groups = tuple(i for name, i in sorted(rule.confirm.groupindex.items())
                               if name.startswith("secret"))
                rules.append(_CompiledRule(det, rule, groups, "key" in rule.confirm.groupindex))
        self._rules = tuple(rules)
        literals = sorted({lit.encode("utf-8", "surrogateescape") for lit in options.literals
                           if len(lit.encode("utf-8", "surrogateescape")) >= MIN_LITERAL_LENGTH}
                          if options.enabled else ())
        patterns = [r.rule.prefilter for r in rules]
        flags = [r.rule.hs_flags | hyperscan.HS_FLAG_SOM_LEFTMOST for r in rules]
        for lit in literals:
            patterns.append(b"".join(b"\\x%02x" % c for c in lit))
            flags.append(hyperscan.HS_FLAG_SOM_LEFTMOST)
        self._db: hyperscan.Database | None = None
        if patterns:
            db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            db.compile(expressions=patterns, ids=list(range(len(patterns))),
                       elements=len(patterns), flags=flags)
            self._db = db
        self._local = threading.local()

    @staticmethod
    def _active(options: MaskOptions) -> list[_d.Detector]:
        if not options.enabled:
            return []
        unknown = ((options.detectors or frozenset()) | options.disabled) - _d.BY_NAME.keys()
        unknown |= options.pii - PII_DETECTORS
        if unknown:
            raise ValueError(f"unknown detector(s): {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(_d.BY_NAME)}")
        names = set(_d.SECRET_DETECTORS if options.detectors is None else options.detectors)
        names = (names - options.disabled) | options.pii
        return [d for d in _d.BUILTIN if d.name in names]

    # ---------------------------------------------------------- key names

    def _strength(self, name: str) -> int:
        cached = self._strength_cache.get(name)
        if cached is not None:
            return cached
        words = key_words(name)
        strength = 0
        if words and "".join(words) not in self._exempt:
            last = words[-1]
            if any(words[-len(c):] == c for c in self._custom):
                strength = 2
            elif _ends_with(words, _NOT_SENSITIVE_SUFFIXES):
                strength = 0
            elif _ends_with(words, _STRONG_SUFFIXES) or last.endswith(_GLUED_STRONG):
                strength = 2
            elif _ends_with(words, _WEAK_SUFFIXES) or last.endswith(_GLUED_WEAK):
                strength = 1
        if len(self._strength_cache) > 4096:
            self._strength_cache.clear()
        self._strength_cache[name] = strength
        return strength

    def _key_strength(self, key: bytes) -> int:
        cached = self._bytes_cache.get(key)
        if cached is None:
            cached = self._strength(key.decode("utf-8", "surrogateescape"))
            if len(self._bytes_cache) > 4096:
                self._bytes_cache.clear()
            self._bytes_cache[key] = cached
        return cached

    def is_sensitive_key(self, name: str) -> bool:
        """Whether a column, JSON/YAML key or variable named ``name`` holds a secret."""
        return self._strength(name) > 0

    # ---------------------------------------------------------- scanning

    def _scan(self, data: bytes) -> list[tuple[int, int, int]]:
        hits: list[tuple[int, int, int]] = []
        if self._db is None or not data:
            return hits
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = hyperscan.Scratch(self._db)
            self._local.scratch = scratch
        self._db.scan(data, match_event_handler=_collect, context=hits, scratch=scratch)
        return hits

    def candidates(self, data: bytes) -> list[tuple[int, int]]:
        """Prefilter hit spans (unconfirmed), sorted; a superset of what ``mask`` changes."""
        try:
            return sorted({(s, e) for _, s, e in self._scan(data)})
        except Exception as exc:
            log.error("masking prefilter failed (%s); treating the whole input as a candidate",
                      type(exc).__name__)
            return [(0, len(data))]

    def _analyse(self, data: bytes, hits: list[tuple[int, int, int]]) -> list[_Span]:
        """Confirm the hits and merge overlapping spans (sorted, disjoint).

        Raises :class:`WorkBudgetExceeded` when confirming would examine more
        than ``WORK_PER_BYTE * len(data) + WORK_BASE`` bytes.
        """
        n = len(data)
        by_rule: dict[int, list[tuple[int, int]]] = {}
        for rid, s, e in hits:
            by_rule.setdefault(rid, []).append((s, e))
        spans: list[_Span] = []
        nrules = len(self._rules)
        budget = _Budget(WORK_PER_BYTE * n + WORK_BASE)
        try:
            for rid, rhits in by_rule.items():
                if rid >= nrules:
                    spans.extend(_Span(s, e, "literal", _LITERAL_PRIORITY, s, e)
                                 for s, e in rhits)
                    continue
                rhits.sort()
                cr = self._rules[rid]
                if cr.rule.key_chars:
                    self._confirm_assignments(data, n, cr, rhits, spans, budget)
                elif cr.rule.anchor is not None:
                    self._confirm_anchored(data, n, cr, rhits, spans, budget)
                else:
                    self._confirm_searched(data, n, cr, rhits, spans, budget)
        finally:
            self._local.work = getattr(self._local, "work", 0) + budget.limit - budget.left
        if not spans:
            return spans
        spans.sort(key=lambda sp: (sp.start, -sp.end))
        merged = [spans[0]]
        for sp in spans[1:]:
            last = merged[-1]
            if sp.start < last.end:
                if (sp.priority, sp.end - sp.start) > (last.priority, last.end - last.start):
                    last.name, last.priority = sp.name, sp.priority
                last.end = max(last.end, sp.end)
                last.ctx_start = min(last.ctx_start, sp.ctx_start)
                last.ctx_end = max(last.ctx_end, sp.ctx_end)
            else:
                merged.append(sp)
        return merged

    def last_work(self) -> int:
        """Bytes the confirmation of the last ``mask`` in this thread handed to
        regular expressions and validators (the quantity the work budget bounds)."""
        return int(getattr(self._local, "work", 0))

    def _accept(self, m: re.Match[bytes], cr: _CompiledRule, data: bytes, key: bytes | None,
                strength: int, budget: _Budget) -> tuple[int, int] | None:
        """The secret's span in an acceptable match, or None."""
        for g in cr.secret_groups:
            ss, se = m.span(g)
            if ss >= 0:
                break
        else:
            return None
        if ss == se:
            return None
        validator = cr.detector.validator
        if validator is not None:
            budget.spend(se - ss + _CALL_COST)
            if not validator(data[ss:se], key, strength):
                return None
        return ss, se

    def _confirm_anchored(self, data: bytes, n: int, cr: _CompiledRule,
                          hits: list[tuple[int, int]], out: list[_Span],
                          budget: _Budget) -> None:
        """Rules whose prefilter fixes the start: one ``match`` per distinct start.

        A hit starting inside an earlier match (accepted or not) is skipped, so
        every byte is matched by this rule about once.
        """
        rule, det = cr.rule, cr.detector
        offset, after, match = rule.anchor or 0, rule.after, rule.confirm.match
        has_key, key_strength = cr.has_key, self._key_strength
        validator, groups, exempt = det.validator, cr.secret_groups, self._exempt_values
        left = budget.left  # inlined budget.spend
        skip = 0  # starts below here are decided
        try:
            for hs, he in hits:
                s = hs + offset
                if s < skip or s < 0:
                    continue
                skip = s + 1  # hits sharing this start (other ends) are the same attempt
                hi = he + after
                m = match(data, s, hi if hi < n else n)
                if m is None:
                    left -= he - s + _CALL_COST
                    continue
                me = m.end()
                left -= me - s + _CALL_COST
                if left < 0:
                    raise WorkBudgetExceeded
                if me > s:
                    skip = me
                key = None
                strength = 0
                if has_key:
                    key = m.group("key")
                    strength = 2 if key is None else key_strength(key)
                    if strength == 0:
                        continue
                for g in groups:
                    ss, se = m.span(g)
                    if ss >= 0:
                        break
                else:
                    continue
                if ss == se:
                    continue
                secret = data[ss:se]
                if validator is not None:
                    left -= se - ss + _CALL_COST
                    if not validator(secret, key, strength):
                        continue
                if secret not in exempt:
                    out.append(_Span(ss, se, det.name, det.priority, s, me))
        finally:
            budget.left = left
        if left < 0:
            raise WorkBudgetExceeded

    def _confirm_searched(self, data: bytes, n: int, cr: _CompiledRule,
                          hits: list[tuple[int, int]], out: list[_Span],
                          budget: _Budget) -> None:
        """Rules whose match may start before the hit: one search per run of hits.

        Hits whose start ranges ``[hs - before, he)`` touch form a run; the
        run is searched left to right once, with ``after`` bytes of room past
        its last hit. A match that overlaps no hit of the run is passed over,
        one the validator rejects is searched past its start.
        """
        rule, det = cr.rule, cr.detector
        before, after, search = rule.before, rule.after, rule.confirm.search
        nh = len(hits)
        pos = 0  # starts below here are decided
        i = 0
        while i < nh:
            hs, he = hits[i]
            lo = max(0, hs - before, pos)
            starts = [hs]
            reach = [he]  # reach[k]: the furthest end of hits[i..i+k]
            j = i + 1
            while j < nh and hits[j][0] - before <= reach[-1]:
                starts.append(hits[j][0])
                reach.append(max(reach[-1], hits[j][1]))
                j += 1
            i = j
            top = reach[-1]
            if lo >= top:
                continue
            hi = min(n, top + after)
            while lo < top:
                m = search(data, lo, hi)
                if m is None:
                    budget.spend(hi - lo + _CALL_COST)
                    break
                ms, me = m.span()
                budget.spend(me - lo + _CALL_COST)
                if ms >= top:
                    break
                k = bisect.bisect_left(starts, me) - 1
                if k < 0 or reach[k] <= ms:  # overlaps no hit of the run
                    lo = me if me > ms else ms + 1
                    continue
                key = None
                strength = 0
                if cr.has_key:
                    key = m.group("key")
                    strength = 2 if key is None else self._key_strength(key)
                span = None
                if not cr.has_key or strength:
                    span = self._accept(m, cr, data, key, strength, budget)
                if span is None:
                    lo = ms + 1
                    continue
                if data[span[0]:span[1]] not in self._exempt_values:
                    out.append(_Span(span[0], span[1], det.name, det.priority, ms, me))
                lo = me if me > ms else ms + 1
            pos = max(pos, lo)

    def _confirm_assignments(self, data: bytes, n: int, cr: _CompiledRule,
                             hits: list[tuple[int, int]], out: list[_Span],
                             budget: _Budget) -> None:
        """``key = value`` hits: the key is the run of key bytes ending in the hit,
        the confirmation is anchored right after the delimiter.

        A hit inside an earlier value (accepted or not) is skipped. An env-style
        ``KEY=value`` (the key starts a line or follows a blank) or a ``key:``
        starting a line uses ``rule.line_confirm``, whose unquoted value runs to
        the first blank.
        """
        rule, det = cr.rule, cr.detector
        before, after, key_chars = rule.before, rule.after, rule.key_chars
        match = rule.confirm.match
        line_match = rule.line_confirm.match if rule.line_confirm is not None else match
        validator, groups, exempt = det.validator, cr.secret_groups, self._exempt_values
        key_strength, line_style = self._key_strength, self._line_style
        left = budget.left  # inlined budget.spend: this loop runs once per keyword hit
        done = 0
        try:
            for hs, he in hits:
                if he <= done:
                    continue
                lo = hs - before
                if lo < done:
                    lo = done
                elif lo < 0:
                    lo = 0
                ks = lo + len(data[lo:hs].rstrip(key_chars))
                key = data[ks:he].rstrip(_KEY_TRAIL)
                strength = key_strength(key)
                left -= he - ks + _CALL_COST
                if not strength:
                    continue
                hi = he + after
                m = (line_match if line_style(data, ks, he, n) else match)(
                    data, he, hi if hi < n else n)
                if m is None:
                    continue
                me = m.end()
                left -= me - he
                if left < 0:
                    raise WorkBudgetExceeded
                if me > he:
                    done = me
                for g in groups:
                    ss, se = m.span(g)
                    if ss >= 0:
                        break
                else:
                    continue
                if ss == se:
                    continue
                secret = data[ss:se]
                left -= se - ss + _CALL_COST
                if validator is not None and not validator(secret, key, strength):
                    continue
                if secret not in exempt:
                    out.append(_Span(ss, se, det.name, det.priority, ks, me))
        finally:
            budget.left = left
        if left < 0:
            raise WorkBudgetExceeded

    @staticmethod
    def _line_style(data: bytes, ks: int, he: int, n: int) -> bool:
        """``KEY=value`` starting a line or after a blank (``export KEY=...``), or a
        ``key: value`` starting a line (after indentation and a list dash)."""
        delim = data[he - 1]
        if delim == 0x3D:  # "="
            if he < n and data[he] == 0x3E:  # "=>": a hash literal, not env
                return False
            return ks == 0 or data[ks - 1] in _BLANKS
        if delim != 0x3A or (ks and data[ks - 1] not in _INDENT):  # ":"
            return False
        head = data[max(0, ks - 64):ks]
        nl = head.rfind(b"\n")
        if nl < 0 and ks > 64:
            return False
        return head[nl + 1:].strip(b" \t\r") in (b"", b"-")

    # ---------------------------------------------------------- replacing

    def _marker(self, name: str, secret: bytes) -> bytes:
        style = self.options.style
        if style == "fixed":
            return self._fixed
        if style == "keep-last-4" and len(secret) >= 16 and name not in _NO_TAIL:
            return b"[MASKED:" + name.encode() + b":..." + secret[-4:] + b"]"
        return b"[MASKED:" + name.encode() + b"]"

    def _render(self, data: bytes, spans: list[_Span]) -> tuple[bytes, dict[str, int]]:
        counts: dict[str, int] = {}
        pieces: list[bytes] = []
        pos = 0
        for sp in spans:
            pieces.append(data[pos:sp.start])
            pieces.append(self._marker(sp.name, data[sp.start:sp.end]))
            counts[sp.name] = counts.get(sp.name, 0) + 1
            pos = sp.end
        pieces.append(data[pos:])
        return b"".join(pieces), counts

    def _mask(self, data: bytes) -> MaskResult:
        self._local.work = 0
        hits = self._scan(data)
        if not hits:
            return MaskResult(data, _EMPTY)
        spans = self._analyse(data, hits)
        if not spans:
            return MaskResult(data, _EMPTY)
        out, counts = self._render(data, spans)
        return MaskResult(out, MappingProxyType(counts))

    @staticmethod
    def _failed(exc: Exception) -> MaskResult:
        log.error("masking failed (%s); the whole value was replaced", type(exc).__name__)
        return MaskResult(ERROR_MARKER, _ERROR_COUNTS)

    def mask(self, data: bytes) -> MaskResult:
        """Replace every confirmed secret in ``data``; ``data`` itself when there is none."""
        try:
            return self._mask(data)
        except Exception as exc:
            return self._failed(exc)

    def mask_text(self, text: str) -> tuple[str, Mapping[str, int]]:
        """``mask`` for text (UTF-8, undecodable bytes kept through surrogateescape)."""
        try:
            data = text.encode("utf-8", "surrogateescape")
        except Exception as exc:
            return ERROR_MARKER.decode(), self._failed(exc).counts
        result = self.mask(data)
        if not result.changed:
            return text, _EMPTY
        return result.data.decode("utf-8", "surrogateescape"), result.counts

    def mask_value(self, data: bytes, key: str | None) -> MaskResult:
        """Mask one value whose column or key is named ``key``.

        A sensitive key (see the class docstring) replaces the whole value,
        counted as ``column``, unless it is empty, an obvious placeholder or
        an exempt value; any other key masks like :meth:`mask`.
        """
        try:
            if key is not None and self.options.enabled and self._strength(key) > 0:
                if _d.is_column_placeholder(data) or data in self._exempt_values:
                    return MaskResult(data, _EMPTY)
                return MaskResult(self._marker("column", data), MappingProxyType({"column": 1}))
            return self._mask(data)
        except Exception as exc:
            return self._failed(exc)

    def stream(self, max_hold: int = 16384) -> StreamMasker:
        """A masker for output that arrives in pieces (see :class:`StreamMasker`)."""
        from pathwarden.masking.stream import StreamMasker

        return StreamMasker(self, max_hold)


@functools.lru_cache(maxsize=64)
def engine_for(options: MaskOptions) -> MaskEngine:
    """The engine for ``options``, compiled once per distinct options value."""
    return MaskEngine(options)
