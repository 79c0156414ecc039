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
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import pytest

from gateway_harness import (
    GatewayHarness,
    api_settings,
    poll,
    running_gateway,
    standard_config,
)
from oidc_issuer import OidcIssuer, running_issuer
from pathwarden.cli.pipeline_cmd import unverified_payload
from pgserver import PgServer, free_port

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


# -- login ----------------------------------------------------------------------------

DEPLOY_RULE = {"when": {"repository": "acme/shop", "ref": "refs/heads/main",
                        "environment": "production"}, "identity": "ci-deploy", "ttl": "10m"}
TEST_RULE = {"when": {"repository": "acme/shop"}, "identity": "ci-test", "ttl": "30m"}


@pytest.fixture(scope="module")
def issuer() -> Iterator[OidcIssuer]:
    with running_issuer() as source:
        yield source


@pytest.fixture(scope="module")
def api_gateway(pg_server: PgServer, issuer: OidcIssuer,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHarness]:
    """A gateway with its HTTP API on and a GitHub-shaped trust issuer."""
    base = tmp_path_factory.mktemp("login")
    os.environ["PW_TEST_SCRAM"] = "scram-secret"
    (base / "md5pw").write_text("md5-secret\n")
    config = standard_config(pg_server, base / "data", free_port())
    config["api"] = api_settings()
    config["trust"] = [{"name": "github", "issuer": issuer.url, "audience": "pathwarden",
                        "provider": "github", "rules": [DEPLOY_RULE, TEST_RULE]}]
    with running_gateway(base, config) as harness:
        yield harness


def login(gw: GatewayHarness, *args: str, env: dict[str, str] | None = None,
          stdin: str | None = None, scheme: str = "http") -> subprocess.CompletedProcess[str]:
    return run("login", "--gateway", gw.api_url(scheme), *args, env=env, stdin=stdin)


def test_login_exchanges_an_oidc_token_from_an_env_variable(
        api_gateway: GatewayHarness, issuer: OidcIssuer) -> None:
    oidc = issuer.github_token(time.time(), 3600)
    proc = login(api_gateway, "--oidc-token-env", "CI_ID_TOKEN", env={"CI_ID_TOKEN": oidc})
    assert proc.returncode == 0, proc.stderr
    token = proc.stdout.strip()
    assert proc.stdout == token + "\n" and token.count(".") == 2, "stdout holds the token alone"
    assert "logged in as ci-deploy: token " in proc.stderr
    assert "repository=acme/shop" in proc.stderr
    assert token not in proc.stderr and oidc not in proc.stderr + proc.stdout
    # The token works with exec, which reads the identity from it.
    used = pw_exec(api_gateway, "test-db", "select current_user is not null as ok",
                   token=token, options=("--format", "csv"))
    assert used.returncode == 0, used.stderr
    assert used.stdout.splitlines() == ["ok", "t"]


def test_login_requests_a_scope_and_a_ttl(api_gateway: GatewayHarness,
                                          issuer: OidcIssuer) -> None:
    oidc = issuer.github_token(time.time(), 3600, environment="staging")  # the ci-test rule
    proc = login(api_gateway, "--oidc-token-env", "T", "--connection", "test-db",
                 "--ttl", "5m", env={"T": oidc})
    assert proc.returncode == 0, proc.stderr
    assert "logged in as ci-test" in proc.stderr and "scope: test-db" in proc.stderr
    exp = unverified_payload(proc.stdout.strip())["exp"]
    assert isinstance(exp, int) and exp - time.time() <= 5 * 60 + 5
    refused = pw_exec(api_gateway, "md5-db", "select 1", token=proc.stdout.strip())
    assert refused.returncode == 4  # outside the token's scope


def test_login_with_github_requests_the_id_token_for_the_audience(
        api_gateway: GatewayHarness, issuer: OidcIssuer) -> None:
    oidc = issuer.github_token(time.time(), 3600)
    with github_token_endpoint(oidc, bearer="gh-request-token") as (url, requests):
        proc = login(api_gateway, "--github", env={
            "ACTIONS_ID_TOKEN_REQUEST_URL": url,
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "gh-request-token"})
    assert proc.returncode == 0, proc.stderr
    assert "logged in as ci-deploy" in proc.stderr
    [(path, authorization)] = requests
    assert "api-version=2.0" in path and "audience=pathwarden" in path
    assert authorization == "Bearer gh-request-token"


def test_login_with_github_outside_actions_says_what_is_missing(
        api_gateway: GatewayHarness) -> None:
    proc = login(api_gateway, "--github")
    assert proc.returncode == 1
    assert "id-token: write" in proc.stderr


def test_login_reports_the_gateways_refusal_with_its_code(
        api_gateway: GatewayHarness, issuer: OidcIssuer) -> None:
    oidc = issuer.github_token(time.time(), 3600, aud="someone-else")
    proc = login(api_gateway, "--oidc-token-env", "T", env={"T": oidc})
    assert proc.returncode == 1
    assert proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: the gateway refused the OIDC token (audience): ")
    assert oidc not in proc.stderr


def test_login_checks_a_pre_issued_token_and_prints_it_back(
        api_gateway: GatewayHarness) -> None:
    token = api_gateway.token("ci-test", connections=("test-db",))
    from_env = login(api_gateway, "--token-env", "PRE", env={"PRE": token})
    assert from_env.returncode == 0, from_env.stderr
    assert from_env.stdout == token + "\n"
    assert "token checked: ci-test" in from_env.stderr and "connections: test-db" in from_env.stderr
    from_stdin = login(api_gateway, "--token", "-", stdin=token + "\n")
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert from_stdin.stdout == token + "\n"
    outside = login(api_gateway, "--token-env", "PRE", "--connection", "md5-db",
                    env={"PRE": token})
    assert outside.returncode == 1 and "scoped to test-db, not md5-db" in outside.stderr


def test_login_refuses_a_bad_pre_issued_token_with_the_gateways_reason(
        api_gateway: GatewayHarness) -> None:
    proc = login(api_gateway, "--token-env", "PRE", env={"PRE": "not-a-token"})
    assert proc.returncode == 1
    assert "error: the gateway refused the token (malformed): " in proc.stderr


def test_login_over_https_verifies_the_gateway_with_cacert(
        api_gateway: GatewayHarness) -> None:
    token = api_gateway.token("ci-test")
    cert = Path(api_gateway.config.data_dir) / "tls" / "gateway.crt"
    verified = login(api_gateway, "--token-env", "PRE", "--cacert", str(cert),
                     env={"PRE": token}, scheme="https")
    assert verified.returncode == 0, verified.stderr
    unverified = login(api_gateway, "--token-env", "PRE", env={"PRE": token}, scheme="https")
    assert unverified.returncode == 1
    assert "--cacert" in unverified.stderr


def test_login_usage_errors_exit_2(api_gateway: GatewayHarness) -> None:
    both = login(api_gateway, "--github", "--token-env", "X")
    assert both.returncode == 2 and "choose one token source" in both.stderr
    none = login(api_gateway)
    assert none.returncode == 2 and "choose one token source" in none.stderr
    literal = login(api_gateway, "--token", "a.b.c")
    assert literal.returncode == 2 and "process list" in literal.stderr
    plain = run("login", "--gateway", "http://gateway.example.com:15480", "--token-env", "X",
                env={"X": "a.b.c"})
    assert plain.returncode == 2 and "https" in plain.stderr
    no_gateway = run("login", "--token-env", "X", env={"X": "a.b.c"})
    assert no_gateway.returncode == 2 and "PATHWARDEN_GATEWAY" in no_gateway.stderr


@contextmanager
def github_token_endpoint(value: str, bearer: str,
                          ) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """Stands in for GitHub's ACTIONS_ID_TOKEN_REQUEST_URL: answers {"value": token}."""
    requests: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append((self.path, self.headers.get("Authorization", "")))
            ok = self.headers.get("Authorization") == f"Bearer {bearer}"
            data = json.dumps({"value": value} if ok else {"message": "Bad token"}).encode()
            self.send_response(200 if ok else 401)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/token?api-version=2.0", requests
    finally:
        server.shutdown()
        server.server_close()


def test_exec_writes_copy_out_data_and_fails_copy_in_without_breaking_the_session(
        gateway: GatewayHarness) -> None:
    proc = pw_exec(gateway, "test-db", "copy (select g, 'x' from generate_series(1, 2) g) "
                   "to stdout with (format csv)", "create temp table c (v int)",
                   "copy c from stdin", "select count(*) as n from c",
                   options=("--format", "csv", "--continue-on-error"))
    assert proc.returncode == 1, proc.stderr
    assert "statement 3 failed" in proc.stderr and "COPY FROM STDIN" in proc.stderr
    assert proc.stdout.splitlines() == ["1,x", "2,x", "n", "0"]
