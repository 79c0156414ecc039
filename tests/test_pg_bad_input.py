"""Bad input on the PostgreSQL listener: raw-socket clients speaking the wire protocol by hand.

Every case checks three things: the client gets a clear FATAL ErrorResponse
where the protocol allows one (SQLSTATE and message text), a session that got
past authentication is recorded with its end reason, and the gateway keeps
serving others (a psycopg query succeeds right after and the number of live
sessions returns to where it was).
"""

from __future__ import annotations

import logging
import resource
import socket
import struct
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest

from gateway_harness import GatewayHarness, wait_until
from pathwarden.model import SessionRecord, StatementRecord
from pathwarden.protocols.postgres import messages as m

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")

Frame = tuple[bytes, bytes]  # (type byte, payload)


# --------------------------------------------------------------------------- helpers




class RawClient:
    """A blocking socket that speaks the PostgreSQL protocol one frame at a time."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buf = b""

    @property
    def addr(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, n: int) -> bool:
        while len(self._buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return False
            self._buf += chunk
        return True

    def recv_byte(self) -> bytes:
        if not self._fill(1):
            return b""
        b, self._buf = self._buf[:1], self._buf[1:]
        return b

    def read_frame(self) -> Frame | None:
        """The next backend message, or None at EOF."""
        if not self._fill(5):
            assert not self._buf, f"connection closed inside a frame header: {self._buf!r}"
            return None
        t = self._buf[:1]
        (length,) = _U32.unpack_from(self._buf, 1)
        assert 4 <= length < 1 << 20, f"implausible backend frame length {length}"
        if not self._fill(1 + length):
            raise AssertionError("connection closed inside a backend frame")
        payload = self._buf[5 : 1 + length]
        self._buf = self._buf[1 + length :]
        return t, payload

    def read_until_closed(self) -> list[Frame]:
        frames = []
        while (frame := self.read_frame()) is not None:
            frames.append(frame)
        return frames

    def read_until(self, type_byte: bytes) -> list[Frame]:
        frames = []
        while True:
            frame = self.read_frame()
            assert frame is not None, f"closed before {type_byte!r}; got {frames}"
            frames.append(frame)
            if frame[0] == type_byte:
                return frames
            if frame[0] == b"E":
                raise AssertionError(f"unexpected error: {error_fields(frame[1])}")

    def startup(self, user: str = "ci-test", database: str = "test-db") -> None:
        self.send(m.StartupMessage(params={"user": user, "database": database}).encode())

    def expect_password_request(self) -> None:
        frame = self.read_frame()
        assert frame is not None
        assert frame[0] == b"R", frame
        assert _I32.unpack_from(frame[1])[0] == m.AUTH_CLEARTEXT

    def login(self, token: str, user: str = "ci-test", database: str = "test-db") -> list[Frame]:
        """Startup + token; returns everything up to the first ReadyForQuery."""
        self.startup(user, database)
        self.expect_password_request()
        self.send(password_frame(token))
        frames = self.read_until(b"Z")
        assert frames[0] == (b"R", _I32.pack(m.AUTH_OK)), frames[0]
        return frames

    def is_closed(self, timeout: float = 5.0) -> bool:
        """Whether the peer closes the connection (EOF or reset) within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self._buf += chunk
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def reset(self) -> None:
        """Abort with a TCP RST instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def password_frame(token: str) -> bytes:
    return m.PasswordMessage(data=token.encode() + b"\0").encode()


def error_fields(payload: bytes) -> dict[str, str]:
    return dict(m.ErrorResponse.decode(payload).fields)


def fatal_error(frames: list[Frame]) -> dict[str, str]:
    """The single ErrorResponse among ``frames``, checked to be FATAL."""
    errors = [error_fields(p) for t, p in frames if t == b"E"]
    assert len(errors) == 1, f"expected one ErrorResponse, got {frames}"
    err = errors[0]
    assert (err["S"], err["V"]) == ("FATAL", "FATAL"), err
    return err


# The store is read without GatewayHarness.flush(): a flush concurrent with the audit
# writer's own can overwrite a session's end with its older start (/tmp/pw-bugs
# failures-2). The writer flushes on every session event (interval 50 ms), so poll.


def stored_sessions(gw: GatewayHarness) -> list[SessionRecord]:
    return gw.call(gw.gateway.store.list_sessions(limit=500))


def stored_statements(gw: GatewayHarness, session_id: str) -> list[StatementRecord]:
    return gw.call(gw.gateway.store.list_statements(session_id))


def ended_session(gw: GatewayHarness, addr: str, timeout: float = 5.0) -> SessionRecord:
    """The recorded session of the client at ``addr`` once it has ended."""

    def find() -> SessionRecord | None:
        for rec in stored_sessions(gw):
            if rec.client_addr == addr and rec.ended_at is not None:
                return rec
        return None

    rec: SessionRecord = wait_until(find, timeout, f"ended session of {addr}")
    return rec


def sessions_of(gw: GatewayHarness, addr: str) -> list[SessionRecord]:
    time.sleep(0.2)  # let the audit writer store anything queued
    return [rec for rec in stored_sessions(gw) if rec.client_addr == addr]


def handshakes(gw: GatewayHarness) -> int:
    return sum(len(lst._handshakes) for lst in gw.gateway.listeners)


def assert_still_serving(gw: GatewayHarness, baseline: int) -> None:
    with psycopg.connect(gw.dsn(), connect_timeout=5) as conn:
        assert conn.execute("select 'still serving'").fetchone() == ("still serving",)
    wait_until(lambda: gw.live_sessions() == baseline, what=f"live sessions back to {baseline}")
    wait_until(lambda: handshakes(gw) == 0, what="no handshake in progress")


@pytest.fixture
def gw(gateway: GatewayHarness, caplog: pytest.LogCaptureFixture,
       request: pytest.FixtureRequest) -> Iterator[GatewayHarness]:
    """The shared gateway; after the test, it must still serve and hold no leftovers.

    Bad input is expected: the gateway must handle it without logging an error
    (a traceback at ERROR means an unhandled code path).
    """
    wait_until(lambda: handshakes(gateway) == 0, what="idle listener before the test")
    baseline = gateway.live_sessions()
    caplog.set_level(logging.INFO, logger="pathwarden")
    yield gateway
    assert_still_serving(gateway, baseline)
    if request.node.get_closest_marker("xfail") is None:
        errors = [r for r in caplog.records
                  if r.name.startswith("pathwarden") and r.levelno >= logging.ERROR]
        assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]


@pytest.fixture
def client(gw: GatewayHarness) -> Iterator[RawClient]:
    c = RawClient(gw.port)
    yield c
    c.close()


# --------------------------------------------------------------------------- startup packet


def _startup_body(params: bytes, version: int = m.PROTOCOL_3_0) -> bytes:
    body = _I32.pack(version) + params
    return _I32.pack(len(body) + 4) + body


@pytest.mark.parametrize("length", [0, 4, 7, 10_001, 0x7FFFFFFF, 0xFFFFFFFF])
def test_startup_packet_with_bad_length(gw: GatewayHarness, client: RawClient,
                                        length: int) -> None:
    client.send(_U32.pack(length))
    err = fatal_error(client.read_until_closed())
    assert err["C"] == "08P01"
    assert err["M"] == f"pathwarden: invalid length of startup packet: {length}"
    assert sessions_of(gw, client.addr) == []


def test_startup_with_protocol_2_is_refused(gw: GatewayHarness, client: RawClient) -> None:
    client.send(m.StartupMessage(protocol_version=2 << 16,
                                 params={"user": "ci-test", "database": "test-db"}).encode())
    err = fatal_error(client.read_until_closed())
    assert err["C"] == "08P01"
    assert err["M"] == ("pathwarden: unsupported frontend protocol 2.0: "
                        "pathwarden speaks protocol 3")


def test_startup_without_user_is_refused(gw: GatewayHarness, client: RawClient) -> None:
    client.send(m.StartupMessage(params={"database": "test-db"}).encode())
    err = fatal_error(client.read_until_closed())
    assert err["C"] == "08P01"
    assert err["M"] == "pathwarden: no PostgreSQL user name specified in startup packet"


def test_startup_with_unterminated_parameter(gw: GatewayHarness, client: RawClient) -> None:
    client.send(_startup_body(b"user\0ci-test"))  # no NUL after the value, no final NUL
    err = fatal_error(client.read_until_closed())
    assert err["C"] == "08P01"
    assert err["M"] == "pathwarden: malformed startup message: unterminated string"


# --------------------------------------------------------------------------- during auth

_DURING_AUTH = {
    # An unknown type byte with a small, valid length.
    "garbage": (b"\x01" + _U32.pack(8) + b"junk", "08P01",
                "pathwarden: invalid frontend message type '\\x01' (0x01)"),
    # A well-formed message that is not allowed before authentication.
    "query": (m.Query(text="select 1").encode(), "08P01",
              "pathwarden: unexpected frontend message Query during authenticating"),
    # A password frame claiming 2 GB: before login only a token's worth is accepted.
    "huge-password": (b"p" + _U32.pack(0x80000000) + b"eyJ", "54000",
                      "pathwarden: message of 2147483649 bytes exceeds the limit of "
                      "16384 bytes"),
}


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "after-request"])
@pytest.mark.parametrize("case", sorted(_DURING_AUTH))
def test_garbage_after_valid_startup(gw: GatewayHarness, client: RawClient, case: str,
                                     pipelined: bool) -> None:
    data, sqlstate, message = _DURING_AUTH[case]
    startup = m.StartupMessage(params={"user": "ci-test", "database": "test-db"}).encode()
    if pipelined:
        client.send(startup + data)
        client.expect_password_request()
    else:
        client.send(startup)
        client.expect_password_request()
        client.send(data)
    err = fatal_error(client.read_until_closed())
    assert (err["C"], err["M"]) == (sqlstate, message)
    # Refused before authentication: recorded as a refusal, without a token.
    rec = ended_session(gw, client.addr)
    assert rec.end_reason == "client protocol error: " + message.removeprefix("pathwarden: ")
    assert rec.token_ref is None


def test_password_without_terminator(gw: GatewayHarness, client: RawClient) -> None:
    client.startup()
    client.expect_password_request()
    client.send(m.PasswordMessage(data=b"not-terminated").encode())
    err = fatal_error(client.read_until_closed())
    assert err["C"] == "08P01"
    assert err["M"] == "pathwarden: malformed PasswordMessage message: unterminated string"
    rec = ended_session(gw, client.addr)
    assert rec.end_reason == err["M"]
    assert rec.token_ref is None


# --------------------------------------------------------------------------- after auth


def test_oversized_query_frame_is_refused_without_allocating(
        gw: GatewayHarness, client: RawClient) -> None:
    client.login(gw.token())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.monotonic()
    client.send(b"Q" + _U32.pack(0x80000000) + b"select ")  # claims 2 GB
    err = fatal_error(client.read_until_closed())
    assert time.monotonic() - started < 2
    assert err["C"] == "54000"
    assert err["M"] == ("pathwarden: message of 2147483649 bytes exceeds the limit of "
                        "268435456 bytes")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 256, f"gateway process grew by {grown_mib:.0f} MiB"
    rec = ended_session(gw, client.addr)
    assert rec.end_reason == ("client protocol error: message of 2147483649 bytes exceeds "
                              "the limit of 268435456 bytes")
    assert stored_statements(gw, rec.id) == []


@pytest.mark.parametrize(("type_byte", "shown"), [(b"z", "'z' (0x7a)"), (b"\x00", "'\\x00' (0x00)"),
                                                  (b"R", "'R' (0x52)")])
def test_unknown_message_type_after_auth(gw: GatewayHarness, client: RawClient,
                                         type_byte: bytes, shown: str) -> None:
    client.login(gw.token())
    client.send(type_byte + _U32.pack(4))
    err = fatal_error(client.read_until_closed())
    assert err["C"] == "08P01"
    assert err["M"] == f"pathwarden: invalid frontend message type {shown}"
    rec = ended_session(gw, client.addr)
    assert rec.end_reason == f"client protocol error: invalid frontend message type {shown}"
    assert rec.token_ref is not None


def test_invalid_frame_length_after_auth(gw: GatewayHarness, client: RawClient) -> None:
    client.login(gw.token())
    client.send(b"Q" + _U32.pack(3))
    err = fatal_error(client.read_until_closed())
    assert (err["C"], err["M"]) == ("08P01", "pathwarden: invalid message length 3")
    assert ended_session(gw, client.addr).end_reason == (
        "client protocol error: invalid message length 3")


def _bind_frame(payload: bytes) -> bytes:
    return b"B" + _U32.pack(len(payload) + 4) + payload


_BAD_BINDS = {
    "format-code": (m.Bind(param_formats=(7,), params=(b"1",)).encode(),
                    "malformed Bind message: unknown format code 7"),
    "negative-length": (_bind_frame(b"\0\0" + _I16.pack(0) + _I16.pack(1) + _I32.pack(-5)
                                    + _I16.pack(0)),
                        "malformed Bind message: negative parameter length"),
    "count-too-big": (_bind_frame(b"\0\0" + _I16.pack(0) + _I16.pack(1000)),
                      "malformed Bind message: count 1000 exceeds message size"),
    "truncated-value": (_bind_frame(b"\0\0" + _I16.pack(0) + _I16.pack(1) + _I32.pack(100)
                                    + b"abc" + _I16.pack(0)),
                        "malformed Bind message: truncated value"),
    "format-mismatch": (m.Bind(param_formats=(0, 0), params=(b"1", b"2", b"3")).encode(),
                        "bind message has 2 parameter formats but 3 parameters"),
    "trailing-bytes": (_bind_frame(b"\0\0" + _I16.pack(0) + _I16.pack(0) + _I16.pack(0)
                                   + b"xx"),
                       "malformed Bind message: 2 unexpected trailing bytes"),
}


@pytest.mark.parametrize("case", sorted(_BAD_BINDS))
def test_malformed_bind(gw: GatewayHarness, client: RawClient, case: str) -> None:
    bind, message = _BAD_BINDS[case]
    client.login(gw.token())
    parse = m.Parse(query="select $1::int").encode()
    client.send(parse + bind + m.Execute().encode() + m.Sync().encode())
    frames = client.read_until_closed()
    err = fatal_error(frames)
    assert (err["C"], err["M"]) == ("08P01", f"pathwarden: {message}")
    assert b"Z" not in [t for t, _ in frames], "no ReadyForQuery after a fatal protocol error"
    rec = ended_session(gw, client.addr)
    assert rec.end_reason == f"client protocol error: {message}"


# --------------------------------------------------------------------------- TLS / GSS requests


def test_data_pipelined_after_ssl_request_is_refused(gw: GatewayHarness,
                                                     client: RawClient) -> None:
    startup = m.StartupMessage(params={"user": "ci-test", "database": "test-db"}).encode()
    client.send(m.SSLRequest().encode() + startup)  # CVE-2021-23214 pattern
    answer = client.recv_byte()
    assert answer != b"S", "gateway agreed to TLS with plaintext data already buffered"
    assert answer == b""
    assert client.is_closed()
    assert sessions_of(gw, client.addr) == []


def test_gssenc_request_is_answered_with_n(gw: GatewayHarness, client: RawClient) -> None:
    client.send(m.GSSENCRequest().encode())
    assert client.recv_byte() == b"N"
    # The client may go on with plaintext on the same connection.
    frames = client.login(gw.token())
    assert any(t == b"K" for t, _ in frames)
    client.send(m.Query(text="select 40 + 2").encode())
    frames = client.read_until(b"Z")
    rows = [m.DataRow.decode(p) for t, p in frames if t == b"D"]
    assert [r.values() for r in rows] == [[b"42"]]
    client.send(m.Terminate().encode())
    assert client.is_closed()
    rec = ended_session(gw, client.addr)
    assert rec.end_reason == "client terminated"
    # The audit writer may still be writing the statement when the session end shows.
    stmts = wait_until(lambda: stored_statements(gw, rec.id), what="statement recorded")
    assert [s.text for s in stmts] == ["select 40 + 2"]


def test_gssenc_then_ssl_request_then_pipelined_data(gw: GatewayHarness,
                                                     client: RawClient) -> None:
    client.send(m.GSSENCRequest().encode())
    assert client.recv_byte() == b"N"
    client.send(m.SSLRequest().encode() + b"Q\0\0\0\x0dselect 1\0")
    assert client.recv_byte() == b""


# --------------------------------------------------------------------------- disconnects


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_disconnects_mid_message(gw: GatewayHarness, client: RawClient,
                                        how: str) -> None:
    client.login(gw.token())
    query = m.Query(text="select 'never completed', " + "'x' || " * 20 + "'y'").encode()
    client.send(query[: len(query) // 2])
    addr = client.addr
    if how == "close":
        client.close()
    else:
        client.reset()
    rec = ended_session(gw, addr)
    if how == "close":
        assert rec.end_reason == "client disconnected"
    else:
        assert (rec.end_reason or "").startswith("client connection lost:"), rec.end_reason
    assert rec.bytes_from_client > 0
    assert stored_statements(gw, rec.id) == []


def _half_startup(c: RawClient, gw: GatewayHarness) -> None:
    pkt = m.StartupMessage(params={"user": "ci-test", "database": "test-db"}).encode()
    c.send(pkt[:9])


def _before_password(c: RawClient, gw: GatewayHarness) -> None:
    c.startup()
    c.expect_password_request()


def _half_password(c: RawClient, gw: GatewayHarness) -> None:
    c.startup()
    c.expect_password_request()
    c.send(password_frame(gw.token())[:40])


def _after_ssl_answer(c: RawClient, gw: GatewayHarness) -> None:
    c.send(m.SSLRequest().encode())
    assert c.recv_byte() == b"S"


def _mid_tls_handshake(c: RawClient, gw: GatewayHarness) -> None:
    c.send(m.SSLRequest().encode())
    assert c.recv_byte() == b"S"
    c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # first bytes of a ClientHello


_HANDSHAKE_STAGES = {
    "half-startup": _half_startup,
    "before-password": _before_password,
    "half-password": _half_password,
    "after-ssl-answer": _after_ssl_answer,
    "mid-tls-handshake": _mid_tls_handshake,
}


@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("stage", list(_HANDSHAKE_STAGES))
def test_client_disconnects_mid_handshake(gw: GatewayHarness, client: RawClient, stage: str,
                                          how: str) -> None:
    since = datetime.now(UTC)
    _HANDSHAKE_STAGES[stage](client, gw)
    wait_until(lambda: handshakes(gw) >= 1, what="handshake in progress")
    addr = client.addr
    if how == "close":
        client.close()
    else:
        client.reset()
    wait_until(lambda: handshakes(gw) == 0, what="handshake task finished")
    # Not authenticated: nothing to record as a session (an earlier session may have
    # had the same ephemeral port).
    assert [rec for rec in sessions_of(gw, addr) if rec.started_at >= since] == []
