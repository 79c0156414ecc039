"""Specification of the legacy scp parser (protocols/ssh/scp.py).

The command line, the control stream and the receiver's answers are pinned
with hand-written bytes; every event must come out the same however the
stream is cut (``end`` offsets included). Real transfers between OpenSSH's
``scp -O`` and ``scp -t`` / ``scp -f`` are captured through the relay of
test_sftp_parser.py and replayed.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pathwarden.protocols.ssh.scp import (
    MAX_LINE,
    ScpCommand,
    ScpEvent,
    ScpProtocolError,
    ScpStream,
    error_reply,
    parse_scp_command,
    parse_scp_command_line,
)
from test_sftp_parser import capture, write_relay

# -- the command line ------------------------------------------------------------


@pytest.mark.parametrize(("argv", "expected"), [
    (["scp", "-t", "up"], ScpCommand("upload", False, False, ("up",))),
    (["scp", "-r", "-p", "-d", "-t", "--", "-odd name"],
     ScpCommand("upload", True, True, ("-odd name",), target_is_dir=True)),
    (["/usr/bin/scp", "-vrpt", "dir"],
     ScpCommand("upload", True, True, ("dir",), verbose=True)),
    (["scp", "-f", "a", "b c", "/abs/d"],
     ScpCommand("download", False, False, ("a", "b c", "/abs/d"))),
    (["scp", "-r", "-p", "-d", "-f", "up/big.bin"],
     ScpCommand("download", True, True, ("up/big.bin",), target_is_dir=True)),
    (["scp", "-f", "--", "-x"], ScpCommand("download", False, False, ("-x",))),
    (["ls", "-t", "x"], None),
    (["scp", "a", "host:b"], None),  # scp as a client on the target
    (["scp", "-r", "a", "-t", "b"], None),  # -t after an operand is an operand
    (["scp", "--", "-t", "x"], None),
    (["scp"], None),
    ([], None),
])
def test_parse_scp_command(argv: list[str], expected: ScpCommand | None) -> None:
    assert parse_scp_command(argv) == expected


@pytest.mark.parametrize(("argv", "problem"), [
    (["scp", "-t", "a", "b"], "scp -t takes exactly one target, got 2"),
    (["scp", "-t"], "scp -t takes exactly one target, got 0"),
    (["scp", "-f"], "scp -f without a source path"),
    (["scp", "-t", "-f", "x"], "both -t and -f"),
    (["scp", "-S", "/bin/evil", "-t", "x"], "option\\(s\\) -S"),
    (["scp", "-o", "ProxyCommand=x", "-t", "y"], "option\\(s\\) -o"),
    (["scp", "-tx", "y"], "option\\(s\\) -x"),
    (["scp", "-oProxyCommand=x", "-t", "y"], "option\\(s\\) -o"),
    (["scp", "-rS", "prog", "-f", "y"], "option\\(s\\) -S"),
])
def test_parse_scp_command_refuses(argv: list[str], problem: str) -> None:
    with pytest.raises(ScpProtocolError, match=problem):
        parse_scp_command(argv)


@pytest.mark.parametrize(("command", "expected"), [
    ("scp -t up", ScpCommand("upload", False, False, ("up",))),
    ("scp -r -t 'my dir/x'", ScpCommand("upload", True, False, ("my dir/x",))),
    ('scp -f "a b" c\\ d', ScpCommand("download", False, False, ("a b", "c d"))),
    ("ls -la", None),
    ("echo $(id)", None),  # not scp: the gateway's exec policy decides
])
def test_parse_scp_command_line(command: str, expected: ScpCommand | None) -> None:
    assert parse_scp_command_line(command) == expected


@pytest.mark.parametrize("command", [
    "scp -t /tmp/a;rm -rf /",
    "scp -t /tmp/a && id",
    "scp -f /var/log/*.log",
    "scp -f ~/secrets",
    "scp -f $HOME/x",
    "scp -f `id`",
    "scp -t x > /etc/passwd",
    "scp -f 'a'\n'b'",
    "scp -f /etc/{passwd,shadow}",
    "scp -f /etc/shado?",
])
def test_parse_scp_command_line_refuses_shell_syntax(command: str) -> None:
    with pytest.raises(ScpProtocolError, match="shell syntax"):
        parse_scp_command_line(command)


def test_parse_scp_command_line_unbalanced_quote() -> None:
    with pytest.raises(ScpProtocolError, match="cannot be split"):
        parse_scp_command_line("scp -t 'oops")


def test_error_reply() -> None:
    assert error_reply("up/x: refused by policy") == b"\x01scp: up/x: refused by policy\n"
    assert error_reply("two\nlines", fatal=True) == b"\x02scp: two lines\n"


# -- the control stream ------------------------------------------------------------

#: A recursive upload with -p, written out by hand.
TRANSFER = (
    b"T1700000000 0 1700000001 0\n"
    b"D0755 0 site\n"
    b"C0644 5 index.html\n" b"hello" b"\0"
    b"C0600 0 empty\n" b"\0"
    b"D0700 0 my dir\n"
    b"C0640 3 a b.txt\n" b"\n\n\n" b"\0"  # data that looks like lines
    b"E\n"
    b"E\n"
    b"C0644 2 top\n" b"C\n" b"\0"
)


def _ends(data: bytes, *markers: bytes) -> list[int]:
    out, pos = [], 0
    for m in markers:
        pos = data.index(m, pos) + len(m)
        out.append(pos)
    return out


E = _ends(TRANSFER, b"0 1700000001 0\n", b"site\n", b"index.html\n", b"hello\0",
          b"empty\n", b"\0", b"my dir\n", b"a b.txt\n", b"\n\n\n\0", b"E\n", b"E\n",
          b"top\n", b"C\n\0")
EXPECTED = [
    ScpEvent("times", mtime=1700000000, atime=1700000001, end=E[0]),
    ScpEvent("dir_enter", "site", mode=0o755, end=E[1]),
    ScpEvent("file", "site/index.html", 5, mode=0o644, end=E[2]),
    ScpEvent("file_end", "site/index.html", 5, end=E[3]),
    ScpEvent("file", "site/empty", 0, mode=0o600, end=E[4]),
    ScpEvent("file_end", "site/empty", 0, end=E[5]),
    ScpEvent("dir_enter", "site/my dir", mode=0o700, end=E[6]),
    ScpEvent("file", "site/my dir/a b.txt", 3, mode=0o640, end=E[7]),
    ScpEvent("file_end", "site/my dir/a b.txt", 3, end=E[8]),
    ScpEvent("dir_leave", "site/my dir", end=E[9]),
    ScpEvent("dir_leave", "site", end=E[10]),
    ScpEvent("file", "top", 2, mode=0o644, end=E[11]),
    ScpEvent("file_end", "top", 2, end=E[12]),
]
FILES = [("site/index.html", 5), ("site/empty", 0), ("site/my dir/a b.txt", 3), ("top", 2)]


def test_transfer_events() -> None:
    s = ScpStream("upload")
    assert s.feed(TRANSFER) == EXPECTED
    assert s.files == FILES
    assert s.offset == len(TRANSFER)
    assert s.depth == 0


def test_one_byte_at_a_time() -> None:
    s = ScpStream("upload")
    out: list[ScpEvent] = []
    for i in range(len(TRANSFER)):
        out += s.feed(TRANSFER[i:i + 1])
    assert out == EXPECTED
    assert s.files == FILES


@settings(max_examples=200)
@given(cuts=st.lists(st.integers(0, len(TRANSFER)), max_size=30))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(TRANSFER)]
    s = ScpStream("download")
    out: list[ScpEvent] = []
    for a, b in itertools.pairwise(points):
        out += s.feed(bytearray(TRANSFER[a:b]))
    assert out == EXPECTED


def test_base_prefixes_paths() -> None:
    s = ScpStream("upload", base="/srv/www")
    s.feed(TRANSFER)
    assert s.files[0] == ("/srv/www/site/index.html", 5)
    assert s.files[-1] == ("/srv/www/top", 2)


def test_file_is_reported_before_its_data() -> None:
    s = ScpStream("upload")
    assert s.feed(b"C0644 10 big\n01234") == [ScpEvent("file", "big", 10, mode=0o644, end=13)]
    assert s.feed(b"56789") == []
    assert s.feed(b"\0") == [ScpEvent("file_end", "big", 10, end=24)]


def test_sender_errors() -> None:
    s = ScpStream("download")
    assert s.feed(b"\x01scp: /nope: No such file or directory\n") == [
        ScpEvent("error", message="scp: /nope: No such file or directory", ok=False, end=39)]
    # The sender failed to read a file it had announced: its data is padding.
    out = s.feed(b"C0644 3 f\nxyz\x01scp: f: Input/output error\n")
    assert out[-1] == ScpEvent("file_end", "f", 3, ok=False,
                               message="scp: f: Input/output error", end=39 + 41)
    assert s.files == []
    assert s.feed(b"\x02scp: fatal\n")[-1].fatal
    with pytest.raises(ScpProtocolError, match="after a fatal error"):
        s.feed(b"C0644 1 g\n")


@pytest.mark.parametrize(("data", "problem"), [
    (b"C644 5 a\n", "malformed C line"),
    (b"C06440 5 a\n", "malformed C line"),
    (b"C0648 5 a\n", "malformed C line"),
    (b"C0644 -5 a\n", "malformed C line"),
    (b"C0644 5a\n", "malformed C line"),
    (b"C0644 5 \n", "malformed C line"),
    (b"C0644  5 a\n", "malformed C line"),
    (b"C0644 99999999999999999999 a\n", "malformed C line"),
    (b"C0644 9223372036854775808 a\n", "file size 9223372036854775808 out of range"),
    (b"C0644 5 a/b\n", "must not be '.' or '..' or contain '/'"),
    (b"C0644 5 ../x\n", "must not be"),
    (b"C0644 5 ..\n", "must not be"),
    (b"D0755 0 ..\n", "must not be"),
    (b"D0755 0 .\n", "must not be"),
    (b"C0644 5 a\0b\n", "contain '/' or NUL"),
    (b"X0644 5 a\n", "expected a C, D, E or T control line"),
    (b"No match.\n", "expected a C, D, E or T control line"),
    (b"\n", "empty line"),
    (b"E\n", "E without D"),
    (b"D0755 0 d\nEE\n", "malformed end-of-directory"),
    (b"T1 0 2\n", "malformed times line"),
    (b"T1 1000000 2 0\n", "malformed times line"),
    (b"T-1 0 2 0\n", "malformed times line"),
    (b"C0644 1 a\nx\x05", "sent byte 0x05 after the data of 'a'"),
    (b"C0644 5 " + b"n" * MAX_LINE + b"\n", f"line over {MAX_LINE} bytes"),
])
def test_malformed_streams(data: bytes, problem: str) -> None:
    s = ScpStream("upload")
    with pytest.raises(ScpProtocolError, match=problem) as exc:
        s.feed(data)
    assert exc.value.message.startswith("scp upload: the client ")
    with pytest.raises(ScpProtocolError, match=problem):
        s.feed(b"C0644 1 ok\n")  # stays broken


def test_over_long_line_fails_before_its_newline() -> None:
    s = ScpStream("download")
    s.feed(b"C0644 5 " + b"n" * (MAX_LINE - 8))
    with pytest.raises(ScpProtocolError, match="the server sent a line over"):
        s.feed(b"n")


def test_nesting_limit() -> None:
    s = ScpStream("upload")
    with pytest.raises(ScpProtocolError, match="nested directories deeper than 1024"):
        s.feed(b"D0755 0 d\n" * 1025)


def test_bad_direction() -> None:
    with pytest.raises(ValueError, match="direction"):
        ScpStream("sideways")


# -- the receiver's answers ----------------------------------------------------------


def test_answers_gate_the_file_end() -> None:
    s = ScpStream("upload", track_acks=True)
    assert s.feed_acks(b"\0") == []  # ready
    assert s.feed(b"C0644 2 a\n") == [ScpEvent("file", "a", 2, mode=0o644, end=10)]
    assert s.feed_acks(b"\0") == []
    assert s.feed(b"hi\0") == []  # complete only once the receiver says so
    assert s.files == []
    assert s.feed_acks(b"\0") == [ScpEvent("file_end", "a", 2, end=13)]
    assert s.files == [("a", 2)]


def test_a_refused_file_sends_no_data() -> None:
    s = ScpStream("upload", track_acks=True)
    s.feed_acks(b"\0")
    s.feed(b"C0644 5 secret\n")
    refusal = error_reply("secret: refused by policy")
    assert s.feed_acks(refusal) == [ScpEvent(
        "file_end", "secret", 5, ok=False, message="scp: secret: refused by policy", end=15)]
    # The sender skips the file: what follows is the next control line.
    assert [e.kind for e in s.feed(b"C0644 1 next\n")] == ["file"]
    s.feed_acks(b"\0")
    s.feed(b"x\0")
    s.feed_acks(b"\0")
    assert s.files == [("next", 1)]


def test_a_refused_directory_is_skipped() -> None:
    s = ScpStream("upload", track_acks=True)
    s.feed_acks(b"\0")
    s.feed(b"D0755 0 private\n")
    assert s.feed_acks(b"\x01scp: private: Permission denied\n") == [ScpEvent(
        "dir_leave", "private", ok=False, message="scp: private: Permission denied",
        end=16)]
    assert s.depth == 0
    assert s.feed(b"C0644 0 top\n")[0].path == "top"


def test_a_failed_write_fails_the_file() -> None:
    s = ScpStream("download", track_acks=True)
    s.feed_acks(b"\0")
    s.feed(b"C0644 1 f\n")
    s.feed_acks(b"\0")
    s.feed(b"x\0")
    assert s.feed_acks(b"\x01scp: f: No space left on device\n") == [ScpEvent(
        "file_end", "f", 1, ok=False, message="scp: f: No space left on device", end=12)]
    assert s.files == []


def test_answers_received_early_are_used_in_order() -> None:
    s = ScpStream("upload", track_acks=True)
    s.feed_acks(b"\0\0\x01scp: no\n")  # ready, yes to T, no to C
    out = s.feed(b"T1 0 1 0\nC0644 9 a\nC0644 0 b\n")
    assert [(e.kind, e.path, e.ok) for e in out] == [
        ("times", "", True), ("file", "a", True), ("file_end", "a", False), ("file", "b", True)]


def test_sending_before_the_answer_is_a_violation() -> None:
    s = ScpStream("upload", track_acks=True)
    s.feed_acks(b"\0")
    s.feed(b"C0644 5 a\n")
    with pytest.raises(ScpProtocolError, match="before the receiver answered its C line"):
        s.feed(b"hello")


def test_a_fatal_answer_ends_the_transfer() -> None:
    s = ScpStream("upload", track_acks=True)
    s.feed_acks(b"\0")
    s.feed(b"D0755 0 d\n")
    assert s.feed_acks(b"\x02scp: fatal\n")[0].fatal
    with pytest.raises(ScpProtocolError, match="after a fatal error"):
        s.feed(b"E\n")


def test_answers_need_tracking() -> None:
    with pytest.raises(ValueError, match="track_acks=True"):
        ScpStream("upload").feed_acks(b"\0")


def test_over_long_answer_line() -> None:
    s = ScpStream("upload", track_acks=True)
    with pytest.raises(ScpProtocolError, match="the server sent an error line over"):
        s.feed_acks(b"\x01" + b"m" * (MAX_LINE + 1))


# -- real OpenSSH transfers -------------------------------------------------------------

needs_scp = pytest.mark.skipif(not shutil.which("scp"), reason="OpenSSH's scp is not installed")


def replay(chunks: list[tuple[str, bytes]], direction: str, *, track_acks: bool,
           rnd: random.Random | None = None) -> tuple[ScpStream, list[ScpEvent]]:
    """Feed the sender's chunks (and, tracking, the receiver's) to an ScpStream."""
    sender = ">" if direction == "upload" else "<"
    s = ScpStream(direction, track_acks=track_acks)
    events: list[ScpEvent] = []
    for tag, chunk in chunks:
        if tag == sender:
            if rnd is None:
                events += s.feed(chunk)
            else:
                pos = 0
                while pos < len(chunk):
                    step = rnd.randrange(1, 70_000)
                    events += s.feed(chunk[pos:pos + step])
                    pos += step
        elif track_acks:
            events += s.feed_acks(chunk)
    return s, events


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    rnd = random.Random(11)
    src = tmp_path / "local" / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "five.bin").write_bytes(rnd.randbytes(5 * 1024 * 1024 + 3))
    (src / "empty").write_bytes(b"")
    (src / "sub" / "file with spaces.txt").write_bytes(b"C0644 1 x\n" * 3)
    (src / "sub" / "deeper" / "z").write_bytes(b"\0\1\2\n")
    (src / "sub" / "nodata").mkdir()
    (tmp_path / "home").mkdir()
    write_relay(tmp_path)
    return tmp_path


def _sizes(root: Path, prefix: str) -> set[tuple[str, int]]:
    return {(f"{prefix}/{p.relative_to(root)}", p.stat().st_size)
            for p in root.rglob("*") if p.is_file()}


@needs_scp
def test_real_recursive_upload(tree: Path) -> None:
    home = tree / "home"
    chunks = capture(["scp", "-O", "-r", "-p", "-S", str(tree / "relay.py"), "src",
                      "localhost:up"], home, tree / "up.log", cwd=tree / "local")
    command = (tree / "up.log.cmd").read_text()
    assert parse_scp_command_line(command) == ScpCommand("upload", True, True, ("up",))
    expected = _sizes(tree / "local" / "src", "src")
    assert _sizes(home / "up", "src") == expected  # the copy really happened
    for track_acks in (False, True):
        s, events = replay(chunks, "upload", track_acks=track_acks)
        assert set(s.files) == expected
        assert len(s.files) == 4
        kinds = [e.kind for e in events]
        assert kinds.count("dir_enter") == kinds.count("dir_leave") == 4
        assert kinds.count("times") == 8  # -p: one per file and directory
        assert {e.path for e in events if e.kind == "dir_enter"} == {
            "src", "src/sub", "src/sub/deeper", "src/sub/nodata"}
        assert all(e.ok for e in events)
        assert s.depth == 0
        assert s.offset == sum(len(c) for t, c in chunks if t == ">")
    # Cut differently, the same events.
    assert replay(chunks, "upload", track_acks=True, rnd=random.Random(3))[1] == events


@needs_scp
def test_real_download_with_a_missing_file(tree: Path) -> None:
    home = tree / "home"
    for p in (tree / "local" / "src").iterdir():
        shutil.move(str(p), home)
    (tree / "local" / "dl").mkdir()
    chunks = capture(["scp", "-O", "-r", "-S", str(tree / "relay.py"), "localhost:sub",
                      "dl"], home, tree / "down.log", cwd=tree / "local")
    assert parse_scp_command_line((tree / "down.log.cmd").read_text()) == ScpCommand(
        "download", True, False, ("sub",), target_is_dir=False)
    s, events = replay(chunks, "download", track_acks=True)
    assert set(s.files) == _sizes(home / "sub", "sub")
    assert set(s.files) == _sizes(tree / "local" / "dl" / "sub", "sub")

    big = capture(["scp", "-O", "-S", str(tree / "relay.py"), "localhost:five.bin", "dl/"],
                  home, tree / "big.log", cwd=tree / "local")
    s, events = replay(big, "download", track_acks=True, rnd=random.Random(5))
    assert s.files == [("five.bin", 5 * 1024 * 1024 + 3)]
    assert os.path.getsize(tree / "local" / "dl" / "five.bin") == 5 * 1024 * 1024 + 3

    missing = capture(["scp", "-O", "-S", str(tree / "relay.py"), "localhost:nope", "dl/"],
                      home, tree / "missing.log", cwd=tree / "local", check=False)
    s, events = replay(missing, "download", track_acks=True)
    assert events == [ScpEvent("error", message="scp: nope: No such file or directory",
                               ok=False, end=38)]
    assert s.files == []
