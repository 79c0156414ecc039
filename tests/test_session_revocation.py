"""Sessions end with their tokens: revoked (CLI or API) or expired past the grace.

A real gateway (tests/gateway_harness.py) checks revocations every 300ms and
allows sessions 1s past their token's expiry; clients are psycopg and psql.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from gateway_harness import GatewayHarness, api_settings, standard_config, wait_until, write_config
from pathwarden.model import SessionRecord
from pathwarden.store import StoreError
from pgserver import PgServer, free_port

PATHWARDEN = [sys.executable, "-m", "pathwarden.cli.main"]


@pytest.fixture(scope="module")
def gw(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHarness]:
    base = tmp_path_factory.mktemp("revocation")
    os.environ["PW_TEST_SCRAM"] = "scram-secret"
    (base / "md5pw").write_text("md5-secret\n")
    config = standard_config(pg_server, base / "data", free_port())
    config["identities"]["ops-admin"] = {"admin": True}
    config["api"] = api_settings()
    config["tokens"] = {"revocation_check": "300ms", "session_grace": "1s"}
    harness = GatewayHarness(write_config(base / "pathwarden.yaml", config))
    try:
        yield harness
    finally:
        harness.stop()


def _issue(gw: GatewayHarness, identity: str = "ci-test", ttl: str = "15m") -> tuple[str, str]:
    """A token and its ref."""
    token = gw.token(identity, ttl)
    ref = gw.call(gw.gateway.authenticator.verify_bearer(token)).token_ref
    assert ref is not None
    return token, ref


def _session_of(gw: GatewayHarness, ref: str) -> SessionRecord | None:
    return next((s for s in gw.sessions(identity="ci-test") if s.token_ref == ref), None)


def _ended(gw: GatewayHarness, ref: str) -> SessionRecord:
    def look() -> SessionRecord | None:
        record = _session_of(gw, ref)
        return record if record is not None and record.ended_at is not None else None

    found: SessionRecord = wait_until(look, timeout=5, what=f"the session of token {ref} to end")
    return found


def _live(gw: GatewayHarness, ref: str) -> bool:
    return any(s.identity.token_ref == ref for s in list(gw.gateway.sessions))


def _fails(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    with pytest.raises(psycopg.OperationalError) as failure:
        conn.execute("select 1").fetchone()
    return str(failure.value)


def test_cli_revocation_cuts_the_open_session_within_seconds(gw: GatewayHarness) -> None:
    token, ref = _issue(gw)
    other_token, _ = _issue(gw)
    with psycopg.connect(gw.dsn(token=token), autocommit=True) as conn, \
            psycopg.connect(gw.dsn(token=other_token), autocommit=True) as other:
        assert conn.execute("select 'before'").fetchone() == ("before",)
        started = time.monotonic()
        proc = subprocess.run([*PATHWARDEN, "token", "revoke", ref, "--reason", "leaked",
                               "--config", str(gw.config_path)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        wait_until(lambda: not _live(gw, ref), timeout=5, what="the revocation check")
        assert time.monotonic() - started < 8  # the CLI's own start-up included
        message = _fails(conn)
        assert f"token {ref} was revoked at" in message
        assert "(leaked); session ended" in message
        assert other.execute("select 'still here'").fetchone() == ("still here",)
    assert _ended(gw, ref).end_reason == "token revoked"


def test_api_revocation_cuts_the_session_before_answering(gw: GatewayHarness) -> None:
    token, ref = _issue(gw)
    admin = gw.token("ops-admin")
    with psycopg.connect(gw.dsn(token=token), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        response = httpx.post(f"{gw.api_url()}/v1/tokens/{ref}/revoke",
                              headers={"Authorization": f"Bearer {admin}"},
                              json={"reason": "rotated"})
        assert response.status_code == 200, response.text
        assert response.json()["sessions_ended"] == 1
        assert not _live(gw, ref)  # already gone when the API answered
        assert "was revoked" in _fails(conn)
    assert _ended(gw, ref).end_reason == "token revoked"


def test_psql_in_the_middle_of_a_query_is_cut_and_says_why(gw: GatewayHarness) -> None:
    token, ref = _issue(gw)
    admin = gw.token("ops-admin")
    conninfo = f"host=127.0.0.1 port={gw.port} user=ci-test dbname=test-db sslmode=disable"
    psql = subprocess.Popen(["psql", "-X", "-q", "-c", "select pg_sleep(30)", conninfo],
                            env={**os.environ, "PGPASSWORD": token},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _live(gw, ref), timeout=10, what="psql to connect")
        time.sleep(0.2)
        started = time.monotonic()
        response = httpx.post(f"{gw.api_url()}/v1/tokens/{ref}/revoke",
                              headers={"Authorization": f"Bearer {admin}"})
        assert response.status_code == 200
        _, err = psql.communicate(timeout=10)
        assert time.monotonic() - started < 5
    finally:
        psql.kill()
        psql.wait()
    assert psql.returncode != 0
    assert f"pathwarden: token {ref} was revoked" in err
    record = _ended(gw, ref)
    assert record.end_reason == "token revoked"


def test_a_session_is_cut_after_its_token_expires_plus_the_grace(gw: GatewayHarness) -> None:
    token, ref = _issue(gw, ttl="2s")
    claims = gw.gateway.authority.verify(token)
    long_token, _ = _issue(gw)
    with psycopg.connect(gw.dsn(token=token), autocommit=True) as conn, \
            psycopg.connect(gw.dsn(token=long_token), autocommit=True) as other:
        assert conn.execute("select 1").fetchone() == (1,)
        # Past the expiry but inside the 1s grace, the session still works.
        while time.time() < claims.expires_at.timestamp() + 0.3:
            time.sleep(0.05)
        assert conn.execute("select 'in grace'").fetchone() == ("in grace",)
        wait_until(lambda: not _live(gw, ref), timeout=3, what="the expiry timer")
        ended_at = time.time()
        assert ended_at >= claims.expires_at.timestamp() + 1.0
        assert ended_at < claims.expires_at.timestamp() + 2.0
        message = _fails(conn)
        assert f"token {ref} expired at" in message
        assert "1s session grace" in message
        assert other.execute("select 'unaffected'").fetchone() == ("unaffected",)
    assert _ended(gw, ref).end_reason == "token expired"


def test_a_store_failure_during_the_check_cuts_nothing_and_is_retried(
        gw: GatewayHarness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    token, ref = _issue(gw)
    store = gw.gateway.store
    calls = []

    async def unavailable(refs: object) -> dict[str, object]:
        calls.append(refs)
        raise StoreError("pathwarden.db unreachable while looking up revoked tokens: test")

    with psycopg.connect(gw.dsn(token=token), autocommit=True) as conn:
        gw.call(store.revoke_token(ref, "during an outage"))
        store.revoked_among = unavailable  # type: ignore[method-assign]
        try:
            wait_until(lambda: len(calls) >= 2, timeout=5, what="two failed checks")
            assert _live(gw, ref)
            assert conn.execute("select 'survives'").fetchone() == ("survives",)
        finally:
            del store.revoked_among  # type: ignore[method-assign]
        assert "token revocation check failed; sessions keep running" in caplog.text
        wait_until(lambda: not _live(gw, ref), timeout=5, what="the next successful check")
        assert "was revoked" in _fails(conn)


def test_revocation_and_expiry_settings_are_validated(tmp_path: Path) -> None:
    from pathwarden.config import ConfigError, load_config

    path = write_config(tmp_path / "p.yaml", {"tokens": {"revocation_check": "10ms"}})
    with pytest.raises(ConfigError, match="100ms minimum"):
        load_config(path)
