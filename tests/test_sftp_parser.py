"""Specification of the SFTP v3 parser (protocols/ssh/sftp.py).

Every request and reply type is pinned to bytes written out by hand from
draft-ietf-secsh-filexfer-02 and OpenSSH's PROTOCOL file; every truncation of
them must raise SftpProtocolError (never another exception). The framer must
return the same packets however the stream is cut. The tracker is specified by
scenarios (requests, replies, the FileEvents they produce), and the whole
stack by real sessions between OpenSSH's sftp / scp and sftp-server, captured
through a relay (:func:`capture`) that records both directions in order.

``capture`` and ``write_relay`` are reused by test_scp_parser.py.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pathwarden.protocols.ssh import sftp
from pathwarden.protocols.ssh.sftp import (
    MAX_PACKET,
    SSH_FX_EOF,
    SSH_FX_FAILURE,
    SSH_FX_NO_SUCH_FILE,
    SSH_FX_OK,
    SSH_FX_OP_UNSUPPORTED,
    SSH_FX_PERMISSION_DENIED,
    FileEvent,
    HandleInfo,
    Packet,
    SftpFramer,
    SftpProtocolError,
    SftpReply,
    SftpRequest,
    SftpTracker,
    decode_reply,
    decode_request,
    open_mode,
    realpath_request,
    request_action,
    status_reply,
)

# -- hand-built packets ----------------------------------------------------------


def u32(v: int) -> bytes:
    return struct.pack(">I", v)


def u64(v: int) -> bytes:
    return struct.pack(">Q", v)


def s(v: str | bytes) -> bytes:
    """An SSH string: uint32 length, then the bytes."""
    b = v.encode() if isinstance(v, str) else v
    return u32(len(b)) + b


def attrs(size: int | None = None, perms: int | None = None, *, uidgid: bool = False,
          times: bool = False, ext: tuple[tuple[str, str], ...] = ()) -> bytes:
    flags = ((size is not None) * 1 | uidgid * 2 | (perms is not None) * 4 | times * 8
             | (0x80000000 if ext else 0))
    out = u32(flags)
    if size is not None:
        out += u64(size)
    if uidgid:
        out += u32(1000) + u32(1000)
    if perms is not None:
        out += u32(perms)
    if times:
        out += u32(1700000000) + u32(1700000001)
    if ext:
        out += u32(len(ext)) + b"".join(s(a) + s(b) for a, b in ext)
    return out


def pkt(t: int, *fields: bytes, rid: int | None = None) -> bytes:
    """A whole packet: uint32 length, type, request id (unless INIT/VERSION), fields."""
    body = bytes([t]) + (u32(rid) if rid is not None else b"") + b"".join(fields)
    return u32(len(body)) + body


def one(data: bytes) -> Packet:
    packets = SftpFramer().feed(data)
    assert len(packets) == 1
    assert packets[0].raw == data
    return packets[0]


def req(data: bytes) -> SftpRequest:
    return decode_request(one(data))


def rep(data: bytes) -> SftpReply:
    return decode_reply(one(data))


H = b"\x00\x00\x00\x01"  # OpenSSH's handles are a 4-byte index
H2 = b"\x00\x00\x00\x02"
R = sftp.SftpRequest

#: (name, packet bytes, decoded request). Names are test ids.
REQUESTS: list[tuple[str, bytes, SftpRequest]] = [
    ("init", pkt(1, u32(3)), R(None, "init", 1, version=3)),
    ("open-read", pkt(3, s("/srv/a.txt"), u32(0x01), attrs(), rid=7),
     R(7, "open", 3, paths=("/srv/a.txt",), pflags=1)),
    ("open-write", pkt(3, s("out.bin"), u32(0x1A), attrs(size=0, perms=0o644), rid=8),
     R(8, "open", 3, paths=("out.bin",), pflags=0x1A, attrs_size=0, attrs_permissions=0o644)),
    ("close", pkt(4, s(H), rid=9), R(9, "close", 4, handle=H)),
    ("read", pkt(5, s(H), u64(65536), u32(32768), rid=10),
     R(10, "read", 5, handle=H, offset=65536, length=32768)),
    ("write", pkt(6, s(H), u64(1 << 33), s(b"x" * 100), rid=11),
     R(11, "write", 6, handle=H, offset=1 << 33, data_len=100)),
    ("lstat", pkt(7, s("/l"), rid=12), R(12, "lstat", 7, paths=("/l",))),
    ("fstat", pkt(8, s(H), rid=13), R(13, "fstat", 8, handle=H)),
    ("setstat", pkt(9, s("/f"), attrs(5, 0o600, uidgid=True, times=True,
                                      ext=(("a@b", "c"),)), rid=14),
     R(14, "setstat", 9, paths=("/f",), attrs_size=5, attrs_permissions=0o600)),
    ("fsetstat", pkt(10, s(H), attrs(times=True), rid=15), R(15, "fsetstat", 10, handle=H)),
    ("opendir", pkt(11, s("/d"), rid=16), R(16, "opendir", 11, paths=("/d",))),
    ("readdir", pkt(12, s(H), rid=17), R(17, "readdir", 12, handle=H)),
    ("remove", pkt(13, s("/r"), rid=18), R(18, "remove", 13, paths=("/r",))),
    ("mkdir", pkt(14, s("/m"), attrs(perms=0o755), rid=19),
     R(19, "mkdir", 14, paths=("/m",), attrs_permissions=0o755)),
    ("rmdir", pkt(15, s("/m"), rid=20), R(20, "rmdir", 15, paths=("/m",))),
    ("realpath", pkt(16, s("."), rid=21), R(21, "realpath", 16, paths=(".",))),
    ("stat", pkt(17, s("/s"), rid=22), R(22, "stat", 17, paths=("/s",))),
    ("rename", pkt(18, s("/old"), s("/new"), rid=23),
     R(23, "rename", 18, paths=("/old", "/new"))),
    ("readlink", pkt(19, s("/ln"), rid=24), R(24, "readlink", 19, paths=("/ln",))),
    # OpenSSH's order (PROTOCOL 4.1): target first, then the new link.
    ("symlink", pkt(20, s("target"), s("/ln"), rid=25),
     R(25, "symlink", 20, paths=("target", "/ln"))),
    ("posix-rename", pkt(200, s("posix-rename@openssh.com"), s("/a"), s("/b"), rid=26),
     R(26, "extended:posix-rename@openssh.com", 200, paths=("/a", "/b"))),
    ("hardlink", pkt(200, s("hardlink@openssh.com"), s("/a"), s("/b"), rid=27),
     R(27, "extended:hardlink@openssh.com", 200, paths=("/a", "/b"))),
    ("statvfs", pkt(200, s("statvfs@openssh.com"), s("/"), rid=28),
     R(28, "extended:statvfs@openssh.com", 200, paths=("/",))),
    ("fstatvfs", pkt(200, s("fstatvfs@openssh.com"), s(H), rid=29),
     R(29, "extended:fstatvfs@openssh.com", 200, handle=H)),
    ("fsync", pkt(200, s("fsync@openssh.com"), s(H), rid=30),
     R(30, "extended:fsync@openssh.com", 200, handle=H)),
    ("lsetstat", pkt(200, s("lsetstat@openssh.com"), s("/ln"), attrs(perms=0o700), rid=31),
     R(31, "extended:lsetstat@openssh.com", 200, paths=("/ln",), attrs_permissions=0o700)),
    ("limits", pkt(200, s("limits@openssh.com"), rid=32),
     R(32, "extended:limits@openssh.com", 200)),
    ("expand-path", pkt(200, s("expand-path@openssh.com"), s("~/x"), rid=33),
     R(33, "extended:expand-path@openssh.com", 200, paths=("~/x",))),
    ("home-directory", pkt(200, s("home-directory"), s("deploy"), rid=34),
     R(34, "extended:home-directory", 200, user="deploy")),
    ("copy-data", pkt(200, s("copy-data"), s(H), u64(10), u64(20), s(H2), u64(30), rid=35),
     R(35, "extended:copy-data", 200, handle=H, offset=10, length=20, write_handle=H2,
       write_offset=30)),
    ("users-groups-by-id", pkt(200, s("users-groups-by-id@openssh.com"), s(u32(0)),
                               s(u32(0) + u32(1)), rid=36),
     R(36, "extended:users-groups-by-id@openssh.com", 200)),
    ("unknown-extension", pkt(200, s("check-file"), s("whatever"), rid=37),
     R(37, "extended:check-file", 200, known=False)),
    ("unknown-type", pkt(42, s("x"), rid=38), R(38, "unknown:42", 42, known=False)),
]


@pytest.mark.parametrize(("data", "expected"), [r[1:] for r in REQUESTS],
                         ids=[r[0] for r in REQUESTS])
def test_every_request_decodes(data: bytes, expected: SftpRequest) -> None:
    packet = one(data)
    assert packet.type == expected.type
    assert packet.request_id == expected.request_id
    assert decode_request(packet) == expected


V = sftp.SftpReply
#: (name, packet bytes, decoded reply).
REPLIES: list[tuple[str, bytes, SftpReply]] = [
    ("version", pkt(2, u32(3), s("posix-rename@openssh.com"), s("1"), s("limits@openssh.com"),
                    s("1")),
     V(None, "version", 2, version=3,
       extensions=(("posix-rename@openssh.com", b"1"), ("limits@openssh.com", b"1")))),
    ("status", pkt(101, u32(2), s("No such file"), s("en"), rid=5),
     V(5, "status", 101, status_code=2, message="No such file")),
    ("handle", pkt(102, s(H), rid=6), V(6, "handle", 102, handle=H)),
    ("data", pkt(103, s(b"\0" * 300), rid=7), V(7, "data", 103, data_len=300)),
    ("name", pkt(104, u32(2), s("/home/ci"), s("drwx /home/ci"), attrs(4096, 0o40755),
                 s("b"), s("-rw b"), attrs(), rid=8),
     V(8, "name", 104, name="/home/ci", count=2)),
    ("attrs", pkt(105, attrs(1234, 0o100644, uidgid=True, times=True), rid=9),
     V(9, "attrs", 105, size=1234, permissions=0o100644)),
    ("extended-reply", pkt(201, u64(262144), u64(261120), u64(261120), u64(0), rid=10),
     V(10, "extended_reply", 201, data_len=32)),
]


@pytest.mark.parametrize(("data", "expected"), [r[1:] for r in REPLIES],
                         ids=[r[0] for r in REPLIES])
def test_every_reply_decodes(data: bytes, expected: SftpReply) -> None:
    assert rep(data) == expected


def test_status_without_message_is_accepted() -> None:
    # Some version 3 servers end SSH_FXP_STATUS after the code.
    assert rep(pkt(101, u32(0), rid=1)) == V(1, "status", 101, status_code=0)
    assert rep(pkt(101, u32(0), rid=1)).ok


def test_empty_name_reply() -> None:
    assert rep(pkt(104, u32(0), rid=3)) == V(3, "name", 104, count=0)


@pytest.mark.parametrize(("pflags", "mode", "creates", "truncates", "appends"), [
    (0x01, "read", False, False, False),
    (0x02, "write", False, False, False),
    (0x03, "read_write", False, False, False),
    (0x1A, "write", True, True, False),  # WRITE|CREAT|TRUNC: OpenSSH's put
    (0x06, "write", False, False, True),
    # Flags that change the file make an OPEN a write even without WRITE.
    (0x09, "read_write", True, False, False),
    (0x11, "read_write", False, True, False),
    (0x05, "read_write", False, False, True),
    (0x21, "read_write", False, False, False),
    (0x00, "read", False, False, False),
])
def test_open_flags(pflags: int, mode: str, creates: bool, truncates: bool,
                    appends: bool) -> None:
    r = req(pkt(3, s("/f"), u32(pflags), attrs(), rid=1))
    assert (r.mode, r.creates, r.truncates, r.appends) == (mode, creates, truncates, appends)
    assert open_mode(pflags) == mode


def test_non_open_requests_have_no_mode() -> None:
    r = req(pkt(13, s("/f"), rid=1))
    assert (r.mode, r.creates, r.truncates, r.appends, r.extension) == (
        None, False, False, False, None)
    assert req(REQUESTS[-2][1]).extension == "check-file"


def test_undecodable_path_bytes_survive() -> None:
    raw_path = b"/data/caf\xe9-\xff.csv"  # latin-1, not UTF-8: still a path
    r = req(pkt(13, s(raw_path), rid=1))
    assert r.paths[0].encode("utf-8", "surrogateescape") == raw_path
    assert r.paths[0].startswith("/data/caf")


def test_trailing_bytes_are_ignored_like_openssh() -> None:
    assert req(pkt(17, s("/s"), u32(0x1FF), rid=1)) == R(1, "stat", 17, paths=("/s",))


# -- malformed packets -----------------------------------------------------------

# Packets with no valid shorter form: every cut must be reported as malformed.
_STRICT_REQUESTS = [(n, d) for n, d, r in REQUESTS if r.known and n != "limits"]
_STRICT_REPLIES = [(n, d) for n, d, _ in REPLIES
                   if n not in ("version", "status", "extended-reply")]


def _cut(data: bytes, keep: int) -> bytes:
    """``data``'s first ``keep`` payload bytes, with the length fixed up."""
    body = data[4:4 + keep]
    return u32(len(body)) + body


@pytest.mark.parametrize(("data"), [d for _, d in _STRICT_REQUESTS],
                         ids=[n for n, _ in _STRICT_REQUESTS])
def test_every_truncated_request_is_malformed(data: bytes) -> None:
    body_len = len(data) - 4
    for keep in range(5, body_len):
        packet = one(_cut(data, keep))
        with pytest.raises(SftpProtocolError, match="malformed SSH_FXP_") as exc:
            decode_request(packet)
        assert ("runs past the end of the packet" in exc.value.message
                or "cannot fit in the" in exc.value.message)


@pytest.mark.parametrize(("data"), [d for _, d in _STRICT_REPLIES],
                         ids=[n for n, _ in _STRICT_REPLIES])
def test_every_truncated_reply_is_malformed(data: bytes) -> None:
    for keep in range(5, len(data) - 4):
        with pytest.raises(SftpProtocolError, match="malformed SSH_FXP_"):
            decode_reply(one(_cut(data, keep)))


def test_truncated_status_message_is_malformed() -> None:
    data = pkt(101, u32(4), s("Failure"), s(""), rid=3)
    # Cut inside the message string (not at the code, which is accepted).
    for keep in range(10, 9 + 4 + 7):
        with pytest.raises(SftpProtocolError, match="error message"):
            decode_reply(one(_cut(data, keep)))


def test_error_names_packet_request_and_field() -> None:
    data = _cut(pkt(3, s("/srv/file"), u32(1), attrs(), rid=77), 1 + 4 + 4 + 9 + 2)
    with pytest.raises(SftpProtocolError) as exc:
        decode_request(one(data))
    assert exc.value.message == (
        "malformed SSH_FXP_OPEN packet (request 77): the pflags runs past the end of the "
        "packet (needs 4 bytes, 2 left)")


@pytest.mark.parametrize(("data", "problem"), [
    (pkt(13, s(b"/tmp/a\0/etc/passwd"), rid=1), "path contains a NUL byte"),
    (pkt(18, s("/a"), s(b"/b\0"), rid=1), "new path contains a NUL byte"),
    (pkt(200, s(b"limits@openssh.com\0"), rid=1), "extended request name contains a NUL"),
    (pkt(4, s(b"h" * 257), rid=1), "handle is 257 bytes long; SFTP allows at most 256"),
    (pkt(200, s("copy-data"), s(H), u64(0), u64(0), s(b"h" * 300), u64(0), rid=1),
     "write-to handle is 300 bytes long"),
    (pkt(9, s("/f"), u32(0x80000000) + u32(1 << 30), rid=1),
     "1073741824 extended attributes cannot fit"),
    (pkt(6, s(H), u64(0), u32(1 << 31) + b"xx", rid=1), "the data runs past the end"),
])
def test_malformed_requests(data: bytes, problem: str) -> None:
    with pytest.raises(SftpProtocolError, match=problem):
        decode_request(one(data))


@pytest.mark.parametrize(("data", "problem"), [
    (pkt(104, u32(1 << 20), s("a"), s("b"), attrs(), rid=1), "1048576 names cannot fit"),
    (pkt(104, u32(1), s(b"a\0b"), s("b"), attrs(), rid=1), "filename contains a NUL"),
    (pkt(3, s("/f"), u32(1), attrs(), rid=1), "the server sent SSH_FXP_OPEN, which is not"),
    (pkt(1, u32(3)), "the server sent SSH_FXP_INIT"),
    (pkt(99, rid=1), "the server sent packet type 99"),
])
def test_malformed_replies(data: bytes, problem: str) -> None:
    with pytest.raises(SftpProtocolError, match=problem):
        decode_reply(one(data))


def test_client_cannot_send_version() -> None:
    with pytest.raises(SftpProtocolError, match="only the server sends"):
        decode_request(one(pkt(2, u32(3))))


# -- framing ----------------------------------------------------------------------

STREAM = b"".join(d for _, d, _ in REQUESTS) + b"".join(d for _, d, _ in REPLIES)
WHOLE = SftpFramer().feed(STREAM)


def test_framer_splits_a_stream_into_exact_packets() -> None:
    assert len(WHOLE) == len(REQUESTS) + len(REPLIES)
    assert [p.raw for p in WHOLE] == [d for _, d, _ in REQUESTS] + [d for _, d, _ in REPLIES]
    assert b"".join(p.raw for p in WHOLE) == STREAM


def test_one_byte_at_a_time_gives_the_same_packets() -> None:
    f = SftpFramer()
    out: list[Packet] = []
    for i in range(len(STREAM)):
        out += f.feed(STREAM[i:i + 1])
    assert out == WHOLE
    assert f.buffered == 0


@settings(max_examples=200)
@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=40),
       kind=st.sampled_from([bytes, bytearray, memoryview]))
def test_any_split_gives_the_same_packets(cuts: list[int], kind: type) -> None:
    points = [0, *sorted(cuts), len(STREAM)]
    f = SftpFramer()
    out: list[Packet] = []
    for a, b in itertools.pairwise(points):
        out += f.feed(kind(STREAM[a:b]))
    assert out == WHOLE


def test_partial_tail_is_kept() -> None:
    f = SftpFramer()
    data = REQUESTS[5][1]
    assert f.feed(data[:-1]) == []
    assert f.buffered == len(data) - 1
    assert f.feed(data[-1:] + data[:3]) == [one(data)]
    assert f.buffered == 3


@pytest.mark.parametrize(("header", "problem"), [
    (u32(0), "a zero-length SFTP packet"),
    (u32(4) + b"\x05\0\0\0", "packet of 4 bytes, too short for a type byte and a request id"),
    (u32(MAX_PACKET + 1), f"packet of {MAX_PACKET + 1} bytes, over the {MAX_PACKET}-byte"),
    (u32(0xFFFFFFFF), "over the"),
])
def test_bad_lengths_fail_at_once_and_for_good(header: bytes, problem: str) -> None:
    f = SftpFramer(peer="client")
    good = REQUESTS[3][1]
    with pytest.raises(SftpProtocolError, match=problem) as exc:
        f.feed(good + header[:4])  # only the length is needed to refuse
    assert exc.value.message.startswith("the client sent ")
    with pytest.raises(SftpProtocolError, match=problem):
        f.feed(good)  # the framer stays broken


def test_max_packet_is_a_parameter() -> None:
    write = pkt(6, s(H), u64(0), s(b"x" * 1000), rid=1)
    with pytest.raises(SftpProtocolError, match="over the 1000-byte limit"):
        SftpFramer(max_packet=1000).feed(write)
    assert len(SftpFramer(max_packet=2000).feed(write)) == 1
    # The default takes OpenSSH's largest: a 256 KiB packet.
    big = pkt(6, s(H), u64(0), s(b"x" * (256 * 1024 - 30)), rid=1)
    assert SftpFramer().feed(big)[0].raw == big
    with pytest.raises(ValueError, match="at least 5"):
        SftpFramer(max_packet=4)


# -- replies built by the gateway ----------------------------------------------------


def test_status_reply_bytes() -> None:
    by_hand = (b"\x00\x00\x00\x1b" b"\x65" b"\x00\x00\x00\x2a" b"\x00\x00\x00\x03"
               b"\x00\x00\x00\x0arefused: x" b"\x00\x00\x00\x00")
    assert status_reply(42, SSH_FX_PERMISSION_DENIED, "refused: x") == by_hand
    assert rep(by_hand) == V(42, "status", 101, status_code=3, message="refused: x")


def test_status_reply_unicode_and_constants() -> None:
    data = status_reply(1, SSH_FX_OP_UNSUPPORTED, "refusé")
    assert rep(data).message == "refusé"
    codes = (sftp.SSH_FX_OK, sftp.SSH_FX_EOF, sftp.SSH_FX_NO_SUCH_FILE,
             sftp.SSH_FX_PERMISSION_DENIED, sftp.SSH_FX_FAILURE, sftp.SSH_FX_BAD_MESSAGE,
             sftp.SSH_FX_NO_CONNECTION, sftp.SSH_FX_CONNECTION_LOST, sftp.SSH_FX_OP_UNSUPPORTED)
    assert codes == tuple(range(9))


def test_realpath_request() -> None:
    assert realpath_request(0xFFFFFFFF) == pkt(16, s("."), rid=0xFFFFFFFF)
    assert req(realpath_request(9, "/x")) == R(9, "realpath", 16, paths=("/x",))


# -- the policy view ----------------------------------------------------------------

HOME = "/home/ci"
_T = SftpTracker(home=HOME)
ACTIONS: dict[str, tuple[str, tuple[str, ...]] | None] = {
    "init": None,
    "open-read": ("read_file", ("/srv/a.txt",)),
    "open-write": ("write_file", ("/home/ci/out.bin",)),
    "close": None, "read": None, "write": None, "fstat": None, "fsetstat": None,
    "readdir": None, "fstatvfs": None, "fsync": None, "copy-data": None, "limits": None,
    "users-groups-by-id": None,
    "realpath": None,  # realpath(".") is the session's start
    "lstat": ("stat", ("/l",)),
    "setstat": ("set_attributes", ("/f",)),
    "opendir": ("list_dir", ("/d",)),
    "remove": ("remove", ("/r",)),
    "mkdir": ("mkdir", ("/m",)),
    "rmdir": ("rmdir", ("/m",)),
    "stat": ("stat", ("/s",)),
    "rename": ("rename", ("/old", "/new")),
    "readlink": ("stat", ("/ln",)),
    # The new link first, then what it points to (relative to the link's directory).
    "symlink": ("symlink", ("/ln", "/target")),
    "posix-rename": ("rename", ("/a", "/b")),
    "hardlink": ("symlink", ("/b", "/a")),
    "statvfs": ("stat", ("/",)),
    "lsetstat": ("set_attributes", ("/ln",)),
    "expand-path": ("stat", ("/home/ci/x",)),
    "home-directory": ("stat", ()),
    "unknown-extension": ("unknown", ()),
    "unknown-type": ("unknown", ()),
}


@pytest.mark.parametrize(("data", "expected"),
                         [(d, ACTIONS[n]) for n, d, _ in REQUESTS],
                         ids=[n for n, _, _ in REQUESTS])
def test_request_action(data: bytes, expected: tuple[str, tuple[str, ...]] | None) -> None:
    assert set(ACTIONS) == {n for n, _, _ in REQUESTS}
    assert request_action(req(data), _T.resolve) == expected


@pytest.mark.parametrize(("packet", "expected"), [
    (pkt(16, s("/etc/../root"), rid=1), ("stat", ("/root",))),
    (pkt(16, s(""), rid=1), None),
    (pkt(20, s("../../etc/shadow"), s("pub/ln"), rid=1),
     ("symlink", ("/home/ci/pub/ln", "/home/etc/shadow"))),
    (pkt(20, s("../../../../../etc/shadow"), s("ln"), rid=1),
     ("symlink", ("/home/ci/ln", "/etc/shadow"))),
    (pkt(20, s("/abs/t"), s("ln"), rid=1), ("symlink", ("/home/ci/ln", "/abs/t"))),
    (pkt(3, s("../../../../etc/passwd"), u32(1), attrs(), rid=1),
     ("read_file", ("/etc/passwd",))),
    (pkt(3, s("x"), u32(0x09), attrs(), rid=1), ("write_file", ("/home/ci/x",))),
    (pkt(200, s("expand-path@openssh.com"), s("~"), rid=1), ("stat", ("/home/ci",))),
    (pkt(200, s("expand-path@openssh.com"), s("~root/x"), rid=1),
     ("stat", ("/home/ci/~root/x",))),
])
def test_request_action_resolves(packet: bytes,
                                 expected: tuple[str, tuple[str, ...]] | None) -> None:
    assert request_action(req(packet), _T.resolve) == expected


@pytest.mark.parametrize(("home", "path", "resolved"), [
    ("/home/ci", "", "/home/ci"),
    ("/home/ci", ".", "/home/ci"),
    ("/home/ci", "a/./b/../c/", "/home/ci/a/c"),
    ("/home/ci", "../../../../..", "/"),
    ("/home/ci", "/../../etc/./passwd", "/etc/passwd"),
    ("/home/ci", "//srv//x", "/srv/x"),
    ("/home/ci", "///", "/"),
    ("/", "x", "/x"),
    (None, "a/../b", "b"),
    (None, "../x", "../x"),
    (None, "", "."),
    (None, "/a/b/..", "/a"),
])
def test_resolve(home: str | None, path: str, resolved: str) -> None:
    assert SftpTracker(home=home).resolve(path) == resolved


# -- the tracker ---------------------------------------------------------------------


class Session:
    """Drives a tracker with hand-built packets, as the gateway would."""

    def __init__(self, home: str | None = HOME) -> None:
        self.tracker = SftpTracker(home=home)
        self.events: list[FileEvent] = []

    def send(self, data: bytes) -> SftpRequest:
        r = req(data)
        self.tracker.on_request(r)
        return r

    def answer(self, data: bytes) -> list[FileEvent]:
        out = self.tracker.on_reply(rep(data))
        self.events += out
        return out


def ok(rid: int) -> bytes:
    return pkt(101, u32(SSH_FX_OK), s("Success"), s(""), rid=rid)


def status(rid: int, code: int, message: str) -> bytes:
    return pkt(101, u32(code), s(message), s(""), rid=rid)


def handle(rid: int, h: bytes = H) -> bytes:
    return pkt(102, s(h), rid=rid)


def write(rid: int, n: int, h: bytes = H, off: int = 0) -> bytes:
    return pkt(6, s(h), u64(off), s(b"d" * n), rid=rid)


def read(rid: int, h: bytes = H, off: int = 0) -> bytes:
    return pkt(5, s(h), u64(off), u32(32768), rid=rid)


def data(rid: int, n: int) -> bytes:
    return pkt(103, s(b"d" * n), rid=rid)


def test_upload_counts_acknowledged_writes() -> None:
    t = Session()
    t.send(pkt(3, s("up/a.bin"), u32(0x1A), attrs(), rid=1))
    assert t.answer(handle(1)) == []
    assert t.tracker.handle_info(H) == HandleInfo("/home/ci/up/a.bin", "write_file", "write")
    for rid, n in ((2, 32768), (3, 32768), (4, 100)):
        t.send(write(rid, n))
    # Replies may come in any order.
    assert t.answer(ok(3)) == [] and t.answer(ok(2)) == [] and t.answer(ok(4)) == []
    t.send(pkt(4, s(H), rid=5))
    assert t.answer(ok(5)) == [FileEvent(
        "write_file", "/home/ci/up/a.bin", mode="write", bytes_written=65636, request="open")]
    assert t.tracker.handle_info(H) is None
    assert t.tracker.pending == 0


def test_failed_write_marks_the_file_failed_and_is_not_counted() -> None:
    t = Session()
    t.send(pkt(3, s("/srv/f"), u32(0x02), attrs(), rid=1))
    t.answer(handle(1))
    t.send(write(2, 10))
    t.send(write(3, 20))
    t.send(write(4, 30))
    t.answer(ok(2))
    t.answer(status(3, SSH_FX_FAILURE, "No space left on device"))
    t.answer(status(4, SSH_FX_FAILURE, "second failure"))
    t.send(pkt(4, s(H), rid=5))
    assert t.answer(ok(5)) == [FileEvent(
        "write_file", "/srv/f", mode="write", bytes_written=10, ok=False,
        status=SSH_FX_FAILURE, message="No space left on device", request="open")]


def test_download_sums_data_replies() -> None:
    t = Session()
    t.send(pkt(3, s("/srv/report.csv"), u32(0x01), attrs(), rid=1))
    t.answer(handle(1))
    t.send(read(2))
    t.send(read(3, off=32768))
    t.send(read(4, off=65536))
    t.answer(data(2, 32768))
    t.answer(data(3, 1000))
    t.answer(status(4, SSH_FX_EOF, "End of file"))  # EOF is not a failure
    t.send(pkt(4, s(H), rid=5))
    assert t.answer(ok(5)) == [FileEvent(
        "read_file", "/srv/report.csv", mode="read", bytes_read=33768, request="open")]


def test_failed_read_and_failed_close() -> None:
    t = Session()
    t.send(pkt(3, s("/f"), u32(0x03), attrs(), rid=1))
    t.answer(handle(1))
    t.send(read(2))
    t.answer(status(2, SSH_FX_FAILURE, "Input/output error"))
    t.send(pkt(4, s(H), rid=3))
    ev = t.answer(status(3, SSH_FX_FAILURE, "close failed"))
    assert ev == [FileEvent("write_file", "/f", mode="read_write", ok=False,
                            status=SSH_FX_FAILURE, message="Input/output error",
                            request="open")]


def test_failed_open_is_an_event() -> None:
    t = Session()
    t.send(pkt(3, s("secret.txt"), u32(0x01), attrs(), rid=1))
    assert t.answer(status(1, SSH_FX_NO_SUCH_FILE, "No such file")) == [FileEvent(
        "read_file", "/home/ci/secret.txt", mode="read", ok=False,
        status=SSH_FX_NO_SUCH_FILE, message="No such file", request="open")]


def test_directory_listing_is_one_event() -> None:
    t = Session()
    t.send(pkt(11, s("pub"), rid=1))
    t.answer(handle(1, H2))
    assert t.tracker.handle_info(H2) == HandleInfo("/home/ci/pub", "list_dir", None)
    t.send(pkt(12, s(H2), rid=2))
    t.answer(pkt(104, u32(3), *(s(n) + s(n) + attrs() for n in ("..", "a", "b")), rid=2))
    t.send(pkt(12, s(H2), rid=3))
    t.answer(pkt(104, u32(1), s("c"), s("c"), attrs(), rid=3))
    t.send(pkt(12, s(H2), rid=4))
    t.answer(status(4, SSH_FX_EOF, "End of file"))
    t.send(pkt(4, s(H2), rid=5))
    assert t.answer(ok(5)) == [FileEvent("list_dir", "/home/ci/pub", entries=4,
                                         request="opendir")]


def test_failed_opendir() -> None:
    t = Session()
    t.send(pkt(11, s("/root"), rid=1))
    assert t.answer(status(1, SSH_FX_PERMISSION_DENIED, "Permission denied")) == [
        FileEvent("list_dir", "/root", ok=False, status=3, message="Permission denied",
                  request="opendir")]


@pytest.mark.parametrize(("packet", "event"), [
    (pkt(13, s("old.log"), rid=1), FileEvent("remove", "/home/ci/old.log")),
    (pkt(14, s("/srv/new"), attrs(perms=0o755), rid=1), FileEvent("mkdir", "/srv/new")),
    (pkt(15, s("/srv/new"), rid=1), FileEvent("rmdir", "/srv/new")),
    (pkt(9, s("f"), attrs(perms=0o600), rid=1), FileEvent("set_attributes", "/home/ci/f")),
    (pkt(200, s("lsetstat@openssh.com"), s("l"), attrs(), rid=1),
     FileEvent("set_attributes", "/home/ci/l")),
    (pkt(18, s("a"), s("/b"), rid=1), FileEvent("rename", "/home/ci/a", "/b")),
    (pkt(200, s("posix-rename@openssh.com"), s("a"), s("b"), rid=1),
     FileEvent("rename", "/home/ci/a", "/home/ci/b")),
    (pkt(20, s("../t"), s("l"), rid=1), FileEvent("symlink", "/home/ci/l", "../t")),
    (pkt(200, s("hardlink@openssh.com"), s("a"), s("b"), rid=1),
     FileEvent("symlink", "/home/ci/b", "/home/ci/a")),
])
def test_single_shot_operations(packet: bytes, event: FileEvent) -> None:
    import dataclasses

    for code, message in ((SSH_FX_OK, "Success"), (SSH_FX_PERMISSION_DENIED, "denied")):
        t = Session()
        r = t.send(packet)
        expected = dataclasses.replace(event, ok=code == SSH_FX_OK, status=code,
                                       message=message, request=r.op)
        assert t.answer(status(1, code, message)) == [expected]


def test_stat_like_requests_make_no_events() -> None:
    t = Session()
    for rid, p in enumerate([pkt(17, s("/a"), rid=1), pkt(7, s("/a"), rid=2),
                             pkt(19, s("/a"), rid=3)], start=1):
        t.send(p)
        assert t.answer(status(rid, SSH_FX_NO_SUCH_FILE, "No such file")) == []
    assert t.tracker.pending == 0


def test_home_comes_from_the_first_successful_realpath_of_dot() -> None:
    t = Session(home=None)
    assert request_action(t.send(pkt(16, s("/x"), rid=1)), t.tracker.resolve) == (
        "stat", ("/x",))
    t.answer(pkt(104, u32(1), s("/x"), s(""), attrs(), rid=1))
    assert t.tracker.home is None  # not the realpath of "."
    t.send(pkt(16, s("."), rid=2))
    t.answer(status(2, SSH_FX_FAILURE, "no"))
    assert t.tracker.home is None
    assert t.tracker.resolve("up/x") == "up/x"
    t.send(pkt(16, s("."), rid=3))
    t.answer(pkt(104, u32(1), s("/home/deploy/"), s(""), attrs(), rid=3))
    assert t.tracker.home == "/home/deploy"
    assert t.tracker.resolve("up/x") == "/home/deploy/up/x"
    t.send(pkt(16, s(""), rid=4))
    t.answer(pkt(104, u32(1), s("/elsewhere"), s(""), attrs(), rid=4))
    assert t.tracker.home == "/home/deploy"  # the first one stays


def test_relative_paths_resolve_when_the_reply_comes() -> None:
    t = Session(home=None)
    t.send(pkt(16, s("."), rid=1))
    t.send(pkt(14, s("up"), attrs(), rid=2))  # pipelined before home is known
    t.answer(pkt(104, u32(1), s("/home/ci"), s(""), attrs(), rid=1))
    assert t.answer(ok(2)) == [FileEvent("mkdir", "/home/ci/up", status=0, message="Success",
                                         request="mkdir")]


def test_unknown_reply_ids_are_ignored_and_counted() -> None:
    t = Session()
    assert t.answer(ok(99)) == []
    assert t.answer(handle(98)) == []
    assert t.tracker.unmatched_replies == 2


def test_reused_request_ids_are_answered_first_in_first_out() -> None:
    t = Session()
    t.send(pkt(13, s("/a"), rid=5))
    t.send(pkt(13, s("/b"), rid=5))
    t.send(pkt(13, s("/c"), rid=5))
    assert t.tracker.reused_ids == 2
    assert t.tracker.pending == 3
    assert [e.path for e in t.answer(ok(5)) + t.answer(ok(5)) + t.answer(ok(5))] == [
        "/a", "/b", "/c"]
    assert t.answer(ok(5)) == []
    assert (t.tracker.pending, t.tracker.unmatched_replies) == (0, 1)


def test_unexpected_reply_types_count_as_failures() -> None:
    t = Session()
    t.send(pkt(13, s("/a"), rid=1))
    assert t.answer(data(1, 5)) == [FileEvent("remove", "/a", ok=False, status=SSH_FX_FAILURE,
                                              message="unexpected data reply",
                                              request="remove")]
    t.send(pkt(3, s("/b"), u32(1), attrs(), rid=2))
    assert t.answer(data(2, 5))[0].message == "unexpected data reply"
    assert t.tracker.unexpected_replies == 2


def test_finish_reports_handles_never_closed() -> None:
    t = Session()
    t.send(pkt(3, s("/a"), u32(0x1A), attrs(), rid=1))
    t.answer(handle(1))
    t.send(write(2, 7))
    t.answer(ok(2))
    t.send(write(3, 9))  # never answered: not counted
    t.send(pkt(11, s("/d"), rid=4))
    t.answer(handle(4, H2))
    assert t.tracker.finish() == [
        FileEvent("write_file", "/a", mode="write", bytes_written=7, complete=False,
                  request="open"),
        FileEvent("list_dir", "/d", complete=False, request="opendir")]
    assert t.tracker.finish() == []
    assert t.tracker.pending == 0


def test_a_reused_handle_ends_the_old_file() -> None:
    t = Session()
    t.send(pkt(3, s("/a"), u32(1), attrs(), rid=1))
    t.answer(handle(1))
    t.send(pkt(3, s("/b"), u32(1), attrs(), rid=2))
    assert t.answer(handle(2)) == [FileEvent("read_file", "/a", mode="read", complete=False,
                                             request="open")]
    assert t.tracker.handle_info(H) == HandleInfo("/b", "read_file", "read")


def test_copy_data_counts_on_both_handles() -> None:
    t = Session()
    t.send(pkt(3, s("/src"), u32(1), attrs(), rid=1))
    t.answer(handle(1, H))
    t.send(pkt(3, s("/dst"), u32(0x1A), attrs(), rid=2))
    t.answer(handle(2, H2))
    t.send(pkt(200, s("copy-data"), s(H), u64(0), u64(500), s(H2), u64(0), rid=3))
    t.answer(ok(3))
    t.send(pkt(4, s(H), rid=4))
    t.send(pkt(4, s(H2), rid=5))
    assert [(e.path, e.bytes_read, e.bytes_written) for e in t.answer(ok(4)) + t.answer(ok(5))
            ] == [("/src", 500, 0), ("/dst", 0, 500)]


def test_version_is_recorded() -> None:
    t = Session()
    t.send(pkt(1, u32(3)))
    assert t.answer(REPLIES[0][1]) == []
    assert t.tracker.version == 3


# -- real OpenSSH sessions ----------------------------------------------------------

SFTP_SERVER = "/usr/lib/openssh/sftp-server"
needs_openssh = pytest.mark.skipif(
    not (shutil.which("sftp") and shutil.which("scp") and os.access(SFTP_SERVER, os.X_OK)),
    reason="OpenSSH's sftp, scp and sftp-server are not installed")

_RELAY = '''\
import os, struct, subprocess, sys, threading
# Stands in for ssh: runs the remote command (or sftp-server for the "sftp"
# subsystem) locally and records every chunk of both directions, in order.
argv = sys.argv[1:]
log = open(os.environ["CAPTURE_LOG"], "wb", buffering=0)
with open(os.environ["CAPTURE_LOG"] + ".cmd", "w") as f:
    f.write(argv[-1])
if "-s" in argv and argv[-1] == "sftp":
    args = [os.environ["CAPTURE_SFTP_SERVER"]]
else:
    args = ["/bin/sh", "-c", argv[-1]]
child = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         cwd=os.environ["CAPTURE_HOME"], bufsize=0)
lock = threading.Lock()

def pump(src, dst, tag):
    while True:
        chunk = os.read(src, 65536)
        if not chunk:
            break
        with lock:  # record before forwarding: the order of cause and effect
            log.write(tag + struct.pack(">I", len(chunk)) + chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view):]
    os.close(dst)

up = threading.Thread(target=pump, args=(0, child.stdin.fileno(), b">"), daemon=True)
up.start()
pump(child.stdout.fileno(), 1, b"<")
sys.exit(child.wait())
'''


def write_relay(directory: Path) -> Path:
    """A stand-in for ssh (``-S``) that runs the command locally and records it."""
    path = directory / "relay.py"
    path.write_text(f"#!{sys.executable}\n{_RELAY}")
    path.chmod(0o755)
    return path


def capture(args: list[str], home: Path, log: Path, *, cwd: Path,
            check: bool = True) -> list[tuple[str, bytes]]:
    """Run an OpenSSH client with the relay; return the chunks (">" client to server,
    "<" server to client) in the order they passed."""
    env = {**os.environ, "CAPTURE_LOG": str(log), "CAPTURE_HOME": str(home),
           "CAPTURE_SFTP_SERVER": SFTP_SERVER}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr.decode()
    raw = log.read_bytes()
    out: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(raw):
        (n,) = struct.unpack_from(">I", raw, pos + 1)
        out.append((chr(raw[pos]), raw[pos + 5:pos + 5 + n]))
        pos += 5 + n
    return out


def replay(chunks: list[tuple[str, bytes]], *, rechunk: random.Random | None = None,
           home: str | None = None,
           ) -> tuple[SftpTracker, list[FileEvent], list[SftpRequest]]:
    """Feed a captured session through framers, decoders and a tracker."""
    client, server = SftpFramer(peer="client"), SftpFramer(peer="server")
    tracker = SftpTracker(home=home)
    events: list[FileEvent] = []
    requests: list[SftpRequest] = []
    for tag, chunk in chunks:
        pieces = [chunk]
        if rechunk is not None:
            cuts = sorted(rechunk.sample(range(1, len(chunk)), min(5, len(chunk) - 1)))
            pieces = [chunk[a:b] for a, b in zip([0, *cuts], [*cuts, len(chunk)],
                                                 strict=True)]
        for piece in pieces:
            if tag == ">":
                for p in client.feed(piece):
                    r = decode_request(p)
                    assert request_action(r, tracker.resolve) != ("unknown", ())
                    requests.append(r)
                    tracker.on_request(r)
            else:
                for p in server.feed(piece):
                    events += tracker.on_reply(decode_reply(p))
    assert client.buffered == 0 and server.buffered == 0
    events += tracker.finish()
    return tracker, events, requests


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A local working directory with files of known sizes, and an empty remote home."""
    (tmp_path / "home").mkdir()
    local = tmp_path / "local"
    local.mkdir()
    rnd = random.Random(7)
    (local / "big.bin").write_bytes(rnd.randbytes(300_001))  # over 256 KiB: many writes
    (local / "small.txt").write_bytes(b"hello\n" * 100)
    (local / "empty").write_bytes(b"")
    (local / "tree" / "sub").mkdir(parents=True)
    (local / "tree" / "x.cfg").write_bytes(b"x" * 4097)
    (local / "tree" / "sub" / "my file.txt").write_bytes(b"spaces\n")
    write_relay(tmp_path)
    return tmp_path


@needs_openssh
def test_real_sftp_session(site: Path) -> None:
    home = (site / "home").resolve()
    (site / "batch").write_text("\n".join([
        "mkdir up", "put big.bin up/big.bin", "put small.txt up/small.txt",
        "put empty up/empty", "get up/big.bin got.bin", "rename up/small.txt up/renamed.txt",
        "ls up", "chmod 600 up/big.bin", "ln -s big.bin up/link", "rm up/renamed.txt",
        "mkdir up/tmp", "rmdir up/tmp", "get nonexistent",
    ]) + "\n")
    chunks = capture(["sftp", "-S", str(site / "relay.py"), "-b", str(site / "batch"),
                      "localhost"],
                     home, site / "sftp.log", cwd=site / "local", check=False)
    assert (site / "local" / "got.bin").read_bytes() == (site / "local" / "big.bin").read_bytes()
    tracker, events, requests = replay(chunks)
    h = str(home)
    assert tracker.home == h
    expected = [
        FileEvent("mkdir", f"{h}/up", status=0, message="Success", request="mkdir"),
        FileEvent("write_file", f"{h}/up/big.bin", mode="write", bytes_written=300_001,
                  request="open"),
        FileEvent("write_file", f"{h}/up/small.txt", mode="write", bytes_written=600,
                  request="open"),
        FileEvent("write_file", f"{h}/up/empty", mode="write", request="open"),
        FileEvent("read_file", f"{h}/up/big.bin", mode="read", bytes_read=300_001,
                  request="open"),
        FileEvent("rename", f"{h}/up/small.txt", f"{h}/up/renamed.txt", status=0,
                  message="Success", request="extended:posix-rename@openssh.com"),
        # ".", "..", big.bin, empty, renamed.txt
        FileEvent("list_dir", f"{h}/up", entries=5, request="opendir"),
        FileEvent("set_attributes", f"{h}/up/big.bin", status=0, message="Success",
                  request="setstat"),
        FileEvent("symlink", f"{h}/up/link", "big.bin", status=0, message="Success",
                  request="symlink"),
        FileEvent("remove", f"{h}/up/renamed.txt", status=0, message="Success",
                  request="remove"),
        FileEvent("mkdir", f"{h}/up/tmp", status=0, message="Success", request="mkdir"),
        FileEvent("rmdir", f"{h}/up/tmp", status=0, message="Success", request="rmdir"),
    ]
    assert events == expected
    assert os.readlink(home / "up" / "link") == "big.bin"
    # The failed "get nonexistent" is a stat that fails: no file event, no crash.
    assert any(r.paths == (f"{h}/nonexistent",) for r in requests)
    assert tracker.unmatched_replies == tracker.reused_ids == tracker.unexpected_replies == 0
    writes = [r for r in requests if r.op == "write"]
    assert sum(r.data_len or 0 for r in writes) == 300_001 + 600
    # The client asked limits@openssh.com: writes as big as sftp-server allows (255 KiB),
    # which the default MAX_PACKET takes.
    assert max(r.data_len or 0 for r in writes) == 261120
    # However the captured chunks are cut, the outcome is the same.
    assert replay(chunks, rechunk=random.Random(1))[1] == expected


@needs_openssh
def test_real_scp_session_over_sftp(site: Path) -> None:
    home = (site / "home").resolve()
    relay = str(site / "relay.py")
    up = capture(["scp", "-S", relay, "-r", "big.bin", "tree", "localhost:"], home,
                 site / "up.log", cwd=site / "local")
    tracker, events, _ = replay(up)
    # scp never asks for realpath("."): a file copied to its start directory keeps
    # the relative name it was opened with, unless the gateway learnt the home
    # directory itself (realpath_request).
    assert tracker.home is None
    assert ("write_file", "big.bin", 300_001) in {
        (e.op, e.path, e.bytes_written) for e in events}
    h = str(home)
    _, events, _ = replay(up, home=h)
    assert {(e.op, e.path, e.bytes_written, e.ok) for e in events} == {
        ("write_file", f"{h}/big.bin", 300_001, True),
        ("mkdir", f"{h}/tree", 0, True),
        ("mkdir", f"{h}/tree/sub", 0, True),
        ("write_file", f"{h}/tree/x.cfg", 4097, True),
        ("write_file", f"{h}/tree/sub/my file.txt", 7, True),
        ("set_attributes", f"{h}/tree", 0, True),  # the directories' modes, at the end
        ("set_attributes", f"{h}/tree/sub", 0, True),
    }
    assert (home / "tree" / "sub" / "my file.txt").read_bytes() == b"spaces\n"
    down = capture(["scp", "-S", relay, "localhost:tree/x.cfg", "copy.cfg"], home,
                   site / "down.log", cwd=site / "local")
    assert [(e.op, e.path, e.bytes_read, e.ok) for e in replay(down)[1]] == [
        ("read_file", "tree/x.cfg", 4097, True)]
    assert [(e.op, e.path, e.bytes_read, e.ok) for e in replay(down, home=h)[1]] == [
        ("read_file", f"{h}/tree/x.cfg", 4097, True)]


# -- speed ---------------------------------------------------------------------------------


@pytest.mark.skipif(not os.environ.get("PATHWARDEN_BENCH"),
                    reason="micro-benchmark: set PATHWARDEN_BENCH=1 to run it")
def test_benchmark_framing_256k_of_writes() -> None:
    chunk = b"".join(write(i, 32768, off=i * 32768) for i in range(8))  # 256 KiB of data
    framer = SftpFramer()
    rounds = 2000
    start = time.perf_counter()
    for _ in range(rounds):
        framer.feed(chunk)
    feed_us = (time.perf_counter() - start) / rounds * 1e6
    tracker = SftpTracker()
    start = time.perf_counter()
    for _ in range(rounds):
        for p in framer.feed(chunk):
            r = decode_request(p)
            tracker.on_request(r)
            tracker.on_reply(decode_reply(one(ok(p.request_id or 0))))
    total_us = (time.perf_counter() - start) / rounds * 1e6
    big = write(1, 261120)  # sftp-server's largest write, as OpenSSH's sftp sends it
    start = time.perf_counter()
    for _ in range(rounds):
        framer.feed(big)
    big_us = (time.perf_counter() - start) / rounds * 1e6
    print(f"\nfeed() of 256 KiB in 8 WRITE packets: {feed_us:.0f} us; "
          f"with decoding, tracking and the OK replies: {total_us:.0f} us; "
          f"one 255 KiB WRITE: {big_us:.0f} us")
    assert feed_us < 1000
