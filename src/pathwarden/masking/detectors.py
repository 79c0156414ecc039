"""The built-in detectors: what each secret looks like, written from the providers' formats.

A detector is found in two steps. Its *prefilter* is a Hyperscan pattern
(bytes, PCRE syntax) compiled with every other prefilter into one database
and scanned once; it must not use boundary assertions (``\\b``, ``^``,
lookbehind) because the gateway scans whole buffers of concatenated values
and a neighbouring byte must not be able to hide a hit. Each hit is then
*confirmed* by a Python regular expression searched in a bounded window
around it; the confirmation checks boundaries and names the exact bytes to
replace in a group called ``secret`` (or ``secret2``, ``secret3``... when
the form has alternatives). An optional validator has the last word
(entropy, Luhn, mod-97, a JWT header that parses, the placeholder filter).

Confirmation patterns never cross a line break, except the PEM private-key
body and a Kubernetes-style ``name: <KEY>`` / ``value: <secret>`` pair (one
line break): the stream masker relies on that to release whole lines early
(it holds back a complete ``name:`` line whose key is sensitive until the
next line is complete).

Confirmation work is linear in the input: a rule whose prefilter fixes
where the match begins is *anchored* (``Rule.anchor``: the match is tried
once, at that offset from the hit start, and a later hit of the same rule
starting inside an earlier match is not tried again); the other rules are
searched once over each run of hits whose windows touch.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import hyperscan

#: ``(secret, key, key_strength) -> keep as a secret?``; ``key`` is the key
#: name for detectors that have one, key_strength 0 for detectors without a
#: key, 1 for a weak key word (token, auth), 2 for a strong one (password).
Validator = Callable[[bytes, bytes | None, int], bool]

_CASELESS = hyperscan.HS_FLAG_CASELESS


@dataclass(frozen=True, slots=True)
class Rule:
    """One prefilter pattern and the regex that confirms its hits."""

    prefilter: bytes
    confirm: re.Pattern[bytes]
    #: Bytes of context searched before the hit start and after the hit end.
    before: int = 64
    after: int = 256
    hs_flags: int = 0
    #: When set, the confirmation is anchored where the run of these bytes
    #: before the hit begins (a key name), instead of searched for.
    key_chars: bytes = b""
    #: When set, the prefilter fixes the start of the match: the confirmation
    #: is ``match``-ed at the hit start plus this offset (never searched), with
    #: ``after`` bytes of room past the hit end. A hit starting inside an
    #: earlier match of the same rule (accepted or rejected) is not tried again.
    anchor: int | None = None
    #: For ``key_chars`` rules: the confirmation used when the key starts a
    #: line or follows a blank and the delimiter is ``=`` (or starts a line and
    #: the delimiter is ``:``).
    line_confirm: re.Pattern[bytes] | None = None


@dataclass(frozen=True, slots=True)
class Detector:
    name: str
    rules: tuple[Rule, ...]
    validator: Validator | None = None
    #: When confirmed spans overlap, the merged span is named after the
    #: detector with the highest priority (the most specific one).
    priority: int = 50
    #: A ``key`` group in the confirmation must be a sensitive key name.
    keyed: bool = False
    pii: bool = False


def _rx(pattern: bytes, flags: int = 0) -> re.Pattern[bytes]:
    return re.compile(pattern, flags)


# ---------------------------------------------------------------- validators


def entropy(data: bytes) -> float:
    """Shannon entropy in bits per byte."""
    n = len(data)
    if n == 0:
        return 0.0
    total = 0.0
    for b in set(data):
        p = data.count(b) / n
        total -= p * math.log2(p)
    return total


_PLACEHOLDER_WORDS = frozenset(
    {
        b"changeme", b"change_me", b"change-me", b"changeit", b"password", b"passwd",
        b"secret", b"example", b"sample", b"dummy", b"placeholder", b"redacted", b"hidden",
        b"masked", b"removed", b"omitted", b"none", b"null", b"nil", b"undefined", b"true",
        b"false", b"yes", b"no", b"on", b"off", b"required", b"optional", b"string", b"str",
        b"empty", b"default", b"todo", b"tbd", b"fixme", b"notset", b"not-set", b"unset",
        b"n/a", b"token", b"mypassword", b"secretpassword", b"test", b"filtered", b"bearer",
        b"basic",
    }
)

# Template references, masks already applied, and values that only name a secret.
_PLACEHOLDER_RX = _rx(
    rb"""(?xs)
      \$\{.*                                # ${VAR}, ${{ secrets.X }} (cut at a blank)
    | \$\(?[A-Za-z_][A-Za-z0-9_]*\)?        # $VAR, $(VAR)
    | \{\{.*\}\} | \{%.*%\} | <%.*%> | \#\{.*\}
    | %\([A-Za-z_]*\)s | %s | %[A-Za-z_]+% | \? | [:@][A-Za-z_][A-Za-z0-9_]*
    | <[^<>]*>                              # <redacted>, <your-token>
    | (?i:\[(?:masked|redacted|filtered|hidden|secret|removed)[^\]]*\]?)
    | (?i:(?:replace|change|insert|enter|fill|put|set)[_\-]?(?:me|this|here|in|it)(?:[_\-][a-z]+)*)
    | (.)\1*                                # ****, xxxx, ....
    | (?i:(?:your|my|some)[_\-]?[a-z_\-]*)
    | (?i:x{3,}|\*{3,}|\.{3,}|\#{3,})[^\s]*
    """
)

_PLACEHOLDER_FIRST = frozenset(b"${<#%?:@[*.xXyYmMsSrRcCiIeEfFpP")


def is_placeholder(value: bytes) -> bool:
    """An empty value, a template reference, an existing mask or a dictionary word."""
    v = value.strip()
    if not v:
        return True
    if v.lower() in _PLACEHOLDER_WORDS:
        return True
    if v[0] not in _PLACEHOLDER_FIRST and v.count(v[:1]) != len(v):
        return False  # no alternative of _PLACEHOLDER_RX can match
    return _PLACEHOLDER_RX.fullmatch(v) is not None


# Narrower: what a whole column value may hold without being a secret.
_COLUMN_PLACEHOLDER_RX = _rx(
    rb"(?s)\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*|\{\{.*\}\}|<redacted>|"
    rb"\[(?:MASKED|REDACTED)[^\]]*\]|\*+"
)


def is_column_placeholder(value: bytes) -> bool:
    return not value.strip() or _COLUMN_PLACEHOLDER_RX.fullmatch(value.strip()) is not None


# Only the dashed 8-4-4-4-12 form: 32 bare hex digits under a key are a token.
_UUID_RX = _rx(rb"(?i)[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NUMBER_RX = _rx(rb"[+-]?[0-9][0-9_,]*(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_PATH_RX = _rx(rb"(?:/|~/|[A-Za-z]:\\)[^\s]*")


_DIGIT_RX = _rx(rb"[0-9]")


def _classes(value: bytes) -> int:
    """How many of lower case, upper case and digits occur in ``value``."""
    return ((value.upper() != value) + (value.lower() != value)
            + (_DIGIT_RX.search(value) is not None))


def assignment_ok(secret: bytes, key: bytes | None, strength: int) -> bool:
    """The value filter for ``key = value``: placeholders and ordinary values stay."""
    value = secret.strip()
    if is_placeholder(value) or value.startswith(b"-----BEGIN"):
        return False
    if _NUMBER_RX.fullmatch(value):
        return strength >= 2 and len(value) >= 6
    if (key or b"").lower().endswith(b"pwd") and _PATH_RX.fullmatch(value):
        return False  # the shell's PWD=/home/runner/work, not a password
    if strength >= 2:
        return len(value) >= 3
    if len(value) < 8 or _UUID_RX.fullmatch(value):
        return False
    # A weak key needs a random-looking value: many distinct bytes, or several
    # of them across letter cases and digits (cheaper than entropy, same idea).
    distinct = len(set(value))
    return distinct >= 12 or (distinct >= 6 and _classes(value) >= 2)


def token_ok(secret: bytes, key: bytes | None, strength: int) -> bool:
    """A vendor token with a random-looking body, not ``AKIAXXXXXXXXXXXXXXXX``."""
    tail = secret[-16:]
    return len(set(tail)) >= 5 and not is_placeholder(secret)


def value_ok(secret: bytes, key: bytes | None, strength: int) -> bool:
    """A header or URL credential that is not a placeholder."""
    return not is_placeholder(secret)


def _random_bytes_ok(secret: bytes, key: bytes | None, strength: int) -> bool:
    """Base64 of random bytes (a key), not of text such as a JSON document."""
    try:
        raw = base64.b64decode(secret)
    except (ValueError, binascii.Error):
        return False
    printable = sum(32 <= c < 127 or c in (9, 10, 13) for c in raw)
    return printable < 0.9 * len(raw) and token_ok(secret, key, strength)


_PEM_B64_PREFIX = b"LS0tLS1CRUdJTi"  # base64 of "-----BEGIN"


def _private_key_ok(secret: bytes, key: bytes | None, strength: int) -> bool:
    """A PEM body, or base64 of a whole PEM private key (Kubernetes ``tls.key``)."""
    if not secret.startswith(_PEM_B64_PREFIX):
        return True
    head = secret[:80]
    try:
        return b"PRIVATE KEY" in base64.b64decode(head[: len(head) // 4 * 4])
    except (ValueError, binascii.Error):
        return False


def jwt_header_ok(segment: bytes) -> bool:
    """The first JWT segment is base64url of a JSON object with ``alg``."""
    try:
        raw = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
        header = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and "alg" in header


def _jwt_ok(secret: bytes, key: bytes | None, strength: int) -> bool:
    return jwt_header_ok(secret.split(b".", 1)[0])


def luhn_valid(digits: bytes) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ch - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_ok(secret: bytes, key: bytes | None, strength: int) -> bool:
    seps = {c for c in secret if c in b" -"}
    if len(seps) > 1:
        return False
    digits = secret.replace(b" ", b"").replace(b"-", b"")
    if not 13 <= len(digits) <= 19 or digits[0] not in b"23456" or len(set(digits)) < 3:
        return False
    return luhn_valid(digits)


# Lengths from the SWIFT IBAN registry.
_IBAN_LENGTHS = {
    b"AD": 24, b"AE": 23, b"AL": 28, b"AT": 20, b"AZ": 28, b"BA": 20, b"BE": 16, b"BG": 22,
    b"BH": 22, b"BR": 29, b"BY": 28, b"CH": 21, b"CR": 22, b"CY": 28, b"CZ": 24, b"DE": 22,
    b"DK": 18, b"DO": 28, b"EE": 20, b"EG": 29, b"ES": 24, b"FI": 18, b"FO": 18, b"FR": 27,
    b"GB": 22, b"GE": 22, b"GI": 23, b"GL": 18, b"GR": 27, b"GT": 28, b"HR": 21, b"HU": 28,
    b"IE": 22, b"IL": 23, b"IQ": 23, b"IS": 26, b"IT": 27, b"JO": 30, b"KW": 30, b"KZ": 20,
    b"LB": 28, b"LC": 32, b"LI": 21, b"LT": 20, b"LU": 20, b"LV": 21, b"MC": 27, b"MD": 24,
    b"ME": 22, b"MK": 19, b"MR": 27, b"MT": 31, b"MU": 30, b"NL": 18, b"NO": 15, b"PK": 24,
    b"PL": 28, b"PS": 29, b"PT": 25, b"QA": 29, b"RO": 24, b"RS": 22, b"SA": 24, b"SC": 31,
    b"SE": 24, b"SI": 19, b"SK": 24, b"SM": 27, b"ST": 25, b"SV": 28, b"TL": 23, b"TN": 24,
    b"TR": 26, b"UA": 29, b"VA": 22, b"VG": 24, b"XK": 20,
}


def iban_valid(iban: bytes) -> bool:
    s = iban.replace(b" ", b"").upper()
    if _IBAN_LENGTHS.get(s[:2]) != len(s):
        return False
    rearranged = s[4:] + s[:4]
    digits = "".join(str(int(chr(c), 36)) for c in rearranged)
    return int(digits) % 97 == 1


def _iban_ok(secret: bytes, key: bytes | None, strength: int) -> bool:
    return iban_valid(secret)


# ---------------------------------------------------------------- detectors

_B62 = rb"A-Za-z0-9"
_NOT_TOKEN_BEFORE = rb"(?<![A-Za-z0-9_\-])"
_NOT_TOKEN_AFTER = rb"(?![A-Za-z0-9_\-])"

#: The PEM body: whole base64 lines, line breaks (real or escaped as ``\n`` in
#: JSON, env dumps and COPY text output) and RFC 1421 headers of encrypted keys.
#: A truncated block (no END line) stops at the first line that is not base64.
PEM_BODY = (
    rb"(?:(?:Proc-Type|DEK-Info|Comment):[^\r\n\\]*"
    rb"|[A-Za-z0-9+/=]++(?=[ \t]*(?:\r?\n|\\r\\n|\\n|-----END|\"|$))"
    rb"|[ \t]*(?:\r?\n|\\r\\n|\\n)[ \t]*)*"
)
PEM_BEGIN = rb"-----BEGIN[A-Z0-9 ]{0,24}PRIVATE KEY(?: BLOCK)?-----"
PEM_END = rb"-----END[A-Z0-9 ]{0,24}PRIVATE KEY(?: BLOCK)?-----"

# Key words whose value a ``key = value`` assignment masks (the last word of
# the key; see MaskEngine.is_sensitive_key for the full rule).
_KEY_WORDS = (
    rb"passw(?:or)?d|passphrase|pwd|secret|token|auth|credentials?"
    rb"|(?:api|access|secret|private|session|signing|encryption|master)[_.\-]?key"
    rb"|apikey|password[_.\-]?hash"
)
# After the delimiter the hit ends with (``:`` of ``:=``, ``=`` of ``=>``).
_ASSIGN_VALUE = (
    rb"[=>]?[ \t]*"
    rb"(?:\\\"(?P<secret3>[^\"\\\r\n]*)\\\""
    rb"|\"(?P<secret>(?:[^\"\\\r\n]|\\.)*)\""
    rb"|'(?P<secret2>[^'\r\n]*)'"
    rb"|[\"']?(?P<secret4>[^\s\"'`;&,]+))"
)
#: The same for an env-style ``KEY=value`` (the key at the start of a line or
#: after a blank, ``export KEY=...``) and a YAML ``key: value`` at the start of
#: a line: an unquoted value runs to the first blank, so ``&``, ``;`` and ``,``
#: inside a generated password do not end it (they still end a value after
#: ``?``, ``&`` or ``;``, in a URL query or a connection string).
_ASSIGN_VALUE_LINE = _ASSIGN_VALUE.replace(rb"[^\s\"'`;&,]+", rb"[^\s\"'`]+")


KEY_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"

#: The name half of a Kubernetes env entry, ``- name: DB_PASSWORD`` (or
#: ``"name": "DB_PASSWORD"``); the value follows on the next line, or after a
#: comma in the JSON or flow form.
ENV_NAME = rb"name[\"']?[ \t]*:[ \t]*[\"']?(?P<key>[A-Za-z0-9_.\-]+)[\"']?[ \t]*"
_ENV_VALUE_KEY = rb"(?:,[ \t]*|\r?\n[ \t]*(?:-[ \t]+)?)[\"']?value[\"']?[ \t]*:"
_ENV_PAIR = Rule(
    rb"name[\"']?[ \t]*:[ \t]*[\"']?[A-Za-z0-9_.\-]*(?i:" + _KEY_WORDS + rb")[A-Za-z0-9_.\-]*"
    rb"[\"']?[ \t]*" + _ENV_VALUE_KEY,
    _rx(rb"(?<![A-Za-z0-9_\-])" + ENV_NAME + _ENV_VALUE_KEY + rb"[ \t]*"
        rb"(?:\"(?P<secret>(?:[^\"\\\r\n]|\\.)*)\"|'(?P<secret2>[^'\r\n]*)'"
        rb"|(?P<secret3>[^\s\"'#][^\r\n]*?)(?=[ \t]*(?:\r?\n|\Z)|[ \t]+\#))"),
    before=0,
    after=1024,
    anchor=0,
)


def assignment_rule(words: bytes) -> Rule:
    """The ``key = value`` rule for a set of key words (the defaults or configured names)."""
    return Rule(
        rb"(?:" + words + rb")\\?[\"']?[ \t]*[:=]",
        _rx(_ASSIGN_VALUE),
        before=64,
        after=1024,
        hs_flags=_CASELESS,
        key_chars=KEY_CHARS,
        line_confirm=_rx(_ASSIGN_VALUE_LINE),
    )


def _token(name: str, prefilter: bytes, confirm: bytes, *, after: int = 512) -> Detector:
    return Detector(
        name,
        (Rule(prefilter, _rx(_NOT_TOKEN_BEFORE + rb"(?P<secret>" + confirm + rb")" +
                             _NOT_TOKEN_AFTER), before=16, after=after, anchor=0),),
        validator=token_ok,
    )


def _keyword(prefilter: bytes, confirm: bytes, *, before: int = 80, after: int = 256,
             anchor: int | None = 0) -> Rule:
    """A caseless rule whose confirmation starts where the prefilter does (unless
    ``anchor`` says otherwise)."""
    return Rule(prefilter, _rx(confirm), before=before, after=after, hs_flags=_CASELESS,
                anchor=anchor)


BUILTIN: tuple[Detector, ...] = (
    _token("aws-access-key", rb"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}",
           rb"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}"),
    Detector(
        "aws-secret-key",
        (_keyword(
            rb"(?:secret_?access_?key|aws_?secret_?key)",
            rb"(?i:(?:secret_?access_?key|aws_?secret_?key))[\"']?[ \t]*[:=][ \t]*[\"']?"
            rb"(?P<secret>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])", after=128),),
        validator=token_ok,
        priority=55,
    ),
    Detector(
        "gcp-service-account",
        (
            _keyword(rb"\"private_key\"[ \t]*:[ \t]*\"-----BEGIN",
                     rb"\"private_key\"[ \t]*:[ \t]*\"" + PEM_BEGIN + rb"(?P<secret>" + PEM_BODY
                     + rb")", after=1 << 20),
            _keyword(rb"\"privateKeyData\"[ \t]*:[ \t]*\"",
                     rb"\"privateKeyData\"[ \t]*:[ \t]*\"(?P<secret>[A-Za-z0-9+/=]{64,})\"",
                     after=1 << 16),
        ),
        priority=45,
    ),
    _token("gcp-api-key", rb"AIza[0-9A-Za-z_\-]{35}", rb"AIza[0-9A-Za-z_\-]{35}"),
    Detector(
        "azure-storage-key",
        (Rule(rb"[A-Za-z0-9+/]{86}==",
              _rx(rb"(?<![A-Za-z0-9+/])(?<!sha512-)(?P<secret>[A-Za-z0-9+/]{86}==)"
                  rb"(?![A-Za-z0-9+/=])"), before=16, after=16, anchor=0),),
        validator=_random_bytes_ok,
        priority=40,
    ),
    Detector(
        "azure-connection-string",
        (
            _keyword(rb"(?:Account|SharedAccess)Key=",
                     rb"(?i:(?:Account|SharedAccess)Key)=(?P<secret>[A-Za-z0-9+/]{16,}={0,2})",
                     after=256),
            _keyword(rb"sig=[A-Za-z0-9%+/]{20}",
                     rb"[?&;](?i:sig)=(?P<secret>[A-Za-z0-9%+/=]{20,})", before=8, anchor=-1),
        ),
        validator=token_ok,
        priority=55,
    ),
    Detector(
        "github-token",
        (Rule(rb"(?:gh[pousr]_[" + _B62 + rb"]{36}|github_pat_[" + _B62 + rb"_]{22})",
              _rx(_NOT_TOKEN_BEFORE + rb"(?P<secret>gh[pousr]_[A-Za-z0-9]{36,251}"
                  rb"|github_pat_[A-Za-z0-9_]{22,251})" + _NOT_TOKEN_AFTER),
              before=16, after=256, anchor=0),),
        validator=token_ok,
    ),
    _token("gitlab-token",
           rb"(?:gl(?:pat|dt|rt|rtr|ptt|ft|imt|agent|cbt|soat|oas|ffct)-|GR1348941)"
           rb"[A-Za-z0-9_\-]{20}",
           rb"(?:gl(?:pat|dt|rt|rtr|ptt|ft|imt|agent|cbt|soat|oas|ffct)-|GR1348941)"
           rb"[A-Za-z0-9_\-.]{20,300}"),
    _token("slack-token", rb"(?:xox[abeoprs]|xapp)-[A-Za-z0-9]{1,12}-",
           rb"(?:xox[abeoprs]|xapp)-[A-Za-z0-9\-]{10,250}"),
    Detector(
        "slack-webhook",
        (Rule(rb"hooks\.slack\.com/(?:services|workflows|triggers)/",
              _rx(rb"hooks\.slack\.com/(?:services|workflows|triggers)/"
                  rb"(?P<secret>[A-Za-z0-9_/\-]{20,})"), before=8, after=256, anchor=0),),
        validator=value_ok,
        priority=55,
    ),
    _token("stripe-key", rb"(?:[sr]k_(?:live|test)|whsec)_[A-Za-z0-9]{10}",
           rb"(?:[sr]k_(?:live|test)|whsec)_[A-Za-z0-9]{10,247}"),
    Detector(
        "twilio-key",
        (
            Rule(rb"SK[0-9a-fA-F]{32}",
                 _rx(_NOT_TOKEN_BEFORE + rb"(?P<secret>SK[0-9a-fA-F]{32})" + _NOT_TOKEN_AFTER),
                 before=16, after=16, anchor=0),
            Rule(rb"AC[0-9a-f]{32}[:/ ,;\"'=]",
                 _rx(rb"AC[0-9a-f]{32}[:/ ,;\"'=]{1,5}(?P<secret>[0-9a-f]{32})(?![0-9A-Za-z])"),
                 before=4, after=64, anchor=0),
            _keyword(rb"twilio[A-Za-z_\-]{0,20}(?:auth|token|secret)",
                     rb"(?i:twilio[A-Za-z_\-]{0,20}(?:auth|token|secret)[A-Za-z_]{0,8})"
                     rb"[\"']?[ \t]*[:=][ \t]*[\"']?(?P<secret>[0-9a-f]{32})(?![0-9A-Za-z])"),
        ),
        validator=token_ok,
    ),
    _token("sendgrid-key", rb"SG\.[A-Za-z0-9_\-]{22}\.",
           rb"SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}"),
    _token("mailgun-key", rb"key-[0-9a-f]{32}", rb"key-[0-9a-f]{32}"),
    Detector(
        "datadog-key",
        (_keyword(rb"d(?:d|atadog)[_\-]?(?:api|app(?:lication)?)[_\-]?key",
                  rb"(?i:d(?:d|atadog)[_\-]?(?:api|app(?:lication)?)[_\-]?key)[\"']?[ \t]*[:=]"
                  rb"[ \t]*[\"']?(?P<secret>(?i:[0-9a-f]{40}|[0-9a-f]{32}))(?![0-9A-Za-z])"),),
        validator=token_ok,
        priority=55,
    ),
    _token("npm-token", rb"npm_[A-Za-z0-9]{36}", rb"npm_[A-Za-z0-9]{36}"),
    _token("pypi-token", rb"pypi-AgE[A-Za-z0-9_\-]{16}", rb"pypi-AgE[A-Za-z0-9_\-]{50,1000}",
           after=2048),
    _token("dockerhub-token", rb"dckr_(?:pat|oat)_[A-Za-z0-9_\-]{20}",
           rb"dckr_(?:pat|oat)_[A-Za-z0-9_\-]{20,100}"),
    Detector(
        "openai-key",
        (Rule(rb"sk-(?:(?:proj|svcacct|admin|None)-[A-Za-z0-9_\-]{20}|[A-Za-z0-9]{32})",
              _rx(_NOT_TOKEN_BEFORE + rb"(?P<secret>sk-(?:(?:proj|svcacct|admin|None)-"
                  rb"[A-Za-z0-9_\-]{20,300}|[A-Za-z0-9]{32,200}))" + _NOT_TOKEN_AFTER),
              before=16, after=512, anchor=0),),
        validator=token_ok,
    ),
    _token("anthropic-key", rb"sk-ant-[a-z]{3,5}[0-9]{2}-[A-Za-z0-9_\-]{20}",
           rb"sk-ant-[a-z]{3,5}[0-9]{2}-[A-Za-z0-9_\-]{20,300}"),
    Detector(
        "jwt",
        (Rule(rb"eyJ[A-Za-z0-9_\-]{5,}\.eyJ",
              _rx(rb"(?<![A-Za-z0-9_\-])(?P<secret>eyJ[A-Za-z0-9_\-]+\.eyJ[A-Za-z0-9_\-]+"
                  rb"\.[A-Za-z0-9_\-]*)"), before=0, after=1 << 16, anchor=0),),
        validator=_jwt_ok,
        priority=35,
    ),
    Detector(
        "private-key",
        (Rule(PEM_BEGIN, _rx(PEM_BEGIN + rb"(?P<secret>" + PEM_BODY + rb")"),
              before=0, after=1 << 20, anchor=0),
         Rule(_PEM_B64_PREFIX + rb"[A-Za-z0-9+/]{20}",
              _rx(rb"(?<![A-Za-z0-9+/])(?P<secret>" + _PEM_B64_PREFIX + rb"[A-Za-z0-9+/]+=*)"),
              before=0, after=1 << 20, anchor=0)),
        validator=_private_key_ok,
        priority=40,
    ),
    Detector(
        "uri-credentials",
        (
            Rule(rb"://[^\s/?#@:]*:[^\s/?#@]*@",
                 _rx(rb"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]{0,30}://[^\s/?#@:]*:"
                     rb"(?P<secret>[^\s/?#\"'`]*)@"), before=40, after=512),
            _keyword(rb"[?&;](?:password|pwd)=",
                     rb"[?&;](?i:password|pwd)=(?P<secret>[^&;\s\"'`]+)", before=2),
            Rule(rb"jdbc:oracle:[a-z]+:[^\s/@:]*/[^\s@]*@",
                 _rx(rb"jdbc:oracle:[a-z]+:[^\s/@:]*/(?P<secret>[^\s@]*)@"), before=0, after=512,
                 anchor=0),
        ),
        validator=value_ok,
        priority=30,
    ),
    Detector(
        "authorization-header",
        (_keyword(rb"authorization\\?[\"']?[ \t]*[:=]",
                  rb"(?i:authorization)\\?[\"']?[ \t]*[:=][ \t]*\\?[\"']?"
                  rb"(?:(?i:bearer|basic|token|digest|negotiate|ntlm|apikey|key|sso-key|ssws"
                  rb"|splunk|aws4-hmac-sha256|gitlab-token)[ \t]+)?"
                  rb"(?P<secret>[^\s\"'`\\]+)"),
         # A bare "Bearer <token>" (a header value in a Kubernetes env list, a log line).
         Rule(rb"(?:Bearer|Basic)[ \t]+[A-Za-z0-9\-._~+/]{16}",
              _rx(rb"(?<![A-Za-z])(?:Bearer|Basic)[ \t]+(?P<secret>[A-Za-z0-9\-._~+/]{16,}=*)"),
              before=0, after=4096, anchor=0)),
        validator=value_ok,
        priority=25,
    ),
    Detector(
        "cookie-header",
        (
            _keyword(rb"set-cookie\\?[\"']?[ \t]*:",
                     rb"(?i:set-cookie)\\?[\"']?[ \t]*:[ \t]*\\?[\"']?(?P<secret>[^\r\n\"'\\;]+)"),
            _keyword(rb"cookie\\?[\"']?[ \t]*:",
                     rb"(?<![A-Za-z\-])(?i:cookie)\\?[\"']?[ \t]*:[ \t]*\\?[\"']?"
                     rb"(?P<secret>[^\r\n\"'\\]+)"),
        ),
        validator=value_ok,
        priority=22,
    ),
    Detector(
        "generic-assignment",
        (
            assignment_rule(_KEY_WORDS),
            _keyword(rb"(?:password|identified[ \t]+by)[ \t]+'",
                     rb"(?i:(?P<key>password)|identified[ \t]+by)[ \t]+'"
                     rb"(?P<secret>(?:[^'\r\n]|'')*)'"),
            _keyword(rb"-(?:password|passwd|token|secret|api-key)[ \t]+[^\s\-]",
                     rb"(?<![A-Za-z0-9_\-])--?(?P<key>(?:[A-Za-z0-9]+-){0,4}"
                     rb"(?i:password|passwd|token|secret|api-key))[ \t]+"
                     rb"(?:\"(?P<secret>[^\"\r\n]*)\"|'(?P<secret2>[^'\r\n]*)'"
                     rb"|(?P<secret3>[^\s\"'`\-][^\s\"'`]*))", anchor=None),
            _ENV_PAIR,
        ),
        validator=assignment_ok,
        priority=10,
        keyed=True,
    ),
    # Personal data, off unless named in MaskOptions.pii.
    Detector(
        "email",
        (Rule(rb"[A-Za-z0-9._%+\-]@[A-Za-z0-9\-]+\.[A-Za-z]{2}",
              _rx(rb"(?<![A-Za-z0-9._%+\-])(?P<secret>[A-Za-z0-9._%+\-]{1,64}@"
                  rb"(?:[A-Za-z0-9\-]{1,63}\.){1,8}[A-Za-z]{2,24})(?![A-Za-z0-9\-])"),
              before=72, after=300),),
        priority=5,
        pii=True,
    ),
    Detector(
        "payment-card",
        (Rule(rb"[0-9](?:[ \-]?[0-9]){12}",
              _rx(rb"(?<![0-9])(?<![0-9][ \-])(?P<secret>[0-9](?:[ \-]?[0-9]){12,18})"
                  rb"(?![0-9])(?![ \-][0-9])"), before=24, after=24),),
        validator=_card_ok,
        priority=5,
        pii=True,
    ),
    Detector(
        "iban",
        (Rule(rb"[A-Z]{2}[0-9]{2} ?[A-Z0-9]{4}",
              _rx(rb"(?<![A-Za-z0-9])(?P<secret>[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}"
                  rb"(?: ?[A-Z0-9]{1,3})?)(?![A-Za-z0-9])"), before=4, after=48),),
        validator=_iban_ok,
        priority=5,
        pii=True,
    ),
)

BY_NAME: dict[str, Detector] = {d.name: d for d in BUILTIN}
SECRET_DETECTORS: tuple[str, ...] = tuple(d.name for d in BUILTIN if not d.pii)
