"""Tampering with a recording, or with the chain of sessions, is detected and named."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pathwarden.recording import (
    GENESIS_LINK,
    ChainEntry,
    Checkpoint,
    RecordingFormatError,
    RecordingWriter,
    SignedHead,
    canonical,
    chain_link,
    make_checkpoint,
    read_recording,
    sign_head,
    verify_chain,
    verify_events,
    verify_head,
    verify_recording,
)
from pathwarden.recording.format import event_hash


def kinds(problems: list) -> list[tuple[str, int | None]]:
    return [(p.kind, p.seq) for p in problems]


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    """A finished-in-place live recording: session_start, 3 operations, session_end (seq 0-7)."""
    path = tmp_path / "s.pwrec"
    ticks = iter(range(1000))
    w = RecordingWriter.create(path, "sess-1", "gw-1", clock=lambda: 1_700_000_000.0 + next(ticks))
    w.append("session_start", {"identity": "ci-test", "protocol": "postgres"})
    for op in range(3):
        w.append("operation", {"op_seq": op, "text": f"select {op}", "action": "forward"})
        w.append("decision", {"op_seq": op, "verdict": "allow", "policy": "p", "rule": 1})
    w.append("session_end", {"reason": "client_closed"})
    w.close()
    return path


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def test_an_intact_recording_has_no_problems(recording: Path) -> None:
    assert verify_recording(recording) == []


def test_one_byte_edited_in_an_events_data_is_named_edited_at_that_seq(recording: Path) -> None:
    lines = lines_of(recording)
    lines[4] = lines[4].replace(b"select 1", b"select 9")  # header is line 0, so seq 3
    write_lines(recording, lines)
    assert kinds(verify_recording(recording)) == [("edited", 3)]


def test_an_edit_that_breaks_the_json_is_named_edited_at_that_seq(recording: Path) -> None:
    lines = lines_of(recording)
    lines[3] = lines[3].replace(b'"verdict":"allow"', b'"verdict":"allow" ')
    write_lines(recording, lines)
    problems = verify_recording(recording)
    assert kinds(problems) == [("edited", 2)]
    assert "not a valid event" in problems[0].message


def test_an_edited_event_with_a_recomputed_hash_breaks_the_next_link(recording: Path) -> None:
    lines = lines_of(recording)
    obj = json.loads(lines[3])
    obj["data"]["verdict"] = "deny"
    obj["h"] = event_hash(obj["prev"], obj["seq"], obj["t"], obj["type"], obj["data"])
    lines[3] = canonical(obj)
    write_lines(recording, lines)
    assert kinds(verify_recording(recording)) == [("removed", 3)]


def test_a_removed_event_is_named_removed_at_its_seq(recording: Path) -> None:
    lines = lines_of(recording)
    del lines[5]  # seq 4
    write_lines(recording, lines)
    problems = verify_recording(recording)
    assert kinds(problems) == [("removed", 4)]
    assert "event 4 is missing" in problems[0].message


def test_two_swapped_events_are_named_reordered(recording: Path) -> None:
    lines = lines_of(recording)
    lines[3], lines[4] = lines[4], lines[3]  # seq 2 and 3
    write_lines(recording, lines)
    problems = verify_recording(recording)
    assert kinds(problems) == [("reordered", 2)]
    assert "event 2 comes after event 3" in problems[0].message


def test_a_duplicated_event_is_named_reordered(recording: Path) -> None:
    lines = lines_of(recording)
    lines.insert(3, lines[2])
    write_lines(recording, lines)
    assert kinds(verify_recording(recording)) == [("reordered", 1)]


def test_a_cut_tail_is_named_truncated_unless_the_session_is_live(recording: Path) -> None:
    lines = lines_of(recording)
    write_lines(recording, lines[:-2])  # seq 6 and 7 gone, cut at a line boundary
    assert kinds(verify_recording(recording)) == [("truncated", 6)]
    assert verify_recording(recording, live=True) == []


def test_a_tail_cut_inside_a_line_is_a_torn_tail(recording: Path) -> None:
    data = recording.read_bytes()
    recording.write_bytes(data[: len(data) - 20])
    rec = read_recording(recording)
    assert [e.seq for e in rec.events] == list(range(7))
    assert kinds(verify_recording(recording, live=True)) == [("torn_tail", 7)]
    assert kinds(verify_recording(recording)) == [("torn_tail", 7), ("truncated", 7)]


def test_a_cut_inside_a_gzip_member_keeps_what_precedes_it(tmp_path: Path) -> None:
    # enough events that the deflate stream flushes blocks before the cut
    path = tmp_path / "big.pwrec"
    w = RecordingWriter.create(path, "big", "gw")
    for i in range(3000):
        w.append("operation", {"op_seq": i, "text": f"select {i} from t{i * 7919 % 1000}"})
    w.append("session_end", {"reason": "client_closed"})
    finished = w.finish(tmp_path / "big.pwrec.gz")
    data = finished.path.read_bytes()
    finished.path.write_bytes(data[: len(data) // 2])

    rec = read_recording(finished.path)
    assert 0 < len(rec.events) < 3000
    assert [e.seq for e in rec.events] == list(range(len(rec.events)))
    problems = verify_recording(finished.path)
    assert kinds(problems) == [("truncated", len(rec.events))]
    assert "gzip stream ends" in problems[0].message


def test_corrupt_bytes_inside_a_gzip_member_are_named(tmp_path: Path) -> None:
    path = tmp_path / "s.pwrec"
    w = RecordingWriter.create(path, "s", "gw")
    for i in range(2000):
        w.append("operation", {"op_seq": i, "text": f"select {i}"})
    finished = w.finish(tmp_path / "s.pwrec.gz")
    data = bytearray(finished.path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0x5A
    finished.path.write_bytes(bytes(data))
    rec = read_recording(finished.path)
    assert [e.seq for e in rec.events] == list(range(len(rec.events)))
    assert rec.problems and rec.problems[0].kind in ("truncated", "edited")


def test_a_changed_header_is_named_bad_header(recording: Path) -> None:
    lines = lines_of(recording)
    lines[0] = lines[0].replace(b'"session":"sess-1"', b'"session":"sess-2"')
    write_lines(recording, lines)
    assert kinds(verify_recording(recording)) == [("bad_header", None)]


@pytest.mark.parametrize(
    "header",
    [b"", b'{"created":1.0,"gatew', b"garbage", b'{"created":1.0,"pwrec":1}'],
)
def test_an_unreadable_header_is_named_bad_header(tmp_path: Path, header: bytes) -> None:
    path = tmp_path / "s.pwrec"
    path.write_bytes(header + (b"\n" if header.endswith(b"}") or header == b"garbage" else b""))
    rec = read_recording(path)
    assert rec.header is None and rec.events == []
    assert kinds(verify_recording(path)) == [("bad_header", None)]


def test_final_hash_from_the_chain_detects_a_re_ended_or_extended_recording(
    recording: Path,
) -> None:
    rec = read_recording(recording)
    final = rec.events[-1].h
    assert verify_recording(recording, final_hash=final) == []
    # an attacker drops the last operation and rebuilds the tail with valid hashes
    events = rec.events[:5]
    assert kinds(verify_events(rec.header, events, live=True, final_hash=final)) == [
        ("removed", 5),
    ]
    assert kinds(verify_events(rec.header, rec.events, final_hash=rec.events[4].h)) == [
        ("edited", 5),
    ]


# -- the chain of sessions and signed heads -------------------------------------------------


def build_chain(n: int) -> list[ChainEntry]:
    entries, link = [], GENESIS_LINK
    for pos in range(1, n + 1):
        final = f"{pos:064x}"
        link = chain_link(link, f"sess-{pos}", final)
        entries.append(ChainEntry(pos, f"sess-{pos}", final, link))
    return entries


KEY = Ed25519PrivateKey.generate()
PUB = KEY.public_key()


def test_an_intact_chain_with_a_signed_head_verifies() -> None:
    entries = build_chain(5)
    head = sign_head(KEY, "gw-1", 5, entries[-1].link, 1_700_000_000.5)
    assert verify_head(PUB, head)
    assert verify_chain(entries, PUB, head=head) == []
    assert chain_link(GENESIS_LINK, "a", "b") != chain_link(GENESIS_LINK, "a", "c")


def test_an_altered_final_hash_or_link_is_named_at_its_position() -> None:
    entries = build_chain(5)
    entries[2] = ChainEntry(3, "sess-3", "f" * 64, entries[2].link)
    assert kinds(verify_chain(entries)) == [("chain_broken", 3)]
    entries = build_chain(5)
    entries[1] = ChainEntry(2, "sess-2", entries[1].final_hash, "e" * 64)
    assert kinds(verify_chain(entries)) == [("chain_broken", 2)]


def test_a_removed_session_breaks_the_chain() -> None:
    entries = build_chain(5)
    del entries[2]
    assert kinds(verify_chain(entries)) == [("chain_broken", 3)]


def test_a_head_that_does_not_match_the_chain_is_detected() -> None:
    entries = build_chain(5)
    head = sign_head(KEY, "gw-1", 4, "a" * 64, 1.0)
    assert kinds(verify_chain(entries, PUB, head=head)) == [("chain_broken", 4)]
    head = sign_head(KEY, "gw-1", 6, entries[-1].link, 1.0)
    assert kinds(verify_chain(entries, PUB, head=head)) == [("chain_broken", 6)]


@pytest.mark.parametrize("field", ["link", "position", "signed_at", "gateway", "signature"])
def test_an_altered_signed_head_fails_its_signature(field: str) -> None:
    entries = build_chain(3)
    head = sign_head(KEY, "gw-1", 3, entries[-1].link, 1_700_000_000.0)
    obj = json.loads(head.to_json())
    obj[field] = {
        "link": entries[1].link, "position": 2, "signed_at": 1_700_000_001.0,
        "gateway": "gw-2", "signature": sign_head(KEY, "gw-1", 3, "0" * 64, 1.0).signature,
    }[field]
    forged = SignedHead.from_json(json.dumps(obj))
    assert not verify_head(PUB, forged)
    assert ("bad_signature", forged.position) in kinds(verify_chain(entries, PUB, head=forged))


def test_a_head_signed_by_another_key_is_refused() -> None:
    entries = build_chain(2)
    head = sign_head(Ed25519PrivateKey.generate(), "gw-1", 2, entries[-1].link, 1.0)
    assert kinds(verify_chain(entries, PUB, head=head)) == [("bad_signature", 2)]
    assert kinds(verify_chain(entries, None, head=head)) == [("bad_signature", 2)]


def test_signed_head_round_trips_through_json() -> None:
    head = sign_head(KEY, "gw-1", 9, "a" * 64, 1_700_000_000.25)
    text = head.to_json()
    assert json.loads(text)["purpose"] == "head"
    assert SignedHead.from_json(text) == head
    with pytest.raises(RecordingFormatError, match="not a signed checkpoint"):
        Checkpoint.from_json(text)
    with pytest.raises(RecordingFormatError, match="malformed"):
        SignedHead.from_json('{"purpose":"head"}')
    garbled = SignedHead.from_json(text.replace(head.signature, "!!not base64!!"))
    assert not verify_head(PUB, garbled)


def test_verification_starts_from_a_checkpoint_after_pruning() -> None:
    entries = build_chain(10)
    cut = entries[5]  # sessions 1-6 pruned
    checkpoint = make_checkpoint(KEY, "gw-1", cut.position, cut.link, 1_700_000_100.0)
    head = sign_head(KEY, "gw-1", 10, entries[-1].link, 1_700_000_200.0)
    kept = entries[6:]

    assert verify_chain(kept, PUB, checkpoint=checkpoint, head=head) == []
    # without the checkpoint, the kept sessions do not start the chain
    assert ("chain_broken", 1) in kinds(verify_chain(kept, PUB, head=head))
    # a kept session altered after the cut is still found
    bad = list(kept)
    bad[1] = ChainEntry(8, "sess-8", "9" * 64, bad[1].link)
    assert kinds(verify_chain(bad, PUB, checkpoint=checkpoint, head=head)) == [
        ("chain_broken", 8),
    ]
    # a forged checkpoint (moved link) fails its signature
    forged = Checkpoint("gw-1", cut.position, entries[6].link, checkpoint.signed_at,
                        checkpoint.signature)
    assert ("bad_signature", 6) in kinds(verify_chain(kept, PUB, checkpoint=forged, head=head))
    # a head cannot stand in for a checkpoint: the signed purpose differs
    as_head = SignedHead(**{k: v for k, v in checkpoint.to_dict().items() if k != "purpose"})
    assert not verify_head(PUB, as_head)


def test_the_chain_link_is_defined_by_the_documented_formula() -> None:
    import hashlib
    expected = hashlib.sha256(
        b'pwchain1:{"final":"' + b"b" * 64 + b'","prev":"' + b"0" * 64 + b'","session":"s"}'
    ).hexdigest()
    assert chain_link(GENESIS_LINK, "s", "b" * 64) == expected


def test_gzip_concatenated_members_read_as_one_recording(recording: Path, tmp_path: Path) -> None:
    data = recording.read_bytes()
    half = data.index(b"\n", len(data) // 2) + 1
    gz = tmp_path / "two.pwrec.gz"
    gz.write_bytes(gzip.compress(data[:half]) + gzip.compress(data[half:]) + b"\0" * 8)
    assert verify_recording(gz) == []
    assert len(read_recording(gz).events) == 8
