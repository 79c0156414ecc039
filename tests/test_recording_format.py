"""The recording format: every event type survives write, compress and read; lines are canonical."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pathwarden.recording import (
    EVENT_TYPES,
    FORMAT_VERSION,
    FormatSpec,
    RecordingFormatError,
    RecordingWriter,
    canonical,
    decode_line,
    encode_event,
    event_hash,
    header_hash,
    iter_events,
    read_header,
    read_recording,
    verify_recording,
)
from pathwarden.recording.format import Event, Header, build_event, format_for, register_format

SAMPLE_EVENTS: list[tuple[str, dict[str, Any], bool]] = [
    ("session_start", {
        "identity": "ci-test", "token_ref": "tok_4f2a", "claims": {"stage": "test", "ttl": 900},
        "client": "10.0.0.7:51234", "connection": "app-db", "protocol": "postgres",
    }, True),
    ("operation", {
        "op_seq": 1, "kind": "query", "text": "select id, name from users where id = $1",
        "params": ["42"], "action": "forward",
    }, True),
    ("decision", {
        "op_seq": 1, "verdict": "allow", "policy": "test-readonly", "rule": 2,
        "reason": "select on public.users allowed",
    }, True),
    ("approval", {
        "op_seq": 2, "request_id": "req_9", "state": "approved", "by": "alice",
        "comment": "hotfix window",
    }, True),
    ("result", {
        "op_seq": 1, "tag": "SELECT 2", "rows": 2, "duration_ms": 1.25, "error": None,
        "masked": [{"column": "settings", "detector": "uri-credentials", "count": 1}],
        "sample": {"columns": ["id", "name"], "rows": [["1", "ann"], ["2", None]]},
    }, False),
    ("notice", {"severity": "WARNING", "message": "there is no transaction in progress"}, True),
    ("error", {"op_seq": 3, "code": "42P01", "message": 'relation "nope" does not exist'}, True),
    ("term_output", {"data": "total 0\r\n", "encoding": "utf-8"}, False),
    ("term_input", {"data": "ls -l\r"}, True),
    ("resize", {"cols": 120, "rows": 40}, True),
    ("exec", {"command": "pg_dump --schema-only app"}, True),
    ("channel", {"channel": 0, "request": "exec", "command": "ls -l", "pty": None,
                 "op_seq": 4}, True),
    ("signal", {"channel": 0, "signal": "INT"}, True),
    ("file", {"channel": 1, "op": "write_file", "path": "/srv/a.tgz", "paths": ["/srv/a.tgz"],
              "bytes": 512, "ok": True, "verdict": "allow"}, True),
    ("exit", {"channel": 0, "status": 0, "signal": None, "core_dumped": False,
              "message": ""}, True),
    ("session_end", {"reason": "client_closed", "bytes_from_client": 812,
                     "bytes_to_client": 20417}, True),
]


def clock_from(start: float = 1_714_731_000.0, step: float = 0.000_37) -> Any:
    state = {"t": start}

    def clock() -> float:
        state["t"] += step
        return state["t"]
    return clock


def write_all_types(path: Path) -> RecordingWriter:
    w = RecordingWriter.create(path, "b0c9b72dea5b3558", "gw-eu-1", clock=clock_from())
    for type, data, essential in SAMPLE_EVENTS:
        w.append(type, data, essential=essential)
    return w


def test_every_event_type_round_trips_through_write_compress_and_read(tmp_path: Path) -> None:
    w = write_all_types(tmp_path / "live" / "s.pwrec")
    live = read_recording(tmp_path / "live" / "s.pwrec")
    finished = w.finish(tmp_path / "done" / "s.pwrec.gz")
    packed = read_recording(finished.path)

    for rec in (live, packed):
        assert rec.problems == []
        assert rec.complete
        assert rec.header is not None and rec.header.session == "b0c9b72dea5b3558"
        assert rec.header.gateway == "gw-eu-1" and rec.header.version == FORMAT_VERSION
        assert [(e.type, e.data) for e in rec.events] == [(t, d) for t, d, _ in SAMPLE_EVENTS]
        assert [e.seq for e in rec.events] == list(range(len(SAMPLE_EVENTS)))
    assert packed.events == live.events
    assert {e.type for e in packed.events} == set(EVENT_TYPES) - {"truncated"}
    assert finished.final_hash == packed.events[-1].h
    assert finished.events == len(SAMPLE_EVENTS)
    assert finished.compressed_bytes == finished.path.stat().st_size < finished.bytes
    assert verify_recording(finished.path, final_hash=finished.final_hash) == []


def test_finish_removes_the_live_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    w = write_all_types(tmp_path / "live" / "s.pwrec")
    finished = w.finish(tmp_path / "done" / "s.pwrec.gz")
    assert not (tmp_path / "live" / "s.pwrec").exists()
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["s.pwrec.gz"]
    assert finished.path.stat().st_mode & 0o777 == 0o600
    assert gzip.decompress(finished.path.read_bytes()).count(b"\n") == len(SAMPLE_EVENTS) + 1


def test_live_file_is_private_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "s.pwrec"
    RecordingWriter.create(path, "s", "gw").close()
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o700
    from pathwarden.recording import RecordingError
    with pytest.raises(RecordingError, match="cannot create") as info:
        RecordingWriter.create(path, "s", "gw")
    assert info.value.errno == 17  # EEXIST


def test_lines_are_canonical_json_and_the_hash_is_over_prev_and_the_content(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.pwrec"
    w = RecordingWriter.create(path, "s1", "gw", clock=lambda: 1_714_731_000.1234567)
    event = w.append("decision", {"verdict": "deny", "op_seq": 1, "policy": None})
    w.close()
    header_line, line, end = path.read_bytes().split(b"\n")
    assert end == b""
    assert header_line == b'{"created":1714731000.123457,"gateway":"gw","pwrec":1,"session":"s1"}'
    prev = hashlib.sha256(header_line).hexdigest()
    body = b'{"data":{"op_seq":1,"policy":null,"verdict":"deny"},"seq":0,"t":1714731000.123457,' \
           b'"type":"decision"}'
    h = hashlib.sha256(prev.encode() + body).hexdigest()
    assert line == (b'{"data":{"op_seq":1,"policy":null,"verdict":"deny"},"h":"' + h.encode()
                    + b'","prev":"' + prev.encode() + b'","seq":0,"t":1714731000.123457,'
                    b'"type":"decision"}')
    assert event is not None and event.h == h and event.prev == prev == header_hash(header_line)
    assert line == canonical(json.loads(line))
    assert event_hash(prev, 0, 1714731000.123457, "decision", event.data) == h


def test_unicode_and_line_separators_stay_inside_one_line(tmp_path: Path) -> None:
    text = "caf\u00e9 \u2028 \u2029 \x85 \r \n \t \x00 \U0001f600 \ud800 \u202e"
    path = tmp_path / "s.pwrec"
    w = RecordingWriter.create(path, "s\u00e9ssion", "gw-\u00fc")
    w.append("operation", {"text": text, "k\u00e9y": ["\udfff"]})
    w.close()
    raw = path.read_bytes()
    assert raw.isascii()
    assert raw.count(b"\n") == 2
    rec = read_recording(path)
    assert rec.problems == []
    assert rec.header is not None and rec.header.session == "s\u00e9ssion"
    assert rec.events[0].data == {"text": text, "k\u00e9y": ["\udfff"]}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1,2]", "not a JSON object"),
        (b'{"seq":0}', "event keys wrong"),
        (b'{"data":{},"h":"' + b"a" * 64 + b'","prev":"' + b"b" * 64
         + b'","seq":-1,"t":1.0,"type":"x"}', "seq"),
        (b'{"data":{},"h":"' + b"a" * 64 + b'","prev":"' + b"b" * 64
         + b'","seq":0,"t":1,"type":"x"}', "time"),
        (b'{"data":{},"h":"' + b"a" * 64 + b'","prev":"' + b"b" * 64
         + b'","seq":0,"t":NaN,"type":"x"}', "NaN"),
        (b'{"data":[],"h":"' + b"a" * 64 + b'","prev":"' + b"b" * 64
         + b'","seq":0,"t":1.0,"type":"x"}', "data is not an object"),
        (b'{"data":{},"h":"xyz","prev":"' + b"b" * 64
         + b'","seq":0,"t":1.0,"type":"x"}', "h is not a sha256"),
        (b'{"data":{},"h":"' + b"a" * 64 + b'","prev":"' + b"b" * 64
         + b'","seq":0,"t":1.0,"type":"Bad Type"}', "lower-case identifier"),
        (b'{"data":{"a":1,"a":2},"h":"' + b"a" * 64 + b'","prev":"' + b"b" * 64
         + b'","seq":0,"t":1.0,"type":"x"}', "duplicate key"),
        (b'{"data":{}, "h":"' + b"a" * 64 + b'","prev":"' + b"b" * 64
         + b'","seq":0,"t":1.0,"type":"x"}', "canonical"),
        (b'{"data":{"b":1,"a":2},"h":"' + b"a" * 64 + b'","prev":"' + b"b" * 64
         + b'","seq":0,"t":1.0,"type":"x"}', "canonical"),
        ('{"data":{"a":"\u00e9"},"h":"'.encode() + b"a" * 64 + b'","prev":"' + b"b" * 64
         + b'","seq":0,"t":1.0,"type":"x"}', "outside ASCII"),
    ],
)
def test_decode_line_names_what_is_wrong(line: bytes, message: str) -> None:
    with pytest.raises(RecordingFormatError, match=message):
        decode_line(line)


def test_decode_line_inverts_encode_event() -> None:
    line = encode_event(7, 1.5, "result", {"rows": 3, "sample": {"rows": [[None, "x"]]}}, "c" * 64)
    event = decode_line(line)
    assert event == Event(7, 1.5, "result", {"rows": 3, "sample": {"rows": [[None, "x"]]}},
                          "c" * 64, event.h)
    assert event.h == event_hash("c" * 64, 7, 1.5, "result", event.data)


def test_data_that_is_not_json_is_refused_without_writing(tmp_path: Path) -> None:
    w = RecordingWriter.create(tmp_path / "s.pwrec", "s", "gw")
    size = w.bytes_written
    with pytest.raises(RecordingFormatError, match="not recordable"):
        w.append("result", {"sample": b"bytes"})
    with pytest.raises(RecordingFormatError, match="not recordable"):
        w.append("result", {"duration_ms": float("nan")})
    assert (w.seq, w.bytes_written, (tmp_path / "s.pwrec").stat().st_size) == (0, size, size)
    assert w.append("notice", {"ok": True}) is not None
    w.close()


def test_unknown_format_version_is_refused_with_advice() -> None:
    with pytest.raises(RecordingFormatError, match=r"version 99 is not known.*upgrade"):
        read_header(b'{"created":1.0,"gateway":"gw","pwrec":99,"session":"s"}')
    with pytest.raises(RecordingFormatError, match="no pwrec header"):
        read_header(b'{"created":1.0}')


def test_every_registered_version_stays_readable(tmp_path: Path) -> None:
    # A future version registers its own reader; version 1 files still read with theirs.
    def parse_v2(line: bytes, obj: dict[str, Any]) -> Header:
        return Header(2, obj["session"], float(obj["created"]), obj["gateway"], line,
                      {"zone": obj["zone"]})

    v1 = format_for(1)
    register_format(FormatSpec(2, parse_v2, v1.decode_event, v1.event_hash))
    try:
        header = b'{"created":1.0,"gateway":"gw","pwrec":2,"session":"s","zone":"eu"}'
        event, line = build_event(0, 2.0, "notice", {}, header_hash(header))
        (tmp_path / "v2.pwrec").write_bytes(header + b"\n" + line)
        rec = read_recording(tmp_path / "v2.pwrec")
        assert rec.header is not None and rec.header.version == 2
        assert rec.header.extra == {"zone": "eu"}
        assert rec.events == [event]

        write_all_types(tmp_path / "v1.pwrec").close()
        old = read_recording(tmp_path / "v1.pwrec")
        assert old.header is not None and old.header.version == 1 and not old.problems
    finally:
        from pathwarden.recording import format as fmt
        fmt._FORMATS.pop(2)


def test_iter_events_streams_and_reports_problems(tmp_path: Path) -> None:
    w = write_all_types(tmp_path / "s.pwrec")
    w.close()
    with open(tmp_path / "s.pwrec", "ab") as f:
        f.write(b'{"data":{},"h":"ab')
    problems: list[Any] = []
    events = list(iter_events(tmp_path / "s.pwrec", problems))
    assert len(events) == len(SAMPLE_EVENTS)
    assert [(p.kind, p.seq) for p in problems] == [("torn_tail", len(SAMPLE_EVENTS))]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
event_types = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(st.tuples(event_types, st.dictionaries(st.text(max_size=10), json_values,
                                                              max_size=5)), max_size=12),
       session=st.text(min_size=1, max_size=20))
def test_any_json_events_round_trip_and_verify(
    tmp_path: Path, events: list[tuple[str, dict[str, Any]]], session: str,
) -> None:
    path = tmp_path / "h.pwrec"
    path.unlink(missing_ok=True)
    w = RecordingWriter.create(path, session, "gw", clock=clock_from())
    written = [w.append(t, d) for t, d in events]
    w.close()
    rec = read_recording(path)
    assert rec.problems == []
    assert rec.events == written
    problems = verify_recording(path, live=True)
    assert problems == []
    gz = tmp_path / "h.pwrec.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert read_recording(gz).events == written
