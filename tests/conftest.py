"""Shared pytest fixtures and helpers.

Keep this file small: fixtures for one area belong next to that area's tests
unless several areas need them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gateway_harness import GatewayHarness, standard_config, write_config
from pgserver import PgServer, start_pg_server
from pgserver import free_port as free_port  # re-exported helper
from sshd_harness import SshdNotInstalled, SshdServer, start_sshd


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


def _start_sshd_or_fail(**kwargs: Any) -> SshdServer:
    try:
        return start_sshd(**kwargs)
    except SshdNotInstalled as exc:
        # The test command provisions the machine: a missing sshd is a broken setup.
        pytest.fail(f"OpenSSH server unavailable: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def sshd() -> Iterator[SshdServer]:
    """One private OpenSSH server for the whole session (see tests/sshd_harness.py).

    On 127.0.0.1:``sshd.port``; the current user logs in with ``sshd.client_key``
    (keys only). Clients: ``sshd.ssh_args()``, ``sshd.scp_args()``,
    ``sshd.connect_kwargs()`` (asyncssh). ``sshd.commands()`` lists what sessions
    ran, ``sshd.log_text()`` is sshd's log. Tests must not stop it; use
    ``sshd_factory`` for a server of their own.
    """
    server = _start_sshd_or_fail()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def sshd_factory() -> Iterator[Callable[..., SshdServer]]:
    """Start fresh OpenSSH servers (``start_sshd`` keyword arguments), destroyed after the test.

    Each has its own host key unless ``host_key=`` names one to reuse.
    """
    started: list[SshdServer] = []

    def factory(**kwargs: Any) -> SshdServer:
        server = _start_sshd_or_fail(**kwargs)
        started.append(server)
        return server

    try:
        yield factory
    finally:
        for server in reversed(started):
            server.destroy()
