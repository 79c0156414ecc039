"""`pathwarden login`, `exec` and `connect` as a CI job runs them: real processes, a real
gateway and PostgreSQL server, real psql."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gateway_harness import GatewayHarness, poll
from pgserver import PgServer

PATHWARDEN = [sys.executable, "-m", "pathwarden.cli.main"]


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
        ) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PATHWARDEN_", "ACTIONS_"))}
    return subprocess.run([*PATHWARDEN, *args], capture_output=True, text=True, timeout=60,
                          input=stdin, env={**clean, **(env or {})})


def pw_exec(gateway: GatewayHarness, connection: str, *sql: str, token: str | None = None,
            options: tuple[str, ...] = (), stdin: str | None = None,
            ) -> subprocess.CompletedProcess[str]:
    env = {"PATHWARDEN_TOKEN": token if token is not None else gateway.token("ci-test"),
           "PATHWARDEN_ADDRESS": f"{gateway.host}:{gateway.port}"}
    return run("exec", connection, *options, "--", *sql, env=env, stdin=stdin)


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- exec -----------------------------------------------------------------------------


def test_exec_prints_a_table_with_the_command_tag(gateway: GatewayHarness) -> None:
    proc = pw_exec(gateway, "test-db", "select 1 as one, 'exec-table' as label, null as nothing")
    assert proc.returncode == 0, proc.stderr
    assert "one" in proc.stdout and "label" in proc.stdout and "exec-table" in proc.stdout
    assert "NULL" in proc.stdout
    assert "SELECT 1" in proc.stdout


def test_exec_csv_writes_a_header_and_rows_per_result(gateway: GatewayHarness) -> None:
    proc = pw_exec(gateway, "test-db",
                   "select g as n, 'row ' || g as \"text, quoted\" from generate_series(1, 3) g",
                   "select true as flag", options=("--format", "csv"))
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.split("\n\n")
    assert first.splitlines() == ['n,"text, quoted"', "1,row 1", "2,row 2", "3,row 3"]
    assert second.splitlines() == ["flag", "t"]


def test_exec_json_is_one_object_per_statement(gateway: GatewayHarness) -> None:
    proc = pw_exec(gateway, "test-db",
                   "create temp table t (id int, at timestamptz, amount numeric)",
                   "insert into t values (1, '2024-05-01 10:00+00', 1.50), (2, null, 2)",
                   "select id, at, amount from t order by id", options=("--format", "json"))
    assert proc.returncode == 0, proc.stderr
    create, insert, select = json_lines(proc.stdout)
    assert create["command"] == "CREATE TABLE" and "columns" not in create
    assert insert["command"] == "INSERT 0 2" and insert["rowcount"] == 2
    assert select["statement"] == 3
    assert select["columns"] == ["id", "at", "amount"]
    assert select["rows"] == [[1, "2024-05-01T10:00:00+00:00", "1.50"], [2, None, "2"]]
    assert select["command"] == "SELECT 2"


def test_exec_splits_a_file_into_statements_like_psql(gateway: GatewayHarness,
                                                      tmp_path: Path) -> None:
    script = tmp_path / "migration.sql"
    script.write_text("-- a migration\ncreate temp table m (v text);\n"
                      "insert into m values ('a;b'), ($$c;d$$);\n"
                      "select string_agg(v, '|' order by v) as joined from m; -- done\n")
    env = {"PATHWARDEN_TOKEN": gateway.token("ci-test")}
    proc = run("exec", "test-db", "--address", f"{gateway.host}:{gateway.port}",
               "--file", str(script), "--format", "json", env=env)
    assert proc.returncode == 0, proc.stderr
    results = json_lines(proc.stdout)
    assert [r["command"] for r in results] == ["CREATE TABLE", "INSERT 0 2", "SELECT 1"]
    assert results[2]["rows"] == [["a;b|c;d"]]


def test_exec_reads_sql_from_standard_input(gateway: GatewayHarness) -> None:
    proc = pw_exec(gateway, "test-db", "-", stdin="select 'from stdin' as src;",
                   options=("--format", "csv"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["src", "from stdin"]


def test_exec_sends_notices_to_stderr(gateway: GatewayHarness) -> None:
    proc = pw_exec(gateway, "test-db",
                   "do $$ begin raise notice 'pipeline notice'; end $$", "select 2 as two",
                   options=("--format", "csv"))
    assert proc.returncode == 0, proc.stderr
    assert "NOTICE: pipeline notice" in proc.stderr
    assert "pipeline notice" not in proc.stdout
    assert proc.stdout.splitlines() == ["two", "2"]


def test_exec_exits_3_when_policy_denies_a_statement(gateway: GatewayHarness) -> None:
    proc = pw_exec(gateway, "locked-db", "select 1", "select 2", options=("--format", "json"))
    assert proc.returncode == 3, proc.stderr
    assert "statement 1 denied (SQLSTATE 42501): pathwarden:" in proc.stderr
    [denied] = json_lines(proc.stdout)  # stopped at the first failure
    assert denied["error"] == {"sqlstate": "42501", "message": denied["error"]["message"],  # type: ignore[index]
                               "denied": True}


def test_exec_exits_1_on_an_sql_error_and_stops_there(gateway: GatewayHarness) -> None:
    proc = pw_exec(gateway, "test-db", "select 1", "select * from no_such_table", "select 3",
                   options=("--format", "json"))
    assert proc.returncode == 1
    assert "statement 2 failed (SQLSTATE 42P01)" in proc.stderr
    assert "no_such_table" in proc.stderr
    ok, failed = json_lines(proc.stdout)
    assert ok["command"] == "SELECT 1"
    assert failed["error"]["denied"] is False  # type: ignore[index]


def test_exec_continue_on_error_runs_the_rest_and_reports_the_worst(
        gateway: GatewayHarness) -> None:
    proc = pw_exec(gateway, "test-db", "select * from no_such_table", "select 'after' as s",
                   options=("--format", "csv", "--continue-on-error"))
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == ["s", "after"]


def test_exec_exits_4_with_a_token_the_gateway_refuses(gateway: GatewayHarness) -> None:
    real = gateway.token("ci-test")
    header, payload, signature = real.split(".")
    tampered = f"{header}.{payload}.{signature[:-4]}AAAA"
    proc = pw_exec(gateway, "test-db", "select 1", token=tampered)
    assert proc.returncode == 4
    assert "cannot connect to test-db as ci-test" in proc.stderr
    assert "authentication failed" in proc.stderr
    assert tampered not in proc.stderr and proc.stdout == ""


def test_exec_exits_4_with_something_that_is_not_a_token(gateway: GatewayHarness) -> None:
    proc = pw_exec(gateway, "test-db", "select 1", token="not-a-token")
    assert proc.returncode == 4
    assert "does not look like a pathwarden token" in proc.stderr


def test_exec_exits_4_when_the_gateway_is_unreachable(gateway: GatewayHarness) -> None:
    from pgserver import free_port

    proc = run("exec", "test-db", "--address", f"127.0.0.1:{free_port()}", "--", "select 1",
               env={"PATHWARDEN_TOKEN": gateway.token("ci-test")})
    assert proc.returncode == 4
    assert "cannot connect" in proc.stderr


def test_exec_usage_errors_exit_2(gateway: GatewayHarness) -> None:
    no_token = run("exec", "test-db", "--", "select 1")
    assert no_token.returncode == 2 and "PATHWARDEN_TOKEN" in no_token.stderr
    plaintext = run("exec", "test-db", "--address", "db.example.com:15432", "--sslmode",
                    "disable", "--", "select 1", env={"PATHWARDEN_TOKEN": "x.y.z"})
    assert plaintext.returncode == 2 and "loopback" in plaintext.stderr
    no_sql = pw_exec(gateway, "test-db")
    assert no_sql.returncode == 2 and "no SQL" in no_sql.stderr


def test_exec_verifies_the_gateway_certificate_with_cacert(gateway: GatewayHarness) -> None:
    cert = Path(gateway.config.data_dir) / "tls" / "gateway.crt"
    proc = pw_exec(gateway, "test-db", "select 'verified' as v",
                   options=("--cacert", str(cert), "--format", "csv"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["v", "verified"]


def test_exec_statements_reach_the_audit_trail_under_the_tokens_identity(
        gateway: GatewayHarness) -> None:
    proc = pw_exec(gateway, "test-db", "select 'audited-exec-marker'",
                   token=gateway.token("ci-deploy"))
    assert proc.returncode == 0, proc.stderr
    sessions = gateway.sessions(identity="ci-deploy", connection="test-db")
    texts = [st.text for s in sessions for st in gateway.statements(s.id)]
    assert "select 'audited-exec-marker'" in texts


# -- connect --------------------------------------------------------------------------


class LocalPort:
    """A running `pathwarden connect`, and the port it listens on."""

    def __init__(self, proc: subprocess.Popen[str], port: int, banner: str) -> None:
        self.proc = proc
        self.port = port
        self.banner = banner

    def psql(self, *args: str, dsn: str = "", timeout: float = 30,
             ) -> subprocess.CompletedProcess[str]:
        conninfo = f"host=127.0.0.1 port={self.port} {dsn}".strip()
        return subprocess.run(["psql", conninfo, "-X", "-At", "-v", "ON_ERROR_STOP=1", *args],
                              capture_output=True, text=True, timeout=timeout,
                              env={k: v for k, v in os.environ.items()
                                   if not k.startswith("PG")})

    def popen_psql(self, sql: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["psql", f"host=127.0.0.1 port={self.port}", "-X", "-At", "-c", sql],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_connect(gateway: GatewayHarness, connection: str, token: str,
                  *options: str) -> LocalPort:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PATHWARDEN_")}
    proc = subprocess.Popen(
        [*PATHWARDEN, "connect", connection, "--address", f"{gateway.host}:{gateway.port}",
         *options], stderr=subprocess.PIPE, text=True,
        env={**clean, "PATHWARDEN_TOKEN": token})
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("listening on "):
            port = int(line.split()[2].rstrip(";").rsplit(":", 1)[1])
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep it drained
            return LocalPort(proc, port, "".join(lines))
    proc.kill()
    raise AssertionError("pathwarden connect did not start:\n" + "".join(lines))


def stop(local: LocalPort) -> int:
    local.proc.send_signal(signal.SIGTERM)
    return local.proc.wait(15)


@pytest.fixture
def local_port(gateway: GatewayHarness) -> Iterator[LocalPort]:
    local = start_connect(gateway, "test-db", gateway.token("ci-test"))
    try:
        yield local
    finally:
        if local.proc.poll() is None:
            stop(local)


def test_connect_tells_how_to_connect_and_psql_needs_no_password(
        local_port: LocalPort, gateway: GatewayHarness) -> None:
    assert (f'connect with: psql "host=127.0.0.1 port={local_port.port} dbname=test-db"'
            in local_port.banner)
    proc = local_port.psql("-c", "select current_database(), 'through connect'",
                           dsn="dbname=test-db")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "test|through connect"  # the upstream database of test-db


def test_connect_keeps_the_clients_safe_startup_parameters(local_port: LocalPort) -> None:
    proc = local_port.psql("-c", "show application_name", "-c", "show client_encoding",
                           dsn="application_name=migrator client_encoding=UTF8")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["migrator", "UTF8"]


def test_connect_passes_the_gateways_refusal_of_a_startup_parameter(
        local_port: LocalPort) -> None:
    proc = local_port.psql("-c", "select 1", dsn="options='-c search_path=evil'")
    assert proc.returncode != 0
    assert "startup parameter 'options' is not allowed" in proc.stderr


def test_connect_serves_concurrent_clients_and_one_dying_disturbs_no_other(
        local_port: LocalPort, pg_server: PgServer) -> None:
    victim = local_port.popen_psql("select 'victim', pg_sleep(30)")
    others = [local_port.popen_psql(f"select 'client {i}', pg_sleep(2)") for i in range(4)]
    # Wait until the victim's query runs on the server, then kill psql outright.
    assert poll(lambda: _running(pg_server, "'victim'") == 1, timeout=10), \
        "the victim's query never started"
    victim.kill()
    victim.wait(5)
    results = [p.communicate(timeout=30) for p in others]
    assert [p.returncode for p in others] == [0, 0, 0, 0], results
    assert sorted(out.split("|")[0] for out, _ in results) == [f"client {i}" for i in range(4)]
    # The port still serves newcomers, and the proxy is alive.
    after = local_port.psql("-c", "select 'after the victim'")
    assert after.stdout.strip() == "after the victim", after.stderr
    assert local_port.proc.poll() is None


def _running(pg_server: PgServer, marker: str) -> int:
    with psycopg.connect(pg_server.dsn(dbname="test"), autocommit=True) as conn:
        row = conn.execute("select count(*) from pg_stat_activity where state = 'active' "
                           "and query like %s and pid <> pg_backend_pid()",
                           (f"%{marker}%",)).fetchone()
    assert row is not None
    return int(row[0])


def test_connect_forwards_cancel_requests(local_port: LocalPort, pg_server: PgServer) -> None:
    # psql sends a CancelRequest on SIGINT (Ctrl-C), on a connection of its own.
    started = time.monotonic()
    sleeper = local_port.popen_psql("select 'cancel-me', pg_sleep(20)")
    assert poll(lambda: _running(pg_server, "'cancel-me'") == 1, timeout=10)
    sleeper.send_signal(signal.SIGINT)
    _, stderr = sleeper.communicate(timeout=15)
    assert "canceling statement due to user request" in stderr
    assert time.monotonic() - started < 15


def test_connect_passes_the_gateways_refusal_to_the_client(gateway: GatewayHarness) -> None:
    # ci-deploy may use test-db only: the gateway refuses the login, psql shows why.
    local = start_connect(gateway, "scram-db", gateway.token("ci-deploy"))
    try:
        proc = local.psql("-c", "select 1")
        assert proc.returncode != 0
        assert "pathwarden: authentication failed for user ci-deploy" in proc.stderr
        assert local.proc.poll() is None
    finally:
        assert stop(local) == 0


def test_connect_refuses_to_listen_beyond_loopback(gateway: GatewayHarness) -> None:
    proc = run("connect", "test-db", "--listen", "0.0.0.0:0",
               env={"PATHWARDEN_TOKEN": gateway.token("ci-test")})
    assert proc.returncode == 2
    assert "loopback" in proc.stderr


def test_connect_stops_cleanly_on_sigterm_with_a_client_connected(
        local_port: LocalPort) -> None:
    idle = local_port.popen_psql("select pg_sleep(30)")
    time.sleep(0.5)
    assert stop(local_port) == 0
    idle.wait(10)
    assert idle.returncode != 0
