"""Specification of the PostgreSQL v3 wire messages (protocols/postgres/messages.py).

Every message class is pinned to exact bytes written out by hand from the
protocol documentation (chapter "Message Formats"), decoded through the
connection that receives it in real life: frontend messages through
ServerConnection, backend messages through ClientConnection. Malformed payloads
of every class must raise RemoteProtocolError, never another exception.

The tables and the ``server_at`` / ``client_at`` / ``events`` helpers are
reused by test_pg_connection.py.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pathwarden.protocols.postgres import messages as m
from pathwarden.protocols.postgres.connection import (
    NEED_DATA,
    ClientConnection,
    Phase,
    ServerConnection,
)
from pathwarden.protocols.postgres.errors import PROTOCOL_VIOLATION, RemoteProtocolError

AUTH = Phase.AUTHENTICATING
READY = Phase.READY

# -- helpers ------------------------------------------------------------------

#: StartupMessage(user=ci, database=app), by hand: length 30, protocol 3.0, pairs, NUL.
STARTUP_BYTES = (
    b"\x00\x00\x00\x1e" b"\x00\x03\x00\x00" b"user\x00ci\x00" b"database\x00app\x00" b"\x00"
)


def frame(type_byte: bytes, payload: bytes) -> bytes:
    """A typed frame: type byte, int32 length (self-inclusive), payload."""
    return type_byte + struct.pack("!I", len(payload) + 4) + payload


def events(conn: ServerConnection | ClientConnection, data: bytes = b"") -> list[object]:
    """Feed ``data`` and drain every whole event up to NEED_DATA."""
    conn.receive_data(data)
    out: list[object] = []
    while (ev := conn.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def server_at(phase: Phase, max_message_size: int | None = None) -> ServerConnection:
    """A ServerConnection driven through the real protocol to ``phase``."""
    conn = ServerConnection() if max_message_size is None else ServerConnection(max_message_size)
    if phase is Phase.STARTUP:
        return conn
    assert events(conn, STARTUP_BYTES) == [m.StartupMessage(params={"user": "ci",
                                                                    "database": "app"})]
    if phase is not AUTH:
        conn.send(m.ReadyForQuery())
        if phase is not READY:
            assert events(conn, b"X\x00\x00\x00\x04") == [m.Terminate()]
    assert conn.phase is phase
    return conn


def client_at(phase: Phase, max_message_size: int | None = None) -> ClientConnection:
    """A ClientConnection driven through the real protocol to ``phase``."""
    conn = ClientConnection() if max_message_size is None else ClientConnection(max_message_size)
    if phase is not AUTH:
        assert events(conn, b"Z\x00\x00\x00\x05I") == [m.ReadyForQuery("I")]
        if phase is not READY:
            conn.send(m.Terminate())
    assert conn.phase is phase
    return conn


def decode_frontend(wire: bytes, phase: Phase) -> list[object]:
    return events(server_at(phase), wire)


def decode_backend(wire: bytes, phase: Phase) -> list[object]:
    return events(client_at(phase), wire)


# -- the tables: (message, exact wire bytes, phase it is received in) ---------

FRONTEND_CASES: list[tuple[m.Message, bytes, Phase]] = [
    (m.Query("SELECT 1"), b"Q\x00\x00\x00\x0d" b"SELECT 1\x00", READY),
    (m.Query(""), b"Q\x00\x00\x00\x05\x00", READY),
    (m.Parse("s1", "SELECT $1", (23,)),
     b"P\x00\x00\x00\x17" b"s1\x00" b"SELECT $1\x00" b"\x00\x01" b"\x00\x00\x00\x17", READY),
    (m.Parse(param_types=(0xFFFFFFFF,)),
     b"P\x00\x00\x00\x0c" b"\x00\x00" b"\x00\x01" b"\xff\xff\xff\xff", READY),
    (m.Parse(), b"P\x00\x00\x00\x08\x00\x00\x00\x00", READY),
    (m.Bind("", "s1", (1,), (b"\x00\x00\x00\x2a", None), (0, 1)),
     b"B\x00\x00\x00\x20" b"\x00" b"s1\x00" b"\x00\x01\x00\x01"
     b"\x00\x02" b"\x00\x00\x00\x04\x00\x00\x00\x2a" b"\xff\xff\xff\xff"
     b"\x00\x02\x00\x00\x00\x01", READY),
    (m.Bind("p", "", (0, 1), (b"", b"x")),
     b"B\x00\x00\x00\x1a" b"p\x00" b"\x00" b"\x00\x02\x00\x00\x00\x01"
     b"\x00\x02" b"\x00\x00\x00\x00" b"\x00\x00\x00\x01x" b"\x00\x00", READY),
    (m.Describe("P", "p1"), b"D\x00\x00\x00\x08" b"Pp1\x00", READY),
    (m.Describe("S", ""), b"D\x00\x00\x00\x06" b"S\x00", READY),
    (m.Close("S", "s1"), b"C\x00\x00\x00\x08" b"Ss1\x00", READY),
    (m.Close("P", ""), b"C\x00\x00\x00\x06" b"P\x00", READY),
    (m.Execute("", 10), b"E\x00\x00\x00\x09" b"\x00" b"\x00\x00\x00\x0a", READY),
    (m.Execute("p1", 0), b"E\x00\x00\x00\x0b" b"p1\x00" b"\x00\x00\x00\x00", READY),
    (m.Sync(), b"S\x00\x00\x00\x04", READY),
    (m.Flush(), b"H\x00\x00\x00\x04", READY),
    (m.CopyData(b"1\tfoo\n"), b"d\x00\x00\x00\x0a" b"1\tfoo\n", READY),
    (m.CopyData(b""), b"d\x00\x00\x00\x04", READY),
    (m.CopyDone(), b"c\x00\x00\x00\x04", READY),
    (m.CopyFail("abort"), b"f\x00\x00\x00\x0a" b"abort\x00", READY),
    (m.FunctionCall(1598, (0,), (b"42", None), 1),
     b"F\x00\x00\x00\x1a" b"\x00\x00\x06\x3e" b"\x00\x01\x00\x00"
     b"\x00\x02" b"\x00\x00\x00\x0242" b"\xff\xff\xff\xff" b"\x00\x01", READY),
    (m.Terminate(), b"X\x00\x00\x00\x04", READY),
    (m.Terminate(), b"X\x00\x00\x00\x04", AUTH),
    (m.PasswordMessage(b"secret\x00"), b"p\x00\x00\x00\x0b" b"secret\x00", AUTH),
]

BACKEND_CASES: list[tuple[m.Message, bytes, Phase]] = [
    (m.Authentication(m.AUTH_OK), b"R\x00\x00\x00\x08" b"\x00\x00\x00\x00", AUTH),
    (m.Authentication(m.AUTH_CLEARTEXT), b"R\x00\x00\x00\x08" b"\x00\x00\x00\x03", AUTH),
    (m.Authentication(m.AUTH_MD5, b"\x01\x02\x03\x04"),
     b"R\x00\x00\x00\x0c" b"\x00\x00\x00\x05" b"\x01\x02\x03\x04", AUTH),
    (m.Authentication(m.AUTH_SASL, b"SCRAM-SHA-256\x00\x00"),
     b"R\x00\x00\x00\x17" b"\x00\x00\x00\x0a" b"SCRAM-SHA-256\x00\x00", AUTH),
    (m.Authentication(m.AUTH_SASL_CONTINUE, b"r=abc"),
     b"R\x00\x00\x00\x0d" b"\x00\x00\x00\x0b" b"r=abc", AUTH),
    (m.Authentication(m.AUTH_SASL_FINAL, b"v=xyz"),
     b"R\x00\x00\x00\x0d" b"\x00\x00\x00\x0c" b"v=xyz", AUTH),
    (m.ParameterStatus("client_encoding", "UTF8"),
     b"S\x00\x00\x00\x19" b"client_encoding\x00" b"UTF8\x00", READY),
    (m.ParameterStatus("application_name", ""),
     b"S\x00\x00\x00\x16" b"application_name\x00" b"\x00", AUTH),
    (m.BackendKeyData(1234, b"\xde\xad\xbe\xef"),
     b"K\x00\x00\x00\x0c" b"\x00\x00\x04\xd2" b"\xde\xad\xbe\xef", AUTH),
    (m.BackendKeyData(-1, b"k" * 32),  # protocol 3.2: variable-length key
     b"K\x00\x00\x00\x28" b"\xff\xff\xff\xff" + b"k" * 32, AUTH),
    (m.ReadyForQuery("I"), b"Z\x00\x00\x00\x05I", READY),
    (m.ReadyForQuery("T"), b"Z\x00\x00\x00\x05T", READY),
    (m.ReadyForQuery("E"), b"Z\x00\x00\x00\x05E", READY),
    (m.RowDescription((m.FieldDescription("id", 16384, 1, 23, 4, -1, 0),)),
     b"T\x00\x00\x00\x1b" b"\x00\x01" b"id\x00" b"\x00\x00\x40\x00" b"\x00\x01"
     b"\x00\x00\x00\x17" b"\x00\x04" b"\xff\xff\xff\xff" b"\x00\x00", READY),
    (m.RowDescription((m.FieldDescription("a", 0, 0, 25, -1, -1, 0),
                       m.FieldDescription("", 0xFFFFFFFF, -1, 0xFFFFFFFF, 0, 7, 1))),
     b"T\x00\x00\x00\x2d" b"\x00\x02"
     b"a\x00" b"\x00\x00\x00\x00" b"\x00\x00" b"\x00\x00\x00\x19" b"\xff\xff"
     b"\xff\xff\xff\xff" b"\x00\x00"
     b"\x00" b"\xff\xff\xff\xff" b"\xff\xff" b"\xff\xff\xff\xff" b"\x00\x00"
     b"\x00\x00\x00\x07" b"\x00\x01", READY),
    (m.RowDescription(), b"T\x00\x00\x00\x06\x00\x00", READY),
    (m.DataRow.from_values([b"1", None]),
     b"D\x00\x00\x00\x0f" b"\x00\x02" b"\x00\x00\x00\x01" b"1" b"\xff\xff\xff\xff", READY),
    (m.DataRow.from_values([]), b"D\x00\x00\x00\x06\x00\x00", READY),
    (m.CommandComplete("SELECT 1"), b"C\x00\x00\x00\x0d" b"SELECT 1\x00", READY),
    (m.CommandComplete("INSERT 0 5"), b"C\x00\x00\x00\x0f" b"INSERT 0 5\x00", READY),
    (m.ErrorResponse({"S": "ERROR", "C": "42P01", "M": "nope"}),
     b"E\x00\x00\x00\x19" b"SERROR\x00" b"C42P01\x00" b"Mnope\x00" b"\x00", READY),
    (m.ErrorResponse({"S": "FATAL", "C": "28P01", "M": "bad"}),
     b"E\x00\x00\x00\x18" b"SFATAL\x00" b"C28P01\x00" b"Mbad\x00" b"\x00", AUTH),
    (m.NoticeResponse({"S": "NOTICE", "M": "hi"}),
     b"N\x00\x00\x00\x11" b"SNOTICE\x00" b"Mhi\x00" b"\x00", READY),
    (m.NoticeResponse({}), b"N\x00\x00\x00\x05\x00", AUTH),
    (m.NotificationResponse(7, "ch", "x"),
     b"A\x00\x00\x00\x0d" b"\x00\x00\x00\x07" b"ch\x00" b"x\x00", READY),
    (m.ParseComplete(), b"1\x00\x00\x00\x04", READY),
    (m.BindComplete(), b"2\x00\x00\x00\x04", READY),
    (m.CloseComplete(), b"3\x00\x00\x00\x04", READY),
    (m.NoData(), b"n\x00\x00\x00\x04", READY),
    (m.PortalSuspended(), b"s\x00\x00\x00\x04", READY),
    (m.EmptyQueryResponse(), b"I\x00\x00\x00\x04", READY),
    (m.ParameterDescription((23, 25)),
     b"t\x00\x00\x00\x0e" b"\x00\x02" b"\x00\x00\x00\x17" b"\x00\x00\x00\x19", READY),
    (m.ParameterDescription(), b"t\x00\x00\x00\x06\x00\x00", READY),
    (m.CopyInResponse(0, (0, 0)),
     b"G\x00\x00\x00\x0b" b"\x00" b"\x00\x02" b"\x00\x00\x00\x00", READY),
    (m.CopyOutResponse(1, (1,)), b"H\x00\x00\x00\x09" b"\x01" b"\x00\x01" b"\x00\x01", READY),
    (m.CopyBothResponse(0, ()), b"W\x00\x00\x00\x07" b"\x00" b"\x00\x00", READY),
    (m.CopyData(b"row\n"), b"d\x00\x00\x00\x08" b"row\n", READY),
    (m.CopyDone(), b"c\x00\x00\x00\x04", READY),
    (m.FunctionCallResponse(b"42"), b"V\x00\x00\x00\x0a" b"\x00\x00\x00\x02" b"42", READY),
    (m.FunctionCallResponse(None), b"V\x00\x00\x00\x08" b"\xff\xff\xff\xff", READY),
    (m.FunctionCallResponse(b""), b"V\x00\x00\x00\x08" b"\x00\x00\x00\x00", READY),
    (m.NegotiateProtocolVersion(0, ("_pq_.foo",)),
     b"v\x00\x00\x00\x15" b"\x00\x00\x00\x00" b"\x00\x00\x00\x01" b"_pq_.foo\x00", AUTH),
    (m.NegotiateProtocolVersion(2, ()),
     b"v\x00\x00\x00\x0c" b"\x00\x00\x00\x02" b"\x00\x00\x00\x00", AUTH),
]

STARTUP_CASES: list[tuple[m.StartupPacket, bytes]] = [
    (m.StartupMessage(params={"user": "ci", "database": "app"}), STARTUP_BYTES),
    (m.StartupMessage(m.PROTOCOL_3_2, {"user": "u"}),
     b"\x00\x00\x00\x10" b"\x00\x03\x00\x02" b"user\x00u\x00" b"\x00"),
    (m.SSLRequest(), b"\x00\x00\x00\x08" b"\x04\xd2\x16\x2f"),
    (m.GSSENCRequest(), b"\x00\x00\x00\x08" b"\x04\xd2\x16\x30"),
    (m.CancelRequest(1234, b"\x01\x02\x03\x04"),
     b"\x00\x00\x00\x10" b"\x04\xd2\x16\x2e" b"\x00\x00\x04\xd2" b"\x01\x02\x03\x04"),
    (m.CancelRequest(-2, b"s" * 256),  # protocol 3.2 allows keys up to 256 bytes
     b"\x00\x00\x01\x0c" b"\x04\xd2\x16\x2e" b"\xff\xff\xff\xfe" + b"s" * 256),
]


def _case_id(case: tuple[object, ...]) -> str:
    return type(case[0]).__name__


# -- exact bytes ---------------------------------------------------------------


def test_the_tables_cover_every_message_class() -> None:
    assert {type(c[0]) for c in FRONTEND_CASES} == set(m.FRONTEND_TYPES.values())
    assert {type(c[0]) for c in BACKEND_CASES} == set(m.BACKEND_TYPES.values())
    assert {type(c[0]) for c in STARTUP_CASES} == {
        m.StartupMessage, m.SSLRequest, m.GSSENCRequest, m.CancelRequest}


@pytest.mark.parametrize("case", FRONTEND_CASES, ids=_case_id)
def test_frontend_message_encodes_to_its_exact_wire_bytes(
    case: tuple[m.Message, bytes, Phase],
) -> None:
    msg, wire, _ = case
    assert msg.encode() == wire
    assert m.frame_of(msg) == wire


@pytest.mark.parametrize("case", FRONTEND_CASES, ids=_case_id)
def test_server_connection_decodes_frontend_bytes_to_an_equal_message(
    case: tuple[m.Message, bytes, Phase],
) -> None:
    msg, wire, phase = case
    [ev] = decode_frontend(wire, phase)
    assert ev == msg
    assert type(ev) is type(msg)
    assert m.frame_of(ev) == wire  # type: ignore[arg-type]


@pytest.mark.parametrize("case", FRONTEND_CASES, ids=_case_id)
def test_decoded_frontend_message_keeps_its_exact_frame_in_raw(
    case: tuple[m.Message, bytes, Phase],
) -> None:
    _, wire, phase = case
    [ev] = decode_frontend(wire, phase)
    assert ev.raw == wire  # type: ignore[attr-defined]


@pytest.mark.parametrize("case", BACKEND_CASES, ids=_case_id)
def test_backend_message_encodes_to_its_exact_wire_bytes(
    case: tuple[m.Message, bytes, Phase],
) -> None:
    msg, wire, _ = case
    assert msg.encode() == wire


@pytest.mark.parametrize("case", BACKEND_CASES, ids=_case_id)
def test_client_connection_decodes_backend_bytes_to_an_equal_message(
    case: tuple[m.Message, bytes, Phase],
) -> None:
    msg, wire, phase = case
    [ev] = decode_backend(wire, phase)
    assert ev == msg
    assert type(ev) is type(msg)
    assert m.frame_of(ev) == wire  # type: ignore[arg-type]


@pytest.mark.parametrize("case", BACKEND_CASES, ids=_case_id)
def test_decoded_backend_message_keeps_its_exact_frame_in_raw(
    case: tuple[m.Message, bytes, Phase],
) -> None:
    _, wire, phase = case
    [ev] = decode_backend(wire, phase)
    assert ev.raw == wire  # type: ignore[attr-defined]


@pytest.mark.parametrize("case", STARTUP_CASES, ids=_case_id)
def test_startup_packet_encodes_and_decodes_exactly(
    case: tuple[m.StartupPacket, bytes],
) -> None:
    pkt, wire = case
    assert pkt.encode() == wire
    [ev] = decode_frontend(wire, Phase.STARTUP)
    assert ev == pkt
    assert type(ev) is type(pkt)
    assert ev.raw == wire  # type: ignore[attr-defined]


def test_frame_of_forwards_the_original_frame_untouched() -> None:
    # A decoded message is forwarded byte for byte, even where re-encoding differs.
    odd = b"E\x00\x00\x00\x16" b"SERROR\x00" b"Mone\x00" b"Mtwo\x00" b"\x00"
    [ev] = decode_backend(odd, READY)
    assert ev == m.ErrorResponse({"S": "ERROR", "M": "two"})
    assert m.frame_of(ev) == odd  # type: ignore[arg-type]


def test_raw_takes_no_part_in_equality_or_repr() -> None:
    assert m.Query("x", raw=b"one") == m.Query("x", raw=b"two")
    assert "raw" not in repr(m.Query("x", raw=b"Q..."))


def test_startup_message_without_parameters_but_user_is_accepted() -> None:
    [ev] = decode_frontend(b"\x00\x00\x00\x0f\x00\x03\x00\x00user\x00\x00\x00", Phase.STARTUP)
    assert ev == m.StartupMessage(params={"user": ""})


# -- accessors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        (m.Bind(params=(b"a", b"b")), [0, 0]),
        (m.Bind(param_formats=(1,), params=(b"a", b"b")), [1, 1]),
        (m.Bind(param_formats=(0, 1), params=(b"a", b"b")), [0, 1]),
    ],
)
def test_bind_param_format_applies_zero_one_or_n_format_codes(
    bind: m.Bind, expected: list[int],
) -> None:
    assert [bind.param_format(i) for i in range(len(bind.params))] == expected


def test_authentication_sasl_lists_the_offered_mechanisms() -> None:
    auth = m.Authentication(m.AUTH_SASL, b"SCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00")
    assert auth.sasl_mechanisms() == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    assert m.Authentication(m.AUTH_SASL, b"\x00").sasl_mechanisms() == []


def test_authentication_sasl_with_an_unterminated_list_is_a_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError):
        m.Authentication(m.AUTH_SASL, b"SCRAM-SHA-256\x00").sasl_mechanisms()


def test_password_message_yields_the_cleartext_password() -> None:
    assert m.PasswordMessage(b"hunter2\x00").password() == "hunter2"


@pytest.mark.parametrize("data", [b"hunter2", b"hunter2\x00extra", b""])
def test_password_message_that_is_not_one_cstring_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        m.PasswordMessage(data).password()


def test_data_row_values_round_trip_nulls_and_empty_values() -> None:
    values: list[bytes | None] = [b"", None, b"\x00\xff", b"x" * 300]
    assert m.DataRow.from_values(values).values() == values


@pytest.mark.parametrize(
    "data",
    [
        b"",  # no count
        b"\x00\x01",  # count 1, no column
        b"\x00\x01\x00\x00\x00\x05ab",  # value shorter than its length
        b"\x00\x01\xff\xff\xff\xfe",  # negative length other than -1
        b"\xff\xff",  # negative count
        b"\x00\x00x",  # trailing byte
    ],
)
def test_data_row_is_validated_when_its_values_are_read(data: bytes) -> None:
    # DataRow payloads are forwarded without parsing; values() is where they are checked.
    [row] = decode_backend(frame(b"D", data), READY)
    with pytest.raises(RemoteProtocolError):
        row.values()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("tag", "rows"),
    [
        ("SELECT 5", 5), ("INSERT 0 5", 5), ("UPDATE 0", 0), ("DELETE 12", 12),
        ("COPY 3", 3), ("FETCH 2", 2), ("MOVE 1", 1), ("MERGE 4", 4),
        ("CREATE TABLE", None), ("BEGIN", None), ("", None), ("SELECT", None),
        ("7", None), ("SELECT -1", None),
    ],
)
def test_command_complete_rows_reads_the_count_at_the_end_of_the_tag(
    tag: str, rows: int | None,
) -> None:
    assert m.CommandComplete(tag).rows == rows


@pytest.mark.parametrize("tag", ["SELECT ²", "SELECT ①", "INSERT 0 ³"])
def test_command_complete_rows_ignores_non_ascii_digit_characters(tag: str) -> None:
    # str.isdigit() accepts superscripts that int() refuses: a ValueError escaped.
    assert m.CommandComplete(tag).rows is None


def test_error_response_build_sets_severity_code_message_detail_and_hint() -> None:
    err = m.ErrorResponse.build("42501", "denied", detail="rule 2", hint="ask")
    assert err.fields == {"S": "ERROR", "V": "ERROR", "C": "42501", "M": "denied",
                          "D": "rule 2", "H": "ask"}
    assert (err.code, err.message, err.severity) == ("42501", "denied", "ERROR")
    [ev] = decode_backend(err.encode(), READY)
    assert ev == err


def test_fields_message_severity_prefers_the_untranslated_field() -> None:
    notice = m.NoticeResponse({"S": "AVISO", "V": "WARNING"})
    assert notice.severity == "WARNING"
    assert m.NoticeResponse({"S": "AVISO"}).severity == "AVISO"
    assert (m.NoticeResponse().code, m.NoticeResponse().message) == ("", "")


def test_non_utf8_strings_decode_as_latin1_instead_of_failing() -> None:
    [ev] = decode_frontend(frame(b"Q", b"SELECT '\xe9'\x00"), READY)
    assert ev == m.Query("SELECT 'é'")


def test_encoding_a_string_with_a_nul_byte_is_refused() -> None:
    with pytest.raises(ValueError, match="NUL"):
        m.Query("SELECT 1\x00; DROP TABLE t").encode()


# -- malformed payloads: always RemoteProtocolError -----------------------------

_S = b"\x00"  # empty cstring

MALFORMED_FRONTEND: list[tuple[str, bytes, bytes, Phase]] = [
    ("Query unterminated", b"Q", b"SELECT 1", READY),
    ("Query empty payload", b"Q", b"", READY),
    ("Query trailing", b"Q", b"SELECT 1\x00x", READY),
    ("Query two strings", b"Q", b"SELECT 1\x00x\x00", READY),
    ("Parse missing query", b"P", b"s\x00", READY),
    ("Parse missing count", b"P", _S + _S, READY),
    ("Parse truncated count", b"P", _S + _S + b"\x00", READY),
    ("Parse count exceeds", b"P", _S + _S + b"\x00\x02\x00\x00\x00\x17", READY),
    ("Parse negative count", b"P", _S + _S + b"\xff\xff", READY),
    ("Parse trailing", b"P", _S + _S + b"\x00\x00x", READY),
    ("Bind empty", b"B", b"", READY),
    ("Bind missing statement", b"B", _S, READY),
    ("Bind truncated format count", b"B", _S + _S + b"\x00", READY),
    ("Bind format count exceeds", b"B", _S + _S + b"\x00\x05\x00\x00", READY),
    ("Bind negative format count", b"B", _S + _S + b"\xff\xfe", READY),
    ("Bind missing param count", b"B", _S + _S + b"\x00\x00", READY),
    ("Bind param count exceeds", b"B", _S + _S + b"\x00\x00\x00\x03\x00\x00\x00\x00", READY),
    ("Bind negative param count", b"B", _S + _S + b"\x00\x00\x80\x00", READY),
    ("Bind param length -2", b"B",
     _S + _S + b"\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00", READY),
    ("Bind param longer than payload", b"B",
     _S + _S + b"\x00\x00\x00\x01\x00\x00\x00\x0aab\x00\x00", READY),
    ("Bind missing result formats", b"B", _S + _S + b"\x00\x00\x00\x00", READY),
    ("Bind result count exceeds", b"B", _S + _S + b"\x00\x00\x00\x00\x00\x02\x00\x00", READY),
    ("Bind param format 2", b"B",
     _S + _S + b"\x00\x01\x00\x02\x00\x01\x00\x00\x00\x00\x00\x00", READY),
    ("Bind param format -1", b"B", _S + _S + b"\x00\x01\xff\xff\x00\x00\x00\x00", READY),
    ("Bind result format 2", b"B", _S + _S + b"\x00\x00\x00\x00\x00\x01\x00\x02", READY),
    ("Bind 2 formats for 3 params", b"B",
     _S + _S + b"\x00\x02\x00\x00\x00\x00\x00\x03" + b"\xff\xff\xff\xff" * 3 + b"\x00\x00",
     READY),
    ("Bind 2 formats for 0 params", b"B",
     _S + _S + b"\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00", READY),
    ("Bind trailing", b"B", _S + _S + b"\x00\x00\x00\x00\x00\x00x", READY),
    ("Describe empty", b"D", b"", READY),
    ("Describe bad kind", b"D", b"Xname\x00", READY),
    ("Describe lowercase kind", b"D", b"s\x00", READY),
    ("Describe unterminated", b"D", b"Sname", READY),
    ("Describe trailing", b"D", b"S\x00x", READY),
    ("Close empty", b"C", b"", READY),
    ("Close bad kind", b"C", b"Q\x00", READY),
    ("Close trailing", b"C", b"P\x00\x00", READY),
    ("Execute empty", b"E", b"", READY),
    ("Execute truncated max_rows", b"E", _S + b"\x00\x00\x01", READY),
    ("Execute trailing", b"E", _S + b"\x00\x00\x00\x00x", READY),
    ("Sync payload", b"S", b"x", READY),
    ("Flush payload", b"H", b"x", READY),
    ("Terminate payload", b"X", b"\x00", READY),
    ("Terminate payload while authenticating", b"X", b"\x00", AUTH),
    ("CopyDone payload", b"c", b"x", READY),
    ("CopyFail unterminated", b"f", b"oops", READY),
    ("CopyFail trailing", b"f", b"oops\x00!", READY),
    ("FunctionCall empty", b"F", b"", READY),
    ("FunctionCall truncated oid", b"F", b"\x00\x00\x06", READY),
    ("FunctionCall format count exceeds", b"F", b"\x00\x00\x06\x3e\x00\x09", READY),
    ("FunctionCall arg count exceeds", b"F", b"\x00\x00\x06\x3e\x00\x00\x00\x04\x00\x00",
     READY),
    ("FunctionCall negative arg length", b"F",
     b"\x00\x00\x06\x3e\x00\x00\x00\x01\xff\xff\xff\xfb\x00\x00", READY),
    ("FunctionCall arg longer than payload", b"F",
     b"\x00\x00\x06\x3e\x00\x00\x00\x01\x00\x00\x01\x00\x00\x00", READY),
    ("FunctionCall missing result format", b"F", b"\x00\x00\x06\x3e\x00\x00\x00\x00", READY),
    ("FunctionCall trailing", b"F", b"\x00\x00\x06\x3e\x00\x00\x00\x00\x00\x00x", READY),
]

MALFORMED_BACKEND: list[tuple[str, bytes, bytes, Phase]] = [
    ("Authentication empty", b"R", b"", AUTH),
    ("Authentication truncated code", b"R", b"\x00\x00\x00", AUTH),
    ("ParameterStatus unterminated value", b"S", b"a\x00b", READY),
    ("ParameterStatus missing value", b"S", b"a\x00", READY),
    ("ParameterStatus trailing", b"S", b"a\x00b\x00c", AUTH),
    ("BackendKeyData empty", b"K", b"", AUTH),
    ("BackendKeyData short key", b"K", b"\x00\x00\x00\x01\x01\x02\x03", AUTH),
    ("BackendKeyData key over 256 bytes", b"K", b"\x00\x00\x00\x01" + b"k" * 257, AUTH),
    ("ReadyForQuery empty", b"Z", b"", READY),
    ("ReadyForQuery bad status", b"Z", b"X", READY),
    ("ReadyForQuery trailing", b"Z", b"II", READY),
    ("ReadyForQuery bad status while authenticating", b"Z", b"i", AUTH),
    ("RowDescription empty", b"T", b"", READY),
    ("RowDescription count exceeds", b"T", b"\x00\x01", READY),
    ("RowDescription negative count", b"T", b"\xff\xff", READY),
    ("RowDescription field truncated", b"T", b"\x00\x01" + b"abcdef\x00" + b"\x00" * 12,
     READY),
    ("RowDescription unterminated name", b"T", b"\x00\x01" + b"a" * 19, READY),
    ("RowDescription trailing", b"T", b"\x00\x00x", READY),
    ("CommandComplete unterminated", b"C", b"SELECT 1", READY),
    ("CommandComplete trailing", b"C", b"SELECT 1\x00\x00", READY),
    ("CommandComplete two strings", b"C", b"SELECT 1\x00x\x00", READY),
    ("CommandComplete empty", b"C", b"", READY),
    ("ErrorResponse empty", b"E", b"", READY),
    ("ErrorResponse missing terminator", b"E", b"SERROR\x00", READY),
    ("ErrorResponse unterminated value", b"E", b"SERR", AUTH),
    ("ErrorResponse trailing", b"E", b"SERROR\x00\x00x", READY),
    ("NoticeResponse missing terminator", b"N", b"MHi\x00", READY),
    ("NoticeResponse trailing", b"N", b"\x00\x00", AUTH),
    ("NotificationResponse truncated pid", b"A", b"\x00\x00", READY),
    ("NotificationResponse missing payload", b"A", b"\x00\x00\x00\x01ch\x00", READY),
    ("NotificationResponse trailing", b"A", b"\x00\x00\x00\x01ch\x00x\x00y", READY),
    ("ParseComplete payload", b"1", b"x", READY),
    ("BindComplete payload", b"2", b"x", READY),
    ("CloseComplete payload", b"3", b"x", READY),
    ("NoData payload", b"n", b"x", READY),
    ("PortalSuspended payload", b"s", b"x", READY),
    ("EmptyQueryResponse payload", b"I", b"x", READY),
    ("ParameterDescription empty", b"t", b"", READY),
    ("ParameterDescription count exceeds", b"t", b"\x00\x02\x00\x00\x00\x17", READY),
    ("ParameterDescription trailing", b"t", b"\x00\x01\x00\x00\x00\x17x", READY),
    ("ParameterDescription partial oid", b"t", b"\x00\x00\x00\x00", READY),
    ("CopyInResponse empty", b"G", b"", READY),
    ("CopyInResponse missing count", b"G", b"\x00", READY),
    ("CopyOutResponse count exceeds", b"H", b"\x00\x00\x03\x00\x00", READY),
    ("CopyOutResponse negative count", b"H", b"\x00\xff\xff", READY),
    ("CopyBothResponse trailing", b"W", b"\x00\x00\x00x", READY),
    ("CopyDone payload", b"c", b"x", READY),
    ("FunctionCallResponse empty", b"V", b"", READY),
    ("FunctionCallResponse length -2", b"V", b"\xff\xff\xff\xfe", READY),
    ("FunctionCallResponse value short", b"V", b"\x00\x00\x00\x0aab", READY),
    ("FunctionCallResponse trailing", b"V", b"\xff\xff\xff\xffx", READY),
    ("NegotiateProtocolVersion empty", b"v", b"", AUTH),
    ("NegotiateProtocolVersion missing count", b"v", b"\x00\x00\x00\x00", AUTH),
    ("NegotiateProtocolVersion negative count", b"v",
     b"\x00\x00\x00\x00\xff\xff\xff\xff", AUTH),
    ("NegotiateProtocolVersion huge count", b"v", b"\x00\x00\x00\x00\x7f\xff\xff\xff", AUTH),
    ("NegotiateProtocolVersion count exceeds", b"v",
     b"\x00\x00\x00\x00\x00\x00\x00\x02a\x00", AUTH),
    ("NegotiateProtocolVersion trailing", b"v", b"\x00\x00\x00\x00\x00\x00\x00\x00x", AUTH),
]

MALFORMED_STARTUP: list[tuple[str, bytes]] = [
    ("StartupMessage without user", b"\x00\x00\x00\x14\x00\x03\x00\x00database\x00d\x00\x00"),
    ("StartupMessage no parameters", b"\x00\x00\x00\x09\x00\x03\x00\x00\x00"),
    ("StartupMessage protocol 2.0", b"\x00\x00\x00\x10\x00\x02\x00\x00user\x00u\x00\x00"),
    ("StartupMessage protocol 4.0", b"\x00\x00\x00\x10\x00\x04\x00\x00user\x00u\x00\x00"),
    ("StartupMessage missing terminator", b"\x00\x00\x00\x0f\x00\x03\x00\x00user\x00u\x00"),
    ("StartupMessage missing value", b"\x00\x00\x00\x0d\x00\x03\x00\x00user\x00"),
    ("StartupMessage unterminated key", b"\x00\x00\x00\x0c\x00\x03\x00\x00user"),
    ("StartupMessage only version", b"\x00\x00\x00\x08\x00\x03\x00\x00"),
    ("StartupMessage trailing", b"\x00\x00\x00\x11\x00\x03\x00\x00user\x00u\x00\x00x"),
    ("SSLRequest trailing", b"\x00\x00\x00\x0c\x04\xd2\x16\x2f\x00\x00\x00\x00"),
    ("GSSENCRequest trailing", b"\x00\x00\x00\x09\x04\xd2\x16\x30\x00"),
    ("CancelRequest truncated pid", b"\x00\x00\x00\x0a\x04\xd2\x16\x2e\x00\x00"),
    ("CancelRequest no key", b"\x00\x00\x00\x0c\x04\xd2\x16\x2e\x00\x00\x00\x01"),
    ("CancelRequest 3-byte key", b"\x00\x00\x00\x0f\x04\xd2\x16\x2e\x00\x00\x00\x01abc"),
    ("CancelRequest 257-byte key", b"\x00\x00\x01\x0d\x04\xd2\x16\x2e\x00\x00\x00\x01"
     + b"k" * 257),
]


@pytest.mark.parametrize(
    ("type_byte", "payload", "phase"),
    [c[1:] for c in MALFORMED_FRONTEND],
    ids=[c[0] for c in MALFORMED_FRONTEND],
)
def test_malformed_frontend_payload_is_a_protocol_violation(
    type_byte: bytes, payload: bytes, phase: Phase,
) -> None:
    conn = server_at(phase)
    conn.receive_data(frame(type_byte, payload))
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.sqlstate == PROTOCOL_VIOLATION
    assert conn.phase is Phase.ERROR


@pytest.mark.parametrize(
    ("type_byte", "payload", "phase"),
    [c[1:] for c in MALFORMED_BACKEND],
    ids=[c[0] for c in MALFORMED_BACKEND],
)
def test_malformed_backend_payload_is_a_protocol_violation(
    type_byte: bytes, payload: bytes, phase: Phase,
) -> None:
    conn = client_at(phase)
    conn.receive_data(frame(type_byte, payload))
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.sqlstate == PROTOCOL_VIOLATION
    assert conn.phase is Phase.ERROR


@pytest.mark.parametrize(
    "wire", [c[1] for c in MALFORMED_STARTUP], ids=[c[0] for c in MALFORMED_STARTUP],
)
def test_malformed_startup_packet_is_a_protocol_violation(wire: bytes) -> None:
    assert struct.unpack("!I", wire[:4])[0] == len(wire)  # the framing itself is valid
    conn = server_at(Phase.STARTUP)
    conn.receive_data(wire)
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    assert conn.phase is Phase.ERROR


def test_malformed_payload_tables_cover_every_class_with_a_structured_payload() -> None:
    unvalidated = {m.CopyData, m.PasswordMessage, m.DataRow}  # opaque payloads
    front = {m.FRONTEND_TYPES[c[1][0]] for c in MALFORMED_FRONTEND}
    back = {m.BACKEND_TYPES[c[1][0]] for c in MALFORMED_BACKEND}
    assert front | unvalidated >= set(m.FRONTEND_TYPES.values())
    assert back | unvalidated >= set(m.BACKEND_TYPES.values())


# -- 16-bit counts are unsigned on the wire --------------------------------------

_MANY = 40_000  # PostgreSQL (and libpq since 14) accept up to 65535 parameters


def test_bind_with_more_than_32767_parameters_is_accepted() -> None:
    payload = (_S + _S + b"\x00\x00" + struct.pack("!H", _MANY)
               + b"\xff\xff\xff\xff" * _MANY + b"\x00\x00")
    [ev] = decode_frontend(frame(b"B", payload), READY)
    assert len(ev.params) == _MANY  # type: ignore[attr-defined]


def test_parse_with_more_than_32767_parameter_types_is_accepted() -> None:
    payload = _S + b"SELECT\x00" + struct.pack("!H", _MANY) + b"\x00\x00\x00\x17" * _MANY
    [ev] = decode_frontend(frame(b"P", payload), READY)
    assert len(ev.param_types) == _MANY  # type: ignore[attr-defined]


def test_parameter_description_with_more_than_32767_types_round_trips() -> None:
    msg = m.ParameterDescription((23,) * _MANY)
    [ev] = decode_backend(msg.encode(), READY)
    assert ev == msg


def test_parameter_description_count_is_read_unsigned() -> None:
    payload = struct.pack("!H", _MANY) + b"\x00\x00\x00\x17" * _MANY
    [ev] = decode_backend(frame(b"t", payload), READY)
    assert len(ev.type_oids) == _MANY  # type: ignore[attr-defined]


# -- round trip: encode then decode gives the same value -------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=12)
_int16 = st.integers(-(2**15), 2**15 - 1)
_int32 = st.integers(-(2**31), 2**31 - 1)
_uint32 = st.integers(0, 2**32 - 1)
_fmt = st.sampled_from([0, 1])
_value = st.none() | st.binary(max_size=12)
_values = st.lists(_value, max_size=5).map(tuple)


@st.composite
def _bind(draw: st.DrawFn) -> m.Bind:
    params = draw(_values)
    n_formats = draw(st.sampled_from(sorted({0, 1, len(params)})))
    return m.Bind(draw(_text), draw(_text), tuple(draw(_fmt) for _ in range(n_formats)),
                  params, tuple(draw(st.lists(_fmt, max_size=4))))


_fields = st.dictionaries(
    st.characters(min_codepoint=1, max_codepoint=127), _text, max_size=6)
_field_desc = st.builds(m.FieldDescription, _text, _uint32, _int16, _uint32, _int16,
                        _int32, _int16)

FRONTEND_STRATEGY = st.one_of(
    st.builds(m.Query, _text),
    st.builds(m.Parse, _text, _text, st.lists(_uint32, max_size=5).map(tuple)),
    _bind(),
    st.builds(m.Describe, st.sampled_from("SP"), _text),
    st.builds(m.Close, st.sampled_from("SP"), _text),
    st.builds(m.Execute, _text, _int32),
    st.sampled_from([m.Sync(), m.Flush(), m.CopyDone(), m.Terminate()]),
    st.builds(m.CopyData, st.binary(max_size=20)),
    st.builds(m.CopyFail, _text),
    st.builds(m.FunctionCall, _uint32, st.lists(_int16, max_size=3).map(tuple), _values,
              _int16),
)

BACKEND_STRATEGY = st.one_of(
    st.builds(m.ParameterStatus, _text, _text),
    st.builds(m.ReadyForQuery, st.sampled_from("ITE")),
    st.builds(m.RowDescription, st.lists(_field_desc, max_size=4).map(tuple)),
    st.lists(_value, max_size=6).map(m.DataRow.from_values),
    st.builds(m.CommandComplete, _text),
    st.builds(m.ErrorResponse, _fields),
    st.builds(m.NoticeResponse, _fields),
    st.builds(m.NotificationResponse, _int32, _text, _text),
    st.sampled_from([m.ParseComplete(), m.BindComplete(), m.CloseComplete(), m.NoData(),
                     m.PortalSuspended(), m.EmptyQueryResponse(), m.CopyDone()]),
    st.builds(m.ParameterDescription, st.lists(_uint32, max_size=6).map(tuple)),
    st.builds(m.CopyInResponse, st.integers(0, 255), st.lists(_int16, max_size=4).map(tuple)),
    st.builds(m.CopyOutResponse, _fmt, st.lists(_fmt, max_size=4).map(tuple)),
    st.builds(m.CopyBothResponse, _fmt, st.lists(_fmt, max_size=4).map(tuple)),
    st.builds(m.CopyData, st.binary(max_size=20)),
    st.builds(m.FunctionCallResponse, _value),
)

AUTH_BACKEND_STRATEGY = st.one_of(
    st.builds(m.Authentication, _int32, st.binary(max_size=20)),
    st.builds(m.BackendKeyData, _int32, st.binary(min_size=4, max_size=256)),
    st.builds(m.NegotiateProtocolVersion, _int32, st.lists(_text, max_size=3).map(tuple)),
    st.builds(m.ErrorResponse, _fields),
    st.builds(m.ParameterStatus, _text, _text),
)

STARTUP_STRATEGY = st.one_of(
    st.builds(
        m.StartupMessage,
        st.integers(0, 0xFFFF).map(lambda minor: (3 << 16) | minor),
        st.dictionaries(_text.filter(bool), _text, max_size=4).map(
            lambda d: {"user": "ci", **d}),
    ),
    st.builds(m.CancelRequest, _int32, st.binary(min_size=4, max_size=256)),
    st.just(m.SSLRequest()),
    st.just(m.GSSENCRequest()),
)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def _feed_in_chunks(conn: ServerConnection | ClientConnection, chunks: list[bytes]) -> list[object]:
    out: list[object] = []
    for chunk in chunks:
        out += events(conn, chunk)
    return out


_cuts = st.lists(st.integers(0, 10_000), max_size=6)


@settings(max_examples=300, deadline=None)
@given(msg=FRONTEND_STRATEGY, cuts=_cuts)
def test_any_frontend_message_round_trips_through_server_connection(
    msg: m.Message, cuts: list[int],
) -> None:
    wire = msg.encode()
    [ev] = _feed_in_chunks(server_at(READY), _split(wire, cuts))
    assert ev == msg
    assert ev.encode() == wire  # type: ignore[attr-defined]
    assert ev.raw == wire  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None)
@given(msg=BACKEND_STRATEGY, cuts=_cuts)
def test_any_backend_message_round_trips_through_client_connection(
    msg: m.Message, cuts: list[int],
) -> None:
    wire = msg.encode()
    [ev] = _feed_in_chunks(client_at(READY), _split(wire, cuts))
    assert ev == msg
    assert ev.encode() == wire  # type: ignore[attr-defined]
    assert ev.raw == wire  # type: ignore[attr-defined]


@settings(max_examples=150, deadline=None)
@given(msg=AUTH_BACKEND_STRATEGY, cuts=_cuts)
def test_any_authentication_phase_message_round_trips(msg: m.Message, cuts: list[int]) -> None:
    wire = msg.encode()
    [ev] = _feed_in_chunks(client_at(AUTH), _split(wire, cuts))
    assert ev == msg
    assert ev.raw == wire  # type: ignore[attr-defined]


@settings(max_examples=150, deadline=None)
@given(pkt=STARTUP_STRATEGY, cuts=_cuts)
def test_any_startup_packet_round_trips(pkt: m.StartupPacket, cuts: list[int]) -> None:
    wire = pkt.encode()
    [ev] = _feed_in_chunks(server_at(Phase.STARTUP), _split(wire, cuts))
    assert ev == pkt
    assert ev.raw == wire  # type: ignore[attr-defined]


@settings(max_examples=100, deadline=None)
@given(values=st.lists(_value, max_size=8))
def test_data_row_values_round_trip(values: list[bytes | None]) -> None:
    [row] = decode_backend(m.DataRow.from_values(values).encode(), READY)
    assert row.values() == values  # type: ignore[attr-defined]
