"""SFTP version 3 as a sans-I/O parser for the SSH gateway.

Theory of operation
-------------------

The gateway relays the bytes of an SFTP subsystem channel between the client
and the target. Each direction is fed to its own :class:`SftpFramer`, which
cuts the stream into whole packets (``uint32 length, byte type, payload``;
draft-ietf-secsh-filexfer-02, section 3) and keeps each one's exact bytes in
:attr:`Packet.raw`, so an allowed packet is forwarded unchanged. A length of
zero, too short to hold a type and request id, or over the framer's limit
raises :class:`SftpProtocolError` at once, and the framer stays broken: the
gateway ends the channel (fail closed) instead of guessing where the next
packet starts.

:func:`decode_request` turns a client packet into an :class:`SftpRequest`
naming the operation (``op``), its paths (UTF-8, undecodable bytes kept with
``surrogateescape``), handle, offsets and sizes; :func:`decode_reply` does the
same for a server packet (:class:`SftpReply`). Neither copies file data: a
WRITE or DATA packet yields the data's length only. A field that runs past
the end of its packet, a path or name with a NUL byte (OpenSSH's server
refuses those too) or a handle longer than the 256 bytes the protocol allows
raises :class:`SftpProtocolError` naming the packet and the field. Bytes after
the last field are ignored, as OpenSSH's server ignores them. An unknown
request type or extension decodes with ``known=False``: the server would not
answer it usefully, and :func:`request_action` reports it as ``unknown`` so
the gateway refuses it with :func:`status_reply`.

:func:`request_action` is the policy view of a request: one of a small set of
kinds (``read_file``, ``write_file``, ``list_dir``, ``stat``, ``remove``,
``rename``, ``mkdir``, ``rmdir``, ``symlink``, ``set_attributes``,
``unknown``) and the absolute paths it touches, or None for requests that
only use a handle the gateway already authorised when it was opened. An OPEN
counts as a write as soon as any flag can change the file (WRITE, APPEND,
CREAT, TRUNC, EXCL): OpenSSH's server opens ``READ|CREAT`` read-only but still
creates the file.

:class:`SftpTracker` pairs replies with requests by request id (the server
may answer out of order; a reused id is answered first-in, first-out) and
keeps per-handle state, so the gateway records one :class:`FileEvent` per
file (path, mode, bytes read and written, success) when its handle closes,
one per directory listing, and one per single-shot change (remove, rename,
mkdir, rmdir, symlink, setstat ...) when its status arrives. It learns the
session's home directory from the first successful ``realpath(".")``, which
every OpenSSH client sends first, and resolves relative paths against it.

Nothing here touches sockets, clocks or asyncio.
"""

from __future__ import annotations

import posixpath
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

# --- protocol constants (draft-ietf-secsh-filexfer-02, section 3) ----------

SSH_FXP_INIT: Final = 1
SSH_FXP_VERSION: Final = 2
SSH_FXP_OPEN: Final = 3
SSH_FXP_CLOSE: Final = 4
SSH_FXP_READ: Final = 5
SSH_FXP_WRITE: Final = 6
SSH_FXP_LSTAT: Final = 7
SSH_FXP_FSTAT: Final = 8
SSH_FXP_SETSTAT: Final = 9
SSH_FXP_FSETSTAT: Final = 10
SSH_FXP_OPENDIR: Final = 11
SSH_FXP_READDIR: Final = 12
SSH_FXP_REMOVE: Final = 13
SSH_FXP_MKDIR: Final = 14
SSH_FXP_RMDIR: Final = 15
SSH_FXP_REALPATH: Final = 16
SSH_FXP_STAT: Final = 17
SSH_FXP_RENAME: Final = 18
SSH_FXP_READLINK: Final = 19
SSH_FXP_SYMLINK: Final = 20
SSH_FXP_STATUS: Final = 101
SSH_FXP_HANDLE: Final = 102
SSH_FXP_DATA: Final = 103
SSH_FXP_NAME: Final = 104
SSH_FXP_ATTRS: Final = 105
SSH_FXP_EXTENDED: Final = 200
SSH_FXP_EXTENDED_REPLY: Final = 201

SSH_FX_OK: Final = 0
SSH_FX_EOF: Final = 1
SSH_FX_NO_SUCH_FILE: Final = 2
SSH_FX_PERMISSION_DENIED: Final = 3
SSH_FX_FAILURE: Final = 4
SSH_FX_BAD_MESSAGE: Final = 5
SSH_FX_NO_CONNECTION: Final = 6
SSH_FX_CONNECTION_LOST: Final = 7
SSH_FX_OP_UNSUPPORTED: Final = 8

SSH_FXF_READ: Final = 0x01
SSH_FXF_WRITE: Final = 0x02
SSH_FXF_APPEND: Final = 0x04
SSH_FXF_CREAT: Final = 0x08
SSH_FXF_TRUNC: Final = 0x10
SSH_FXF_EXCL: Final = 0x20
#: Open flags that can change the file: any of them makes an OPEN a write.
WRITE_FLAGS: Final = SSH_FXF_WRITE | SSH_FXF_APPEND | SSH_FXF_CREAT | SSH_FXF_TRUNC | SSH_FXF_EXCL

SSH_FILEXFER_ATTR_SIZE: Final = 0x00000001
SSH_FILEXFER_ATTR_UIDGID: Final = 0x00000002
SSH_FILEXFER_ATTR_PERMISSIONS: Final = 0x00000004
SSH_FILEXFER_ATTR_ACMODTIME: Final = 0x00000008
SSH_FILEXFER_ATTR_EXTENDED: Final = 0x80000000

#: Largest packet a framer accepts by default: OpenSSH's sftp-server limit
#: (256 KiB, SFTP_MAX_MSG_LENGTH) plus 1 KiB of slack for headers.
MAX_PACKET: Final = 256 * 1024 + 1024
#: A handle is at most 256 bytes long (draft-02, section 6.2).
MAX_HANDLE: Final = 256

PACKET_NAMES: Final[dict[int, str]] = {
    SSH_FXP_INIT: "SSH_FXP_INIT", SSH_FXP_VERSION: "SSH_FXP_VERSION",
    SSH_FXP_OPEN: "SSH_FXP_OPEN", SSH_FXP_CLOSE: "SSH_FXP_CLOSE",
    SSH_FXP_READ: "SSH_FXP_READ", SSH_FXP_WRITE: "SSH_FXP_WRITE",
    SSH_FXP_LSTAT: "SSH_FXP_LSTAT", SSH_FXP_FSTAT: "SSH_FXP_FSTAT",
    SSH_FXP_SETSTAT: "SSH_FXP_SETSTAT", SSH_FXP_FSETSTAT: "SSH_FXP_FSETSTAT",
    SSH_FXP_OPENDIR: "SSH_FXP_OPENDIR", SSH_FXP_READDIR: "SSH_FXP_READDIR",
    SSH_FXP_REMOVE: "SSH_FXP_REMOVE", SSH_FXP_MKDIR: "SSH_FXP_MKDIR",
    SSH_FXP_RMDIR: "SSH_FXP_RMDIR", SSH_FXP_REALPATH: "SSH_FXP_REALPATH",
    SSH_FXP_STAT: "SSH_FXP_STAT", SSH_FXP_RENAME: "SSH_FXP_RENAME",
    SSH_FXP_READLINK: "SSH_FXP_READLINK", SSH_FXP_SYMLINK: "SSH_FXP_SYMLINK",
    SSH_FXP_STATUS: "SSH_FXP_STATUS", SSH_FXP_HANDLE: "SSH_FXP_HANDLE",
    SSH_FXP_DATA: "SSH_FXP_DATA", SSH_FXP_NAME: "SSH_FXP_NAME",
    SSH_FXP_ATTRS: "SSH_FXP_ATTRS", SSH_FXP_EXTENDED: "SSH_FXP_EXTENDED",
    SSH_FXP_EXTENDED_REPLY: "SSH_FXP_EXTENDED_REPLY",
}

# The stable op name of each request type.
_REQUEST_OPS: Final[dict[int, str]] = {
    SSH_FXP_OPEN: "open", SSH_FXP_CLOSE: "close", SSH_FXP_READ: "read",
    SSH_FXP_WRITE: "write", SSH_FXP_LSTAT: "lstat", SSH_FXP_FSTAT: "fstat",
    SSH_FXP_SETSTAT: "setstat", SSH_FXP_FSETSTAT: "fsetstat", SSH_FXP_OPENDIR: "opendir",
    SSH_FXP_READDIR: "readdir", SSH_FXP_REMOVE: "remove", SSH_FXP_MKDIR: "mkdir",
    SSH_FXP_RMDIR: "rmdir", SSH_FXP_REALPATH: "realpath", SSH_FXP_STAT: "stat",
    SSH_FXP_RENAME: "rename", SSH_FXP_READLINK: "readlink", SSH_FXP_SYMLINK: "symlink",
    SSH_FXP_EXTENDED: "extended",
}

_REPLY_OPS: Final[dict[int, str]] = {
    SSH_FXP_VERSION: "version", SSH_FXP_STATUS: "status", SSH_FXP_HANDLE: "handle",
    SSH_FXP_DATA: "data", SSH_FXP_NAME: "name", SSH_FXP_ATTRS: "attrs",
    SSH_FXP_EXTENDED_REPLY: "extended_reply",
}

#: Extended requests this module decodes (OpenSSH's PROTOCOL file, section 4,
#: and draft-ietf-secsh-filexfer-extensions-00).
KNOWN_EXTENSIONS: Final = frozenset({
    "posix-rename@openssh.com", "hardlink@openssh.com", "statvfs@openssh.com",
    "fstatvfs@openssh.com", "fsync@openssh.com", "lsetstat@openssh.com",
    "limits@openssh.com", "expand-path@openssh.com", "home-directory", "copy-data",
    "users-groups-by-id@openssh.com",
})

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_STATUS_HEAD = struct.Struct(">IBII")
_WRITE_TAIL = struct.Struct(">QI")
_REQUEST_HEAD = struct.Struct(">IBI")


class SftpProtocolError(Exception):
    """The peer sent bytes that are not valid SFTP version 3.

    The gateway ends the channel: nothing after a bad packet is forwarded.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def packet_name(packet_type: int) -> str:
    """``SSH_FXP_OPEN`` for 3 ...; ``packet type 42`` for a type SFTP v3 does not define."""
    return PACKET_NAMES.get(packet_type) or f"packet type {packet_type}"


# --- framing ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Packet:
    """One whole SFTP packet as it was on the wire."""

    #: The exact bytes, length prefix included: forward these unchanged.
    raw: bytes = field(repr=False)
    type: int
    #: None for SSH_FXP_INIT and SSH_FXP_VERSION, which carry a version instead.
    request_id: int | None

    @property
    def name(self) -> str:
        return packet_name(self.type)


class SftpFramer:
    """Splits one direction's byte stream into :class:`Packet` values.

    ``peer`` names the sender in error messages ("client", "server").
    """

    __slots__ = ("_buf", "_error", "max_packet", "peer")

    def __init__(self, max_packet: int = MAX_PACKET, peer: str = "peer") -> None:
        if max_packet < 5:
            raise ValueError("max_packet must be at least 5 bytes (type and request id)")
        self.max_packet = max_packet
        self.peer = peer
        self._buf = bytearray()
        self._error: SftpProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete packet held until the rest arrives."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Packet]:
        """Add bytes from the peer; return the packets they complete, in order."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        src: bytes | bytearray | memoryview
        if buf:
            buf += data
            src = buf
        else:
            src = data
        n = len(src)
        out: list[Packet] = []
        pos = 0
        limit = self.max_packet
        unpack = _U32.unpack_from
        with memoryview(src) as mv:
            while n - pos >= 4:
                (length,) = unpack(src, pos)
                if length < 5 or length > limit:
                    raise self._bad_length(length)
                end = pos + 4 + length
                if end > n:
                    break
                t = src[pos + 4]
                rid = None if t in (SSH_FXP_INIT, SSH_FXP_VERSION) else unpack(src, pos + 5)[0]
                # The one copy: unless the chunk is exactly one packet already.
                raw = src if isinstance(src, bytes) and end - pos == n else bytes(mv[pos:end])
                out.append(Packet(raw, t, rid))
                pos = end
            if src is not buf and pos < n:
                self._buf = bytearray(mv[pos:])
        if src is buf and pos:
            del buf[:pos]
        return out

    def _bad_length(self, length: int) -> SftpProtocolError:
        if length == 0:
            what = "a zero-length SFTP packet"
        elif length < 5:
            what = (f"an SFTP packet of {length} bytes, too short for a type byte "
                    "and a request id")
        else:
            what = (f"an SFTP packet of {length} bytes, over the {self.max_packet}-byte "
                    "limit (raise max_packet if the target allows bigger packets)")
        self._error = SftpProtocolError(
            f"the {self.peer} sent {what}; the stream is not valid SFTP and the channel "
            "must be closed")
        return self._error


# --- field reader -------------------------------------------------------------


class _Reader:
    """Cursor over one packet's fields; every read checks the packet's bounds."""

    __slots__ = ("buf", "pos", "what")

    def __init__(self, buf: bytes, pos: int, what: str) -> None:
        self.buf = buf
        self.pos = pos
        self.what = what

    def fail(self, problem: str) -> SftpProtocolError:
        return SftpProtocolError(f"malformed {self.what}: {problem}")

    def _need(self, n: int, name: str) -> None:
        left = len(self.buf) - self.pos
        if n > left:
            raise self.fail(f"the {name} runs past the end of the packet "
                            f"(needs {n} bytes, {left} left)")

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos

    def u32(self, name: str) -> int:
        self._need(4, name)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(v)

    def u64(self, name: str) -> int:
        self._need(8, name)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return int(v)

    def skip(self, n: int, name: str) -> None:
        self._need(n, name)
        self.pos += n

    def string_length(self, name: str) -> int:
        """Skip a string without copying it; return its length."""
        n = self.u32(f"length of the {name}")
        self._need(n, name)
        self.pos += n
        return n

    def raw_string(self, name: str) -> bytes:
        n = self.u32(f"length of the {name}")
        self._need(n, name)
        v = self.buf[self.pos : self.pos + n]
        self.pos += n
        return v

    def text(self, name: str) -> str:
        """A string that names something (path, extension, user): no NUL allowed."""
        v = self.raw_string(name)
        if b"\0" in v:
            raise self.fail(f"the {name} contains a NUL byte")
        return v.decode("utf-8", "surrogateescape")

    def handle(self, name: str = "handle") -> bytes:
        v = self.raw_string(name)
        if len(v) > MAX_HANDLE:
            raise self.fail(f"the {name} is {len(v)} bytes long; SFTP allows at most "
                            f"{MAX_HANDLE}")
        return v

    def attrs(self) -> tuple[int | None, int | None]:
        """An ATTRS structure: (size, permissions), each None when absent."""
        flags = self.u32("attribute flags")
        size = perms = None
        if flags & SSH_FILEXFER_ATTR_SIZE:
            size = self.u64("size attribute")
        if flags & SSH_FILEXFER_ATTR_UIDGID:
            self.skip(8, "uid/gid attribute")
        if flags & SSH_FILEXFER_ATTR_PERMISSIONS:
            perms = self.u32("permissions attribute")
        if flags & SSH_FILEXFER_ATTR_ACMODTIME:
            self.skip(8, "atime/mtime attribute")
        if flags & SSH_FILEXFER_ATTR_EXTENDED:
            count = self.u32("extended attribute count")
            if count * 8 > self.left:
                raise self.fail(f"{count} extended attributes cannot fit in the "
                                f"{self.left} bytes left")
            for _ in range(count):
                self.string_length("extended attribute type")
                self.string_length("extended attribute data")
        return size, perms


# --- requests -----------------------------------------------------------------


def open_mode(pflags: int) -> str:
    """How an OPEN with these flags uses the file: "read", "write" or "read_write".

    Any flag that can change the file (WRITE, APPEND, CREAT, TRUNC, EXCL) makes
    it a write, whatever the READ bit says.
    """
    if pflags & WRITE_FLAGS:
        return "read_write" if pflags & SSH_FXF_READ else "write"
    return "read"


@dataclass(frozen=True, slots=True)
class SftpRequest:
    """One client request, decoded.

    ``paths`` are as the client sent them (see :func:`request_action` for the
    absolute form). SSH_FXP_SYMLINK's two paths are in OpenSSH's order
    (PROTOCOL 4.1): the link's target first, the new link's path second.
    """

    request_id: int | None
    op: str
    type: int
    paths: tuple[str, ...] = ()
    handle: bytes | None = None
    offset: int | None = None
    #: READ: bytes asked for; copy-data: read-data-length (0 means up to EOF).
    length: int | None = None
    #: WRITE: length of the data carried (the data itself is not copied).
    data_len: int | None = None
    pflags: int | None = None
    #: The size in the request's ATTRS (OPEN, SETSTAT, FSETSTAT, MKDIR, lsetstat).
    attrs_size: int | None = None
    attrs_permissions: int | None = None
    #: copy-data: the handle written to and the offset written at.
    write_handle: bytes | None = None
    write_offset: int | None = None
    #: home-directory: the user name asked about (not a path).
    user: str | None = None
    #: SSH_FXP_INIT: the client's protocol version.
    version: int | None = None
    #: False for a request type or extension this module does not know.
    known: bool = True

    @property
    def mode(self) -> str | None:
        """OPEN: "read", "write" or "read_write" (see :func:`open_mode`)."""
        return None if self.pflags is None else open_mode(self.pflags)

    @property
    def creates(self) -> bool:
        return self.pflags is not None and bool(self.pflags & SSH_FXF_CREAT)

    @property
    def truncates(self) -> bool:
        return self.pflags is not None and bool(self.pflags & SSH_FXF_TRUNC)

    @property
    def appends(self) -> bool:
        return self.pflags is not None and bool(self.pflags & SSH_FXF_APPEND)

    @property
    def extension(self) -> str | None:
        """The extension's name for an SSH_FXP_EXTENDED request."""
        return self.op[9:] if self.op.startswith("extended:") else None


def _where(packet: Packet) -> str:
    if packet.request_id is None:
        return packet.name
    return f"{packet.name} packet (request {packet.request_id})"


def decode_request(packet: Packet) -> SftpRequest:
    """Decode a packet the client sent. Raises :class:`SftpProtocolError`."""
    t = packet.type
    rid = packet.request_id
    if t == SSH_FXP_INIT:
        r = _Reader(packet.raw, 5, "SSH_FXP_INIT packet")
        return SftpRequest(None, "init", t, version=r.u32("version"))
    if rid is None:  # SSH_FXP_VERSION from the client
        raise SftpProtocolError(
            "the client sent SSH_FXP_VERSION, which only the server sends; "
            "the peer has the roles of the SFTP channel reversed")
    op = _REQUEST_OPS.get(t)
    if op is None:
        return SftpRequest(rid, f"unknown:{t}", t, known=False)
    if t == SSH_FXP_WRITE:
        # The hot path of uploads: a well-formed WRITE without the field reader.
        raw = packet.raw
        n = len(raw)
        if n >= 13:
            (hlen,) = _U32.unpack_from(raw, 9)
            at = 13 + hlen
            if hlen <= MAX_HANDLE and at + 12 <= n:
                off, dlen = _WRITE_TAIL.unpack_from(raw, at)
                if at + 12 + dlen <= n:
                    return SftpRequest(rid, "write", t, handle=raw[13:at], offset=off,
                                       data_len=dlen)
    r = _Reader(packet.raw, 9, _where(packet))
    if t == SSH_FXP_WRITE:
        h = r.handle()
        off = r.u64("offset")
        return SftpRequest(rid, op, t, handle=h, offset=off, data_len=r.string_length("data"))
    if t == SSH_FXP_READ:
        h = r.handle()
        off = r.u64("offset")
        return SftpRequest(rid, op, t, handle=h, offset=off, length=r.u32("length"))
    if t in (SSH_FXP_CLOSE, SSH_FXP_FSTAT, SSH_FXP_READDIR):
        return SftpRequest(rid, op, t, handle=r.handle())
    if t == SSH_FXP_OPEN:
        path = r.text("filename")
        pflags = r.u32("pflags")
        size, perms = r.attrs()
        return SftpRequest(rid, op, t, paths=(path,), pflags=pflags, attrs_size=size,
                           attrs_permissions=perms)
    if t in (SSH_FXP_SETSTAT, SSH_FXP_MKDIR):
        path = r.text("path")
        size, perms = r.attrs()
        return SftpRequest(rid, op, t, paths=(path,), attrs_size=size,
                           attrs_permissions=perms)
    if t == SSH_FXP_FSETSTAT:
        h = r.handle()
        size, perms = r.attrs()
        return SftpRequest(rid, op, t, handle=h, attrs_size=size, attrs_permissions=perms)
    if t == SSH_FXP_RENAME:
        return SftpRequest(rid, op, t, paths=(r.text("old path"), r.text("new path")))
    if t == SSH_FXP_SYMLINK:
        return SftpRequest(rid, op, t, paths=(r.text("target path"), r.text("link path")))
    if t == SSH_FXP_EXTENDED:
        return _decode_extended(r, rid)
    # LSTAT, STAT, OPENDIR, REMOVE, RMDIR, REALPATH, READLINK: one path.
    return SftpRequest(rid, op, t, paths=(r.text("path"),))


def _decode_extended(r: _Reader, rid: int) -> SftpRequest:
    name = r.text("extended request name")
    op = f"extended:{name}"
    t = SSH_FXP_EXTENDED
    r.what = f"SSH_FXP_EXTENDED {name} packet (request {rid})"
    if name not in KNOWN_EXTENSIONS:
        return SftpRequest(rid, op, t, known=False)
    if name in ("posix-rename@openssh.com", "hardlink@openssh.com"):
        return SftpRequest(rid, op, t, paths=(r.text("old path"), r.text("new path")))
    if name in ("statvfs@openssh.com", "expand-path@openssh.com"):
        return SftpRequest(rid, op, t, paths=(r.text("path"),))
    if name in ("fstatvfs@openssh.com", "fsync@openssh.com"):
        return SftpRequest(rid, op, t, handle=r.handle())
    if name == "lsetstat@openssh.com":
        path = r.text("path")
        size, perms = r.attrs()
        return SftpRequest(rid, op, t, paths=(path,), attrs_size=size, attrs_permissions=perms)
    if name == "home-directory":
        return SftpRequest(rid, op, t, user=r.text("user name"))
    if name == "copy-data":
        rh = r.handle("read-from handle")
        roff = r.u64("read-from offset")
        rlen = r.u64("read-data length")
        wh = r.handle("write-to handle")
        woff = r.u64("write-to offset")
        return SftpRequest(rid, op, t, handle=rh, offset=roff, length=rlen,
                           write_handle=wh, write_offset=woff)
    if name == "users-groups-by-id@openssh.com":
        r.string_length("uid list")
        r.string_length("gid list")
    # limits@openssh.com has no fields.
    return SftpRequest(rid, op, t)


# --- replies ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SftpReply:
    """One server packet, decoded."""

    request_id: int | None
    op: str
    type: int
    #: STATUS: the code (SSH_FX_*) and the server's message.
    status_code: int | None = None
    message: str = ""
    #: HANDLE: the handle the server issued.
    handle: bytes | None = None
    #: DATA: length of the data; EXTENDED_REPLY: length of the reply's fields.
    data_len: int | None = None
    #: NAME: the first entry's filename (the answer to REALPATH) and the number
    #: of entries.
    name: str | None = None
    count: int | None = None
    #: ATTRS: the size attribute, if present.
    size: int | None = None
    permissions: int | None = None
    #: VERSION: the server's protocol version and its extensions (name, data).
    version: int | None = None
    extensions: tuple[tuple[str, bytes], ...] = ()

    @property
    def ok(self) -> bool:
        """True for a STATUS of SSH_FX_OK."""
        return self.status_code == SSH_FX_OK


def decode_reply(packet: Packet) -> SftpReply:
    """Decode a packet the server sent. Raises :class:`SftpProtocolError`."""
    t = packet.type
    rid = packet.request_id
    op = _REPLY_OPS.get(t)
    if op is None:
        raise SftpProtocolError(
            f"the server sent {packet_name(t)}, which is not an SFTP version 3 reply")
    if t == SSH_FXP_VERSION:
        r = _Reader(packet.raw, 5, "SSH_FXP_VERSION packet")
        version = r.u32("version")
        exts: list[tuple[str, bytes]] = []
        while r.left:
            ext = r.text("extension name")
            exts.append((ext, r.raw_string(f"data of extension {ext}")))
        return SftpReply(None, op, t, version=version, extensions=tuple(exts))
    assert rid is not None
    r = _Reader(packet.raw, 9, _where(packet))
    if t == SSH_FXP_STATUS:
        code = r.u32("status code")
        message = ""
        if r.left:  # some version 3 servers end the packet after the code
            message = r.raw_string("error message").decode("utf-8", "replace")
        return SftpReply(rid, op, t, status_code=code, message=message)
    if t == SSH_FXP_DATA:
        return SftpReply(rid, op, t, data_len=r.string_length("data"))
    if t == SSH_FXP_HANDLE:
        return SftpReply(rid, op, t, handle=r.handle())
    if t == SSH_FXP_NAME:
        count = r.u32("name count")
        name = None
        if count:
            # Each entry is at least a filename, a longname and ATTRS flags.
            if count * 12 > r.left:
                raise r.fail(f"{count} names cannot fit in the {r.left} bytes left")
            name = r.text("filename")
            r.string_length("longname")
            r.attrs()
            for _ in range(count - 1):  # the rest are checked, not decoded
                r.string_length("filename")
                r.string_length("longname")
                r.attrs()
        return SftpReply(rid, op, t, name=name, count=count)
    if t == SSH_FXP_ATTRS:
        size, perms = r.attrs()
        return SftpReply(rid, op, t, size=size, permissions=perms)
    return SftpReply(rid, op, t, data_len=r.left)  # EXTENDED_REPLY


def realpath_request(request_id: int, path: str = ".") -> bytes:
    """A whole SSH_FXP_REALPATH packet.

    Modern ``scp`` never asks for its start directory, so relative paths stay
    relative; the gateway can ask the target itself (with an id the client does
    not use, registering the request with :meth:`SftpTracker.on_request` and
    not forwarding the reply) to learn :attr:`SftpTracker.home`.
    """
    text = path.encode("utf-8", "surrogateescape")
    return (_REQUEST_HEAD.pack(1 + 4 + 4 + len(text), SSH_FXP_REALPATH, request_id)
            + _U32.pack(len(text)) + text)


def status_reply(request_id: int, code: int, message: str) -> bytes:
    """A whole SSH_FXP_STATUS packet (empty language tag) answering ``request_id``.

    The gateway sends it to the client in place of forwarding a refused request.
    """
    text = message.encode("utf-8", "surrogateescape")
    body_len = 1 + 4 + 4 + 4 + len(text) + 4
    return (_STATUS_HEAD.pack(body_len, SSH_FXP_STATUS, request_id, code)
            + _U32.pack(len(text)) + text + b"\0\0\0\0")


# --- policy view ----------------------------------------------------------------

_STAT_OPS: Final = frozenset({"stat", "lstat", "realpath", "readlink",
                              "extended:statvfs@openssh.com"})
_ONE_PATH_KINDS: Final = {
    "opendir": "list_dir", "remove": "remove", "mkdir": "mkdir", "rmdir": "rmdir",
    "setstat": "set_attributes", "extended:lsetstat@openssh.com": "set_attributes",
}
# Requests that act through a handle opened (and authorised) earlier, or carry
# no file name at all.
_NO_ACTION_OPS: Final = frozenset({
    "init", "read", "write", "close", "fstat", "fsetstat", "readdir",
    "extended:fstatvfs@openssh.com", "extended:fsync@openssh.com", "extended:copy-data",
    "extended:limits@openssh.com", "extended:users-groups-by-id@openssh.com",
})


def request_action(
    req: SftpRequest, resolve: Callable[[str], str],
) -> tuple[str, tuple[str, ...]] | None:
    """What ``req`` does, for the policy: (kind, absolute paths), or None.

    ``resolve`` makes a path absolute (usually :meth:`SftpTracker.resolve`).
    Kinds and their paths:

    - ``read_file`` / ``write_file`` (OPEN, by :func:`open_mode`), ``list_dir``
      (OPENDIR), ``remove``, ``mkdir``, ``rmdir``: the path.
    - ``stat``: STAT, LSTAT, REALPATH, READLINK, statvfs and expand-path: the
      path; home-directory: no path (it names a user).
    - ``set_attributes``: SETSTAT and lsetstat: the path.
    - ``rename`` (RENAME, posix-rename): the source, then the destination.
    - ``symlink`` (SYMLINK, hardlink): the new link, then what it points to
      (a relative symlink target is resolved against the link's directory).
    - ``unknown``: a request type or extension this module does not decode.

    None: INIT, requests on an open handle (READ, WRITE, CLOSE, FSTAT,
    FSETSTAT, READDIR, fstatvfs, fsync, copy-data), the session queries
    limits and users-groups-by-id, and REALPATH of "." or "" (the start
    directory, which every OpenSSH client asks for first and which
    :class:`SftpTracker` needs to resolve relative paths).
    """
    op = req.op
    if op in _NO_ACTION_OPS:
        return None
    if op == "realpath" and req.paths[0] in ("", "."):
        return None  # the session's start directory: every client asks for it first
    if not req.known:
        return ("unknown", ())
    paths = req.paths
    if op == "open":
        return ("read_file" if req.mode == "read" else "write_file", (resolve(paths[0]),))
    kind = _ONE_PATH_KINDS.get(op)
    if kind is not None:
        return (kind, (resolve(paths[0]),))
    if op in _STAT_OPS:
        return ("stat", (resolve(paths[0]),))
    if op in ("rename", "extended:posix-rename@openssh.com"):
        return ("rename", (resolve(paths[0]), resolve(paths[1])))
    if op == "symlink":
        link = resolve(paths[1])
        return ("symlink", (link, resolve(posixpath.join(posixpath.dirname(link), paths[0]))))
    if op == "extended:hardlink@openssh.com":
        return ("symlink", (resolve(paths[1]), resolve(paths[0])))
    if op == "extended:expand-path@openssh.com":
        path = paths[0]
        if path == "~" or path.startswith("~/"):
            path = path[2:]  # the session's own home: relative to it
        return ("stat", (resolve(path),))
    if op == "extended:home-directory":
        return ("stat", ())
    return ("unknown", ())  # pragma: no cover - every known op is listed above


# --- request/reply tracking ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileEvent:
    """What one file operation did, for the session recording.

    ``op`` is the :func:`request_action` kind (``read_file``, ``write_file``,
    ``list_dir``, ``remove``, ``rename``, ``mkdir``, ``rmdir``, ``symlink``,
    ``set_attributes``); ``request`` the SFTP op that did it.
    """

    op: str
    path: str
    #: rename: the destination; symlink: what the link points to (as given);
    #: hardlink: the existing file.
    target: str | None = None
    mode: str | None = None
    bytes_read: int = 0
    bytes_written: int = 0
    #: list_dir: the entries the server returned ("." and ".." included).
    entries: int = 0
    ok: bool = True
    #: The status code of the failure (or of the single-shot operation).
    status: int | None = None
    message: str = ""
    #: False when the channel ended before the handle was closed.
    complete: bool = True
    request: str = ""


@dataclass(frozen=True, slots=True)
class HandleInfo:
    """An open handle as the tracker knows it."""

    path: str
    kind: str  # read_file, write_file or list_dir
    mode: str | None


@dataclass(slots=True, eq=False)
class _Open:
    path: str
    kind: str
    mode: str | None
    request: str
    bytes_read: int = 0
    bytes_written: int = 0
    entries: int = 0
    ok: bool = True
    status: int | None = None
    message: str = ""

    def fail(self, reply: SftpReply) -> None:
        if not self.ok:
            return  # keep the first failure
        self.ok = False
        if reply.type == SSH_FXP_STATUS:
            self.status, self.message = reply.status_code, reply.message
        else:
            self.status, self.message = SSH_FX_FAILURE, f"unexpected {reply.op} reply"

    def event(self, *, complete: bool = True) -> FileEvent:
        return FileEvent(
            self.kind, self.path, mode=self.mode, bytes_read=self.bytes_read,
            bytes_written=self.bytes_written, entries=self.entries, ok=self.ok,
            status=self.status, message=self.message, complete=complete,
            request=self.request)


# Single-shot requests that produce a FileEvent once their STATUS arrives.
_SINGLE_SHOT: Final = {
    "remove": "remove", "mkdir": "mkdir", "rmdir": "rmdir", "setstat": "set_attributes",
    "extended:lsetstat@openssh.com": "set_attributes", "rename": "rename",
    "extended:posix-rename@openssh.com": "rename", "symlink": "symlink",
    "extended:hardlink@openssh.com": "symlink",
}
_NO_EVENTS: list[FileEvent] = []  # shared empty result; callers must not mutate it


class SftpTracker:
    """Pairs requests with replies and keeps per-handle state for one channel.

    Call :meth:`on_request` for every request forwarded to the server (not for
    refused ones), :meth:`on_reply` for every reply, and :meth:`finish` when
    the channel ends.
    """

    __slots__ = ("_dup", "_handles", "_pending", "home", "reused_ids",
                 "unexpected_replies", "unmatched_replies", "version")

    def __init__(self, home: str | None = None) -> None:
        self._pending: dict[int, SftpRequest] = {}
        # Requests sent under an id that was still pending, oldest first.
        self._dup: dict[int, deque[SftpRequest]] = {}
        self._handles: dict[bytes, _Open] = {}
        #: The session's home directory: the first successful realpath(".").
        self.home = home
        #: The server's protocol version (from SSH_FXP_VERSION).
        self.version: int | None = None
        #: Requests sent under an id still awaiting its reply.
        self.reused_ids = 0
        #: Replies whose request id matched no pending request (ignored).
        self.unmatched_replies = 0
        #: Replies of a type the request does not call for (counted as failures).
        self.unexpected_replies = 0

    @property
    def pending(self) -> int:
        """Requests still awaiting their reply."""
        return len(self._pending) + sum(len(q) for q in self._dup.values())

    def resolve(self, path: str) -> str:
        """``path`` made absolute against :attr:`home` and normalised.

        ``..`` never climbs above ``/``. A relative path stays relative while
        the home directory is unknown; an empty path means the home directory.
        """
        if not path:
            path = "."
        if path[0] != "/":
            if self.home is None:
                return posixpath.normpath(path)
            path = posixpath.join(self.home, path)
        p = posixpath.normpath(path)
        if p.startswith("//"):  # normpath keeps POSIX's implementation-defined "//"
            p = "/" + p.lstrip("/")
        return p

    def handle_info(self, handle: bytes) -> HandleInfo | None:
        """The file or directory an open handle stands for, if the tracker knows it."""
        st = self._handles.get(handle)
        return None if st is None else HandleInfo(st.path, st.kind, st.mode)

    def on_request(self, req: SftpRequest) -> None:
        """Register a request forwarded to the server."""
        rid = req.request_id
        if rid is None:
            return
        pending = self._pending
        if rid in pending:
            self.reused_ids += 1
            self._dup.setdefault(rid, deque()).append(req)
        else:
            pending[rid] = req

    def _take(self, rid: int) -> SftpRequest | None:
        req = self._pending.pop(rid, None)
        if req is not None and self._dup:
            queue = self._dup.get(rid)
            if queue:
                self._pending[rid] = queue.popleft()
                if not queue:
                    del self._dup[rid]
        return req

    def on_reply(self, reply: SftpReply) -> list[FileEvent]:
        """Attribute a reply to its request; return the events it completes."""
        rid = reply.request_id
        if rid is None:
            self.version = reply.version
            return _NO_EVENTS
        req = self._take(rid)
        if req is None:
            self.unmatched_replies += 1
            return _NO_EVENTS
        op = req.op
        rt = reply.type
        if op == "write":
            st = self._handles.get(req.handle) if req.handle is not None else None
            if rt != SSH_FXP_STATUS:
                self.unexpected_replies += 1
            if st is not None:
                if reply.status_code == SSH_FX_OK:
                    st.bytes_written += req.data_len or 0
                else:
                    st.fail(reply)
            return _NO_EVENTS
        if op == "read":
            st = self._handles.get(req.handle) if req.handle is not None else None
            if st is not None:
                if rt == SSH_FXP_DATA:
                    st.bytes_read += reply.data_len or 0
                elif reply.status_code != SSH_FX_EOF:
                    st.fail(reply)
            return _NO_EVENTS
        if op == "readdir":
            st = self._handles.get(req.handle) if req.handle is not None else None
            if st is not None:
                if rt == SSH_FXP_NAME:
                    st.entries += reply.count or 0
                elif reply.status_code != SSH_FX_EOF:
                    st.fail(reply)
            return _NO_EVENTS
        if op == "close":
            st = self._handles.pop(req.handle, None) if req.handle is not None else None
            if st is None:
                return _NO_EVENTS
            if not reply.ok:
                st.fail(reply)
            return [st.event()]
        if op in ("open", "opendir"):
            return self._on_open(req, reply)
        kind = _SINGLE_SHOT.get(op)
        if kind is not None:
            return [self._single_shot(req, kind, reply)]
        if op == "realpath" and rt == SSH_FXP_NAME and self.home is None:
            if req.paths[0] in (".", "") and reply.name and reply.name.startswith("/"):
                self.home = self.resolve(reply.name)
            return _NO_EVENTS
        if op == "extended:copy-data" and reply.ok and req.length:
            # The requested length: the server stops early at end of file.
            src = self._handles.get(req.handle) if req.handle is not None else None
            dst = self._handles.get(req.write_handle) if req.write_handle is not None else None
            if src is not None:
                src.bytes_read += req.length
            if dst is not None:
                dst.bytes_written += req.length
        return _NO_EVENTS

    def _on_open(self, req: SftpRequest, reply: SftpReply) -> list[FileEvent]:
        if req.op == "open":
            kind = "read_file" if req.mode == "read" else "write_file"
            mode = req.mode
        else:
            kind, mode = "list_dir", None
        path = self.resolve(req.paths[0])
        if reply.type == SSH_FXP_HANDLE and reply.handle is not None:
            out: list[FileEvent] = []
            old = self._handles.get(reply.handle)
            if old is not None:  # the server reused a handle we never saw closed
                out.append(old.event(complete=False))
            self._handles[reply.handle] = _Open(path, kind, mode, req.op)
            return out
        st = _Open(path, kind, mode, req.op)
        if reply.type != SSH_FXP_STATUS:
            self.unexpected_replies += 1
        st.fail(reply)
        return [st.event()]

    def _single_shot(self, req: SftpRequest, kind: str, reply: SftpReply) -> FileEvent:
        paths = req.paths
        target: str | None = None
        if req.op == "symlink":  # OpenSSH order: target, then the link
            path, target = self.resolve(paths[1]), paths[0]
        elif kind == "symlink":  # hardlink: old (existing), new (the link)
            path, target = self.resolve(paths[1]), self.resolve(paths[0])
        elif kind == "rename":
            path, target = self.resolve(paths[0]), self.resolve(paths[1])
        else:
            path = self.resolve(paths[0])
        if reply.type != SSH_FXP_STATUS:
            self.unexpected_replies += 1
            return FileEvent(kind, path, target, ok=False, status=SSH_FX_FAILURE,
                             message=f"unexpected {reply.op} reply", request=req.op)
        return FileEvent(kind, path, target, ok=reply.ok, status=reply.status_code,
                         message=reply.message, request=req.op)

    def finish(self) -> list[FileEvent]:
        """The channel ended: events for handles never closed (``complete=False``)."""
        out = [st.event(complete=False) for st in self._handles.values()]
        self._handles.clear()
        self._pending.clear()
        self._dup.clear()
        return out
