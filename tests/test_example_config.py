"""The shipped example configuration stays valid and means what its comments say."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from pathwarden.config import load_config

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pathwarden.yaml"


def test_example_config_loads_with_a_stage_per_identity() -> None:
    config = load_config(EXAMPLE)
    assert set(config.identities) == {"ci-build", "ci-test", "ci-scan", "ci-deploy", "dba-alice"}
    assert config.approvals.rules.approvers == ["group:dba"]
    assert config.connections["app-db"].allow_all is False
    assert [p.name for p in config.policies] == [
        "build-none", "test-readonly", "scan-readonly", "deploy-writes", "deploy-shop-host"]
    assert config.identities["ci-test"].connections == ["app-db"]
    assert config.identities["ci-deploy"].max_token_ttl == timedelta(minutes=15)
    listener = config.listeners[0]
    assert (listener.host, listener.port) == ("127.0.0.1", 15432)
    assert listener.require_tls and listener.allow_plaintext_loopback


def test_config_check_command_accepts_the_example() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pathwarden.cli.main", "config", "check", "--config",
         str(EXAMPLE)], capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "5 identities" in proc.stdout


def test_example_policies_decide_as_their_comments_say() -> None:
    def check(identity: str, sql: str) -> int:
        return subprocess.run(
            [sys.executable, "-m", "pathwarden.cli.main", "policy", "check", "--config",
             str(EXAMPLE), "--identity", identity, "--connection", "app-db", sql],
            capture_output=True, text=True, timeout=60,
        ).returncode

    assert check("ci-test", "select * from users") == 0
    assert check("ci-test", "delete from users where id = 1") == 1
    assert check("ci-build", "select 1") == 1
    assert check("ci-scan", "select * from public.secrets") == 1
    assert check("ci-deploy", "update billing.invoices set paid = true where id = 1") == 3
    assert check("ci-deploy", "delete from orders") == 3
    assert check("ci-deploy", "drop schema public cascade") == 1
    assert check("ci-deploy", "create table audit_log (id int)") == 0


def test_example_ssh_policy_decides_command_lines_as_its_comments_say() -> None:
    def check(command: str) -> int:
        return subprocess.run(
            [sys.executable, "-m", "pathwarden.cli.main", "policy", "check", "--config",
             str(EXAMPLE), "--identity", "ci-deploy", "--connection", "shop-host", command],
            capture_output=True, text=True, timeout=60,
        ).returncode

    assert check("systemctl restart shop") == 0
    assert check("journalctl -u shop -n 50") == 0
    assert check("systemctl restart shop; rm -rf /srv") == 1
    assert check("systemctl restart shop && systemctl stop db") == 1
    assert check("for s in shop; do systemctl restart $s; done") == 3
    assert check("") == 1  # a shell: not allowed
    assert check("systemctl restart shop") == 0
