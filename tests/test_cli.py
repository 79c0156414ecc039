"""The `pathwarden` command as a user runs it: real processes, a real gateway and server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from gateway_harness import GatewayHarness, standard_config, write_config
from pgserver import PgServer, free_port

PATHWARDEN = [sys.executable, "-m", "pathwarden.cli.main"]


def run(*args: str, config: Path | None = None, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [*PATHWARDEN, *args]
    if config is not None:
        cmd += ["--config", str(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})
    if check:
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_token_issue_prints_only_the_token_and_it_works(gateway: GatewayHarness) -> None:
    proc = run("token", "issue", "ci-test", "--ttl", "10m", config=gateway.config_path)
    token = proc.stdout.strip()
    assert "\n" not in token and token.count(".") == 2, "stdout must hold the token alone"
    assert "ci-test" in proc.stderr and "expires" in proc.stderr
    assert token not in proc.stderr
    with psycopg.connect(gateway.dsn(token=token), autocommit=True) as conn:
        assert conn.execute("select 'via-cli-token'").fetchone() == ("via-cli-token",)


def test_token_issue_refuses_a_ttl_over_the_identity_cap(gateway: GatewayHarness) -> None:
    proc = run("token", "issue", "ci-build", "--ttl", "2h", config=gateway.config_path,
               check=False)
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert "5m" in proc.stderr  # names the cap


def test_token_list_and_revoke(gateway: GatewayHarness) -> None:
    token = run("token", "issue", "ci-deploy", "--ttl", "10m",
                config=gateway.config_path).stdout.strip()
    ref = run("token", "issue", "ci-deploy", config=gateway.config_path).stderr.split()[1]
    listing = run("token", "list", "--identity", "ci-deploy", config=gateway.config_path).stdout
    assert ref in listing and "valid" in listing
    assert token not in listing
    out = run("token", "revoke", ref, "--reason", "leaked in a log",
              config=gateway.config_path).stdout
    assert f"revoked token {ref}" in out
    listing = run("token", "list", "--identity", "ci-deploy", config=gateway.config_path).stdout
    assert "revoked" in listing
    # The other ci-deploy token is unaffected; the revoked one no longer connects.
    with psycopg.connect(gateway.dsn(identity="ci-deploy", token=token)) as conn:
        conn.execute("select 1")
    revoked = run("token", "issue", "ci-deploy", config=gateway.config_path)
    run("token", "revoke", revoked.stderr.split()[1], config=gateway.config_path)
    with pytest.raises(psycopg.OperationalError, match="revoked"):
        psycopg.connect(gateway.dsn(identity="ci-deploy", token=revoked.stdout.strip()))


def test_sessions_list_and_show_report_statements(gateway: GatewayHarness) -> None:
    with psycopg.connect(gateway.dsn(application_name="cli-test"), autocommit=True) as conn:
        conn.execute("select 'cli-marker', 1")
        conn.execute("select %s::int", (5,))
    gateway.flush()
    listing = run("sessions", "list", "--identity", "ci-test", "--since", "1h",
                  config=gateway.config_path).stdout
    session = gateway.sessions(identity="ci-test")[0]
    assert session.id in listing and "client terminated" in listing
    shown = run("sessions", "show", session.id[:8], config=gateway.config_path).stdout
    assert f"session {session.id}" in shown
    assert "select 'cli-marker', 1" in shown and "SELECT 1" in shown
    assert "params: 5" in shown and "allow" in shown


def test_sessions_show_unknown_id_says_how_to_find_one(gateway: GatewayHarness) -> None:
    proc = run("sessions", "show", "ffffffffffff", config=gateway.config_path, check=False)
    assert proc.returncode == 1
    assert "pathwarden sessions list" in proc.stderr


def test_broken_config_names_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "pathwarden.yaml"
    bad.write_text("connections:\n  db:\n    host: 127.0.0.1\n    port: not-a-port\n"
                   "    database: x\n    user: y\n")
    proc = run("config", "check", config=bad, check=False)
    assert proc.returncode == 2
    assert f"{bad}:4" in proc.stderr and "connections.db.port" in proc.stderr


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    proc = run("sessions", "list", config=tmp_path / "nope.yaml", check=False)
    assert proc.returncode == 2
    assert "nope.yaml" in proc.stderr


def _wait_port(port: int, proc: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {proc.stderr.read() if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("gateway did not start listening")


def test_serve_runs_until_sigterm_and_keeps_the_audit(pg_server: PgServer,
                                                      tmp_path: Path) -> None:
    (tmp_path / "md5pw").write_text("md5-secret\n")
    port = free_port()
    config = write_config(tmp_path / "pathwarden.yaml",
                          standard_config(pg_server, tmp_path / "data", port))
    env = {**os.environ, "PW_TEST_SCRAM": "scram-secret"}
    proc = subprocess.Popen([*PATHWARDEN, "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait_port(port, proc)
        token = run("token", "issue", "ci-test", config=config).stdout.strip()
        with psycopg.connect(f"host=127.0.0.1 port={port} user=ci-test dbname=test-db "
                             f"sslmode=require password={token}", autocommit=True) as conn:
            conn.execute("select 'before-sigterm'")
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "shutting down" in err
        assert token not in err
    finally:
        if proc.poll() is None:
            proc.kill()
    shown = run("sessions", "list", config=config).stdout
    assert "gateway shutdown" in shown
