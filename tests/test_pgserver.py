"""Tests of the PostgreSQL test-server fixture itself (tests/pgserver.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg
import pytest

from pgserver import ROLE_PASSWORDS, PgServer, PgServerError, free_port, start_pg_server


def _connect(dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(dsn, connect_timeout=10)


def _whoami(dsn: str) -> tuple[object, ...] | None:
    """(user, database, connection uses TLS) as the server sees it."""
    with _connect(dsn) as conn:
        return conn.execute(
            "select current_user, current_database(), ssl"
            " from pg_stat_ssl where pid = pg_backend_pid()"
        ).fetchone()


def _need_ssl(server: PgServer, needed: bool = True) -> None:
    if needed and not server.ssl:
        pytest.skip(f"PostgreSQL in {server.bindir} was built without OpenSSL")


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_superuser_psql(pg_server: PgServer) -> None:
    assert pg_server.psql("select 1, 'a'") == "1|a\n"
    assert pg_server.psql("select current_setting('max_connections')") == "300\n"
    assert pg_server.psql("select current_setting('fsync')") == "off\n"
    assert pg_server.psql("show ssl") == ("on\n" if pg_server.ssl else "off\n")


def test_psql_raises_on_error(pg_server: PgServer) -> None:
    with pytest.raises(PgServerError, match="no_such_table"):
        pg_server.psql("select * from no_such_table")


def test_create_database_and_dsn(pg_server: PgServer) -> None:
    pg_server.create_database("fixture_check", owner="scram_user")
    dsn = pg_server.dsn("scram_user", "fixture_check", "scram-secret", sslmode="disable")
    with _connect(dsn) as conn:
        conn.execute("create table t (x int)")
        conn.execute("insert into t values (1)")
        assert conn.execute("select count(*) from t").fetchone() == (1,)


def test_dsn_quotes_special_characters(pg_server: PgServer) -> None:
    dsn = pg_server.dsn("us er", "d/b", "p@ss:w/rd", application_name="x y")
    assert dsn == (
        f"postgresql://us%20er:p%40ss%3Aw%2Frd@127.0.0.1:{pg_server.port}/d%2Fb"
        "?application_name=x+y"
    )


@pytest.mark.parametrize("user", ["scram_user", "md5_user"])
@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_password_roles(pg_server: PgServer, user: str, sslmode: str) -> None:
    _need_ssl(pg_server, sslmode == "require")
    good = pg_server.dsn(user, "test", ROLE_PASSWORDS[user], sslmode=sslmode)
    assert _whoami(good) == (user, "test", sslmode == "require")
    bad = pg_server.dsn(user, "test", "wrong-password", sslmode=sslmode)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(bad)
    with pytest.raises(psycopg.OperationalError):
        _connect(pg_server.dsn(user, "test", sslmode=sslmode))  # no password at all


def test_passwords_are_stored_with_the_right_hash(pg_server: PgServer) -> None:
    out = pg_server.psql("select rolname, left(rolpassword, 6) from pg_authid order by 1")
    rows = dict(line.split("|") for line in out.splitlines() if "_user" in line)
    assert rows == {"md5_user": rows["md5_user"], "scram_user": "SCRAM-", "tls_user": "SCRAM-"}
    assert rows["md5_user"].startswith("md5")


def test_md5_user_requires_md5_auth(pg_server: PgServer) -> None:
    dsn = pg_server.dsn("md5_user", "test", "md5-secret", sslmode="disable", require_auth="md5")
    assert _whoami(dsn) == ("md5_user", "test", False)


def test_scram_user_requires_scram_auth(pg_server: PgServer) -> None:
    dsn = pg_server.dsn(
        "scram_user", "test", "scram-secret", sslmode="disable", require_auth="scram-sha-256"
    )
    assert _whoami(dsn) == ("scram_user", "test", False)


def test_tls_user_needs_tls(pg_server: PgServer) -> None:
    _need_ssl(pg_server)
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        _connect(pg_server.dsn("tls_user", "test", "tls-secret", sslmode="disable"))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(pg_server.dsn("tls_user", "test", "wrong", sslmode="require"))
    dsn = pg_server.dsn("tls_user", "test", "tls-secret", sslmode="require")
    assert _whoami(dsn) == ("tls_user", "test", True)


def test_tls_certificate_verifies(pg_server: PgServer) -> None:
    _need_ssl(pg_server)
    dsn = pg_server.dsn(
        "tls_user", "test", "tls-secret", sslmode="verify-full", sslrootcert=str(pg_server.cafile)
    )
    assert _whoami(dsn) == ("tls_user", "test", True)
    key = pg_server.datadir / "server.key"
    assert key.stat().st_mode & 0o777 == 0o600


def test_roles_can_use_public_schema(pg_server: PgServer) -> None:
    for user, password in ROLE_PASSWORDS.items():
        if user == "tls_user" and not pg_server.ssl:
            continue
        dsn = pg_server.dsn(
            user, "test", password, sslmode="require" if pg_server.ssl else "disable"
        )
        with _connect(dsn) as conn:
            conn.execute(f"create table {user}_t (x int)")
            conn.execute(f"drop table {user}_t")


def test_stop_start_destroy(tmp_path: Path) -> None:
    """On a server of its own, so the session server is never disturbed."""
    server = start_pg_server(tmp_path)
    try:
        assert server.psql("select 1") == "1\n"
        server.stop()
        server.stop()  # idempotent
        with pytest.raises(psycopg.OperationalError):
            _connect(server.dsn(sslmode="disable"))
        server.start()
        assert server.psql("select current_user") == "postgres\n"
    finally:
        server.destroy()
    assert not (server.datadir / "postmaster.pid").exists()
    if server.owned_dir is not None:
        assert not server.owned_dir.exists()
