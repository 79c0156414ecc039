"""Configuration reload: new rules apply to new operations, sessions survive, broken files are
rejected and the running configuration stays."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import errors

from gateway_harness import GatewayHarness, standard_config, write_config
from pgserver import PgServer, free_port


@pytest.fixture
def reloadable(pg_server: PgServer,
               tmp_path: Path) -> Iterator[tuple[GatewayHarness, dict[str, Any]]]:
    (tmp_path / "md5pw").write_text("md5-secret\n")
    config = standard_config(pg_server, tmp_path / "data", free_port())
    harness = GatewayHarness(write_config(tmp_path / "pathwarden.yaml", config))
    try:
        yield harness, config
    finally:
        harness.stop()


def _reload(harness: GatewayHarness) -> bool:
    async def go() -> bool:
        return harness.gateway.reload()

    return harness.call(go())


def test_reload_applies_to_new_statements_of_open_sessions(
        reloadable: tuple[GatewayHarness, dict[str, Any]]) -> None:
    harness, config = reloadable
    with psycopg.connect(harness.dsn("locked-db"), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("select 1")
        config["connections"]["locked-db"]["allow_all"] = True
        write_config(harness.config_path, config)
        assert _reload(harness)
        # Same session, next statement: the new configuration decides.
        assert conn.execute("select 2").fetchone() == (2,)


def test_broken_configuration_is_rejected_and_the_old_one_stays(
        reloadable: tuple[GatewayHarness, dict[str, Any]],
        caplog: pytest.LogCaptureFixture) -> None:
    harness, _ = reloadable
    with psycopg.connect(harness.dsn("test-db"), autocommit=True) as conn:
        harness.config_path.write_text(
            harness.config_path.read_text().replace("allow_all: true", "allow_all: maybe", 1))
        with caplog.at_level(logging.ERROR, logger="pathwarden"):
            assert not _reload(harness)
        assert any("reload rejected" in r.getMessage() and "allow_all" in r.getMessage()
                   for r in caplog.records)
        assert conn.execute("select 3").fetchone() == (3,)
    with psycopg.connect(harness.dsn("test-db"), autocommit=True) as conn:
        assert conn.execute("select 4").fetchone() == (4,)


def test_sighup_reloads_a_running_gateway(pg_server: PgServer, tmp_path: Path) -> None:
    (tmp_path / "md5pw").write_text("md5-secret\n")
    port = free_port()
    config = standard_config(pg_server, tmp_path / "data", port)
    path = write_config(tmp_path / "pathwarden.yaml", config)
    cli = [sys.executable, "-m", "pathwarden.cli.main"]
    proc = subprocess.Popen([*cli, "serve", "--config", str(path)], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PW_TEST_SCRAM": "scram-secret"})
    try:
        deadline = time.monotonic() + 20
        token = ""
        while time.monotonic() < deadline and not token:
            done = subprocess.run([*cli, "token", "issue", "ci-test", "--config", str(path)],
                                  capture_output=True, text=True)
            token = done.stdout.strip()
        dsn = (f"host=127.0.0.1 port={port} user=ci-test dbname=locked-db sslmode=disable "
               f"password={token}")
        for _ in range(100):
            try:
                conn = psycopg.connect(dsn, autocommit=True)
                break
            except psycopg.OperationalError:
                time.sleep(0.1)
        with conn:
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute("select 1")
            config["connections"]["locked-db"]["allow_all"] = True
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            proc.send_signal(signal.SIGHUP)
            for _ in range(50):
                try:
                    assert conn.execute("select 5").fetchone() == (5,)
                    break
                except errors.InsufficientPrivilege:
                    time.sleep(0.1)
            else:
                pytest.fail("SIGHUP did not reload the configuration")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "configuration reloaded" in err
