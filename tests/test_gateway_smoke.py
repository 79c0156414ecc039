"""End-to-end smoke test: psql through the gateway to a real server."""

from __future__ import annotations

import subprocess

from gateway_harness import GatewayHarness


def test_psql_select_through_gateway_is_recorded(gateway: GatewayHarness) -> None:
    token = gateway.token("ci-test")
    out = subprocess.run(
        ["psql", "-X", "-At", "-c", "select 40 + 2", f"host=127.0.0.1 port={gateway.port} "
         "user=ci-test dbname=test-db sslmode=require"],
        env={"PGPASSWORD": token, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"
    sessions = gateway.sessions(identity="ci-test", connection="test-db")
    assert sessions, "session not recorded"
    stmts = gateway.statements(sessions[0].id)
    assert [s.text for s in stmts] == ["select 40 + 2"]
    assert stmts[0].rows == 1 and stmts[0].command_tag == "SELECT 1"
