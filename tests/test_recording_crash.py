"""Live recordings under crashes, full disks and size limits, and tailing a live file."""

from __future__ import annotations

import errno
import gzip
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from pathwarden.recording import (
    GroupSync,
    RecordingError,
    RecordingFormatError,
    RecordingFull,
    RecordingWriter,
    finish_orphan,
    follow,
    read_recording,
    verify_recording,
)
from pathwarden.recording import writer as writer_mod

CHILD = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from pathwarden.recording import RecordingWriter

    path, size, mode = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    w = RecordingWriter.create(path, "crash", "gw")
    payload = "x" * size
    if mode == "tear":
        # the next write stops halfway through its line and the process dies
        real_write = os.write
        def tearing_write(fd, data):
            if fd == w.fileno() and b'"seq":5,' in bytes(data):
                real_write(fd, bytes(data[: len(data) // 2]))
                os.kill(os.getpid(), 9)
            return real_write(fd, data)
        os.write = tearing_write
    i = 0
    while True:
        event = w.append("operation", {"op_seq": i, "text": payload})
        os.write(1, b"%d\\n" % event.seq)  # only after append returned
        i += 1
""")


def run_child(path: Path, size: int, mode: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(size), mode],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def completed_seqs(out: bytes) -> list[int]:
    lines = out.split(b"\n")
    return [int(x) for x in lines[:-1]]  # a last line without newline was cut by the kill


@pytest.mark.parametrize(("size", "kill_after"), [(80, 2000), (20_000, 200), (2_000_000, 5)])
def test_sigkill_loses_no_event_whose_append_returned(
    tmp_path: Path, size: int, kill_after: int,
) -> None:
    path = tmp_path / "crash.pwrec"
    child = run_child(path, size, "loop")
    assert child.stdout is not None
    seen = b""
    while seen.count(b"\n") < kill_after:
        chunk = os.read(child.stdout.fileno(), 65536)
        assert chunk, child.stderr.read().decode() if child.stderr else "child exited"
        seen += chunk
    child.send_signal(signal.SIGKILL)
    rest, _ = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    done = completed_seqs(seen + rest)
    assert done == list(range(len(done)))

    rec = read_recording(path)
    seqs = [e.seq for e in rec.events]
    assert seqs == list(range(len(seqs)))
    assert seqs[: len(done)] == done  # every returned append is in the file
    assert len(seqs) <= len(done) + 1  # at most the append in progress, complete
    assert [p.kind for p in rec.problems] in ([], ["torn_tail"])
    assert [p.kind for p in verify_recording(path, live=True)] in ([], ["torn_tail"])


def test_a_write_torn_by_a_crash_leaves_a_torn_tail_and_everything_before_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "torn.pwrec"
    child = run_child(path, 5000, "tear")
    out, _ = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert completed_seqs(out) == [0, 1, 2, 3, 4]
    rec = read_recording(path)
    assert [e.seq for e in rec.events] == [0, 1, 2, 3, 4]
    assert [(p.kind, p.seq) for p in rec.problems] == [("torn_tail", 5)]
    assert [(p.kind, p.seq) for p in verify_recording(path)] == [
        ("torn_tail", 5), ("truncated", 5),
    ]


def test_a_recording_orphaned_by_a_crash_is_finished_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "live" / "torn.pwrec"
    child = run_child(path, 300, "tear")
    child.communicate(timeout=30)
    before = path.read_bytes()
    done = finish_orphan(path, tmp_path / "done" / "torn.pwrec.gz")
    assert not path.exists()
    assert gzip.decompress(done.path.read_bytes()) == before  # nothing cut or added
    rec = read_recording(done.path)
    assert (done.events, done.final_hash, done.bytes) == (5, rec.events[-1].h, len(before))
    assert [(p.kind, p.seq) for p in verify_recording(done.path, final_hash=done.final_hash)] == [
        ("torn_tail", 5), ("truncated", 5),
    ]
    bad = tmp_path / "bad.pwrec"
    bad.write_bytes(b'{"created":1.0,"gatew')
    with pytest.raises(RecordingFormatError, match="cannot be finished"):
        finish_orphan(bad, tmp_path / "bad.pwrec.gz")
    assert bad.exists()


def test_zero_bytes_left_by_a_power_loss_read_as_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "s.pwrec"
    w = RecordingWriter.create(path, "s", "gw")
    w.append("notice", {"n": 1})
    w.close()
    with open(path, "ab") as f:
        f.write(b"\0" * 4096)
    rec = read_recording(path)
    assert len(rec.events) == 1
    assert [(p.kind, p.seq) for p in rec.problems] == [("torn_tail", 1)]
    assert "zero bytes" in rec.problems[0].message


# -- limits ----------------------------------------------------------------------------------


def test_past_the_soft_limit_non_essential_events_are_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "s.pwrec"
    w = RecordingWriter.create(path, "s", "gw", soft_limit=2000, hard_limit=6000)
    sample = {"op_seq": 0, "sample": {"columns": ["a"], "rows": [["x" * 100]]}}
    while w.bytes_written < 2000 - 300:
        assert w.append("result", sample, essential=False) is not None
    assert w.append("result", sample, essential=False) is None  # would pass 2000 bytes
    assert w.dropped_events == 1
    truncated = read_recording(path).events[-1]
    assert truncated.type == "truncated"
    assert truncated.data["dropped_events"] == 1 and truncated.data["final"] is False
    assert truncated.data["dropped_bytes"] > 0 and truncated.data["reason"] == "soft_limit"

    assert w.append("operation", {"op_seq": 1, "text": "select 1"}) is not None  # essential
    assert w.append("result", {"op_seq": 1, "rows": 1}, essential=False) is None  # small, too
    assert w.append("term_output", {"data": "x" * 50}, essential=False) is None
    seq_before = w.seq
    w.append("session_end", {"reason": "client_closed"})
    w.close()

    rec = read_recording(path)
    final, end = rec.events[-2], rec.events[-1]
    assert (final.seq, end.seq) == (seq_before, seq_before + 1)
    assert final.type == "truncated" and final.data["final"] is True
    assert final.data["dropped_events"] == 3 == w.dropped_events
    assert final.data["dropped_bytes"] == w.dropped_bytes
    assert end.type == "session_end" and rec.complete
    assert verify_recording(path) == []


def test_drop_counts_are_written_at_close_when_there_is_no_session_end(tmp_path: Path) -> None:
    path = tmp_path / "s.pwrec"
    w = RecordingWriter.create(path, "s", "gw", soft_limit=200, hard_limit=4000)
    for _ in range(4):
        w.append("term_output", {"data": "y" * 200}, essential=False)
    w.close()
    events = read_recording(path).events
    assert [(e.type, e.data["dropped_events"], e.data["final"]) for e in events] == [
        ("truncated", 1, False), ("truncated", 4, True),
    ]


def test_past_the_hard_limit_append_raises_recording_full_and_the_end_still_fits(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.pwrec"
    w = RecordingWriter.create(path, "s", "gw", soft_limit=1000, hard_limit=3000)
    with pytest.raises(RecordingFull, match="hard limit of 3000 bytes"):  # noqa: PT012
        while True:
            w.append("operation", {"text": "select " + "z" * 100})
    assert w.bytes_written <= 3000
    size, seq = path.stat().st_size, w.seq
    assert size == w.bytes_written
    with pytest.raises(RecordingFull):
        w.append("decision", {"verdict": "allow"})
    assert (path.stat().st_size, w.seq) == (size, seq)
    w.append("session_end", {"reason": "recording_full"})
    w.close()
    assert path.stat().st_size > 3000
    assert verify_recording(path) == []


# -- disk errors -----------------------------------------------------------------------------


def fail_writes(monkeypatch: pytest.MonkeyPatch, fd: int, *, partial: bool, code: int) -> None:
    real_write = os.write

    def write(target: int, data: Any) -> int:
        if target != fd:
            return real_write(target, data)
        if partial:
            real_write(target, bytes(data[: len(data) // 3]))
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize("partial", [True, False])
def test_enospc_leaves_no_torn_line_and_the_writer_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, partial: bool,
) -> None:
    path = tmp_path / "s.pwrec"
    w = RecordingWriter.create(path, "s", "gw")
    w.append("operation", {"text": "select 1"})
    size, head, seq = path.stat().st_size, w.head, w.seq

    with monkeypatch.context() as m:
        fail_writes(m, w.fileno(), partial=partial, code=errno.ENOSPC)
        with pytest.raises(RecordingError) as info:
            w.append("operation", {"text": "select 'secret-value'"})
    assert info.value.errno == errno.ENOSPC
    assert "No space left" in str(info.value) and "secret-value" not in str(info.value)
    assert (path.stat().st_size, w.bytes_written, w.head, w.seq) == (size, size, head, seq)
    assert not w.broken

    w.append("operation", {"text": "select 2"})
    w.append("session_end", {"reason": "client_closed"})
    w.close()
    assert verify_recording(path) == []
    assert [e.data.get("text") for e in read_recording(path).events] == [
        "select 1", "select 2", None,
    ]


def test_a_failed_rollback_breaks_the_writer_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "s.pwrec"
    w = RecordingWriter.create(path, "s", "gw")
    w.append("notice", {"n": 1})
    with monkeypatch.context() as m:
        fail_writes(m, w.fileno(), partial=True, code=errno.EIO)

        def no_truncate(fd: int, length: int) -> None:
            raise OSError(errno.EIO, "I/O error")
        m.setattr(os, "ftruncate", no_truncate)
        with pytest.raises(RecordingError):
            w.append("notice", {"n": 2})
    assert w.broken
    with pytest.raises(RecordingError, match="broken"):
        w.append("notice", {"n": 3})
    w.close()
    rec = read_recording(path)  # the torn line is there, and nothing was chained onto it
    assert [e.seq for e in rec.events] == [0]
    assert [p.kind for p in rec.problems] == ["torn_tail"]


def test_short_writes_are_continued_until_the_line_is_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "s.pwrec"
    w = RecordingWriter.create(path, "s", "gw")
    real_write = os.write
    calls = []

    def dribble(fd: int, data: Any) -> int:
        if fd != w.fileno():
            return real_write(fd, data)
        calls.append(len(data))
        return real_write(fd, bytes(data[:7]))

    monkeypatch.setattr(os, "write", dribble)
    w.append("operation", {"text": "select 1"})
    monkeypatch.undo()
    w.close()
    assert len(calls) > 10
    assert verify_recording(path, live=True) == []


def test_a_write_returning_zero_is_treated_as_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "s.pwrec"
    w = RecordingWriter.create(path, "s", "gw")
    real_write = os.write
    monkeypatch.setattr(
        os, "write", lambda fd, data: 0 if fd == w.fileno() else real_write(fd, data),
    )
    with pytest.raises(RecordingError) as info:
        w.append("notice", {})
    assert info.value.errno == errno.ENOSPC


def test_append_many_writes_all_events_or_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "s.pwrec"
    w = RecordingWriter.create(path, "s", "gw", soft_limit=100_000, hard_limit=100_000)
    pair = [("operation", {"op_seq": 1, "text": "select 1"}, True),
            ("decision", {"op_seq": 1, "verdict": "allow"}, True)]
    size = w.bytes_written
    with monkeypatch.context() as m:
        fail_writes(m, w.fileno(), partial=True, code=errno.ENOSPC)
        with pytest.raises(RecordingError):
            w.append_many(pair)
    assert (path.stat().st_size, w.seq) == (size, 0)
    with pytest.raises(RecordingFull):
        w.append_many([*pair, ("result", {"sample": "x" * 200_000}, True)])
    assert (path.stat().st_size, w.seq) == (size, 0)

    events = w.append_many(pair)
    assert [e.seq for e in events if e] == [0, 1]
    w.close()
    assert [e.type for e in read_recording(path).events] == ["operation", "decision"]


def test_no_event_is_accepted_after_session_end_or_close(tmp_path: Path) -> None:
    w = RecordingWriter.create(tmp_path / "s.pwrec", "s", "gw")
    w.append("session_end", {"reason": "client_closed"})
    with pytest.raises(RecordingError, match="already has its session_end"):
        w.append("notice", {})
    w.close()
    w.close()
    with pytest.raises(RecordingError, match="closed"):
        w.append("notice", {})


# -- fsync policy ----------------------------------------------------------------------------


def test_group_sync_fsyncs_only_dirty_writers_and_reports_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    writers = [RecordingWriter.create(tmp_path / f"{i}.pwrec", f"s{i}", "gw") for i in range(3)]
    group = GroupSync()
    for w in writers:
        group.add(w)
    assert group.sync_all().synced == 3  # headers are unsynced bytes too
    assert group.sync_all().synced == 0

    writers[0].append("notice", {})
    writers[2].append("notice", {})
    assert {id(w) for w in group.dirty()} == {id(writers[0]), id(writers[2])}
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if fd == writers[2].fileno():
            raise OSError(errno.EIO, "I/O error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    report = group.sync_all()
    assert report.synced == 1
    assert [(w, e.errno) for w, e in report.failed] == [(writers[2], errno.EIO)]
    assert writers[2].dirty and not writers[0].dirty
    monkeypatch.undo()

    writers[1].close()
    group.sync_all()
    assert len(group) == 2
    for w in writers:
        w.close()


def test_fsync_after_close_is_a_no_op(tmp_path: Path) -> None:
    w = RecordingWriter.create(tmp_path / "s.pwrec", "s", "gw")
    w.close()
    w.fsync()


# -- following a live file -------------------------------------------------------------------


def test_follow_yields_events_as_they_are_appended_and_stops_at_session_end(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.pwrec"
    w = RecordingWriter.create(path, "s", "gw")
    script: list[tuple[str, dict[str, Any]]] = [
        ("operation", {"op_seq": 1}), ("decision", {"op_seq": 1}),
        ("session_end", {"reason": "client_closed"}),
    ]

    def sleep(_: float) -> None:  # each poll, the gateway appends one more event
        if script:
            type, data = script.pop(0)
            w.append(type, data)

    w.append("session_start", {"identity": "ci-test"})
    seen = [e.type for e in follow(path, poll=0, sleep=sleep)]
    assert seen == ["session_start", "operation", "decision", "session_end"]
    w.close()


def test_follow_waits_for_a_line_to_complete(tmp_path: Path) -> None:
    path = tmp_path / "s.pwrec"
    w = RecordingWriter.create(path, "s", "gw")
    w.close()
    from pathwarden.recording.format import build_event, header_hash
    _, line = build_event(0, 1.0, "session_end", {}, header_hash(path.read_bytes()))
    parts = [line[:10], line[10:]]

    def sleep(_: float) -> None:
        with open(path, "ab") as f:
            f.write(parts.pop(0))

    assert [e.seq for e in follow(path, poll=0, sleep=sleep)] == [0]


def test_follow_stops_when_the_live_file_is_finished_or_idle(tmp_path: Path) -> None:
    path = tmp_path / "s.pwrec"
    w = RecordingWriter.create(path, "s", "gw")
    w.append("notice", {})
    calls = []

    def sleep(_: float) -> None:
        calls.append(1)
        if not w.closed:
            w.finish(tmp_path / "s.pwrec.gz")

    assert [e.type for e in follow(path, poll=0, sleep=sleep)] == ["notice"]
    assert [e.type for e in follow(tmp_path / "s.pwrec.gz")] == ["notice"]

    idle = tmp_path / "idle.pwrec"
    RecordingWriter.create(idle, "idle", "gw").close()
    start = time.monotonic()
    assert list(follow(idle, poll=0.01, idle_timeout=0.1)) == []
    assert time.monotonic() - start < 5


def test_writer_module_does_not_import_asyncio_or_sockets() -> None:
    source = Path(writer_mod.__file__).parent
    for py in source.glob("*.py"):
        text = py.read_text()
        assert "import asyncio" not in text and "import socket" not in text, py.name
