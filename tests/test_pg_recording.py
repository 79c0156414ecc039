"""Session recordings on the PostgreSQL path, end to end with a real server and real clients.

Every operation is written to the session's recording before it is forwarded;
results follow with a masked sample of rows; finished recordings are
compressed, stored, chained per gateway and the chain head is signed.
"""

from __future__ import annotations

import os
import random
import signal
import string
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from gateway_harness import GatewayHarness, standard_config, wait_until, write_config
from pathwarden.recording import (
    ChainEntry,
    SignedHead,
    read_recording,
    verify_chain,
    verify_recording,
)
from pathwarden.store import RecordingRow
from pgserver import PgServer, free_port

SCHEMA = f"rec_{uuid.uuid4().hex[:8]}"
_rng = random.Random(11)
AWS_KEY_ID = "AKIA" + "".join(_rng.choice(string.ascii_uppercase + "234567") for _ in range(16))


def _config(pg: PgServer, base: Path, **recording: Any) -> dict[str, Any]:
    (base / "md5pw").write_text("md5-secret\n")
    config = standard_config(pg, base / "data", free_port())
    config["connections"]["rec-db"] = {
        "host": pg.host, "port": pg.port, "database": "test", "user": "postgres",
        "sslmode": "disable"}
    config["policies"] = [{"name": "rec", "identities": ["ci-test"], "connections": ["rec-db"],
                           "allow": ["read", "write", "ddl"], "deny": [{"delete": {}}]}]
    config["recording"] = {"fsync": "off", **recording}
    return config


@pytest.fixture(scope="module")
def rec_gw(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[GatewayHarness]:
    pg_server.psql(f"create schema {SCHEMA}; create table {SCHEMA}.t (id int, note text)",
                   dbname="test")
    base = tmp_path_factory.mktemp("recording")
    harness = GatewayHarness(write_config(base / "pathwarden.yaml", _config(pg_server, base)))
    try:
        yield harness
    finally:
        harness.stop()
        pg_server.psql(f"drop schema if exists {SCHEMA} cascade", dbname="test")


def _recording(gw: GatewayHarness, session_id: str) -> RecordingRow:
    assert gw.gateway.recorder is not None

    def indexed() -> RecordingRow | None:
        return gw.call(gw.gateway.store.get_recording(session_id))

    row: RecordingRow = wait_until(indexed, timeout=10, what="the recording to be indexed")
    return row


def _path(gw: GatewayHarness, row: RecordingRow) -> Path:
    assert gw.gateway.recorder is not None
    return gw.gateway.recorder.root / row.location


def _session(gw: GatewayHarness, marker: str) -> str:
    gw.flush()
    for s in gw.sessions(connection="rec-db"):
        if any(marker in st.text for st in gw.statements(s.id)):
            return s.id
    raise AssertionError(f"no session ran {marker}")


def test_a_session_is_recorded_in_order_and_verifies(rec_gw: GatewayHarness) -> None:
    marker = uuid.uuid4().hex
    with psycopg.connect(rec_gw.dsn("rec-db"), autocommit=True) as conn:
        conn.execute(f"insert into {SCHEMA}.t values (1, %s), (2, 'plain')",
                     (f"key {AWS_KEY_ID}",))
        rows = conn.execute(f"select id, note from {SCHEMA}.t order by id /* {marker} */"
                            ).fetchall()
        assert len(rows) == 2
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"delete from {SCHEMA}.t")
    row = _recording(rec_gw, _session(rec_gw, marker))
    path = _path(rec_gw, row)
    assert path.name.endswith(".pwrec.gz") and row.complete and row.events > 0
    rec = read_recording(path)
    assert rec.complete and not rec.problems
    assert verify_recording(path) == []
    types = [e.type for e in rec.events]
    assert types[0] == "session_start" and types[-1] == "session_end"
    ops = [e for e in rec.events if e.type == "operation"]
    decisions = [e.data["verdict"] for e in rec.events if e.type == "decision"]
    assert [o.data["kind"] for o in ops] == ["execute", "query", "query"]
    assert decisions == ["allow", "allow", "deny"]
    result = next(e for e in rec.events if e.type == "result" and marker in str(
        next(o.data["text"] for o in ops if o.data["op_seq"] == e.data["op_seq"])))
    assert result.data["rows"] == 2
    assert result.data["sample"]["columns"] == ["id", "note"]
    assert result.data["sample"]["rows"][0] == ["1", "key [MASKED:aws-access-key]"]
    # Nothing secret in the file: masked in the sample and in the statement text.
    import gzip
    assert AWS_KEY_ID.encode() not in gzip.decompress(path.read_bytes())
    start = rec.events[0].data
    assert start["identity"] == "ci-test" and start["connection"] == "rec-db"


def test_sessions_are_chained_and_the_head_is_signed(rec_gw: GatewayHarness) -> None:
    for _ in range(3):
        with psycopg.connect(rec_gw.dsn("rec-db"), autocommit=True) as conn:
            conn.execute("select 1")
    recorder = rec_gw.gateway.recorder
    assert recorder is not None
    rec_gw.call(recorder.wait_finished())
    store = rec_gw.gateway.store
    rows = rec_gw.call(store.list_recordings(gateway_id=recorder.gateway_id))
    assert [r.position for r in rows] == list(range(1, len(rows) + 1))
    heads = rec_gw.call(store.heads())
    head = SignedHead.from_json(heads[recorder.gateway_id])
    assert head.position == len(rows)
    entries = [ChainEntry(r.position, r.session_id, r.final_hash, r.link) for r in rows]
    public = rec_gw.gateway.authority.signing_key.public_key()  # type: ignore[union-attr]
    assert verify_chain(entries, public, head=head) == []
    # The chain notices a session taken out of it.
    assert verify_chain(entries[:1] + entries[2:], public, head=head) != []


def test_past_the_size_limit_samples_stop_and_then_statements_are_refused(
        pg_server: PgServer, tmp_path: Path) -> None:
    gw = GatewayHarness(write_config(tmp_path / "pathwarden.yaml", _config(
        pg_server, tmp_path, max_session_bytes="64KiB")))
    try:
        with psycopg.connect(gw.dsn("rec-db"), autocommit=True) as conn:
            note = "n" * 2000
            refused = None
            for i in range(200):
                try:
                    conn.execute("select %s::text, %s", (note, i))
                except errors.InsufficientPrivilege as exc:
                    refused = (i, str(exc))
                    break
            assert refused is not None, "the recording never filled up"
            assert "recording.max_session_bytes" in refused[1]
        row = _recording(gw, gw.sessions(connection="rec-db")[0].id)
        rec = read_recording(gw.gateway.recorder.root / row.location)  # type: ignore[union-attr]
        truncated = [e for e in rec.events if e.type == "truncated"]
        assert truncated and truncated[-1].data["dropped_events"] > 0
        assert rec.events[-1].type == "session_end"
        # Every statement the server ran has its operation event.
        ops = [e for e in rec.events if e.type == "operation"]
        assert len(ops) >= refused[0]
    finally:
        gw.stop()


def test_kill_9_loses_no_event_of_a_statement_the_database_ran(
        pg_server: PgServer, tmp_path: Path) -> None:
    pg_server.psql(f"create table if not exists {SCHEMA}_k (id int primary key)", dbname="test")
    config = _config(pg_server, tmp_path)
    config["policies"][0]["allow"] = ["read", "write"]
    config["policies"][0]["deny"] = []
    path = write_config(tmp_path / "pathwarden.yaml", config)
    port = config["listeners"][0]["bind"].rsplit(":", 1)[1]
    env = {**os.environ, "PW_TEST_SCRAM": "scram-secret"}
    cmd = [sys.executable, "-m", "pathwarden.cli.main"]
    proc = subprocess.Popen([*cmd, "serve", "--config", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        token = subprocess.run([*cmd, "token", "issue", "ci-test", "--config", str(path)],
                               env=env, capture_output=True, text=True, check=True).stdout.strip()
        dsn = (f"host=127.0.0.1 port={port} user=ci-test dbname=rec-db password={token} "
               "sslmode=disable connect_timeout=5")
        conn = wait_until(lambda: _try_connect(dsn), timeout=20, what="the gateway")

        def insert_until_the_gateway_dies() -> None:
            for i in range(100_000):
                if i == 300:
                    os.kill(proc.pid, signal.SIGKILL)
                conn.execute(f"insert into {SCHEMA}_k values ({i})")

        with pytest.raises(psycopg.OperationalError):
            insert_until_the_gateway_dies()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    with psycopg.connect(pg_server.dsn(dbname="test"), autocommit=True) as direct:
        ran = {r[0] for r in direct.execute(f"select id from {SCHEMA}_k").fetchall()}
        direct.execute(f"drop table {SCHEMA}_k")
    assert len(ran) >= 300
    live = list((tmp_path / "data" / "recordings" / "live").glob("*.pwrec"))
    assert len(live) == 1, "the killed gateway leaves its live recording"
    rec = read_recording(live[0])
    recorded = {int(e.data["text"].rsplit("(", 1)[1].rstrip(")")) for e in rec.events
                if e.type == "operation" and "insert" in e.data["text"]}
    assert ran <= recorded, f"ran but not recorded: {sorted(ran - recorded)[:5]}"
    # The next gateway finishes and indexes what the dead one left.
    gw = GatewayHarness(path)
    try:
        row = _recording(gw, live[0].name.removesuffix(".pwrec"))
        assert not row.complete
        problems = verify_recording(gw.gateway.recorder.root / row.location)  # type: ignore[union-attr]
        assert {p.kind for p in problems} <= {"truncated", "torn_tail"}
        session = gw.session(row.session_id)
        assert session is not None and "stopped unexpectedly" in (session.end_reason or "")
    finally:
        gw.stop()


def _try_connect(dsn: str) -> psycopg.Connection[Any] | None:
    try:
        return psycopg.connect(dsn, autocommit=True)
    except psycopg.OperationalError:
        time.sleep(0.1)
        return None
