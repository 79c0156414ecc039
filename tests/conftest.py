"""Shared pytest fixtures and helpers.

Keep this file small: fixtures for one area belong next to that area's tests
unless several areas need them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
