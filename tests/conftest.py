"""Shared pytest fixtures and helpers.

Keep this file small: fixtures for one area belong next to that area's tests
unless several areas need them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from gateway_harness import GatewayHarness, standard_config, write_config
from pgserver import PgServer, start_pg_server
from pgserver import free_port as free_port  # re-exported helper


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    """One private PostgreSQL server for the whole session (see tests/pgserver.py).

    Roles: postgres (superuser, trust), scram_user/scram-secret, md5_user/md5-secret,
    tls_user/tls-secret (TLS only); database ``test``. Use ``pg_server.dsn(...)``.
    Tests must not stop it or change its roles; create your own database with
    ``pg_server.create_database(name)`` for destructive work.
    """
    server = start_pg_server(tmp_path_factory.mktemp("pg"))
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def gateway(
    pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayHarness]:
    """A gateway in front of ``pg_server`` with the connections of ``standard_config``.

    Connections: test-db (postgres, trust), scram-db, md5-db, tls-db (upstream TLS),
    wrongpw-db (bad upstream password), unreachable-db (closed port), locked-db
    (allow_all false). Identities: ci-test, ci-deploy (test-db only), ci-build (5m cap).
    """
    base = tmp_path_factory.mktemp("gateway")
    os.environ["PW_TEST_SCRAM"] = "scram-secret"
    (base / "md5pw").write_text("md5-secret\n")
    config = standard_config(pg_server, base / "data", free_port())
    harness = GatewayHarness(write_config(base / "pathwarden.yaml", config))
    try:
        yield harness
    finally:
        harness.stop()
