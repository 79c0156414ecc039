"""Brute force on the PostgreSQL listener: failed logins are limited per client address."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gateway_harness import GatewayHarness, standard_config, write_config
from pgserver import PgServer, free_port


@pytest.fixture
def limited_gw(pg_server: PgServer, tmp_path: Path) -> Iterator[GatewayHarness]:
    (tmp_path / "md5pw").write_text("md5-secret\n")
    config = standard_config(pg_server, tmp_path / "data", free_port())
    config["auth_limits"] = {"failures_per_source": 3, "failures_per_identity": 100,
                             "window": "30s"}
    harness = GatewayHarness(write_config(tmp_path / "pathwarden.yaml", config))
    try:
        yield harness
    finally:
        harness.stop()


def test_after_too_many_failures_even_a_valid_token_waits(limited_gw: GatewayHarness) -> None:
    good = limited_gw.token("ci-test")
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    for _ in range(3):
        with pytest.raises(psycopg.OperationalError) as exc:
            psycopg.connect(limited_gw.dsn(token=forged), connect_timeout=10)
        assert "authentication failed" in str(exc.value)
        assert forged not in str(exc.value)
    with pytest.raises(psycopg.OperationalError) as exc:
        psycopg.connect(limited_gw.dsn(token=good), connect_timeout=10)
    message = str(exc.value)
    assert "too many failed authentications" in message and "retry in" in message
    assert good not in message
    # The refusal is in the audit trail like any other.
    assert any(s.end_reason == "too many failed authentications"
               for s in limited_gw.sessions())


def test_successful_logins_do_not_count(limited_gw: GatewayHarness) -> None:
    for _ in range(6):
        with psycopg.connect(limited_gw.dsn(), autocommit=True) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
