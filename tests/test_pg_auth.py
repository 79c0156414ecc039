"""Specification of the upstream password exchanges (protocols/postgres/auth.py).

SCRAM-SHA-256 is checked against RFC 7677's test vector. PostgreSQL sends an
empty user name (``n=``) in client-first, so the RFC's own proofs (computed
with ``n=user``) cannot match byte for byte: ``rfc5802`` below is an
independent implementation, first proven on the RFC vector, then used to
compute the expected messages for the empty-user form.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from pathwarden.protocols.postgres.auth import SCRAM_SHA_256, ScramClient, md5_password
from pathwarden.protocols.postgres.errors import RemoteProtocolError

PASSWORD = "pencil"
CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
SERVER_NONCE = CLIENT_NONCE + "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
SERVER_FIRST = f"r={SERVER_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".encode()
RFC_CLIENT_FINAL = (f"c=biws,r={SERVER_NONCE},"
                    "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=").encode()
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def rfc5802(user: str, password: str, nonce: str, server_first: bytes) -> tuple[bytes, bytes]:
    """(client-final, server-final) per RFC 5802 section 3 for SHA-256."""
    attrs = dict(kv.split("=", 1) for kv in server_first.decode().split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]),
                                 int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = f"c=biws,r={attrs['r']}"
    auth_message = f"n={user},r={nonce},{server_first.decode()},{without_proof}".encode()
    signature = hmac.new(stored_key, auth_message, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    server_sig = hmac.new(server_key, auth_message, "sha256").digest()
    return (f"{without_proof},p={base64.b64encode(proof).decode()}".encode(),
            b"v=" + base64.b64encode(server_sig))


def exchanged() -> ScramClient:
    """A client that has sent its final message for the RFC server-first."""
    client = ScramClient(PASSWORD, nonce=CLIENT_NONCE)
    client.initial_response()
    client.final_response(SERVER_FIRST)
    return client


# -- SCRAM-SHA-256 ---------------------------------------------------------------


def test_reference_implementation_reproduces_the_rfc_7677_vector() -> None:
    assert rfc5802("user", PASSWORD, CLIENT_NONCE, SERVER_FIRST) == (
        RFC_CLIENT_FINAL, RFC_SERVER_FINAL)


def test_initial_response_names_the_mechanism_and_sends_an_empty_user() -> None:
    client = ScramClient(PASSWORD, nonce=CLIENT_NONCE)
    first = b"n,,n=,r=" + CLIENT_NONCE.encode()
    assert client.initial_response() == (
        b"SCRAM-SHA-256\x00" + b"\x00\x00\x00\x1c" + first)
    assert len(first) == 0x1C
    assert SCRAM_SHA_256 == "SCRAM-SHA-256"


def test_final_response_matches_rfc_5802_for_the_empty_user_name() -> None:
    client = ScramClient(PASSWORD, nonce=CLIENT_NONCE)
    client.initial_response()
    expected_final, _ = rfc5802("", PASSWORD, CLIENT_NONCE, SERVER_FIRST)
    assert client.final_response(SERVER_FIRST) == expected_final
    # Same nonce and channel binding as the RFC; only the proof differs (n= vs n=user).
    assert expected_final.rsplit(b",p=", 1)[0] == RFC_CLIENT_FINAL.rsplit(b",p=", 1)[0]
    assert expected_final != RFC_CLIENT_FINAL


def test_correct_server_signature_is_accepted() -> None:
    _, server_final = rfc5802("", PASSWORD, CLIENT_NONCE, SERVER_FIRST)
    exchanged().verify_final(server_final)
    exchanged().verify_final(server_final + b",ext=ignored")


@pytest.mark.parametrize(
    "server_final",
    [
        RFC_SERVER_FINAL,  # signed over n=user: not what this exchange signed
        b"v=" + base64.b64encode(b"\x00" * 32),
        b"v=",
    ],
    ids=["rfc-user-signature", "zero-signature", "empty-signature"],
)
def test_wrong_server_signature_is_rejected(server_final: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="signature mismatch"):
        exchanged().verify_final(server_final)


def test_server_signature_from_a_different_password_is_rejected() -> None:
    _, other = rfc5802("", "not-pencil", CLIENT_NONCE, SERVER_FIRST)
    with pytest.raises(RemoteProtocolError, match="does not know the configured password"):
        exchanged().verify_final(other)


def test_server_error_attribute_is_reported() -> None:
    with pytest.raises(RemoteProtocolError, match="invalid-proof"):
        exchanged().verify_final(b"e=invalid-proof")


@pytest.mark.parametrize("server_final", [b"x=abc", b"", b"V=abc", b"v=!!!notbase64"])
def test_malformed_server_final_is_rejected(server_final: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="malformed"):
        exchanged().verify_final(server_final)


def test_server_final_before_server_first_is_rejected() -> None:
    _, server_final = rfc5802("", PASSWORD, CLIENT_NONCE, SERVER_FIRST)
    with pytest.raises(RemoteProtocolError, match="before server-first"):
        ScramClient(PASSWORD, nonce=CLIENT_NONCE).verify_final(server_final)


@pytest.mark.parametrize(
    "nonce",
    [
        CLIENT_NONCE,  # not extended
        "XXX" + CLIENT_NONCE + "abc",  # does not start with ours
        CLIENT_NONCE[:-1] + "Xabcdef",  # one character changed
        "abc",
    ],
    ids=["equal", "prefixed", "altered", "unrelated"],
)
def test_server_nonce_must_extend_the_client_nonce(nonce: str) -> None:
    client = ScramClient(PASSWORD, nonce=CLIENT_NONCE)
    with pytest.raises(RemoteProtocolError, match="nonce"):
        client.final_response(f"r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".encode())


_SALT = "s=W22ZaJ0SNY7soEsUEjb6gQ=="


@pytest.mark.parametrize(
    "server_first",
    [
        b"",
        b"garbage",
        f"r={SERVER_NONCE},{_SALT}".encode(),  # no iteration count
        f"r={SERVER_NONCE},i=4096".encode(),  # no salt
        f"{_SALT},i=4096".encode(),  # no nonce
        f"r={SERVER_NONCE},s=not*base64,i=4096".encode(),
        f"r={SERVER_NONCE},{_SALT},i=many".encode(),
        f"r={SERVER_NONCE},{_SALT},i=0".encode(),
        f"r={SERVER_NONCE},{_SALT},i=-1".encode(),
        f"r={SERVER_NONCE},{_SALT},i=99999999999".encode(),
        b"r=" + CLIENT_NONCE.encode() + b"\xff\xfe,s=,i=1",  # not UTF-8
    ],
    ids=["empty", "garbage", "no-i", "no-s", "no-r", "bad-salt", "i-not-int", "i-zero",
         "i-negative", "i-huge", "not-utf8"],
)
def test_malformed_server_first_is_a_protocol_error(server_first: bytes) -> None:
    client = ScramClient(PASSWORD, nonce=CLIENT_NONCE)
    client.initial_response()
    with pytest.raises(RemoteProtocolError):
        client.final_response(server_first)


def test_default_nonces_are_fresh_printable_and_unguessable() -> None:
    nonces = {ScramClient(PASSWORD).initial_response().rsplit(b",r=", 1)[1] for _ in range(20)}
    assert len(nonces) == 20
    for nonce in nonces:
        assert b"," not in nonce
        assert len(base64.b64decode(nonce, validate=True)) >= 18


def test_a_fresh_nonce_still_produces_a_verifiable_exchange() -> None:
    client = ScramClient("s3cret")
    nonce = client.initial_response().rsplit(b",r=", 1)[1].decode()
    server_first = f"r={nonce}srv,s={base64.b64encode(b'salt').decode()},i=16".encode()
    final, server_final = rfc5802("", "s3cret", nonce, server_first)
    assert client.final_response(server_first) == final
    client.verify_final(server_final)


# -- MD5 -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "password", "salt"),
    [("md5_user", "md5-secret", b"\x01\x02\x03\x04"), ("postgres", "", b"\x00\x00\x00\x00"),
     ("ünï", "pässwörd", b"\xff\xfe\xfd\xfc")],
)
def test_md5_password_is_md5_of_md5_password_user_and_salt(
    user: str, password: str, salt: bytes,
) -> None:
    inner = hashlib.md5((password + user).encode()).hexdigest()
    expected = "md5" + hashlib.md5(inner.encode() + salt).hexdigest()
    assert md5_password(user, password, salt) == expected.encode() + b"\x00"


def test_md5_password_known_value() -> None:
    # pg_authid stores md5("postgres" + "postgres") = md53175bce1d3201d16594cebf9d7eb3f9d for
    # user postgres / password postgres; the wire answer salts that hex digest.
    salted = hashlib.md5(b"3175bce1d3201d16594cebf9d7eb3f9d" + b"\x01\x02\x03\x04").hexdigest()
    assert salted == "68be9ed08db75f318087ab337aaea044"
    assert md5_password("postgres", "postgres", b"\x01\x02\x03\x04") == (
        b"md568be9ed08db75f318087ab337aaea044\x00")
