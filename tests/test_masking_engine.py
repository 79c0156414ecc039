"""The engine: replacement styles, exemptions, literals, column values, failure, candidates."""

from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pathwarden.masking import MaskEngine, MaskOptions, MaskResult, engine_for
from pathwarden.masking import detectors as detectors_module
from pathwarden.masking import engine as engine_module
from test_masking_detectors import Fake, pii_samples, samples

ENGINE = engine_for(MaskOptions())
ALL = engine_for(MaskOptions(pii=frozenset({"email", "payment-card", "iban"})))
PLANTED = [text for rows in {**samples(), **pii_samples()}.values() for text, _ in rows]
GH = "ghp_" + Fake(5).s(36)


def test_engines_are_compiled_once_per_options_value() -> None:
    assert engine_for(MaskOptions()) is ENGINE
    assert engine_for(MaskOptions(style="fixed")) is not ENGINE


def test_nothing_to_mask_returns_the_same_object() -> None:
    data = b"just a log line with a sha " + b"ab" * 20 + b"\n"
    result = ENGINE.mask(data)
    assert result.data is data and result.counts == {} and not result.changed


def test_mask_result_reports_counts_per_detector() -> None:
    result = ENGINE.mask(f"a {GH} b {GH} password=hunter2x9".encode())
    assert result.changed
    assert dict(result.counts) == {"github-token": 2, "generic-assignment": 1}


def test_label_style_names_the_detector() -> None:
    assert ENGINE.mask_text(f"t={GH}")[0] == "t=[MASKED:github-token]"


def test_keep_last_4_shows_the_tail_of_long_secrets_only() -> None:
    engine = engine_for(MaskOptions(style="keep-last-4"))
    assert engine.mask_text(f"t={GH}")[0] == f"t=[MASKED:github-token:...{GH[-4:]}]"
    assert engine.mask_text("password=hunter2x9")[0] == "password=[MASKED:generic-assignment]"


def test_keep_last_4_never_shows_part_of_a_private_key() -> None:
    engine = engine_for(MaskOptions(style="keep-last-4"))
    assert "[MASKED:private-key]" in engine.mask_text(Fake(1).pem())[0]


def test_fixed_style_uses_the_configured_text() -> None:
    engine = engine_for(MaskOptions(style="fixed", fixed_text="<hidden>"))
    assert engine.mask_text(f"t={GH} password=hunter2x9") == (
        "t=<hidden> password=<hidden>", {"github-token": 1, "generic-assignment": 1})


def test_exempt_values_are_left_alone() -> None:
    engine = engine_for(MaskOptions(exempt_values=frozenset({GH})))
    assert engine.mask_text(f"t={GH}") == (f"t={GH}", {})


def test_literals_are_masked_wherever_they_appear() -> None:
    engine = engine_for(MaskOptions(literals=frozenset({"plain-words-pw", "ab"})))
    text = "connect with plain-words-pwX and (plain-words-pw) ab"
    assert engine.mask_text(text) == (
        "connect with [MASKED:literal]X and ([MASKED:literal]) ab", {"literal": 2})


def test_a_literal_inside_a_detected_secret_merges_into_one_marker() -> None:
    engine = engine_for(MaskOptions(literals=frozenset({"hunter2x9"})))
    assert engine.mask_text("password=hunter2x9!") == (
        "password=[MASKED:literal]", {"literal": 1})


def test_overlapping_spans_merge_under_the_most_specific_name() -> None:
    jwt = Fake(2).jwt()
    assert ENGINE.mask_text(f"Authorization: Bearer {jwt}") == (
        "Authorization: Bearer [MASKED:jwt]", {"jwt": 1})


def test_detector_selection() -> None:
    only = engine_for(MaskOptions(detectors=frozenset({"github-token", "jwt"}),
                                  disabled=frozenset({"jwt"})))
    assert only.detector_names == ("github-token",)
    assert only.mask_text("password=hunter2x9")[1] == {}
    assert engine_for(MaskOptions(enabled=False)).mask_text(f"t={GH}") == (f"t={GH}", {})
    with pytest.raises(ValueError, match="unknown detector"):
        engine_for(MaskOptions(detectors=frozenset({"no-such"})))


@pytest.mark.parametrize("name", [
    "password", "PASSWORD", "db_password", "DB_PASSWORD", "dbPassword", "PGPASSWORD", "passwd",
    "pwd", "MYSQL_PWD", "passphrase", "secret", "client_secret", "clientSecret", "api_key",
    "apiKey", "APIKey", "x-api-key", "apikey", "access_key", "secret_key", "private_key",
    "token", "access_token", "refreshToken", "auth_token", "id_token", "credentials", "auth",
    "authorization", "cookie", "session_key", "password_hash", "spring.datasource.password",
])
def test_sensitive_key_names(name: str) -> None:
    assert ENGINE.is_sensitive_key(name)


@pytest.mark.parametrize("name", [
    "token_count", "tokens_used", "password_changed_at", "passwordChangedAt", "secret_santa",
    "auth_method", "private_key_id", "next_page_token", "nextPageToken", "secretKeyRef",
    "username", "key", "id", "token_type", "max_tokens", "OLDPWD", "",
])
def test_names_that_only_start_with_a_sensitive_word_are_not_sensitive(name: str) -> None:
    assert not ENGINE.is_sensitive_key(name)


def test_configured_sensitive_and_exempt_keys() -> None:
    engine = engine_for(MaskOptions(sensitive_keys=frozenset({"pin", "db_pass"}),
                                    exempt_keys=frozenset({"csrf_token"})))
    assert engine.is_sensitive_key("card_pin") and engine.is_sensitive_key("DB_PASS")
    assert not engine.is_sensitive_key("csrf_token") and not engine.is_sensitive_key("pinned")
    assert engine.mask_text("DB_PASS=abc123") == ("DB_PASS=[MASKED:generic-assignment]",
                                                  {"generic-assignment": 1})


def test_mask_value_replaces_the_whole_value_of_a_sensitive_column() -> None:
    result = ENGINE.mask_value(b"hunter 2 plain words", "password")
    assert result == MaskResult(b"[MASKED:column]", {"column": 1})
    assert ENGINE.mask_value(b"password", "db_password").data == b"[MASKED:column]"


@pytest.mark.parametrize("value", [b"", b"****", b"${DB_PASSWORD}", b"[MASKED:column]",
                                   b"<redacted>"])
def test_mask_value_keeps_placeholders_in_sensitive_columns(value: bytes) -> None:
    result = ENGINE.mask_value(value, "password")
    assert result.data is value and not result.changed


def test_mask_value_of_other_columns_masks_like_mask() -> None:
    value = f"deployed with {GH}".encode()
    assert ENGINE.mask_value(value, "notes") == ENGINE.mask(value)
    plain = b"hello"
    assert ENGINE.mask_value(plain, "token_count").data is plain
    assert ENGINE.mask_value(plain, None).data is plain


def test_a_sensitive_json_key_in_free_text_masks_its_value() -> None:
    assert ENGINE.mask_text('{"user": "ci", "passphrase": "correct horse"}')[0] == (
        '{"user": "ci", "passphrase": "[MASKED:generic-assignment]"}')


def test_failure_masks_the_whole_value_and_logs_only_the_exception_type(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def boom(segment: bytes) -> bool:
        raise RuntimeError("leaky " + segment.decode())

    monkeypatch.setattr(detectors_module, "jwt_header_ok", boom)
    jwt = Fake(8).jwt()
    with caplog.at_level(logging.ERROR):
        result = ENGINE.mask(f"token {jwt}".encode())
        text, counts = ENGINE.mask_text(f"token {jwt}")
        value = ENGINE.mask_value(f"x {jwt}".encode(), "notes")
    assert result == MaskResult(b"[MASKED:error]", {"error": 1}) == value
    assert (text, dict(counts)) == ("[MASKED:error]", {"error": 1})
    assert "RuntimeError" in caplog.text
    assert "leaky" not in caplog.text and jwt[:20] not in caplog.text


def test_invalid_utf8_is_masked_byte_for_byte() -> None:
    data = b"\xff\xfe log \x80 password=hunter2x9 \xc3"
    assert ENGINE.mask(data).data == b"\xff\xfe log \x80 password=[MASKED:generic-assignment] \xc3"
    text = data.decode("utf-8", "surrogateescape")
    masked, counts = ENGINE.mask_text(text)
    assert masked.encode("utf-8", "surrogateescape") == ENGINE.mask(data).data and counts


def test_masking_is_idempotent_on_planted_secrets() -> None:
    for text in PLANTED:
        once = ALL.mask(text.encode()).data
        assert ALL.mask(once).data == once, text


def test_large_input() -> None:
    f = Fake(11)
    lines = [f"{i:08d} | {f.s(30)} | ok" for i in range(100_000)]
    for i in range(0, len(lines), 1000):
        lines[i] += f" t={GH}"
    data = "\n".join(lines).encode()
    result = ENGINE.mask(data)
    assert result.counts == {"github-token": 100} and GH.encode() not in result.data


def test_candidates_are_unconfirmed_hit_spans() -> None:
    data = b"x password=changeme y"
    assert ENGINE.candidates(data) == [(2, 11)]
    assert not ENGINE.mask(data).changed
    assert ENGINE.candidates(b"nothing here") == []


_junk = st.binary(max_size=40) | st.sampled_from(
    [b"", b"a", b"_", b"-", b"=", b":", b"\n", b"\x00\x00\x00\x10", b"password", b"sk-", b"ey",
     b"-----BEGIN ", b"@", b"://x:", b"\"", b"0000", b"abc123"])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(a=_junk, b=_junk, x=st.sampled_from(PLANTED))
def test_candidates_cover_every_value_mask_would_change(a: bytes, b: bytes, x: str) -> None:
    xb = x.encode()
    assert ALL.mask(xb).changed
    lo, hi = len(a), len(a) + len(xb)
    assert any(s < hi and e > lo for s, e in ALL.candidates(a + xb + b))


_pieces = st.lists(st.sampled_from(
    [b"password", b"=", b": ", b"\"", b"'", b"secret", b"token", b"x9Y8z7W6q", b" ", b"\n",
     b"postgres://", b"u:", b"@h", b"ghp_", b"A" * 36, b"AKIA", b"Q7" * 8, b"Bearer ",
     b"Authorization", b"-----BEGIN PRIVATE KEY-----", b"MIIE" * 16, b"-----END PRIVATE KEY-----",
     b"eyJhbGciOiJIUzI1NiJ9", b".", b"eyJzdWIiOjF9", b"4111111111111111", b"@example.com",
     b"\xff", b"abc"]), max_size=12).map(b"".join)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(a=_junk, b=_junk, x=_pieces)
def test_candidates_superset_on_generated_values(a: bytes, b: bytes, x: bytes) -> None:
    if ALL.mask(x).changed or ALL.mask_value(x, None).changed:
        lo, hi = len(a), len(a) + len(x)
        assert any(s < hi and e > lo for s, e in ALL.candidates(a + x + b))


# ---------------------------------------------------------------- confirmation work
#
# The engine counts the bytes it hands to regular expressions and validators
# (``last_work``); the tests bound that count rather than wall-clock time.

#: Far below the fail-closed budget (engine.WORK_PER_BYTE) and far above what
#: the engine needs: a regression to per-hit rescans blows through it.
WORK_BOUND = 24


def work_ok(engine: MaskEngine, data: bytes) -> MaskResult:
    result = engine.mask(data)
    assert "error" not in result.counts
    assert engine.last_work() <= WORK_BOUND * len(data) + engine_module.WORK_BASE, (
        engine.last_work() / len(data))
    return result


ADVERSARIAL = [
    b"x" + (b"LS0tLS1CRUdJTi" + b"A" * 20) * 8000,  # base64-PEM: a lookbehind fails every hit
    (b"LS0tLS1CRUdJTi" + b"A" * 20) * 8000,  # one huge base64 run, rejected
    b"pwd=${" * 40000,
    b"token:<" * 40000,
    b"password=xxx" * 20000,
    b"x://a:@" * 40000,
    b"xeyJaaaaa.eyJ" * 20000,
    b"eyJ" + b"a" * 5 + (b".eyJ" + b"b" * 30) * 8000,
    b"Bearer " + b"A" * 300_000,
    b"-----BEGIN PRIVATE KEY-----\n" * 10000,
    b"authorization:" * 20000,
    b"cookie: ${" * 30000,
    b"&sig=aaaaaaaaaaaaaaaaaaaa" * 10000,
    b'"privateKeyData": "' * 15000,
    b'"privateKeyData": "' + b"A" * 300_000,
    b'"private_key": "-----BEGIN PRIVATE KEY-----' * 6000,
    b"--db-password x " * 20000,
    b"a@b.co" * 40000,
    b"4111 1111 1111 1" * 20000,
    b"DE89 3704 0044 " * 20000,
    b"- name: DB_PASSWORD\n  value: " * 10000,
    b"ghp_" + b"Z" * 300_000,
    (b"ghp_" + b"Z" * 36 + b"\x00" * 5) * 8000,
    b"AKIA0000000000000" * 20000,
]


@pytest.mark.parametrize("data", ADVERSARIAL, ids=[repr(d[:24]) for d in ADVERSARIAL])
def test_adversarial_input_needs_linear_confirmation_work(data: bytes) -> None:
    work_ok(ALL, data)


def test_confirmation_work_does_not_grow_faster_than_the_input() -> None:
    unit = b"LS0tLS1CRUdJTi" + b"A" * 20
    small = work_ok(ENGINE, b"x" + unit * 2000) and ENGINE.last_work()
    large = work_ok(ENGINE, b"x" + unit * 16000) and ENGINE.last_work()
    assert large <= 9 * small


_TRIGGERS = [
    b"LS0tLS1CRUdJTi", b"A" * 20, b"x", b"eyJ", b"aaaaa", b".", b"eyJhbGciOiJIUzI1NiJ9", b"pwd=",
    b"${", b"token:", b"<", b"password=", b"xxx", b"://", b"a:", b"@", b"\n", b"\\n", b" ", b"\"",
    b"'", b"=", b":", b"&", b";", b",", b"-----BEGIN PRIVATE KEY-----", b"authorization:",
    b"cookie:", b"&sig=", b"AccountKey=", b"ghp_", b"Z" * 36, b"AKIA", b"Q" * 16, b"Bearer ",
    b"--password ", b"a@b.co", b"4111 1111 1111 1", b"DE89 3704 0044", b"- name: DB_PASSWORD\n",
    b"  value: ", b"\"privateKeyData\": \"", b"\"private_key\": \"", b"sk-", b"xoxb-1-",
    b"hooks.slack.com/services/", b"identified by '", b"0" * 13, b"key-", b"AC" + b"a" * 32 + b":",
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(unit=st.lists(st.sampled_from(_TRIGGERS), min_size=1, max_size=6).map(b"".join),
       prefix=st.sampled_from([b"", b"x", b" ", b"\n", b"LS0tLS1CRUdJTi"]),
       size=st.sampled_from([5_000, 60_000]))
def test_repeated_triggers_need_linear_confirmation_work(unit: bytes, prefix: bytes,
                                                         size: int) -> None:
    work_ok(ALL, prefix + unit * max(1, size // len(unit)))


def test_past_the_work_budget_the_whole_input_is_masked_and_only_the_cause_is_logged(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    data = f"deploy with {GH} and password=hunter2x9".encode()
    assert ENGINE.mask(data).counts == {"github-token": 1, "generic-assignment": 1}
    monkeypatch.setattr(engine_module, "WORK_PER_BYTE", 0)
    monkeypatch.setattr(engine_module, "WORK_BASE", 32)
    with caplog.at_level(logging.ERROR):
        result = ENGINE.mask(data)
        stream = ENGINE.stream()
        streamed = stream.feed(data + b"\n") + stream.flush()
    assert result == MaskResult(b"[MASKED:error]", {"error": 1})
    assert streamed == b"[MASKED:error]" and stream.counts == {"error": 1}
    assert "WorkBudgetExceeded" in caplog.text
    assert GH not in caplog.text and "hunter2" not in caplog.text and "deploy" not in caplog.text
