"""Specification of the sans-I/O connection machines (protocols/postgres/connection.py).

Framing (chunk boundaries never matter), the phase tables FRONTEND_PHASES /
BACKEND_PHASES / TRANSITIONS checked exhaustively, size limits enforced from
the header alone, and a hypothesis fuzz over every phase asserting that only
RemoteProtocolError escapes and that events hand out exactly the bytes parsed.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pathwarden.protocols.postgres import messages as m
from pathwarden.protocols.postgres.connection import (
    BACKEND_PHASES,
    FRONTEND_PHASES,
    MAX_STARTUP_PACKET,
    NEED_DATA,
    TRANSITIONS,
    ClientConnection,
    Phase,
    ServerConnection,
    is_need_data,
)
from pathwarden.protocols.postgres.errors import (
    PROGRAM_LIMIT_EXCEEDED,
    PROTOCOL_VIOLATION,
    LocalProtocolError,
    RemoteProtocolError,
)
from test_pg_messages import (
    BACKEND_CASES,
    FRONTEND_CASES,
    STARTUP_BYTES,
    STARTUP_CASES,
    client_at,
    events,
    server_at,
)

AUTH = Phase.AUTHENTICATING
READY = Phase.READY
CLOSED = Phase.CLOSED

#: One sample wire frame per class, taken from the exact-bytes tables.
FRONTEND_SAMPLE: dict[type, bytes] = {type(msg): wire for msg, wire, _ in FRONTEND_CASES}
BACKEND_SAMPLE: dict[type, bytes] = {type(msg): wire for msg, wire, _ in BACKEND_CASES}
STARTUP_SAMPLE: dict[type, bytes] = {type(pkt): wire for pkt, wire in STARTUP_CASES}

#: A READY-phase frontend stream: everything but PasswordMessage, Terminate last.
FRONTEND_STREAM = [
    (msg, wire) for msg, wire, phase in FRONTEND_CASES
    if phase is READY and not isinstance(msg, m.Terminate)
] + [(m.Terminate(), b"X\x00\x00\x00\x04")]
BACKEND_STREAM = [(msg, wire) for msg, wire, phase in BACKEND_CASES if phase is READY]


def conn_at(side: str, phase: Phase) -> ServerConnection | ClientConnection:
    return server_at(phase) if side == "server" else client_at(phase)


# -- framing -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "stream"),
    [("server", FRONTEND_STREAM), ("client", BACKEND_STREAM)],
)
def test_feeding_byte_by_byte_yields_the_same_events_as_one_chunk(
    side: str, stream: list[tuple[m.Message, bytes]],
) -> None:
    data = b"".join(wire for _, wire in stream)
    whole = events(conn_at(side, READY), data)
    conn = conn_at(side, READY)
    trickled: list[object] = []
    for i in range(len(data)):
        trickled += events(conn, data[i : i + 1])
    assert whole == trickled == [msg for msg, _ in stream]
    assert [m.frame_of(ev) for ev in trickled] == [wire for _, wire in stream]  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(20))
def test_random_chunk_boundaries_do_not_change_the_events(seed: int) -> None:
    rng = random.Random(seed)
    stream = [(msg, wire) for msg, wire in FRONTEND_STREAM if not isinstance(msg, m.Terminate)]
    rng.shuffle(stream)
    data = STARTUP_BYTES + b"p\x00\x00\x00\x0bsecret\x00"
    conn = server_at(Phase.STARTUP)
    got = events(conn, data)
    conn.send(m.ReadyForQuery())
    body = b"".join(wire for _, wire in stream)
    cuts = sorted(rng.sample(range(1, len(body)), 15))
    for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True):
        got += events(conn, body[a:b])
    assert got[2:] == [msg for msg, _ in stream]
    assert got[:2] == [m.StartupMessage(params={"user": "ci", "database": "app"}),
                       m.PasswordMessage(b"secret\x00")]


@pytest.mark.parametrize("case", FRONTEND_CASES, ids=lambda c: type(c[0]).__name__)
def test_every_strict_prefix_of_a_frontend_frame_is_need_data(
    case: tuple[m.Message, bytes, Phase],
) -> None:
    msg, wire, phase = case
    conn = server_at(phase)
    for i in range(len(wire)):
        conn.receive_data(wire[i : i + 1])
        if i < len(wire) - 1:
            assert conn.next_event() is NEED_DATA
            assert conn.buffered == i + 1
    assert conn.next_event() == msg
    assert conn.buffered == 0


@pytest.mark.parametrize("case", BACKEND_CASES, ids=lambda c: type(c[0]).__name__)
def test_every_strict_prefix_of_a_backend_frame_is_need_data(
    case: tuple[m.Message, bytes, Phase],
) -> None:
    msg, wire, phase = case
    conn = client_at(phase)
    for i in range(len(wire) - 1):
        conn.receive_data(wire[i : i + 1])
        assert conn.next_event() is NEED_DATA
    conn.receive_data(wire[-1:])
    assert conn.next_event() == msg
    assert conn.next_event() is NEED_DATA


@pytest.mark.parametrize("case", STARTUP_CASES, ids=lambda c: type(c[0]).__name__)
def test_every_strict_prefix_of_a_startup_packet_is_need_data(
    case: tuple[m.StartupPacket, bytes],
) -> None:
    pkt, wire = case
    conn = server_at(Phase.STARTUP)
    for i in range(len(wire) - 1):
        conn.receive_data(wire[i : i + 1])
        assert conn.next_event() is NEED_DATA
    conn.receive_data(wire[-1:])
    assert conn.next_event() == pkt


def test_several_messages_in_one_chunk_come_out_in_order() -> None:
    data = (b"P\x00\x00\x00\x08\x00\x00\x00\x00" b"B\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00"
            b"\x00\x00" b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00" b"S\x00\x00\x00\x04")
    assert events(server_at(READY), data) == [m.Parse(), m.Bind(), m.Execute(), m.Sync()]


def test_a_message_and_part_of_the_next_yields_one_event_then_need_data() -> None:
    conn = server_at(READY)
    conn.receive_data(b"S\x00\x00\x00\x04" b"Q\x00\x00\x00\x0dSEL")
    assert conn.next_event() == m.Sync()
    assert conn.next_event() is NEED_DATA
    assert conn.buffered == 8
    conn.receive_data(b"ECT 1\x00")
    assert conn.next_event() == m.Query("SELECT 1")


def test_empty_data_is_not_eof_and_changes_nothing() -> None:
    conn = server_at(READY)
    conn.receive_data(b"")
    assert conn.next_event() is NEED_DATA
    assert conn.buffered == 0


def test_long_streams_are_consumed_correctly_across_buffer_compaction() -> None:
    # Over 64 KiB consumed while a partial frame stays buffered.
    query = m.Query("SELECT 'x'").encode()
    conn = server_at(READY)
    blob = query * 10_000
    got = 0
    for start in range(0, len(blob), 7_777):
        got += len(events(conn, blob[start : start + 7_777]))
    assert got == 10_000
    assert conn.buffered == 0


def test_is_need_data_recognises_only_the_sentinel() -> None:
    assert is_need_data(NEED_DATA)
    assert repr(NEED_DATA) == "NEED_DATA"
    assert not is_need_data(None)
    assert not is_need_data(m.Sync())


# -- phases: every message inside and outside its allowed phases ----------------

_FRONTEND_GRID = [
    (phase, cls) for phase in (AUTH, READY, CLOSED) for cls in m.FRONTEND_TYPES.values()
]
_BACKEND_GRID = [
    (phase, cls) for phase in (AUTH, READY, CLOSED) for cls in m.BACKEND_TYPES.values()
]


@pytest.mark.parametrize(("phase", "cls"), _FRONTEND_GRID,
                         ids=[f"{p.name}-{c.__name__}" for p, c in _FRONTEND_GRID])
def test_frontend_message_is_accepted_exactly_in_its_phases(phase: Phase, cls: type) -> None:
    conn = server_at(phase)
    conn.receive_data(FRONTEND_SAMPLE[cls])
    if cls in FRONTEND_PHASES[phase]:
        ev = conn.next_event()
        assert type(ev) is cls
        assert conn.phase is TRANSITIONS.get((phase, cls), phase)
    else:
        with pytest.raises(RemoteProtocolError) as info:
            conn.next_event()
        assert info.value.sqlstate == PROTOCOL_VIOLATION
        assert conn.phase is Phase.ERROR


@pytest.mark.parametrize(("phase", "cls"), _BACKEND_GRID,
                         ids=[f"{p.name}-{c.__name__}" for p, c in _BACKEND_GRID])
def test_backend_message_is_accepted_exactly_in_its_phases(phase: Phase, cls: type) -> None:
    conn = client_at(phase)
    conn.receive_data(BACKEND_SAMPLE[cls])
    if cls in BACKEND_PHASES[phase]:
        ev = conn.next_event()
        assert type(ev) is cls
        assert conn.phase is TRANSITIONS.get((phase, cls), phase)
    else:
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
        assert conn.phase is Phase.ERROR


def test_phase_tables_allow_what_the_protocol_needs() -> None:
    assert FRONTEND_PHASES[Phase.STARTUP] == frozenset()
    assert FRONTEND_PHASES[AUTH] == {m.PasswordMessage, m.Terminate}
    assert m.PasswordMessage not in FRONTEND_PHASES[READY]
    assert set(m.FRONTEND_TYPES.values()) - {m.PasswordMessage} == FRONTEND_PHASES[READY]
    assert FRONTEND_PHASES[CLOSED] == BACKEND_PHASES[CLOSED] == frozenset()
    assert {m.Authentication, m.BackendKeyData, m.NegotiateProtocolVersion}.isdisjoint(
        BACKEND_PHASES[READY])
    # Asynchronous messages may arrive in both phases.
    for cls in (m.ParameterStatus, m.NoticeResponse, m.ErrorResponse, m.ReadyForQuery):
        assert cls in BACKEND_PHASES[AUTH]
        assert cls in BACKEND_PHASES[READY]


@pytest.mark.parametrize(
    ("key", "after"), list(TRANSITIONS.items()),
    ids=[f"{p.name}-{c.__name__}" for p, c in TRANSITIONS],
)
def test_every_transition_in_the_table_happens_on_the_wire(
    key: tuple[Phase, type], after: Phase,
) -> None:
    phase, cls = key
    if issubclass(cls, m.StartupPacket):
        conn = server_at(phase)
        events(conn, STARTUP_SAMPLE[cls])
        assert conn.phase is after
        return
    if cls in FRONTEND_PHASES.get(phase, ()):
        conn = server_at(phase)
        events(conn, FRONTEND_SAMPLE[cls])
        assert conn.phase is after
    if cls in BACKEND_PHASES.get(phase, ()):
        client = client_at(phase)
        events(client, BACKEND_SAMPLE[cls])
        assert client.phase is after
        # The gateway's own answer to the client moves its ServerConnection the same way.
        [msg] = events(client_at(phase), BACKEND_SAMPLE[cls])
        server = server_at(phase)
        server.send(msg)  # type: ignore[arg-type]
        assert server.phase is after


@pytest.mark.parametrize("cls", [m.SSLRequest, m.GSSENCRequest])
def test_encryption_requests_keep_the_connection_in_startup(cls: type) -> None:
    conn = server_at(Phase.STARTUP)
    assert events(conn, STARTUP_SAMPLE[cls]) == [cls()]
    assert conn.phase is Phase.STARTUP
    assert events(conn, STARTUP_BYTES)[0].params["user"] == "ci"  # type: ignore[attr-defined]
    assert conn.phase is AUTH


@pytest.mark.parametrize("wire", [m.Query("SELECT 1").encode(), m.Sync().encode(),
                                  m.Terminate().encode(), b"p\x00\x00\x00\x05\x00"])
def test_typed_message_before_the_startup_packet_is_rejected(wire: bytes) -> None:
    conn = server_at(Phase.STARTUP)
    conn.receive_data(wire)
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_cancel_request_closes_the_connection_and_nothing_may_follow() -> None:
    conn = server_at(Phase.STARTUP)
    conn.receive_data(STARTUP_SAMPLE[m.CancelRequest] + STARTUP_BYTES)
    assert isinstance(conn.next_event(), m.CancelRequest)
    assert conn.phase is CLOSED
    with pytest.raises(RemoteProtocolError, match="after Terminate"):
        conn.next_event()


@pytest.mark.parametrize("phase", [AUTH, READY])
def test_data_after_terminate_is_an_error(phase: Phase) -> None:
    conn = server_at(phase)
    conn.receive_data(b"X\x00\x00\x00\x04" + m.Query("SELECT 1").encode())
    assert conn.next_event() == m.Terminate()
    assert conn.phase is CLOSED
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def test_nothing_after_terminate_is_just_need_data() -> None:
    conn = server_at(CLOSED)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"\x00")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


@pytest.mark.parametrize("side", ["server", "client"])
def test_once_broken_the_connection_raises_the_same_error_forever(side: str) -> None:
    conn = conn_at(side, READY)
    conn.receive_data(b"\x7f\x00\x00\x00\x04")
    with pytest.raises(RemoteProtocolError) as first:
        conn.next_event()
    # Even valid data afterwards is never handed out.
    conn.receive_data(b"Z\x00\x00\x00\x05I" if side == "client" else b"S\x00\x00\x00\x04")
    for _ in range(3):
        with pytest.raises(RemoteProtocolError) as again:
            conn.next_event()
        assert again.value is first.value
    assert conn.phase is Phase.ERROR


# -- send ------------------------------------------------------------------------


def test_server_send_returns_the_frame_and_ready_for_query_ends_authentication() -> None:
    conn = server_at(AUTH)
    assert conn.send(m.Authentication(m.AUTH_OK)) == b"R\x00\x00\x00\x08\x00\x00\x00\x00"
    assert conn.phase is AUTH
    assert conn.send(m.ReadyForQuery("I")) == b"Z\x00\x00\x00\x05I"
    assert conn.phase is READY


def test_server_send_forwards_a_decoded_message_byte_for_byte() -> None:
    [ev] = events(client_at(READY), b"C\x00\x00\x00\x0dSELECT 1\x00")
    assert server_at(READY).send(ev) == b"C\x00\x00\x00\x0dSELECT 1\x00"  # type: ignore[arg-type]


@pytest.mark.parametrize("msg", [m.Query("x"), m.Sync(), m.PasswordMessage(b"pw\x00")])
def test_server_refuses_to_send_a_frontend_message(msg: m.Message) -> None:
    with pytest.raises(LocalProtocolError, match="not a backend message"):
        server_at(READY).send(msg)


@pytest.mark.parametrize("phase", [CLOSED, Phase.ERROR])
def test_a_closed_or_broken_server_connection_may_only_send_an_error(phase: Phase) -> None:
    conn = server_at(READY)
    conn.receive_data(b"X\x00\x00\x00\x04" if phase is CLOSED else b"\x7f\x00\x00\x00\x04")
    if phase is CLOSED:
        events(conn)
    else:
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
    assert conn.phase is phase
    err = m.ErrorResponse.build("08P01", "bye", severity="FATAL")
    assert conn.send(err) == err.encode()
    with pytest.raises(LocalProtocolError, match="closed"):
        conn.send(m.ReadyForQuery())


def test_client_send_returns_frames_and_terminate_closes() -> None:
    conn = client_at(AUTH)
    pkt = m.StartupMessage(params={"user": "ci", "database": "app"})
    assert conn.send(pkt) == STARTUP_BYTES
    assert conn.send(m.PasswordMessage(b"pw\x00")) == b"p\x00\x00\x00\x07pw\x00"
    assert conn.send(m.Terminate()) == b"X\x00\x00\x00\x04"
    assert conn.phase is CLOSED
    with pytest.raises(LocalProtocolError, match="closed"):
        conn.send(m.Query("SELECT 1"))


@pytest.mark.parametrize("msg", [m.ReadyForQuery(), m.DataRow(), m.Authentication()])
def test_client_refuses_to_send_a_backend_message(msg: m.Message) -> None:
    with pytest.raises(LocalProtocolError, match="not a frontend message"):
        client_at(READY).send(msg)


@pytest.mark.parametrize(
    ("side", "msg"),
    [
        ("client", m.Query("SELECT 1\x00")),
        ("client", m.Execute("", 2**31)),
        ("server", m.ErrorResponse.build("42501", "denied: a\x00b")),
        ("server", m.RowDescription((m.FieldDescription("a", 0, 0, 25, 70_000, -1, 0),))),
    ],
    ids=["nul-in-query", "max-rows-overflow", "nul-in-error", "type-size-overflow"],
)
def test_sending_an_unencodable_message_is_a_local_protocol_error(
    side: str, msg: m.Message,
) -> None:
    # errors.py: the protocol errors "are the only exceptions the core raises on any input".
    with pytest.raises(LocalProtocolError):
        conn_at(side, READY).send(msg)


# -- limits ------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["server", "client"])
def test_oversized_frame_is_rejected_from_its_header_alone(side: str) -> None:
    conn = ServerConnection(1000) if side == "server" else ClientConnection(1000)
    if side == "server":
        events(conn, STARTUP_BYTES)
        conn.send(m.ReadyForQuery())
        conn.receive_data(b"Q" + struct.pack("!I", 1000))  # 1001 bytes with the type byte
    else:
        conn.phase = Phase.READY  # a DataRow is only acceptable once authenticated
        conn.receive_data(b"D" + struct.pack("!I", 1000))
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.sqlstate == PROGRAM_LIMIT_EXCEEDED
    assert "1001" in info.value.message


@pytest.mark.parametrize("side", ["server", "client"])
def test_frame_of_exactly_the_limit_is_accepted(side: str) -> None:
    conn = ServerConnection(1000) if side == "server" else ClientConnection(1000)
    data = m.CopyData(b"x" * (1000 - 5)).encode()
    assert len(data) == 1000
    if side == "server":
        events(conn, STARTUP_BYTES)
        conn.send(m.ReadyForQuery())
    else:
        events(conn, b"Z\x00\x00\x00\x05I")
    assert events(conn, data) == [m.CopyData(b"x" * 995)]


@pytest.mark.parametrize("side", ["server", "client"])
def test_default_limits_reject_a_4_gib_header(side: str) -> None:
    conn = conn_at(side, READY)
    conn.receive_data(b"d\xff\xff\xff\xff")
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.sqlstate == PROGRAM_LIMIT_EXCEEDED
    assert conn.buffered == 5


@pytest.mark.parametrize("length", [0, 1, 2, 3])
@pytest.mark.parametrize("side", ["server", "client"])
def test_frame_length_below_four_is_rejected(side: str, length: int) -> None:
    conn = conn_at(side, READY)
    conn.receive_data(b"d" + struct.pack("!I", length))
    with pytest.raises(RemoteProtocolError, match="invalid message length"):
        conn.next_event()


@pytest.mark.parametrize("length", [0, 4, 7, MAX_STARTUP_PACKET + 1, 0x7FFFFFFF, 0xFFFFFFFF])
def test_startup_packet_length_out_of_range_is_rejected_from_the_length_alone(
    length: int,
) -> None:
    conn = server_at(Phase.STARTUP)
    conn.receive_data(struct.pack("!I", length))
    with pytest.raises(RemoteProtocolError, match="invalid length of startup packet"):
        conn.next_event()


def test_startup_packet_of_exactly_the_maximum_size_is_accepted() -> None:
    pkt = m.StartupMessage(params={"user": "u" * (MAX_STARTUP_PACKET - 15)})
    wire = pkt.encode()
    assert len(wire) == MAX_STARTUP_PACKET
    assert events(server_at(Phase.STARTUP), wire) == [pkt]


@pytest.mark.parametrize("type_byte", [b"\x00", b"A", b"Z", b"?", b"\xff", b"1", b"T"])
def test_unknown_frontend_type_byte_is_rejected(type_byte: bytes) -> None:
    conn = server_at(READY)
    conn.receive_data(type_byte + b"\x00\x00\x00\x04")
    with pytest.raises(RemoteProtocolError, match="invalid frontend message type"):
        conn.next_event()


@pytest.mark.parametrize("type_byte", [b"\x00", b"Q", b"P", b"B", b"X", b"?", b"\xff"])
def test_unknown_backend_type_byte_is_rejected(type_byte: bytes) -> None:
    conn = client_at(READY)
    conn.receive_data(type_byte + b"\x00\x00\x00\x04")
    with pytest.raises(RemoteProtocolError, match="invalid backend message type"):
        conn.next_event()


_HUGE = b"\x00\x10\x00\x00"  # 1 MiB announced, under the default limits


@pytest.mark.parametrize(
    ("phase", "type_byte"),
    [(READY, b"?"), (READY, b"p"), (AUTH, b"Q"), (AUTH, b"?")],
    ids=["ready-unknown", "ready-password", "auth-query", "auth-unknown"],
)
def test_frame_the_phase_cannot_accept_is_rejected_from_its_header(
    phase: Phase, type_byte: bytes,
) -> None:
    # PostgreSQL checks the type byte before reading the body; so must we, or an
    # unauthenticated client makes the gateway buffer up to the frame limit.
    conn = server_at(phase)
    conn.receive_data(type_byte + _HUGE)
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


# -- read_frames: the relay's undecoded fast path ----------------------------------


def split_frames(data: bytes, offsets: list[int]) -> list[bytes]:
    ends = [*offsets[1:], len(data)] if offsets else []
    return [data[a:b] for a, b in zip(offsets, ends, strict=True)]


def test_read_frames_returns_every_complete_frame_and_keeps_the_partial_one() -> None:
    conn = client_at(READY)
    conn.receive_data(b"".join(wire for _, wire in BACKEND_STREAM) + b"Z\x00\x00")
    data, offsets = conn.read_frames()
    assert split_frames(data, offsets) == [wire for _, wire in BACKEND_STREAM]
    assert conn.buffered == 3
    assert conn.read_frames() == (b"", [])
    conn.receive_data(b"\x00\x05I")
    assert conn.read_frames() == (b"Z\x00\x00\x00\x05I", [0])
    assert conn.next_event() is NEED_DATA


def test_read_frames_byte_by_byte_matches_next_event() -> None:
    stream = b"".join(wire for _, wire in BACKEND_STREAM)
    conn = client_at(READY)
    frames: list[bytes] = []
    for i in range(len(stream)):
        conn.receive_data(stream[i : i + 1])
        frames += split_frames(*conn.read_frames())
    assert frames == [ev.raw for ev in events(client_at(READY), stream)]  # type: ignore[attr-defined]


def test_read_frames_follows_authentication_into_ready() -> None:
    login = [m.Authentication(m.AUTH_OK), m.ParameterStatus("server_version", "17"),
             m.BackendKeyData(7, b"\x00\x00\x00\x01"), m.ReadyForQuery("I")]
    conn = client_at(AUTH)
    conn.receive_data(b"".join(msg.encode() for msg in login) + m.CommandComplete("X").encode())
    _, offsets = conn.read_frames()
    assert len(offsets) == 5
    assert conn.phase is READY
    conn.receive_data(m.BackendKeyData(7, b"\x00\x00\x00\x01").encode())
    with pytest.raises(RemoteProtocolError, match="unexpected backend message BackendKeyData"):
        conn.read_frames()


@pytest.mark.parametrize(("phase", "type_byte"), [(READY, b"?"), (READY, b"R"), (AUTH, b"D")])
def test_read_frames_rejects_a_type_from_the_header_alone(phase: Phase, type_byte: bytes) -> None:
    conn = client_at(phase)
    conn.receive_data(type_byte + _HUGE)
    with pytest.raises(RemoteProtocolError) as first:
        conn.read_frames()
    assert conn.phase is Phase.ERROR
    with pytest.raises(RemoteProtocolError) as again:
        conn.read_frames()
    assert again.value is first.value
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


@pytest.mark.parametrize(("header", "sqlstate"), [
    (b"D" + struct.pack("!I", 1000), PROGRAM_LIMIT_EXCEEDED),
    (b"D" + struct.pack("!I", 3), PROTOCOL_VIOLATION),
])
def test_read_frames_enforces_the_length_rules_from_the_header(
    header: bytes, sqlstate: str,
) -> None:
    conn = ClientConnection(1000)
    events(conn, b"Z\x00\x00\x00\x05I")
    conn.receive_data(header)
    with pytest.raises(RemoteProtocolError) as info:
        conn.read_frames()
    assert info.value.sqlstate == sqlstate


def test_read_frames_hands_out_the_valid_frames_before_a_bad_one() -> None:
    # next_event hands these out before raising; read_frames drops them with the error.
    conn = client_at(READY)
    conn.receive_data(b"C\x00\x00\x00\x0dINSERT 1\x00" + b"?\x00\x00\x00\x04")
    assert conn.read_frames() == (b"C\x00\x00\x00\x0dINSERT 1\x00", [0])
    with pytest.raises(RemoteProtocolError):
        conn.read_frames()


# -- fuzz: only RemoteProtocolError escapes; raw bytes are exactly what was parsed ---

_FRONT_FRAMES = [wire for _, wire, _ in FRONTEND_CASES] + [w for _, w in STARTUP_CASES]
_BACK_FRAMES = [wire for _, wire, _ in BACKEND_CASES]


@st.composite
def _mutated(draw: st.DrawFn, frames: list[bytes]) -> bytes:
    wire = bytearray(draw(st.sampled_from(frames)))
    for _ in range(draw(st.integers(1, 3))):
        wire[draw(st.integers(0, len(wire) - 1))] = draw(st.integers(0, 255))
    return bytes(wire)


def _stream(frames: list[bytes]) -> st.SearchStrategy[bytes]:
    piece = st.one_of(
        st.sampled_from(frames), st.sampled_from(frames), _mutated(frames),
        st.binary(max_size=24),
        st.sampled_from([b"\x00\x00\x00\x08", b"\x00\x00\x00", b"\xff\xff", b"\x00"]),
    )
    return st.lists(piece, max_size=10).map(b"".join)


def _drain(
    conn: ServerConnection | ClientConnection, data: bytes, cuts: list[int],
) -> tuple[list[object], RemoteProtocolError | None]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out: list[object] = []
    for a, b in zip([0, *points], [*points, len(data)], strict=True):
        try:
            out += events(conn, data[a:b])
        except RemoteProtocolError as exc:
            return out, exc
    return out, None


def _check_fuzz_outcome(
    conn: ServerConnection | ClientConnection, data: bytes, cuts: list[int],
) -> None:
    got, err = _drain(conn, data, cuts)
    assert all(isinstance(ev, (m.Message, m.StartupPacket)) for ev in got)
    # Every event carries exactly the bytes that were parsed for it, in order.
    handed_out = b"".join(ev.raw for ev in got)  # type: ignore[attr-defined]
    assert data.startswith(handed_out)
    if err is not None:
        assert err.sqlstate in (PROTOCOL_VIOLATION, PROGRAM_LIMIT_EXCEEDED)
        assert conn.phase is Phase.ERROR
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
    else:
        assert conn.buffered == len(data) - len(handed_out)


_FUZZ = settings(max_examples=300, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])
_cuts = st.lists(st.integers(0, 400), max_size=8)


@_FUZZ
@given(phase=st.sampled_from([Phase.STARTUP, AUTH, READY, CLOSED]),
       data=_stream(_FRONT_FRAMES), cuts=_cuts, limit=st.sampled_from([None, 64, 1024]))
def test_server_connection_survives_any_bytes_in_any_phase(
    phase: Phase, data: bytes, cuts: list[int], limit: int | None,
) -> None:
    _check_fuzz_outcome(server_at(phase, limit), data, cuts)


@_FUZZ
@given(phase=st.sampled_from([AUTH, READY, CLOSED]),
       data=_stream(_BACK_FRAMES), cuts=_cuts, limit=st.sampled_from([None, 64, 1024]))
def test_client_connection_survives_any_bytes_in_any_phase(
    phase: Phase, data: bytes, cuts: list[int], limit: int | None,
) -> None:
    _check_fuzz_outcome(client_at(phase, limit), data, cuts)


@_FUZZ
@given(phase=st.sampled_from([AUTH, READY, CLOSED]), data=_stream(_BACK_FRAMES), cuts=_cuts,
       fast=st.lists(st.booleans(), min_size=9, max_size=9))
def test_read_frames_and_next_event_hand_out_exactly_the_bytes_received(
    phase: Phase, data: bytes, cuts: list[int], fast: list[bool],
) -> None:
    conn = client_at(phase, 1024)
    points = sorted({c % (len(data) + 1) for c in cuts})
    handed_out = b""
    try:
        for i, (a, b) in enumerate(zip([0, *points], [*points, len(data)], strict=True)):
            if fast[i]:
                conn.receive_data(data[a:b])
                chunk, offsets = conn.read_frames()
                for frame_ in split_frames(chunk, offsets):
                    assert frame_[0] in m.BACKEND_TYPES
                    assert struct.unpack("!I", frame_[1:5])[0] == len(frame_) - 1
                handed_out += chunk
            else:
                handed_out += b"".join(ev.raw for ev in events(conn, data[a:b]))  # type: ignore[attr-defined]
    except RemoteProtocolError:
        assert conn.phase is Phase.ERROR
    else:
        assert conn.buffered == len(data) - len(handed_out)
    assert data.startswith(handed_out)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64), cuts=_cuts)
def test_server_connection_survives_pure_noise_at_startup(data: bytes, cuts: list[int]) -> None:
    _check_fuzz_outcome(server_at(Phase.STARTUP), data, cuts)


def test_raw_of_all_events_concatenates_to_the_bytes_received() -> None:
    data = b"".join(wire for _, wire in FRONTEND_STREAM)
    got = events(server_at(READY), data)
    assert b"".join(ev.raw for ev in got) == data  # type: ignore[attr-defined]
