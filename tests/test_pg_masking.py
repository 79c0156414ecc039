"""Masking on the PostgreSQL path, end to end with real clients and a real server.

Secrets are planted in table rows (text, jsonb, a ``password`` column), in a
NOTICE and an ERROR raised by a function, and in COPY OUT; psql, psycopg and
asyncpg read them through the gateway. None of them may reach the client or
the audit store (the SQLite file is searched byte for byte). The fake secrets
are built at run time from the providers' formats, so this file holds none.
"""

from __future__ import annotations

import asyncio
import random
import string
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from psycopg import errors, sql

from gateway_harness import GatewayHarness, standard_config, write_config
from pathwarden.protocols.postgres import messages as m
from pgserver import PgServer, free_port
from rawpg import Frame, Raw

SCHEMA = f"mask_{uuid.uuid4().hex[:8]}"
_rng = random.Random(20261126)


def _rand(alphabet: str, n: int) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


AWS_KEY_ID = "AKIA" + _rand(string.ascii_uppercase + "234567", 16)
AWS_SECRET = _rand(string.ascii_letters + string.digits + "/+", 40)
DB_PASSWORD = "Zq" + _rand(string.ascii_letters + string.digits, 18)
COLUMN_PASSWORD = "pw-" + _rand(string.ascii_letters + string.digits, 12)
PRIVATE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption()).decode()
# A line of the key's body: long and unique, so finding it anywhere means a leak.
KEY_LINE = PRIVATE_KEY.splitlines()[3]
LITERAL = "lit-" + _rand(string.ascii_lowercase, 16)
# Escaped differently by COPY, JSON and SQL quoting.
ODD_LITERAL = "Kx9\\q7'Zt2\"" + _rand(string.ascii_lowercase, 8)

SECRETS = {
    "aws key id": AWS_KEY_ID, "aws secret": AWS_SECRET, "uri password": DB_PASSWORD,
    "password column": COLUMN_PASSWORD, "private key": KEY_LINE, "literal": LITERAL,
}
BENIGN = str(uuid.UUID(int=_rng.getrandbits(128)))


def _assert_clean(text: str, where: str) -> None:
    leaked = [name for name, value in SECRETS.items() if value in text]
    assert not leaked, f"{', '.join(leaked)} reached {where}"


@pytest.fixture(scope="module")
def mask_gw(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory,
            monkeypatch_module: pytest.MonkeyPatch) -> Iterator[GatewayHarness]:
    pg_server.psql(
        f"create schema {SCHEMA};"
        f"create table {SCHEMA}.creds (id int primary key, name text, password text,"
        "  config text, doc jsonb, tags text[]);"
        f"create table {SCHEMA}.keys (id int primary key, pem text);"
        f"create function {SCHEMA}.leak_notice(t text) returns int language plpgsql as"
        " $$ begin raise notice 'deploy key is %', t; return 1; end $$;"
        f"create function {SCHEMA}.leak_error(t text) returns int language plpgsql as"
        " $$ begin raise exception 'bad credential %', t; end $$;",
        dbname="test")
    with psycopg.connect(pg_server.dsn(dbname="test"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("insert into {}.creds values (%s, %s, %s, %s, %s, %s)").format(
                sql.Identifier(SCHEMA)),
            (1, "billing", COLUMN_PASSWORD,
             f"aws_access_key_id={AWS_KEY_ID}\naws_secret_access_key={AWS_SECRET}\n",
             psycopg.types.json.Jsonb({"url": f"postgres://app:{DB_PASSWORD}@db:5432/app",
                                       "request_id": BENIGN}),
             ["plain", "tags"]))
        conn.execute(
            sql.SQL("insert into {}.creds values (2, 'web', '', %s, '{{}}', null)").format(
                sql.Identifier(SCHEMA)), (f"note: nothing secret here {BENIGN}",))
        conn.execute(sql.SQL("insert into {}.keys values (1, %s)").format(
            sql.Identifier(SCHEMA)), (PRIVATE_KEY,))
    base: Path = tmp_path_factory.mktemp("masking")
    (base / "md5pw").write_text("md5-secret\n")
    monkeypatch_module.setenv("PW_TEST_LITERAL", LITERAL)
    monkeypatch_module.setenv("PW_TEST_SCRAM", "scram-secret")
    monkeypatch_module.setenv("PW_TEST_ODD_LITERAL", ODD_LITERAL)
    config: dict[str, Any] = standard_config(pg_server, base / "data", free_port())
    conn_base = {"host": pg_server.host, "port": pg_server.port, "database": "test",
                 "user": "postgres", "sslmode": "disable", "allow_all": True}
    config["connections"]["secrets-db"] = conn_base
    config["connections"]["raw-db"] = {**conn_base, "masking": {"enabled": False}}
    config["masking"] = {"literals": [{"env": "PW_TEST_LITERAL"}, {"env": "PW_TEST_ODD_LITERAL"}]}
    # Sessions of ci-test from the main branch are not masked; other branches are.
    config["policies"] = [{"name": "main-unmasked", "connections": ["secrets-db"],
                           "identities": [{"identity": "ci-test", "claims": {"ref": "main"}}],
                           "allow": ["read"], "masking": {"enabled": False}}]
    harness = GatewayHarness(write_config(base / "pathwarden.yaml", config))
    try:
        yield harness
    finally:
        harness.stop()
        pg_server.psql(f"drop schema if exists {SCHEMA} cascade", dbname="test")


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _psql(gw: GatewayHarness, *args: str, connection: str = "secrets-db",
          check: bool = True) -> subprocess.CompletedProcess[str]:
    conninfo = (f"host={gw.host} port={gw.port} user=ci-test dbname={connection} "
                "sslmode=disable")
    proc = subprocess.run(
        ["psql", "-X", "-q", "-A", *args, conninfo],
        env={"PATH": "/usr/bin:/bin", "PGPASSWORD": gw.token(), "LC_ALL": "C.UTF-8"},
        capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _store_bytes(gw: GatewayHarness) -> bytes:
    gw.flush()
    data_dir = Path(gw.config.data_dir)
    return b"".join(p.read_bytes() for p in sorted(data_dir.glob("pathwarden.db*")))


def test_psql_rows_are_masked_and_benign_values_kept(mask_gw: GatewayHarness) -> None:
    proc = _psql(mask_gw, "-c", f"select * from {SCHEMA}.creds order by id",
                 "-c", f"select pem from {SCHEMA}.keys")
    _assert_clean(proc.stdout, "psql")
    assert "[MASKED:aws-access-key]" in proc.stdout
    assert "[MASKED:private-key]" in proc.stdout
    assert BENIGN in proc.stdout and "billing" in proc.stdout
    assert "note: nothing secret here" in proc.stdout


def test_the_same_rows_pass_unmasked_where_masking_is_off(mask_gw: GatewayHarness) -> None:
    # The check above could not pass by accident: without masking they do leak.
    proc = _psql(mask_gw, "-c", f"select * from {SCHEMA}.creds", connection="raw-db")
    assert AWS_KEY_ID in proc.stdout and COLUMN_PASSWORD in proc.stdout


def test_psycopg_prepared_statements_are_masked_on_every_execution(
        mask_gw: GatewayHarness) -> None:
    with psycopg.connect(mask_gw.dsn("secrets-db"), autocommit=True) as conn:
        query = f"select name, password, config, doc from {SCHEMA}.creds where id = %s"
        for _ in range(3):  # the later runs reuse the prepared statement without Describe
            rows = conn.execute(query, (1,), prepare=True).fetchall()
            text = repr(rows)
            _assert_clean(text, "psycopg")
            assert rows[0][0] == "billing"
            assert rows[0][1] == "[MASKED:column]"
        # A whole-value column rule leaves empty values alone.
        assert conn.execute(f"select password from {SCHEMA}.creds where id = 2",
                            prepare=True).fetchone() == ("",)


def test_asyncpg_binary_results_are_masked(mask_gw: GatewayHarness) -> None:
    async def go() -> list[Any]:
        conn = await asyncpg.connect(host=mask_gw.host, port=mask_gw.port, user="ci-test",
                                     database="secrets-db", password=mask_gw.token(),
                                     ssl=False)
        try:
            rows = await conn.fetch(
                f"select id, name, password, config, doc from {SCHEMA}.creds order by id")
            pem = await conn.fetchval(f"select pem from {SCHEMA}.keys where id = $1", 1)
            return [*rows, pem]
        finally:
            await conn.close()

    result = asyncio.run(go())
    text = repr(result)
    _assert_clean(text, "asyncpg")
    assert result[0]["id"] == 1 and result[1]["id"] == 2  # binary int4 untouched
    assert result[0]["password"] == "[MASKED:column]"
    assert BENIGN in text


def test_secret_in_a_binary_array_ends_the_session_rather_than_leak(
        mask_gw: GatewayHarness) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(host=mask_gw.host, port=mask_gw.port, user="ci-test",
                                     database="secrets-db", password=mask_gw.token(),
                                     ssl=False)
        try:
            # Arrays travel in binary with asyncpg; pathwarden cannot rewrite that format.
            assert await conn.fetchval(f"select tags from {SCHEMA}.creds where id = 1") == [
                "plain", "tags"]
            with pytest.raises((asyncpg.PostgresError, asyncpg.ConnectionDoesNotExistError,
                                ConnectionError)) as exc:
                await conn.fetchval(f"select array[config] from {SCHEMA}.creds where id = 1")
            assert AWS_KEY_ID not in str(exc.value)
        finally:
            await conn.close()

    asyncio.run(go())


def test_notice_and_error_raised_by_a_function_are_masked(mask_gw: GatewayHarness) -> None:
    notices: list[str] = []
    with psycopg.connect(mask_gw.dsn("secrets-db"), autocommit=True) as conn:
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        conn.execute(f"select {SCHEMA}.leak_notice(%s)", (f"key={AWS_KEY_ID}",))
        with pytest.raises(errors.RaiseException) as exc:
            conn.execute(f"select {SCHEMA}.leak_error(config) from {SCHEMA}.creds "
                         "where id = 1")
        assert conn.execute("select 1").fetchone() == (1,)  # the session goes on
    assert notices and "[MASKED:aws-access-key]" in notices[0]
    _assert_clean(" ".join(notices), "a notice")
    _assert_clean(str(exc.value), "an error")
    assert "bad credential" in str(exc.value)
    proc = _psql(mask_gw, "-c", f"select {SCHEMA}.leak_notice(pem) from {SCHEMA}.keys")
    _assert_clean(proc.stderr + proc.stdout, "psql's notice output")
    assert "deploy key is" in proc.stderr


def test_copy_out_is_masked_in_text_and_csv(mask_gw: GatewayHarness) -> None:
    # COPY carries no column names, so only detectors apply (not the column rule).
    proc = _psql(mask_gw, "-c", f"copy (select id, name, config, doc from {SCHEMA}.creds "
                 "order by id) to stdout",
                 "-c", f"copy (select pem from {SCHEMA}.keys) to stdout with (format csv)")
    _assert_clean(proc.stdout, "COPY output")
    assert "[MASKED:private-key]" in proc.stdout and BENIGN in proc.stdout
    with psycopg.connect(mask_gw.dsn("secrets-db"), autocommit=True) as conn:
        cur = conn.cursor()
        chunks = []
        with cur.copy(f"copy (select pem, config from {SCHEMA}.keys, {SCHEMA}.creds) "
                      "to stdout") as copy:
            for data in copy:
                chunks.append(bytes(data))
        _assert_clean(b"".join(chunks).decode(), "psycopg COPY")


def test_binary_copy_with_a_secret_is_refused_not_leaked(mask_gw: GatewayHarness) -> None:
    with psycopg.connect(mask_gw.dsn("secrets-db"), autocommit=True) as conn:
        cur = conn.cursor()
        data = b""
        with cur.copy(f"copy (select id from {SCHEMA}.creds) to stdout (format binary)") as cp:
            for chunk in cp:
                data += bytes(chunk)
        assert data.startswith(b"PGCOPY\n")  # no secret: binary COPY works
    received: list[bytes] = []

    def copy_secret_out() -> None:
        with psycopg.connect(mask_gw.dsn("secrets-db"), autocommit=True) as conn:
            with conn.cursor().copy(f"copy (select config from {SCHEMA}.creds) to stdout "
                                    "(format binary)") as cp:
                received.extend(bytes(chunk) for chunk in cp)

    with pytest.raises(psycopg.Error) as exc:
        copy_secret_out()
    assert AWS_KEY_ID.encode() not in b"".join(received)
    assert "could not be masked" in str(exc.value)


def test_configured_literal_and_injected_credentials_are_masked(
        mask_gw: GatewayHarness) -> None:
    proc = _psql(mask_gw, "-t", "-c", f"select 'x {LITERAL} y', 'pw scram-secret!'")
    assert LITERAL not in proc.stdout and "scram-secret" not in proc.stdout
    assert "[MASKED:literal]" in proc.stdout


def test_audit_store_holds_masked_statements_params_errors_and_counts(
        mask_gw: GatewayHarness) -> None:
    marker = uuid.uuid4().hex
    with psycopg.connect(mask_gw.dsn("secrets-db"), autocommit=True) as conn:
        conn.execute(f"select '{marker}', '{AWS_KEY_ID}'")
        conn.execute(f"select %s, %s::text /* {marker} */", (marker, f"token {AWS_KEY_ID}"))
        conn.execute(f"select password, config from {SCHEMA}.creds /* {marker} */")
        with pytest.raises(errors.RaiseException):
            conn.execute(f"select {SCHEMA}.leak_error('{LITERAL}') /* {marker} */")
    blob = _store_bytes(mask_gw)
    for name, value in SECRETS.items():
        assert value.encode() not in blob, f"{name} reached the audit store"
    sessions = mask_gw.sessions(connection="secrets-db")
    statements = [st for s in sessions for st in mask_gw.statements(s.id)
                  if marker in st.text or marker in " ".join(p or "" for p in st.params)]
    assert len(statements) == 4
    literal_stmt, param_stmt, rows_stmt, error_stmt = sorted(statements, key=lambda s: s.seq)
    assert "[MASKED:aws-access-key]" in literal_stmt.text
    assert any("[MASKED:aws-access-key]" in (p or "") for p in param_stmt.params)
    assert rows_stmt.masked is not None
    assert rows_stmt.masked.get("password:column") == 1
    assert rows_stmt.masked.get("config:aws-access-key") == 1
    assert error_stmt.error is not None and "[MASKED:literal]" in error_stmt.error


def test_sessions_show_reports_what_was_masked(mask_gw: GatewayHarness) -> None:
    marker = uuid.uuid4().hex
    with psycopg.connect(mask_gw.dsn("secrets-db", application_name=marker),
                         autocommit=True) as conn:
        conn.execute(f"select password, config from {SCHEMA}.creds where id = 1 /* {marker} */")
    mask_gw.flush()
    session = next(s for s in mask_gw.sessions(connection="secrets-db")
                   if any(marker in st.text for st in mask_gw.statements(s.id)))
    proc = subprocess.run([sys.executable, "-m", "pathwarden.cli.main", "sessions", "show",
                           session.id, "--config", str(mask_gw.config_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "masked: config:aws-access-key x1" in proc.stdout
    assert "password:column" in proc.stdout
    _assert_clean(proc.stdout, "sessions show")


# -- the extended protocol: which columns a row has, whatever the client described ----


def _values(frames: list[Frame]) -> list[list[bytes | None]]:
    return [m.DataRow.decode(p).values() for t, p in frames if t == b"D"]


def _raw(gw: GatewayHarness) -> Raw:
    return Raw(gw, "secrets-db")


def test_column_rule_holds_when_the_portal_is_described_only_once(
        mask_gw: GatewayHarness) -> None:
    # The pgjdbc pattern: Describe on the first execution of a named statement only.
    r = _raw(mask_gw)
    try:
        q = f"select id, password from {SCHEMA}.creds where id = 1"
        r.send(m.Parse(name="S1", query=q), m.Bind(portal="", statement="S1"),
               m.Describe(kind="P", name=""), m.Execute(portal=""), m.Sync())
        first = _values(r.until_ready())
        r.send(m.Bind(portal="", statement="S1"), m.Execute(portal=""), m.Sync())
        frames = r.until_ready()
    finally:
        r.close()
    assert first[0][1] == b"[MASKED:column]"
    assert _values(frames)[0][1] == b"[MASKED:column]"
    # The gateway's own Describe is not shown to the client.
    assert [t for t, _ in frames] == [b"2", b"D", b"C", b"Z"]


def test_column_rule_holds_without_any_describe(mask_gw: GatewayHarness) -> None:
    r = _raw(mask_gw)
    try:
        r.send(m.Parse(name="", query=f"select password from {SCHEMA}.creds where id = 1"),
               m.Bind(portal="", statement=""), m.Execute(portal=""), m.Sync())
        frames = r.until_ready()
    finally:
        r.close()
    assert _values(frames) == [[b"[MASKED:column]"]]
    assert [t for t, _ in frames] == [b"1", b"2", b"D", b"C", b"Z"]


def test_description_goes_to_the_statement_it_was_asked_for(mask_gw: GatewayHarness) -> None:
    # Describe S of one statement, then the same name re-parsed, bound with binary results.
    r = _raw(mask_gw)
    try:
        r.send(m.Parse(name="", query="select 1::int4 as a"), m.Describe(kind="S", name=""),
               m.Parse(name="", query=f"select config from {SCHEMA}.creds where id = 1"),
               m.Bind(portal="", statement="", result_formats=(1,)), m.Execute(portal=""),
               m.Sync())
        text = repr(_values(r.until_ready()))
        r.send(m.Parse(name="Sint", query="select 1::int4 as a"),
               m.Parse(name="Stxt", query=f"select config from {SCHEMA}.creds where id = 1"),
               m.Bind(portal="", statement="Sint", result_formats=(1,)),
               m.Describe(kind="P", name=""),
               m.Bind(portal="", statement="Stxt", result_formats=(1,)),
               m.Execute(portal=""), m.Sync())
        text += repr(_values(r.until_ready()))
    finally:
        r.close()
    _assert_clean(text, "a binary text column")
    assert text.count("[MASKED:aws-access-key]") == 2


def test_sql_cursor_run_with_execute_is_masked(mask_gw: GatewayHarness) -> None:
    r = _raw(mask_gw)
    try:
        r.send(m.Query(text=f"begin; declare c cursor for select id, password from {SCHEMA}.creds "
                            "order by id"))
        r.until_ready()
        r.send(m.Execute(portal="c"), m.Sync())
        values = _values(r.until_ready())
        r.send(m.Query(text="commit"))
        r.until_ready()
    finally:
        r.close()
    assert values[0] == [b"1", b"[MASKED:column]"]


def test_psycopg_pipeline_mode_keeps_each_result_with_its_columns(
        mask_gw: GatewayHarness) -> None:
    with psycopg.connect(mask_gw.dsn("secrets-db"), autocommit=True) as conn:
        with conn.pipeline():
            c1 = conn.execute(f"select password from {SCHEMA}.creds where id = 1")
            c2 = conn.execute("select 1")
            c3 = conn.execute(f"select config from {SCHEMA}.creds where id = 1", binary=True)
        assert c1.fetchone() == ("[MASKED:column]",)
        assert c2.fetchone() == (1,)
        row = c3.fetchone()
        assert row is not None
        _assert_clean(str(row), "a pipelined binary result")


def test_notify_payloads_parameter_status_and_column_names_are_masked(
        mask_gw: GatewayHarness) -> None:
    with psycopg.connect(mask_gw.dsn("secrets-db"), autocommit=True) as conn:
        conn.execute("listen chan")
        conn.execute(f"select pg_notify('chan', config) from {SCHEMA}.creds where id = 1")
        note = next(conn.notifies(timeout=5, stop_after=1))
        # set_config() makes the server echo the value in a ParameterStatus (detectors
        # apply there; column rules cannot: the value no longer has a column).
        conn.execute(f"select set_config('application_name', config, false) "
                     f"from {SCHEMA}.creds where id = 1")
        status = conn.info.parameter_status("application_name") or ""
        cur = conn.execute(f'select 1 as "{AWS_KEY_ID}"')
        names = [d.name for d in cur.description or ()]
    _assert_clean(note.payload + status + " ".join(names), "notify/parameter/column name")
    assert "[MASKED:aws-access-key]" in note.payload
    assert "[MASKED:aws-access-key]" in status


# -- the audit trail: masked before it is cut, parameters masked like their columns --------


def test_audit_masks_before_cutting_long_statements_and_params(mask_gw: GatewayHarness) -> None:
    marker = uuid.uuid4().hex
    uri = f" postgres://app:{DB_PASSWORD}@db:5432/app"
    # The audit keeps 64 KiB of text and 1 KiB per parameter: put the secret across the cut.
    prefix = f"select /* {marker} */ '"
    # The cuts fall 12 characters into the password.
    long_sql = prefix + "x" * (64 * 1024 - 12 - 16 - len(prefix)) + uri + "'"
    long_param = "y" * (1024 - 12 - 16) + uri + " é" * 600

    async def go() -> None:
        conn = await asyncpg.connect(host=mask_gw.host, port=mask_gw.port, user="ci-test",
                                     database="secrets-db", password=mask_gw.token(),
                                     ssl=False)
        try:
            await conn.fetchval(f"select length($1::text) /* {marker} */", long_param)
        finally:
            await conn.close()

    with psycopg.connect(mask_gw.dsn("secrets-db"), autocommit=True) as conn:
        conn.execute(long_sql)
        # A parameter bound to a sensitive column is masked whole, whatever it looks like.
        conn.execute(f"update {SCHEMA}.creds set password = %s where id = 99 /* {marker} */",
                     ("plain-words-only",))
    asyncio.run(go())
    blob = _store_bytes(mask_gw)
    assert DB_PASSWORD[:10].encode() not in blob
    assert b"plain-words-only" not in blob
    statements = [st for s in mask_gw.sessions(connection="secrets-db")
                  for st in mask_gw.statements(s.id) if marker in st.text]
    update = next(st for st in statements if st.text.startswith("update"))
    assert update.params == ("[MASKED:column]",)
    binary = next(st for st in statements if "length($1::text)" in st.text)
    assert binary.params[0] is not None and binary.params[0].endswith("bytes)")


def test_denial_detail_is_masked_before_it_is_cut(mask_gw: GatewayHarness) -> None:
    uri = f" postgres://app:{DB_PASSWORD}@db:5432/app"
    head = "delete from t where note = '"
    sql_text = head + "z" * (500 - 12 - 16 - len(head)) + uri + "'"
    with psycopg.connect(mask_gw.dsn("locked-db"), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as exc:
            conn.execute(sql_text)
    detail = str(exc.value.diag.message_detail)
    assert "[MASKED" in detail
    assert DB_PASSWORD[:10] not in str(exc.value) and DB_PASSWORD[:10] not in detail


def test_values_of_sensitive_columns_quoted_in_errors_are_masked(
        mask_gw: GatewayHarness) -> None:
    with psycopg.connect(mask_gw.dsn("secrets-db"), autocommit=True) as conn:
        with pytest.raises(errors.InvalidTextRepresentation) as cast:
            conn.execute(f"select password::int from {SCHEMA}.creds where id = 1")
        conn.execute("create temp table t (id int, pw text check (length(pw) < 3))")
        with pytest.raises(errors.CheckViolation) as check:
            conn.execute(f"insert into t select id, password from {SCHEMA}.creds where id = 1")
        conn.execute("create temp table k (api_key text primary key)")
        conn.execute("insert into k values (%s)", (COLUMN_PASSWORD,))
        with pytest.raises(errors.UniqueViolation) as unique:
            conn.execute("insert into k values (%s)", (COLUMN_PASSWORD,))
    for exc in (cast.value, check.value, unique.value):
        text = f"{exc} {exc.diag.message_detail}"
        assert COLUMN_PASSWORD not in text, text
        assert "[MASKED:column]" in text


def test_name_rule_keeps_every_type_parseable(mask_gw: GatewayHarness) -> None:
    async def go() -> list[Any]:
        conn = await asyncpg.connect(host=mask_gw.host, port=mask_gw.port, user="ci-test",
                                     database="secrets-db", password=mask_gw.token(),
                                     ssl=False)
        try:
            row = await conn.fetchrow(
                "select '{\"a\": \"b9Kx2mPq7Lr4\"}'::jsonb as secret, "
                "array['a1b2c3d4e5f6g7'] as password, 'raw-bytes'::bytea as api_key, "
                "123456789 as token")
            return list(row.values()) if row is not None else []
        finally:
            await conn.close()

    secret, password, api_key, token = asyncio.run(go())
    assert secret == '"[MASKED:column]"'  # still a JSON document
    assert password is None  # an array cannot carry a marker: NULL instead
    assert api_key == b"[MASKED:column]"
    assert token == 123456789  # a number cannot hold a credential
    with psycopg.connect(mask_gw.dsn("secrets-db"), autocommit=True) as conn:
        row = conn.execute("select '{\"a\": \"b9Kx2mPq7Lr4\"}'::json as secret, "
                           "'raw-bytes'::bytea as api_key, 42 as token").fetchone()
    assert row == ("[MASKED:column]", b"[MASKED:column]", 42)


def test_escaped_forms_of_a_literal_are_masked_too(mask_gw: GatewayHarness) -> None:
    with psycopg.connect(mask_gw.dsn("secrets-db"), autocommit=True) as conn:
        row = conn.execute("select to_json(%s::text)::text, quote_literal(%s)",
                           (ODD_LITERAL, ODD_LITERAL)).fetchone()
        chunks = []
        with conn.cursor().copy("copy (select %s::text) to stdout", (ODD_LITERAL,)) as copy:
            chunks.extend(bytes(c) for c in copy)
    assert row is not None
    text = " ".join(row) + b"".join(chunks).decode()
    assert "Kx9" not in text, text
    assert text.count("[MASKED:literal]") == 3


def test_masking_follows_the_policy_that_applies_to_each_session(
        mask_gw: GatewayHarness) -> None:
    def token(ref: str) -> str:
        issued = mask_gw.call(mask_gw.gateway.authenticator.issue_token(
            "ci-test", None, None, claims={"ref": ref}))
        return issued.token

    query = f"select config from {SCHEMA}.creds where id = 1"
    with psycopg.connect(mask_gw.dsn("secrets-db", token=token("main"))) as conn:
        assert AWS_KEY_ID in conn.execute(query).fetchone()[0]  # type: ignore[index]
    with psycopg.connect(mask_gw.dsn("secrets-db", token=token("feature-x"))) as conn:
        assert AWS_KEY_ID not in conn.execute(query).fetchone()[0]  # type: ignore[index]
