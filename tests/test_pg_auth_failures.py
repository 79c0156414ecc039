"""Client authentication failures: every refusal explains itself and never leaks the token.

Each test connects with psycopg (and, where the SQLSTATE matters, a raw socket
client) and checks the gateway's explanation. Afterwards the module's fixture
checks that no token used in the test appears in any pathwarden log record nor
anywhere in the gateway's SQLite store.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import sqlite3
import struct
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway_harness import GatewayHarness, standard_config, write_config
from pathwarden.identity.tokens import IssuedToken, TokenAuthority
from pathwarden.model import SessionRecord
from pathwarden.protocols.postgres import messages as m
from pgserver import PgServer, free_port

_U32 = struct.Struct("!I")


# --------------------------------------------------------------------------- helpers


class Secrets:
    """Tokens handed out during one test; none may show up in logs or the store."""

    def __init__(self) -> None:
        self.values: list[str] = []

    def add(self, token: str) -> str:
        self.values.append(token)
        # The signature alone is the secret part; look for it on its own too.
        signature = token.rsplit(".", 1)[-1]
        if len(signature) >= 16:
            self.values.append(signature)
        return token


def issue(gw: GatewayHarness, secrets: Secrets, identity: str = "ci-test",
          ttl: timedelta = timedelta(minutes=5), connections: tuple[str, ...] | None = None,
          now: datetime | None = None) -> IssuedToken:
    issued = gw.call(gw.gateway.authenticator.issue_token(identity, ttl, connections, now=now))
    secrets.add(issued.token)
    return issued


def dsn(gw: GatewayHarness, token: str, connection: str = "test-db", user: str = "ci-test",
        sslmode: str = "disable", **extra: str) -> str:
    return gw.dsn(connection, user, token=token, sslmode=sslmode, connect_timeout="5", **extra)


def refused(conninfo: str) -> str:
    """Connect, expect the gateway to refuse; return libpq's error text."""
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(conninfo).close()
    err = str(info.value)
    password = re.search(r"password=(\S+)", conninfo)
    assert password is not None
    assert password.group(1) not in err, "the token is echoed in the error"
    return err


def raw_refusal(port: int, params: dict[str, str], password: str | None) -> dict[str, str]:
    """Startup (+ password) over a raw socket; the fields of the FATAL ErrorResponse."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(m.StartupMessage(params=params).encode())
        frame = _read_frame(sock)
        if frame[0] == b"R":
            assert password is not None, "gateway asked for a password"
            sock.sendall(m.PasswordMessage(data=password.encode() + b"\0").encode())
            frame = _read_frame(sock)
        assert frame[0] == b"E", frame
        fields = dict(m.ErrorResponse.decode(frame[1]).fields)
        assert fields["S"] == "FATAL"
        assert sock.recv(1) == b"", "connection left open after a FATAL error"
        return fields


def _read_frame(sock: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while len(buf) < 5:
        chunk = sock.recv(5 - len(buf))
        assert chunk, "connection closed without an answer"
        buf += chunk
    (length,) = _U32.unpack_from(buf, 1)
    body = b""
    while len(body) < length - 4:
        chunk = sock.recv(length - 4 - len(body))
        assert chunk, "connection closed inside a frame"
        body += chunk
    return buf[:1], body


def refusal_records(gw: GatewayHarness, since: datetime, connection: str) -> list[SessionRecord]:
    """Sessions refused during the handshake (ended, never relayed) since ``since``."""
    deadline = time.monotonic() + 5
    while True:
        # Not gw.sessions(): its flush() races the audit writer (/tmp/pw-bugs failures-2).
        recs = [r for r in gw.call(gw.gateway.store.list_sessions(
                    connection=connection, since=since, limit=500))
                if r.ended_at is not None]
        if recs or time.monotonic() > deadline:
            return recs
        time.sleep(0.02)


def store_dump(data_dir: Path) -> str:
    """Every row of every table of the SQLite store, as text."""
    db = sqlite3.connect(f"file:{data_dir / 'pathwarden.db'}?mode=ro", uri=True, timeout=10)
    try:
        tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
        assert "sessions" in tables, tables
        lines = []
        for table in tables:
            for row in db.execute(f'select * from "{table}"'):
                lines.append(f"{table}: {row!r}")
        return "\n".join(lines)
    finally:
        db.close()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def gw(gateway: GatewayHarness) -> GatewayHarness:
    return gateway


@pytest.fixture
def since() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def secrets(gateway: GatewayHarness, caplog: pytest.LogCaptureFixture) -> Iterator[Secrets]:
    """Collects the test's tokens; afterwards asserts they leaked nowhere."""
    caplog.set_level(logging.DEBUG, logger="pathwarden")
    found = Secrets()
    yield found
    logged = [(r.getMessage(), r.exc_text or "", repr(r.args)) for r in caplog.records
              if r.name.startswith("pathwarden")]
    dump = store_dump(Path(gateway.config.data_dir))
    for token in found.values:
        for record in logged:
            assert token not in "\n".join(record), f"token in log record: {record[0]}"
        assert token not in caplog.text
        assert token not in dump, "token found in the store"


def _explained(caplog: pytest.LogCaptureFixture, text: str) -> None:
    """The operator log says why a client was refused."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if any("refused" in r.getMessage() and text in r.getMessage()
               for r in caplog.records if r.name.startswith("pathwarden")):
            return
        time.sleep(0.02)
    raise AssertionError(f"no 'refused' log record mentioning {text!r}")


# --------------------------------------------------------------------------- bad tokens


def test_password_that_is_not_a_token(gw: GatewayHarness, secrets: Secrets,
                                      caplog: pytest.LogCaptureFixture, since: datetime) -> None:
    secret = secrets.add("hunter2-not-a-jwt")
    err = refused(dsn(gw, secret))
    assert "pathwarden: authentication failed for user ci-test: " \
           "the password is not a pathwarden token" in err
    assert secret not in err
    fields = raw_refusal(gw.port, {"user": "ci-test", "database": "test-db"}, secret)
    assert fields["C"] == "28P01"
    assert fields["M"] == ("pathwarden: authentication failed for user ci-test: "
                           "the password is not a pathwarden token")
    recs = refusal_records(gw, since, "test-db")
    assert recs, "refused connection not recorded"
    assert all(r.end_reason == "authentication failed: the password is not a pathwarden token"
               for r in recs)
    assert all(r.token_ref is None for r in recs)
    _explained(caplog, "the password is not a pathwarden token")


def test_empty_password(gw: GatewayHarness, secrets: Secrets) -> None:
    fields = raw_refusal(gw.port, {"user": "ci-test", "database": "test-db"}, "")
    assert fields["C"] == "28P01"
    assert fields["M"].endswith("the password is not a pathwarden token")


def test_huge_password(gw: GatewayHarness, secrets: Secrets) -> None:
    big = secrets.add("a" * 5000 + "." + "b" * 5000 + "." + "c" * 100)
    fields = raw_refusal(gw.port, {"user": "ci-test", "database": "test-db"}, big)
    assert fields["C"] == "28P01"
    assert fields["M"].endswith("the password is not a pathwarden token")


def test_tampered_signature(gw: GatewayHarness, secrets: Secrets) -> None:
    token = issue(gw, secrets).token
    head, body, sig = token.split(".")
    middle = len(sig) // 2
    flipped = "A" if sig[middle] != "A" else "B"
    tampered = secrets.add(f"{head}.{body}.{sig[:middle]}{flipped}{sig[middle + 1:]}")
    err = refused(dsn(gw, tampered))
    assert "authentication failed for user ci-test: token signature is invalid" in err


def test_tampered_claims(gw: GatewayHarness, secrets: Secrets) -> None:
    """Widening the scope of a scoped token breaks its signature."""
    token = issue(gw, secrets, connections=("test-db",)).token
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["cns"] = ["test-db", "md5-db"]
    forged = secrets.add(f"{head}.{_b64(json.dumps(claims).encode())}.{sig}")
    err = refused(dsn(gw, forged, connection="md5-db"))
    assert "token signature is invalid" in err


def test_unsigned_token(gw: GatewayHarness, secrets: Secrets) -> None:
    good = issue(gw, secrets).token
    head, body, _ = good.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    header["alg"] = "none"
    forged = secrets.add(f"{_b64(json.dumps(header).encode())}.{body}.")
    err = refused(dsn(gw, forged))
    assert "token uses algorithm 'none'; only EdDSA tokens issued by this gateway" in err


def test_token_from_another_gateway(gw: GatewayHarness, secrets: Secrets) -> None:
    other = TokenAuthority.from_private_key(Ed25519PrivateKey.generate())
    token = secrets.add(other.issue("ci-test", timedelta(minutes=5)).token)
    err = refused(dsn(gw, token))
    assert "token was signed by a different gateway key" in err


def test_token_unknown_to_the_store(gw: GatewayHarness, secrets: Secrets) -> None:
    # Same signing key, but never recorded in the store (e.g. the store was reset).
    authority = TokenAuthority.load_or_create(Path(gw.config.data_dir))
    issued = authority.issue("ci-test", timedelta(minutes=5))
    secrets.add(issued.token)
    err = refused(dsn(gw, issued.token))
    assert f"token {issued.token_ref} is not known to this gateway's store" in err
    assert "pathwarden token issue ci-test" in err


def test_expired_token(gw: GatewayHarness, secrets: Secrets, since: datetime) -> None:
    issued = issue(gw, secrets, ttl=timedelta(minutes=1),
                   now=datetime.now(UTC) - timedelta(hours=1))
    err = refused(dsn(gw, issued.token))
    assert f"authentication failed for user ci-test: token {issued.token_ref} expired at" in err
    assert "59 minutes ago" in err
    assert "issue a new one with: pathwarden token issue ci-test" in err
    fields = raw_refusal(gw.port, {"user": "ci-test", "database": "test-db"}, issued.token)
    assert fields["C"] == "28P01"
    recs = refusal_records(gw, since, "test-db")
    assert recs
    assert all((r.end_reason or "").startswith(f"authentication failed: token "
                                               f"{issued.token_ref} expired") for r in recs)


def test_token_not_yet_valid(gw: GatewayHarness, secrets: Secrets) -> None:
    issued = issue(gw, secrets, now=datetime.now(UTC) + timedelta(hours=2))
    err = refused(dsn(gw, issued.token))
    assert f"token {issued.token_ref} is not valid until" in err
    assert "check the clocks" in err


def test_revoked_token(gw: GatewayHarness, secrets: Secrets) -> None:
    issued = issue(gw, secrets)
    with psycopg.connect(dsn(gw, issued.token)) as conn:  # works before revocation
        assert conn.execute("select 1").fetchone() == (1,)
    gw.call(gw.gateway.store.revoke_token(issued.token_ref, "leaked in a CI log"))
    err = refused(dsn(gw, issued.token))
    assert f"token {issued.token_ref} was revoked at" in err
    assert "(leaked in a CI log)" in err


# --------------------------------------------------------------------------- wrong identity / scope


def test_token_of_identity_a_used_as_user_b(gw: GatewayHarness, secrets: Secrets) -> None:
    issued = issue(gw, secrets, identity="ci-test")
    err = refused(dsn(gw, issued.token, user="ci-build"))
    assert (f"authentication failed for user ci-build: token {issued.token_ref} was issued "
            f"for ci-test, not ci-build; connect as user ci-test") in err


def test_identity_limited_to_other_connection(gw: GatewayHarness, secrets: Secrets) -> None:
    issued = issue(gw, secrets, identity="ci-deploy")
    with psycopg.connect(dsn(gw, issued.token, user="ci-deploy")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    err = refused(dsn(gw, issued.token, connection="md5-db", user="ci-deploy"))
    assert ("authentication failed for user ci-deploy: identity ci-deploy may not use "
            "connection md5-db (allowed: test-db)") in err


def test_token_scoped_to_other_connection(gw: GatewayHarness, secrets: Secrets) -> None:
    token = secrets.add(gw.token("ci-test", connections=("test-db",)))
    with psycopg.connect(dsn(gw, token)) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    err = refused(dsn(gw, token, connection="md5-db"))
    assert "is scoped to test-db, not md5-db" in err
    assert "pathwarden token issue ci-test --connection md5-db" in err


def test_unknown_connection(gw: GatewayHarness, secrets: Secrets, since: datetime) -> None:
    issued = issue(gw, secrets)
    err = refused(dsn(gw, issued.token, connection="no-such-db"))
    assert "unknown connection 'no-such-db' (the database name)" in err
    assert "available to ci-test:" in err
    assert "test-db" in err
    recs = refusal_records(gw, since, "no-such-db")
    assert recs
    assert recs[0].identity == "ci-test"


def test_dbname_defaults_to_user(gw: GatewayHarness, secrets: Secrets) -> None:
    """Without a database, PostgreSQL uses the user name; here that is no connection."""
    issued = issue(gw, secrets)
    fields = raw_refusal(gw.port, {"user": "ci-test"}, issued.token)
    assert fields["C"] == "28P01"
    assert "unknown connection 'ci-test'" in fields["M"]


# ------------------------------------------------------------------ refused before the token


@pytest.mark.parametrize(("key", "value"), [
    ("options", "-c role=postgres"),
    ("role", "postgres"),
    ("session_authorization", "postgres"),
    ("is_superuser", "on"),
])
def test_refused_startup_parameter_raw(gw: GatewayHarness, secrets: Secrets, key: str,
                                       value: str) -> None:
    fields = raw_refusal(gw.port, {"user": "ci-test", "database": "test-db", key: value}, None)
    assert fields["C"] == "08P01"
    assert fields["M"] == f"pathwarden: startup parameter {key!r} is not allowed"
    assert "SET after connecting" in fields["H"]


def test_options_refused(gw: GatewayHarness, secrets: Secrets, since: datetime,
                         caplog: pytest.LogCaptureFixture) -> None:
    issued = issue(gw, secrets)
    err = refused(dsn(gw, issued.token, options="-c role=postgres"))
    assert "pathwarden: startup parameter 'options' is not allowed" in err
    recs = refusal_records(gw, since, "test-db")
    assert [r.end_reason for r in recs] == ["startup parameter options refused"]
    _explained(caplog, "startup parameter options refused")


def test_allowed_startup_parameters_pass(gw: GatewayHarness, secrets: Secrets) -> None:
    issued = issue(gw, secrets)
    with psycopg.connect(dsn(gw, issued.token, application_name="pw-auth-ok")) as conn:
        assert conn.execute("show application_name").fetchone() == ("pw-auth-ok",)


@pytest.mark.parametrize("mode", ["database", "true"])
def test_replication_refused(gw: GatewayHarness, secrets: Secrets, mode: str) -> None:
    issued = issue(gw, secrets)
    err = refused(dsn(gw, issued.token, replication=mode))
    assert "pathwarden: replication connections are not supported" in err
    fields = raw_refusal(gw.port, {"user": "ci-test", "database": "test-db",
                                   "replication": mode}, None)
    assert fields["C"] == "08P01"


# --------------------------------------------------------------------------- TLS required


@pytest.fixture(scope="module")
def tls_only(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[GatewayHarness]:
    """A gateway whose listener requires TLS even on loopback."""
    base = tmp_path_factory.mktemp("tls-only")
    config = standard_config(pg_server, base / "data", free_port())
    config["connections"] = {"test-db": config["connections"]["test-db"]}
    config["listeners"][0].update(require_tls=True, allow_plaintext_loopback=False)
    harness = GatewayHarness(write_config(base / "pathwarden.yaml", config))
    try:
        yield harness
    finally:
        harness.stop()


def test_plaintext_refused_when_tls_required(tls_only: GatewayHarness,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pathwarden")
    since = datetime.now(UTC)
    token = tls_only.token("ci-test")
    err = refused(dsn(tls_only, token, sslmode="disable"))
    assert "pathwarden: TLS is required to send a token" in err
    assert "sslmode=require" in err
    fields = raw_refusal(tls_only.port, {"user": "ci-test", "database": "test-db"}, None)
    assert fields["C"] == "28000"
    assert "sslmode=require" in fields["H"]
    recs = refusal_records(tls_only, since, "test-db")
    assert recs
    assert {r.end_reason for r in recs} == {"plaintext connection refused"}
    # The same token works over TLS.
    with psycopg.connect(dsn(tls_only, token, sslmode="require")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.pgconn.ssl_in_use
    assert token not in caplog.text
    assert token not in store_dump(Path(tls_only.config.data_dir))
