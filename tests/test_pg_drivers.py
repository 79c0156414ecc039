"""End-to-end tests with real drivers (psycopg 3 sync/async, asyncpg) through the gateway.

Every test talks to the session-scoped ``gateway`` fixture, which proxies the real
PostgreSQL test server; server state is checked directly on ``pg_server`` and what
the gateway recorded is checked through its audit store.
"""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import psycopg
import pytest

from gateway_harness import GatewayHarness, poll
from pathwarden.model import SessionRecord, StatementRecord
from pgserver import PgServer

# -- helpers -------------------------------------------------------------------------




def _local_port_psycopg(conn: psycopg.Connection | psycopg.AsyncConnection) -> int:
    sock = socket.socket(fileno=socket.dup(conn.pgconn.socket))
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


def _local_port_asyncpg(conn: asyncpg.Connection) -> int:
    return int(conn._transport.get_extra_info("sockname")[1])


def _session_at(gateway: GatewayHarness, port: int, ended: bool = True) -> SessionRecord:
    """The session whose client used local port ``port`` (waits for its end record)."""
    found: list[SessionRecord] = []

    def look() -> bool:
        found.clear()
        since = datetime.now(UTC) - timedelta(minutes=10)
        # Newest first: an older session may have used the same (reused) port.
        for s in gateway.sessions(since=since, limit=1000):
            if s.client_addr == f"127.0.0.1:{port}":
                found.append(s)
                return s.ended_at is not None or not ended
        return False

    assert poll(look), f"no {'ended ' if ended else ''}session from port {port}"
    return found[0]


def _with_text(stmts: list[StatementRecord], needle: str) -> list[StatementRecord]:
    return [s for s in stmts if needle in s.text]


@pytest.fixture
def table(pg_server: PgServer) -> Iterator[str]:
    """A fresh table ``(id int primary key, v text)`` in database test, dropped after."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg_server.psql(f"create table {name} (id int primary key, v text)", dbname="test")
    pg_server.psql(f"grant all on {name} to public", dbname="test")
    yield name
    pg_server.psql(f"drop table if exists {name}", dbname="test")


def _server_rows(pg_server: PgServer, sql: str) -> list[str]:
    return pg_server.psql(sql, dbname="test").splitlines()


async def _apg(gateway: GatewayHarness, token: str, connection: str = "test-db",
               **kwargs: object) -> asyncpg.Connection:
    return await asyncpg.connect(host=gateway.host, port=gateway.port, user="ci-test",
                                 database=connection, password=token, ssl=False, **kwargs)


# -- psycopg 3 (sync) ----------------------------------------------------------------


def test_psycopg_parameterized_queries_and_audit(gateway: GatewayHarness) -> None:
    with psycopg.connect(gateway.dsn()) as conn:
        port = _local_port_psycopg(conn)
        # %t: text format parameters, shown as text in the audit.
        cur = conn.execute("select %t::int + %t::int, %t::text", (40, 2, "héllo"))
        assert cur.fetchone() == (42, "héllo")
        cur = conn.execute("select generate_series(1, %s)", (7,))
        assert len(cur.fetchall()) == 7
    rec = _session_at(gateway, port)
    assert rec.end_reason == "client terminated"
    assert rec.bytes_from_client > 0
    assert rec.bytes_to_client > 0
    assert rec.identity == "ci-test"
    assert rec.connection == "test-db"
    stmts = gateway.statements(rec.id)
    first = _with_text(stmts, "select $1::int + $2::int, $3::text")
    assert len(first) == 1
    assert first[0].kind == "execute"
    assert first[0].params == ("40", "2", "héllo")
    assert first[0].command_tag == "SELECT 1"
    assert first[0].rows == 1
    assert first[0].error is None
    assert first[0].duration_ms is not None
    series = _with_text(stmts, "generate_series(1, $1)")
    assert series[0].rows == 7
    assert series[0].command_tag == "SELECT 7"


def test_psycopg_bind_params_null_text_bytea_in_audit(gateway: GatewayHarness) -> None:
    blob = bytes(range(256)) * 8  # 2 KiB: longer than the audit keeps
    with psycopg.connect(gateway.dsn()) as conn:
        port = _local_port_psycopg(conn)
        row = conn.execute(
            "select %s::text, %s::int, %s::bytea, %s::bytea, %s::text",
            ("it's text", None, b"\x00\x01\xfe\xff", blob, None),
        ).fetchone()
        assert row == ("it's text", None, b"\x00\x01\xfe\xff", blob, None)
    stmts = gateway.statements(_session_at(gateway, port).id)
    (rec,) = _with_text(stmts, "select $1::text, $2::int, $3::bytea")
    text, null, small, big, null2 = rec.params
    assert text == "it's text"
    assert null is None
    assert null2 is None
    assert small == "\\x0001feff"
    assert big is not None
    assert big.startswith("\\x000102")
    assert big.endswith("... (2048 bytes)")


def test_psycopg_prepared_statements(gateway: GatewayHarness, table: str) -> None:
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        port = _local_port_psycopg(conn)
        for i in range(5):
            conn.execute(f"insert into {table} values (%t, %t)", (i, f"v{i}"), prepare=True)
        conn.prepare_threshold = 0
        for i in range(5):
            assert conn.execute(f"select v from {table} where id = %s", (i,)).fetchone() == (
                f"v{i}",)
        # The statements really were prepared server side (named).
        names = conn.execute("select name from pg_prepared_statements").fetchall()
        assert len(names) >= 2
    stmts = gateway.statements(_session_at(gateway, port).id)
    inserts = _with_text(stmts, f"insert into {table}")
    assert [s.params for s in inserts] == [(str(i), f"v{i}") for i in range(5)]
    assert all(s.command_tag == "INSERT 0 1" and s.rows == 1 for s in inserts)
    selects = _with_text(stmts, f"select v from {table}")
    assert len(selects) == 5
    assert all(s.rows == 1 for s in selects)


def test_psycopg_pipeline_mode(gateway: GatewayHarness, table: str, pg_server: PgServer) -> None:
    n = 300
    with psycopg.connect(gateway.dsn()) as conn:
        port = _local_port_psycopg(conn)
        with conn.pipeline(), conn.cursor() as cur:
            for i in range(n):
                cur.execute(f"insert into {table} (id, v) values (%t, %t)", (i, str(i)))
            cur.execute(f"select count(*), sum(id) from {table}")
            counts = cur.fetchone()
        conn.commit()
    assert counts == (n, n * (n - 1) // 2)
    assert _server_rows(pg_server, f"select count(*) from {table}") == [str(n)]
    stmts = gateway.statements(_session_at(gateway, port).id)
    inserts = _with_text(stmts, f"insert into {table}")
    assert len(inserts) == n
    assert all(s.error is None and s.rows == 1 for s in inserts)
    assert [s.params[0] for s in inserts] == [str(i) for i in range(n)]


def test_psycopg_pipeline_error_skips_rest(gateway: GatewayHarness, table: str,
                                           pg_server: PgServer) -> None:
    def run_pipeline(conn: psycopg.Connection) -> None:
        with conn.pipeline():
            conn.execute(f"insert into {table} values (1, 'a')")
            conn.execute(f"insert into {table} values (1, 'dup')")
            conn.execute(f"insert into {table} values (2, 'never')")

    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        port = _local_port_psycopg(conn)
        with pytest.raises(psycopg.errors.UniqueViolation):
            run_pipeline(conn)
        assert conn.execute("select 1").fetchone() == (1,)
    # One implicit transaction up to the Sync: the first insert is rolled back too.
    assert _server_rows(pg_server, f"select id from {table}") == []
    stmts = gateway.statements(_session_at(gateway, port).id)
    (first,) = _with_text(stmts, "(1, 'a')")
    assert first.error is None
    assert first.command_tag == "INSERT 0 1"
    (dup,) = _with_text(stmts, "'dup'")
    assert dup.error is not None
    assert "duplicate key" in dup.error
    # Skipped by the server: recorded (its Parse and its Execute) as not executed.
    never = _with_text(stmts, "'never'")
    assert "execute" in [s.kind for s in never]
    assert all(s.error == "not executed: an earlier message in the pipeline failed"
               for s in never)
    assert all(s.command_tag is None for s in never)


def test_psycopg_transactions(gateway: GatewayHarness, table: str, pg_server: PgServer) -> None:
    def failing_tx(conn: psycopg.Connection) -> None:
        with conn.transaction():
            conn.execute(f"insert into {table} values (3, 'failed tx')")
            conn.execute("select 1/0")

    with psycopg.connect(gateway.dsn()) as conn:
        with conn.transaction():
            conn.execute(f"insert into {table} values (1, 'committed')")
        with conn.transaction():
            conn.execute(f"insert into {table} values (2, 'rolled back')")
            raise psycopg.Rollback
        with pytest.raises(psycopg.errors.DivisionByZero):
            failing_tx(conn)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        conn.execute(f"insert into {table} values (4, 'implicit')")
        conn.rollback()
        conn.execute(f"insert into {table} values (5, 'implicit commit')")
        conn.commit()
    assert _server_rows(pg_server, f"select id, v from {table} order by id") == [
        "1|committed", "5|implicit commit"]


def test_psycopg_named_cursor_fetchmany(gateway: GatewayHarness) -> None:
    with psycopg.connect(gateway.dsn()) as conn:
        port = _local_port_psycopg(conn)
        with conn.cursor(name="pw_cur") as cur:
            cur.itersize = 100
            cur.execute("select i, repeat('x', 10) from generate_series(1, 1000) as i")
            batch = cur.fetchmany(250)
            assert [r[0] for r in batch] == list(range(1, 251))
            rest = cur.fetchall()
            assert len(rest) == 750
            assert rest[-1][0] == 1000
        conn.commit()
    stmts = gateway.statements(_session_at(gateway, port).id)
    assert [s for s in stmts if s.text.lower().startswith("declare")]
    fetches = [s for s in stmts if s.text.lower().startswith("fetch")]
    assert sum(s.rows or 0 for s in fetches) == 1000


def test_psycopg_notice_and_parameter_status(gateway: GatewayHarness) -> None:
    notices: list[str] = []
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        conn.execute("do $$ begin raise notice 'hello from %', 'plpgsql'; end $$")
        assert notices == ["hello from plpgsql"]
        conn.execute("set application_name = 'pw-driver-test'")
        assert conn.info.parameter_status("application_name") == "pw-driver-test"
        conn.execute("set timezone = 'Asia/Tokyo'")
        assert conn.info.parameter_status("TimeZone") == "Asia/Tokyo"
        assert conn.execute("show timezone").fetchone() == ("Asia/Tokyo",)


def test_psycopg_listen_notify(gateway: GatewayHarness) -> None:
    channel = f"ch_{uuid.uuid4().hex[:8]}"
    token = gateway.token()
    with psycopg.connect(gateway.dsn(token=token), autocommit=True) as listener, \
            psycopg.connect(gateway.dsn(token=token), autocommit=True) as sender:
        listener.execute(f"listen {channel}")
        sender.execute("select pg_notify(%s, %s)", (channel, "payload-1"))
        got = list(listener.notifies(timeout=5, stop_after=1))
        assert [(n.channel, n.payload) for n in got] == [(channel, "payload-1")]
        # A notification that arrives while the listener is idle.
        sender.execute(f"notify {channel}, 'payload-2'")
        got = list(listener.notifies(timeout=5, stop_after=1))
        assert [n.payload for n in got] == ["payload-2"]


def test_psycopg_binary_results(gateway: GatewayHarness) -> None:
    with psycopg.connect(gateway.dsn()) as conn, conn.cursor(binary=True) as cur:
        cur.execute("select 12345678901::int8, 1.25::numeric, '\\x00ff'::bytea, "
                    "array[1,2,3], 'txt'::text, null::int")
        assert cur.fetchone() == (12345678901, pytest.approx(1.25), b"\x00\xff", [1, 2, 3],
                                  "txt", None)
        assert cur.pgresult is not None
        assert cur.pgresult.fformat(0) == 1


def test_psycopg_large_result(gateway: GatewayHarness) -> None:
    with psycopg.connect(gateway.dsn()) as conn:
        port = _local_port_psycopg(conn)
        rows = conn.execute("select generate_series(1, 100000)").fetchall()
    assert len(rows) == 100_000
    assert sum(r[0] for r in rows) == 100_000 * 100_001 // 2
    (rec,) = _with_text(gateway.statements(_session_at(gateway, port).id), "generate_series")
    assert rec.rows == 100_000
    assert rec.command_tag == "SELECT 100000"
    assert _session_at(gateway, port).bytes_to_client > 100_000 * 11


def test_psycopg_error_in_the_middle_of_a_result(gateway: GatewayHarness) -> None:
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        port = _local_port_psycopg(conn)
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1 / (50 - i) from generate_series(1, 100) as i").fetchall()
        assert conn.execute("select 'still fine'").fetchone() == ("still fine",)
    stmts = gateway.statements(_session_at(gateway, port).id)
    (rec,) = _with_text(stmts, "generate_series(1, 100)")
    assert rec.error == "division by zero"
    assert rec.rows == 49  # the rows the client received before the error
    assert rec.command_tag is None


def _copy_payload(n: int) -> bytes:
    return b"".join(b"%d\t%s\n" % (i, (b"%07d" % i) * 14) for i in range(n))


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_psycopg_copy_10mb_both_ways(gateway: GatewayHarness, table: str,
                                     pg_server: PgServer, sslmode: str) -> None:
    n = 100_000  # ~10.5 MB of COPY text
    payload = _copy_payload(n)
    assert len(payload) > 10 * 1024 * 1024
    with psycopg.connect(gateway.dsn(sslmode=sslmode)) as conn:
        port = _local_port_psycopg(conn)
        with conn.cursor() as cur:
            with cur.copy(f"copy {table} (id, v) from stdin") as copy:
                for off in range(0, len(payload), 256 * 1024):
                    copy.write(payload[off:off + 256 * 1024])
            assert cur.rowcount == n
        conn.commit()
        out = io.BytesIO()
        with conn.cursor() as cur, cur.copy(
                f"copy (select id, v from {table} order by id) to stdout") as copy:
            for chunk in copy:
                out.write(chunk)
    assert out.getvalue() == payload
    assert _server_rows(pg_server, f"select count(*) from {table}") == [str(n)]
    rec = _session_at(gateway, port)
    assert rec.bytes_from_client > len(payload)
    assert rec.bytes_to_client > len(payload)
    stmts = gateway.statements(rec.id)
    (cin,) = _with_text(stmts, "from stdin")
    assert cin.command_tag == f"COPY {n}"
    assert cin.rows == n
    assert cin.error is None
    (cout,) = _with_text(stmts, "to stdout")
    assert cout.command_tag == f"COPY {n}"
    assert cout.rows == n


def test_psycopg_copy_error_is_recorded(gateway: GatewayHarness, table: str) -> None:
    with psycopg.connect(gateway.dsn()) as conn:
        port = _local_port_psycopg(conn)
        with pytest.raises(psycopg.errors.InvalidTextRepresentation), conn.cursor() as cur, \
                cur.copy(f"copy {table} (id, v) from stdin") as copy:
            copy.write(b"1\tok\nnot-a-number\tbad\n")
        conn.rollback()
        assert conn.execute("select 2").fetchone() == (2,)
        conn.rollback()

        # An exception in the client's copy block: psycopg sends CopyFail.
        def fail_copy() -> None:
            with conn.cursor() as cur, cur.copy(f"copy {table} (id, v) from stdin /* fail */"
                                                 ) as copy:
                copy.write(b"5\tfine\n")
                raise KeyError("client gave up")

        with pytest.raises(KeyError):
            fail_copy()
        conn.rollback()
        assert conn.execute(f"select count(*) from {table}").fetchone() == (0,)
    stmts = gateway.statements(_session_at(gateway, port).id)
    rec, failed = _with_text(stmts, "from stdin")
    assert rec.error is not None
    assert "invalid input syntax" in rec.error
    assert failed.error is not None
    assert "client gave up" in failed.error
    assert failed.command_tag is None


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_psycopg_cancel(gateway: GatewayHarness, sslmode: str) -> None:
    # cancel_safe(), not cancel(): libpq's PQcancel blocks holding the GIL, which
    # would freeze the in-process gateway thread of the test harness.
    with psycopg.connect(gateway.dsn(sslmode=sslmode), autocommit=True) as conn:
        port = _local_port_psycopg(conn)
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        start = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(20)")
        assert time.monotonic() - start < 5
        assert conn.execute("select 'after'").fetchone() == ("after",)
    stmts = gateway.statements(_session_at(gateway, port).id)
    (sleep,) = _with_text(stmts, "pg_sleep")
    assert sleep.error == "canceling statement due to user request"
    assert _with_text(stmts, "'after'")[0].error is None


# -- psycopg 3 (async) -----------------------------------------------------------------


def test_psycopg_async_queries_pipeline_and_transactions(
        gateway: GatewayHarness, table: str, pg_server: PgServer) -> None:
    dsn = gateway.dsn()

    async def main() -> int:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            port = _local_port_psycopg(conn)
            cur = await conn.execute("select %s::int * 2", (21,))
            assert await cur.fetchone() == (42,)
            async with conn.transaction(), conn.pipeline():
                for i in range(50):
                    await conn.execute(f"insert into {table} values (%s, %s)", (i, "a"))
            try:
                async with conn.transaction():
                    await conn.execute(f"insert into {table} values (1000, 'b')")
                    raise LookupError
            except LookupError:
                pass
            cur = await conn.execute(f"select count(*) from {table}", prepare=True)
            assert await cur.fetchone() == (50,)
            return port

    port = asyncio.run(main())
    assert _server_rows(pg_server, f"select count(*), max(id) from {table}") == ["50|49"]
    rec = _session_at(gateway, port)
    assert rec.end_reason == "client terminated"
    assert len(_with_text(gateway.statements(rec.id), f"insert into {table}")) == 51


def test_psycopg_async_listen_notify(gateway: GatewayHarness) -> None:
    channel = f"ach_{uuid.uuid4().hex[:8]}"
    dsn_a, dsn_b = gateway.dsn(), gateway.dsn()

    async def main() -> list[tuple[str, str]]:
        async with await psycopg.AsyncConnection.connect(dsn_a, autocommit=True) as lis, \
                await psycopg.AsyncConnection.connect(dsn_b, autocommit=True) as snd:
            await lis.execute(f"listen {channel}")
            await snd.execute(f"notify {channel}, 'async-payload'")
            return [(n.channel, n.payload) async for n in lis.notifies(timeout=5, stop_after=1)]

    assert asyncio.run(main()) == [(channel, "async-payload")]


# -- asyncpg ---------------------------------------------------------------------------


def test_asyncpg_queries_prepare_and_binary(gateway: GatewayHarness) -> None:
    token = gateway.token()

    async def main() -> int:
        conn = await _apg(gateway, token)
        try:
            assert await conn.fetchval("select $1::int + $2::int", 40, 2) == 42
            row = await conn.fetchrow(
                "select $1::int8 as big, 1.25::numeric as num, $2::bytea as b, "
                "array[1,2,3]::int[] as arr, '{\"a\": 1}'::jsonb as j, "
                "'2024-01-02 03:04:05+00'::timestamptz as ts, null::text as n",
                12345678901, b"\x00\xff")
            assert row["big"] == 12345678901
            assert str(row["num"]) == "1.25"
            assert row["b"] == b"\x00\xff"
            assert row["arr"] == [1, 2, 3]
            assert row["j"] == '{"a": 1}'
            assert row["n"] is None
            assert row["ts"] == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
            stmt = await conn.prepare("select $1::text || '!' as s")
            assert [await stmt.fetchval(f"v{i}") for i in range(5)] == [
                f"v{i}!" for i in range(5)]
            assert stmt.get_attributes()[0].name == "s"
            return _local_port_asyncpg(conn)
        finally:
            await conn.close()

    port = asyncio.run(main())
    rec = _session_at(gateway, port)
    assert rec.end_reason == "client terminated"
    stmts = gateway.statements(rec.id)
    (add,) = _with_text(stmts, "select $1::int + $2::int")
    # asyncpg sends parameters in binary; the audit renders them by the types the
    # server described for the statement.
    assert add.params == ("40", "2")
    assert add.kind == "execute"
    assert add.rows == 1
    bangs = _with_text(stmts, "|| '!'")
    assert [s.params for s in bangs] == [(f"v{i}",) for i in range(5)]


def test_asyncpg_executemany_and_transactions(gateway: GatewayHarness, table: str,
                                              pg_server: PgServer) -> None:
    token = gateway.token()

    async def main() -> int:
        conn = await _apg(gateway, token)
        try:
            await conn.executemany(f"insert into {table} values ($1, $2)",
                                   [(i, f"r{i}") for i in range(500)])
            async with conn.transaction():
                await conn.execute(f"insert into {table} values (1000, 'tx')")
            async def failing() -> None:
                async with conn.transaction():
                    await conn.execute(f"insert into {table} values (1001, 'gone')")
                    await conn.execute(f"insert into {table} values (1, 'dup')")

            with pytest.raises(asyncpg.UniqueViolationError):
                await failing()
            tr = conn.transaction()
            await tr.start()
            await conn.execute(f"delete from {table}")
            await tr.rollback()
            return _local_port_asyncpg(conn)
        finally:
            await conn.close()

    port = asyncio.run(main())
    assert _server_rows(pg_server, f"select count(*), max(id) from {table}") == ["501|1000"]
    stmts = gateway.statements(_session_at(gateway, port).id)
    many = [s for s in stmts if s.text == f"insert into {table} values ($1, $2)"]
    assert len(many) == 500
    assert all(s.rows == 1 and s.error is None for s in many)
    dup = _with_text(stmts, "'dup'")
    assert dup
    assert dup[-1].error is not None
    assert "duplicate key" in dup[-1].error


def test_asyncpg_cursor_portal_suspended(gateway: GatewayHarness) -> None:
    token = gateway.token()

    async def main() -> int:
        conn = await _apg(gateway, token)
        try:
            async with conn.transaction():
                seen = [r[0] async for r in conn.cursor(
                    "select generate_series(1, $1::int)", 1000, prefetch=128)]
                assert seen == list(range(1, 1001))
                cur = await conn.cursor("select generate_series(1, 100)")
                assert [r[0] for r in await cur.fetch(30)] == list(range(1, 31))
                assert (await cur.fetchrow())[0] == 31
                assert len(await cur.fetch(1000)) == 69
            return _local_port_asyncpg(conn)
        finally:
            await conn.close()

    port = asyncio.run(main())
    stmts = gateway.statements(_session_at(gateway, port).id)
    big = _with_text(stmts, "generate_series(1, $1::int)")
    assert sum(s.rows or 0 for s in big) == 1000
    assert len(big) >= 8
    assert all(s.command_tag == "(suspended)" for s in big[:-1])
    small = _with_text(stmts, "generate_series(1, 100)")
    assert sum(s.rows or 0 for s in small) == 100
    assert small[0].command_tag == "(suspended)"
    assert small[0].rows == 30


def test_asyncpg_listen_notify_and_notice_and_settings(gateway: GatewayHarness) -> None:
    channel = f"apg_{uuid.uuid4().hex[:8]}"
    token = gateway.token()

    async def main() -> None:
        lis = await _apg(gateway, token)
        snd = await _apg(gateway, token)
        try:
            queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
            await lis.add_listener(channel, lambda _c, _pid, ch, payload: queue.put_nowait(
                (ch, payload)))
            await snd.execute(f"notify {channel}, 'from-asyncpg'")
            assert await asyncio.wait_for(queue.get(), 5) == (channel, "from-asyncpg")
            await snd.execute("select pg_notify($1, $2)", channel, "second")
            assert await asyncio.wait_for(queue.get(), 5) == (channel, "second")

            notices: list[str] = []
            lis.add_log_listener(lambda _c, msg: notices.append(msg.message))
            await lis.execute("do $$ begin raise notice 'apg notice %', 7; end $$")
            await asyncio.sleep(0.05)
            assert notices == ["apg notice 7"]

            await lis.execute("set application_name = 'pw-asyncpg'")
            assert lis.get_settings().application_name == "pw-asyncpg"
            await lis.execute("set timezone = 'America/New_York'")
            assert lis.get_settings().TimeZone == "America/New_York"
        finally:
            await lis.close()
            await snd.close()

    asyncio.run(main())


def test_asyncpg_large_result(gateway: GatewayHarness) -> None:
    token = gateway.token()

    async def main() -> tuple[int, int, int]:
        conn = await _apg(gateway, token)
        try:
            rows = await conn.fetch("select generate_series(1, 100000)")
            return len(rows), sum(r[0] for r in rows), _local_port_asyncpg(conn)
        finally:
            await conn.close()

    count, total, port = asyncio.run(main())
    assert count == 100_000
    assert total == 100_000 * 100_001 // 2
    (rec,) = _with_text(gateway.statements(_session_at(gateway, port).id), "generate_series")
    assert rec.rows == 100_000
    assert rec.command_tag == "SELECT 100000"


def test_asyncpg_copy_10mb_both_ways(gateway: GatewayHarness, table: str,
                                     pg_server: PgServer) -> None:
    token = gateway.token()
    n = 50_000
    value = "y" * 200
    records = [(i, value + str(i)) for i in range(n)]

    async def main() -> tuple[bytes, int]:
        conn = await _apg(gateway, token)
        try:
            res = await conn.copy_records_to_table(table, records=records, columns=["id", "v"])
            assert res == f"COPY {n}"
            out = io.BytesIO()

            async def sink(chunk: bytes) -> None:
                out.write(chunk)

            res = await conn.copy_from_query(f"select id, v from {table} order by id",
                                             output=sink)
            assert res == f"COPY {n}"
            return out.getvalue(), _local_port_asyncpg(conn)
        finally:
            await conn.close()

    data, port = asyncio.run(main())
    expected = "".join(f"{i}\t{v}\n" for i, v in records).encode()
    assert len(expected) > 10 * 1024 * 1024
    assert data == expected
    assert _server_rows(pg_server, f"select count(*) from {table}") == [str(n)]
    rec = _session_at(gateway, port)
    assert rec.bytes_from_client > 10 * 1024 * 1024
    stmts = gateway.statements(rec.id)
    copies = [s for s in stmts if s.command_tag == f"COPY {n}"]
    assert len(copies) == 2
    assert all(s.rows == n for s in copies)


def test_asyncpg_cancel_via_timeout(gateway: GatewayHarness) -> None:
    token = gateway.token()

    async def main() -> tuple[float, int]:
        conn = await _apg(gateway, token)
        try:
            start = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval("select pg_sleep(20)", timeout=0.5)
            elapsed = time.monotonic() - start
            assert await conn.fetchval("select 5") == 5
            return elapsed, _local_port_asyncpg(conn)
        finally:
            await conn.close()

    elapsed, port = asyncio.run(main())
    assert elapsed < 5
    stmts = gateway.statements(_session_at(gateway, port).id)
    (sleep,) = _with_text(stmts, "pg_sleep")
    assert sleep.error is not None
    assert "canceling statement due to user request" in sleep.error


def test_asyncpg_50_concurrent_sessions(gateway: GatewayHarness) -> None:
    token = gateway.token()
    run = uuid.uuid4().hex[:8]
    baseline = gateway.live_sessions()
    started = datetime.now(UTC) - timedelta(seconds=1)

    async def one(i: int) -> int:
        conn = await _apg(gateway, token)
        try:
            total = 0
            for j in range(5):
                total += await conn.fetchval(f"select $1::int + {j} /* {run}-{i} */", i)
            assert await conn.fetchval(f"select count(*) from generate_series(1, {i + 1})") == i + 1
            return total
        finally:
            await conn.close()

    async def main() -> list[int]:
        return await asyncio.gather(*(one(i) for i in range(50)))

    assert asyncio.run(main()) == [5 * i + 10 for i in range(50)]
    assert poll(lambda: gateway.live_sessions() <= baseline), (
        f"{gateway.live_sessions()} live sessions, expected {baseline}")
    sessions = [s for s in gateway.sessions(since=started, limit=1000)
                if s.ended_at is not None]
    seen: set[int] = set()
    for s in sessions:
        for st in gateway.statements(s.id):
            if f"/* {run}-" in st.text:
                seen.add(int(st.text.rsplit("-", 1)[1].split(" ")[0]))
                assert s.end_reason == "client terminated"
    assert seen == set(range(50))


# -- upstream authentication methods --------------------------------------------------


@pytest.mark.parametrize(("connection", "user"), [
    ("scram-db", "scram_user"), ("md5-db", "md5_user"), ("tls-db", "tls_user")])
def test_upstream_auth_methods(gateway: GatewayHarness, pg_server: PgServer,
                               connection: str, user: str) -> None:
    if connection == "tls-db" and not pg_server.ssl:
        pytest.skip("test server built without TLS")
    with psycopg.connect(gateway.dsn(connection)) as conn:
        assert conn.execute("select current_user, current_database()").fetchone() == (
            user, "test")
        ssl_on = conn.execute(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()
        assert ssl_on == ((connection == "tls-db"),)
        # Extended protocol as well.
        assert conn.execute("select %s::text", ("ok",)).fetchone() == ("ok",)

    token = gateway.token()

    async def main() -> str:
        conn = await _apg(gateway, token, connection)
        try:
            return str(await conn.fetchval("select current_user"))
        finally:
            await conn.close()

    assert asyncio.run(main()) == user
