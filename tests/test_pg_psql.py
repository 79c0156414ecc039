"""End-to-end tests with the real psql and pgbench through the gateway.

Both run as subprocesses against the session-scoped ``gateway`` fixture (the
real PostgreSQL test server behind it). Server state is checked directly on
``pg_server``; what the gateway recorded is checked through its audit store.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway_harness import GatewayHarness, poll
from pathwarden.model import SessionRecord, StatementRecord
from pgserver import PgServer

CANCELED = "canceling statement due to user request"

# -- helpers -------------------------------------------------------------------------




def _conninfo(gateway: GatewayHarness, sslmode: str = "disable", host: str = "127.0.0.1",
              **extra: str) -> str:
    parts = {"host": host, "port": str(gateway.port), "user": "ci-test", "dbname": "test-db",
             "sslmode": sslmode, "connect_timeout": "10", **extra}
    return " ".join(f"{k}={v}" for k, v in parts.items())


def _env(token: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "PGPASSWORD": token, "LC_ALL": "C.UTF-8"}


def _psql_cmd(conninfo: str, *args: str) -> list[str]:
    return ["psql", "-X", "-q", "-A", "-t", *args, conninfo]


def _psql(gateway: GatewayHarness, *args: str, sslmode: str = "disable",
          cwd: Path | None = None, check: bool = True,
          **extra: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        _psql_cmd(_conninfo(gateway, sslmode, **extra), *args), env=_env(gateway.token()),
        capture_output=True, text=True, timeout=60, cwd=cwd,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _session_with(gateway: GatewayHarness, marker: str
                  ) -> tuple[SessionRecord, list[StatementRecord]]:
    """The ended session that ran a statement containing ``marker``, and its statements."""
    found: list[tuple[SessionRecord, list[StatementRecord]]] = []

    def look() -> bool:
        since = datetime.now(UTC) - timedelta(minutes=5)
        for s in gateway.sessions(since=since, limit=1000):
            stmts = gateway.statements(s.id)
            if s.ended_at is not None and any(marker in st.text for st in stmts):
                found.append((s, stmts))
                return True
        return False

    assert poll(look), f"no ended session ran a statement containing {marker!r}"
    return found[0]


@pytest.fixture
def table(pg_server: PgServer) -> Iterator[str]:
    """A fresh table ``(id int primary key, v text)`` in database test, dropped after."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg_server.psql(f"create table {name} (id int primary key, v text)", dbname="test")
    yield name
    pg_server.psql(f"drop table if exists {name}", dbname="test")


def _server(pg_server: PgServer, sql: str) -> list[str]:
    return pg_server.psql(sql, dbname="test").splitlines()


# -- psql --------------------------------------------------------------------------------


def test_psql_simple_queries_are_recorded(gateway: GatewayHarness) -> None:
    marker = uuid.uuid4().hex
    proc = _psql(gateway, "-c", f"select '{marker}'",
                 "-c", "select n, n * n from generate_series(1, 5) as n",
                 "-c", "select current_user, current_database()")
    assert proc.stdout.splitlines() == [
        marker, "1|1", "2|4", "3|9", "4|16", "5|25", "postgres|test"]
    session, stmts = _session_with(gateway, marker)
    assert session.identity == "ci-test"
    assert session.connection == "test-db"
    assert session.end_reason == "client terminated"
    assert session.bytes_from_client > 0
    assert session.bytes_to_client > 0
    assert [s.text for s in stmts] == [
        f"select '{marker}'", "select n, n * n from generate_series(1, 5) as n",
        "select current_user, current_database()"]
    assert [s.kind for s in stmts] == ["query"] * 3
    assert [s.command_tag for s in stmts] == ["SELECT 1", "SELECT 5", "SELECT 1"]
    assert [s.rows for s in stmts] == [1, 5, 1]
    assert all(s.error is None for s in stmts)
    assert all(s.duration_ms is not None and s.duration_ms >= 0 for s in stmts)
    assert [s.seq for s in stmts] == sorted(s.seq for s in stmts)


def test_psql_multi_statement_command(gateway: GatewayHarness, table: str,
                                      pg_server: PgServer) -> None:
    sql = (f"insert into {table} values (1, 'a'), (2, 'b'), (3, 'c'); "
           f"update {table} set v = upper(v) where id > 1; "
           f"select string_agg(v, ',' order by id) from {table}")
    proc = _psql(gateway, "-c", sql)
    assert proc.stdout.strip().splitlines()[-1] == "a,B,C"
    assert _server(pg_server, f"select count(*) from {table}") == ["3"]
    _, stmts = _session_with(gateway, f"update {table}")
    (rec,) = stmts
    assert rec.text == sql
    assert rec.kind == "query"
    assert rec.command_tag == "SELECT 1"  # the last statement's
    assert rec.error is None

    # An error in the middle: the implicit transaction rolls back all of it.
    bad = (f"insert into {table} values (10, 'x'); select 1/0; "
           f"insert into {table} values (11, 'y')")
    proc = _psql(gateway, "-v", "ON_ERROR_STOP=1", "-c", bad, check=False)
    assert proc.returncode == 1
    assert "division by zero" in proc.stderr
    assert _server(pg_server, f"select count(*) from {table} where id >= 10") == ["0"]
    _, stmts = _session_with(gateway, f"insert into {table} values (10")
    (rec,) = stmts
    assert rec.error is not None
    assert "division by zero" in rec.error


def test_psql_copy_in_and_out(gateway: GatewayHarness, table: str, pg_server: PgServer,
                              tmp_path: Path) -> None:
    n = 5000
    src = tmp_path / "in.csv"
    src.write_text("".join(f'{i},"value {i}, with ""quotes"""\n' for i in range(n)))
    _psql(gateway, "-c", f"\\copy {table} (id, v) from 'in.csv' with (format csv)",
          cwd=tmp_path)
    assert _server(pg_server, f"select count(*), max(id) from {table}") == [f"{n}|{n - 1}"]
    assert _server(pg_server, f"select v from {table} where id = 7") == ['value 7, with "quotes"']
    _psql(gateway, "-c",
          f"\\copy (select id, v from {table} order by id) to 'out.csv' with (format csv)",
          cwd=tmp_path)
    assert (tmp_path / "out.csv").read_text() == src.read_text()

    _, stmts = _session_with(gateway, f"COPY  {table} ( id, v ) FROM STDIN")
    (cin,) = stmts
    assert cin.command_tag == f"COPY {n}"
    assert cin.rows == n
    assert cin.error is None
    session, stmts = _session_with(gateway, f"{table} order by id")
    (cout,) = stmts
    assert cout.command_tag == f"COPY {n}"
    assert cout.rows == n
    assert session.bytes_to_client > src.stat().st_size


def test_psql_copy_in_error_is_reported(gateway: GatewayHarness, table: str,
                                        pg_server: PgServer, tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("1,ok\n2,ok\nthree,bad\n")
    proc = _psql(gateway, "-v", "ON_ERROR_STOP=1", "-c",
                 f"\\copy {table} from 'bad.csv' with (format csv)", cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert "invalid input syntax for type integer" in proc.stderr
    assert _server(pg_server, f"select count(*) from {table}") == ["0"]
    _, stmts = _session_with(gateway, f"{table} FROM STDIN")
    assert stmts[0].error is not None
    assert "invalid input syntax" in stmts[0].error


def test_psql_script_with_transactions(gateway: GatewayHarness, table: str,
                                       pg_server: PgServer, tmp_path: Path) -> None:
    script = tmp_path / "script.sql"
    script.write_text(f"""\
BEGIN;
INSERT INTO {table} VALUES (1, 'committed');
COMMIT;
BEGIN;
INSERT INTO {table} VALUES (2, 'rolled back');
ROLLBACK;
BEGIN;
INSERT INTO {table} VALUES (3, 'aborted');
SELECT 1/0;
INSERT INTO {table} VALUES (4, 'ignored');
ROLLBACK;
BEGIN;
INSERT INTO {table} VALUES (6, 'kept');
SAVEPOINT sp;
INSERT INTO {table} VALUES (7, 'undone');
ROLLBACK TO SAVEPOINT sp;
COMMIT;
INSERT INTO {table} VALUES (5, 'autocommit');
SELECT string_agg(id::text, ',' ORDER BY id) FROM {table};
""")
    proc = _psql(gateway, "-f", str(script), check=False)
    assert proc.returncode == 0, proc.stderr
    assert "division by zero" in proc.stderr
    assert "current transaction is aborted" in proc.stderr
    assert proc.stdout.strip() == "1,5,6"
    assert _server(pg_server, f"select id, v from {table} order by id") == [
        "1|committed", "5|autocommit", "6|kept"]

    _, stmts = _session_with(gateway, f"INSERT INTO {table} VALUES (4")
    summary = [(s.text.rstrip(";").split(" ")[0] if not s.text.startswith("SELECT 1/0") else "1/0",
                s.command_tag, s.error is not None) for s in stmts]
    assert summary == [
        ("BEGIN", "BEGIN", False), ("INSERT", "INSERT 0 1", False), ("COMMIT", "COMMIT", False),
        ("BEGIN", "BEGIN", False), ("INSERT", "INSERT 0 1", False),
        ("ROLLBACK", "ROLLBACK", False),
        ("BEGIN", "BEGIN", False), ("INSERT", "INSERT 0 1", False), ("1/0", None, True),
        ("INSERT", None, True), ("ROLLBACK", "ROLLBACK", False),
        ("BEGIN", "BEGIN", False), ("INSERT", "INSERT 0 1", False),
        ("SAVEPOINT", "SAVEPOINT", False), ("INSERT", "INSERT 0 1", False),
        ("ROLLBACK", "ROLLBACK", False), ("COMMIT", "COMMIT", False),
        ("INSERT", "INSERT 0 1", False), ("SELECT", "SELECT 1", False),
    ]
    assert stmts[8].error is not None
    assert "division by zero" in stmts[8].error
    assert stmts[9].error is not None
    assert "current transaction is aborted" in stmts[9].error


def test_psql_sslmode_require(gateway: GatewayHarness) -> None:
    marker = uuid.uuid4().hex
    proc = _psql(gateway, "-c", f"select '{marker}'", "-c", "\\conninfo", sslmode="require")
    assert proc.stdout.splitlines()[0] == marker
    assert "SSL connection (protocol: TLSv1." in proc.stdout
    session, _ = _session_with(gateway, marker)
    assert session.end_reason == "client terminated"


def test_psql_large_result_and_inline_copy_over_tls(gateway: GatewayHarness, table: str,
                                                    pg_server: PgServer,
                                                    tmp_path: Path) -> None:
    proc = _psql(gateway, "-c", "select i, md5(i::text) from generate_series(1, 200000) i",
                 sslmode="require")
    lines = proc.stdout.splitlines()
    assert len(lines) == 200_000
    assert lines[-1].startswith("200000|")
    script = tmp_path / "copy.sql"
    script.write_text(
        f"BEGIN;\nCOPY {table} (id, v) FROM STDIN;\n1\tone\n2\ttwo\n\\.\nCOMMIT;\n"
        f"BEGIN;\nCOPY {table} (id, v) FROM STDIN;\n3\tthree\n\\.\nROLLBACK;\n")
    _psql(gateway, "-v", "ON_ERROR_STOP=1", "-f", str(script), sslmode="require")
    assert _server(pg_server, f"select id, v from {table} order by id") == ["1|one", "2|two"]
    _, stmts = _session_with(gateway, f"COPY {table} (id, v) FROM STDIN")
    assert [(s.text.split(" ")[0], s.command_tag) for s in stmts] == [
        ("BEGIN;", "BEGIN"), ("COPY", "COPY 2"), ("COMMIT;", "COMMIT"),
        ("BEGIN;", "BEGIN"), ("COPY", "COPY 1"), ("ROLLBACK;", "ROLLBACK")]


def test_psql_sslmode_verify_full(gateway: GatewayHarness, pg_server: PgServer) -> None:
    cert = Path(gateway.config.data_dir) / "tls" / "gateway.crt"
    assert cert.is_file()
    proc = _psql(gateway, "-c", "select 'verified'", "-c", "\\conninfo", sslmode="verify-full",
                 host="localhost", sslrootcert=str(cert))
    assert proc.stdout.splitlines()[0] == "verified"
    assert "SSL connection" in proc.stdout
    # The wrong trust anchor (the upstream server's certificate) is rejected by psql.
    proc = _psql(gateway, "-c", "select 1", sslmode="verify-full", host="localhost",
                 sslrootcert=str(pg_server.cafile), check=False)
    assert proc.returncode == 2
    assert "certificate verify failed" in proc.stderr


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_psql_ctrl_c_cancels_running_statement(gateway: GatewayHarness, pg_server: PgServer,
                                               sslmode: str) -> None:
    marker = uuid.uuid4().hex
    running = ("select count(*) from pg_stat_activity where state = 'active' "
               f"and query like '%/* {marker} */%' and pid <> pg_backend_pid()")
    proc = subprocess.Popen(
        _psql_cmd(_conninfo(gateway, sslmode), "-c", f"select pg_sleep(30) /* {marker} */"),
        env=_env(gateway.token()), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # Interrupt once the statement runs upstream (~1 s after starting psql).
        assert poll(lambda: _server(pg_server, running) == ["1"], 10)
        time.sleep(0.5)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert CANCELED in err
    assert elapsed < 5
    assert proc.returncode == 1
    _, stmts = _session_with(gateway, marker)
    (rec,) = stmts
    assert rec.error is not None
    assert CANCELED in rec.error
    assert rec.duration_ms is not None
    assert rec.duration_ms < 10_000


def test_psql_killed_mid_statement(gateway: GatewayHarness, pg_server: PgServer) -> None:
    marker = uuid.uuid4().hex
    running = ("select count(*) from pg_stat_activity where state = 'active' "
               f"and query like '%/* {marker} */%' and pid <> pg_backend_pid()")
    proc = subprocess.Popen(
        _psql_cmd(_conninfo(gateway), "-c", f"select pg_sleep(30) /* {marker} */"),
        env=_env(gateway.token()), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        assert poll(lambda: _server(pg_server, running) == ["1"], 10)
    finally:
        proc.kill()
        proc.wait()
    session, stmts = _session_with(gateway, marker)
    assert session.end_reason == "client disconnected"
    (rec,) = stmts
    assert rec.error == "session ended before the statement completed (client disconnected)"
    # The gateway closed the upstream leg too; end the sleeping backend rather than wait.
    pg_server.psql("select pg_terminate_backend(pid) from pg_stat_activity "
                   f"where query like '%/* {marker} */%' and pid <> pg_backend_pid()")


# -- pgbench -------------------------------------------------------------------------------


def _pgbench(gateway: GatewayHarness, *args: str, timeout: float = 120,
             sslmode: str = "disable") -> subprocess.CompletedProcess[str]:
    env = {**_env(gateway.token()), "PGHOST": gateway.host, "PGPORT": str(gateway.port),
           "PGUSER": "ci-test", "PGSSLMODE": sslmode, "PGCONNECT_TIMEOUT": "10"}
    return subprocess.run(["pgbench", *args, "test-db"], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pgbench_db(gateway: GatewayHarness, pg_server: PgServer) -> Iterator[None]:
    """``pgbench -i -s 1`` through the gateway (the pgbench_* tables live in database test)."""
    proc = _pgbench(gateway, "-i", "-s", "1", "-q")
    assert proc.returncode == 0, proc.stderr
    yield
    pg_server.psql("drop table if exists pgbench_accounts, pgbench_branches, pgbench_tellers, "
                   "pgbench_history", dbname="test")


def test_pgbench_init(pgbench_db: None, pg_server: PgServer) -> None:
    assert _server(pg_server, "select count(*) from pgbench_accounts") == ["100000"]
    assert _server(pg_server, "select count(*) from pgbench_branches") == ["1"]
    assert _server(pg_server, "select count(*) from pgbench_tellers") == ["10"]


@pytest.mark.parametrize(("mode", "sslmode", "seconds"), [
    ("simple", "disable", "3"), ("extended", "disable", "3"), ("prepared", "disable", "3"),
    ("prepared", "require", "2")])
def test_pgbench_select_only(gateway: GatewayHarness, pgbench_db: None, mode: str,
                             sslmode: str, seconds: str) -> None:
    started = datetime.now(UTC) - timedelta(seconds=1)
    proc = _pgbench(gateway, "-S", "-T", seconds, "-c", "4", "-j", "2", "-M", mode, "-n",
                    sslmode=sslmode)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    done = re.search(r"number of transactions actually processed: (\d+)", proc.stdout)
    assert done, proc.stdout
    transactions = int(done.group(1))
    assert transactions > 0
    failed = re.search(r"number of failed transactions: (\d+)", proc.stdout)
    assert failed is None or failed.group(1) == "0", proc.stdout
    assert "error" not in proc.stderr.lower(), proc.stderr

    # Every transaction's SELECT is in the audit, in the pgbench sessions.
    def recorded() -> list[StatementRecord]:
        out: list[StatementRecord] = []
        for s in gateway.sessions(since=started, limit=1000):
            out += [st for st in gateway.statements(s.id) if "FROM pgbench_accounts" in st.text]
        return out

    stmts: list[StatementRecord] = []

    def all_recorded() -> bool:
        stmts[:] = recorded()
        return len(stmts) >= transactions

    assert poll(all_recorded, 10), (len(stmts), transactions)
    assert all(s.error is None and s.rows == 1 for s in stmts)
    assert all(s.command_tag == "SELECT 1" for s in stmts)
    if mode == "simple":
        assert all(s.kind == "query" and s.params == () for s in stmts)
        assert re.fullmatch(r"SELECT abalance FROM pgbench_accounts WHERE aid = \d+;",
                            stmts[0].text)
    else:
        assert all(s.kind == "execute" for s in stmts)
        assert stmts[0].text == "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
        assert all(len(s.params) == 1 and (s.params[0] or "").isdigit() for s in stmts)
