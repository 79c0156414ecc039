"""The stream masker: any split of a stream masks like the whole, with a bounded hold-back."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pathwarden.masking import MaskOptions, engine_for
from test_masking_detectors import B64, Fake, pii_samples, samples

ENGINE = engine_for(MaskOptions(pii=frozenset({"email", "payment-card", "iban"})))
PLANTED = [text for rows in {**samples(), **pii_samples()}.values() for text, _ in rows]
WHOLE = ("\n".join(f"step {i}: {t}" for i, t in enumerate(PLANTED)) + "\nend\n").encode()


def run(chunks: list[bytes], max_hold: int = 16384) -> tuple[bytes, dict[str, int]]:
    s = ENGINE.stream(max_hold)
    out = [s.feed(c) for c in chunks]
    out.append(s.flush())
    return b"".join(out), dict(s.counts)


def test_every_single_split_point_masks_like_the_whole() -> None:
    expected = ENGINE.mask(WHOLE)
    for i in range(len(WHOLE) + 1):
        assert run([WHOLE[:i], WHOLE[i:]]) == (expected.data, dict(expected.counts)), i


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(0, len(WHOLE)), max_size=30))
def test_any_split_masks_like_the_whole(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(WHOLE)]
    chunks = [WHOLE[a:b] for a, b in itertools.pairwise(points)]
    assert run(chunks)[0] == ENGINE.mask(WHOLE).data


def test_whole_lines_are_released_at_once() -> None:
    s = ENGINE.stream()
    assert s.feed(b"line one\nline tw") == b"line one\n"
    assert s.feed(b"o password=hunter2x9\n") == b"line two password=[MASKED:generic-assignment]\n"
    assert s.flush() == b"" and s.counts == {"generic-assignment": 1}


def test_a_line_without_newline_is_held_at_most_max_hold() -> None:
    s = ENGINE.stream(1024)
    data = (b"word " * 40_000)
    out = []
    for i in range(0, len(data), 333):
        out.append(s.feed(data[i:i + 333]))
        assert s.held <= 1024
    out.append(s.flush())
    assert b"".join(out) == data


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), step=st.integers(1, 700))
def test_secrets_on_an_over_long_line_are_masked_like_the_whole(seed: int, step: int) -> None:
    f = Fake(seed)
    parts = []
    for i in range(60):
        parts.append(f.s(f.r.randrange(5, 60)))
        if i % 4 == 0:
            parts.append("ghp_" + f.s(36) if i % 8 else f"password={f.s(12)}")
    data = " ".join(parts).encode()
    chunks = [data[i:i + step] for i in range(0, len(data), step)]
    assert run(chunks, max_hold=512)[0] == ENGINE.mask(data).data


def test_a_private_key_longer_than_max_hold_is_never_released() -> None:
    f = Fake(21)
    pem = f.pem(lines=120)  # about 8 KB
    data = ("before\n" + pem + "after\n").encode()
    body = [ln.encode() for ln in pem.splitlines() if "-----" not in ln]
    s = ENGINE.stream(1024)
    out = []
    for i in range(0, len(data), 100):
        out.append(s.feed(data[i:i + 100]))
        assert s.held <= 1024
    out.append(s.flush())
    masked = b"".join(out)
    assert not any(ln in masked for ln in body)
    assert masked == ENGINE.mask(data).data
    assert masked.endswith(b"-----END RSA PRIVATE KEY-----\nafter\n")


def test_a_private_key_without_end_is_held_then_masked() -> None:
    f = Fake(22)
    head = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(f.s(64, B64) for _ in range(60)) + "\n"
    s = ENGINE.stream(1024)
    out = [s.feed(head[i:i + 64].encode()) for i in range(0, len(head), 64)]
    out.append(s.flush())
    masked = b"".join(out)
    assert masked == b"-----BEGIN PRIVATE KEY-----[MASKED:private-key]"
    assert s.counts == {"private-key": 1}


def test_a_private_key_split_at_every_point_masks_like_the_whole() -> None:
    data = ("x\n" + Fake(23).pem(lines=3) + "y\n").encode()
    expected = ENGINE.mask(data).data
    for i in range(len(data) + 1):
        assert run([data[:i], data[i:]], max_hold=256)[0] == expected, i


_POD = (
    "spec:\n  containers:\n  - name: app\n    env:\n"
    "    - name: LOG_LEVEL\n      value: info\n"
    f'    - name: DB_PASSWORD\n      value: "{Fake(31).s(18)}"\n'
    "    - name: API_TOKEN\n"
    f"      value: {Fake(32).s(32)}\n"
    "    - name: DB_PASSWORD\n      valueFrom:\n        secretKeyRef: {name: db, key: pw}\n"
    "    - name: PORT\n      value: '8080'\n"
).encode()


def test_a_kubernetes_env_pair_split_at_every_point_masks_like_the_whole() -> None:
    expected = ENGINE.mask(_POD)
    assert expected.counts == {"generic-assignment": 2}
    for i in range(len(_POD) + 1):
        assert run([_POD[:i], _POD[i:]]) == (expected.data, dict(expected.counts)), i
    assert run([_POD[i:i + 7] for i in range(0, len(_POD), 7)])[0] == expected.data


def test_a_sensitive_name_line_is_held_until_its_value_line_is_complete() -> None:
    s = ENGINE.stream()
    assert s.feed(b"env:\n- name: DB_PASSWORD\n") == b"env:\n"
    assert s.feed(b"  value: hunter2") == b""
    assert s.feed(b"x9\n- name: PORT\n") == (
        b"- name: DB_PASSWORD\n  value: [MASKED:generic-assignment]\n- name: PORT\n")
    assert s.feed(b"- name: CLIENT_SECRET\n") == b""
    assert s.flush() == b"- name: CLIENT_SECRET\n"
