"""`pathwarden replay` and `pathwarden audit export|verify|prune` as a user runs them.

Real gateway (tests/gateway_harness.py), real PostgreSQL, real psycopg sessions,
the CLI in subprocesses against the gateway's configuration; S3 against a
real moto_server on loopback.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import sqlite3
import string
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from gateway_harness import GatewayHarness, standard_config, wait_until, write_config
from pathwarden.cli import audit_cmd
from pathwarden.recording import read_recording, verify_recording
from pathwarden.store import RecordingRow
from pgserver import PgServer, free_port
from test_recording_storage import make_bucket, s3_endpoint  # noqa: F401 - a fixture

PATHWARDEN = [sys.executable, "-m", "pathwarden.cli.main"]
SCHEMA = f"aud_{uuid.uuid4().hex[:8]}"
_rng = random.Random(7)
AWS_KEY_ID = "AKIA" + "".join(_rng.choice(string.ascii_uppercase + "234567") for _ in range(16))


def run(*args: str, config: Path, check: bool = True,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [*PATHWARDEN, *args, "--config", str(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, input=input,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"})
    if check:
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _config(pg: PgServer, base: Path, **recording: Any) -> dict[str, Any]:
    (base / "md5pw").write_text("md5-secret\n")
    config = standard_config(pg, base / "data", free_port())
    config["connections"]["rec-db"] = {
        "host": pg.host, "port": pg.port, "database": "test", "user": "postgres",
        "sslmode": "disable"}
    config["policies"] = [{
        "name": "rec", "identities": ["ci-test", "ci-deploy"], "connections": ["rec-db"],
        "allow": ["read", "write"], "require_approval": ["ddl"], "deny": [{"delete": {}}]}]
    config["identities"]["ci-deploy"]["connections"] = ["test-db", "rec-db"]
    config["recording"] = {"fsync": "off", **recording}
    return config


def _gateway(pg: PgServer, base: Path, **recording: Any) -> GatewayHarness:
    return GatewayHarness(write_config(base / "pathwarden.yaml", _config(pg, base, **recording)))


@pytest.fixture(scope="module")
def schema(pg_server: PgServer) -> Iterator[str]:
    pg_server.psql(f"create schema {SCHEMA}; create table {SCHEMA}.t (id int, note text)",
                   dbname="test")
    try:
        yield SCHEMA
    finally:
        pg_server.psql(f"drop schema if exists {SCHEMA} cascade", dbname="test")


@pytest.fixture(scope="module")
def gw(pg_server: PgServer, schema: str,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHarness]:
    harness = _gateway(pg_server, tmp_path_factory.mktemp("audit"))
    try:
        yield harness
    finally:
        harness.stop()


def _session_of(gw: GatewayHarness, marker: str) -> str:
    def find() -> str | None:
        gw.flush()
        for s in gw.sessions(limit=1000):
            if any(marker in st.text for st in gw.statements(s.id)):
                return s.id
        return None

    found: str = wait_until(find, timeout=10, what=f"the session that ran {marker}")
    return found


def _indexed(gw: GatewayHarness, session_id: str) -> RecordingRow:
    row: RecordingRow = wait_until(
        lambda: gw.call(gw.gateway.store.get_recording(session_id)), timeout=10,
        what="the recording to be indexed")
    return row


def _stored_path(gw: GatewayHarness, row: RecordingRow) -> Path:
    assert gw.gateway.recorder is not None
    return gw.gateway.recorder.root / row.location


def _recorded_session(gw: GatewayHarness, identity: str = "ci-test") -> tuple[str, str]:
    """A finished session: a masked insert and select, a denied delete. (session id, marker)"""
    marker = uuid.uuid4().hex[:12]
    with psycopg.connect(gw.dsn("rec-db", identity=identity), autocommit=True) as conn:
        conn.execute(f"insert into {SCHEMA}.t values (1, %s), (2, 'plain')",
                     (f"key {AWS_KEY_ID}",))
        conn.execute(f"select id, note from {SCHEMA}.t where id < 3 order by id /* {marker} */"
                     ).fetchall()
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"delete from {SCHEMA}.t /* {marker} */")
    sid = _session_of(gw, marker)
    _indexed(gw, sid)
    return sid, marker


# -- replay -----------------------------------------------------------------------------


def _in_order(text: str, *parts: str) -> None:
    at = 0
    for part in parts:
        found = text.find(part, at)
        assert found >= 0, f"{part!r} not found after position {at} in:\n{text}"
        at = found + len(part)


def test_replay_shows_statements_decisions_and_masked_samples_in_order(
        gw: GatewayHarness) -> None:
    sid, marker = _recorded_session(gw)
    proc = run("replay", sid[:10], "--speed", "0", config=gw.config_path)
    _in_order(proc.stdout,
              f"session {sid}",
              "identity ci-test  connection rec-db  client 127.0.0.1:",
              f"insert into {SCHEMA}.t values",
              "ALLOW (policy rec",
              "-> INSERT 0 2",
              f"select id, note from {SCHEMA}.t where id < 3 order by id /* {marker} */",
              "ALLOW (policy rec",
              "-> SELECT 2 (2 rows,",
              "masked: note:aws-access-key x1",
              "id", "note",
              "key [MASKED:aws-access-key]",
              "plain",
              f"delete from {SCHEMA}.t /* {marker} */",
              "DENY (policy rec",
              "session ended")
    assert AWS_KEY_ID not in proc.stdout
    assert proc.stderr == ""


def test_replay_waits_as_recorded_scaled_by_speed(gw: GatewayHarness) -> None:
    marker = uuid.uuid4().hex[:12]
    with psycopg.connect(gw.dsn("rec-db"), autocommit=True) as conn:
        conn.execute(f"select 1 /* {marker} */")
        time.sleep(1.0)
        conn.execute("select 2")
    sid = _session_of(gw, marker)
    events = read_recording(_stored_path(gw, _indexed(gw, sid))).events
    span = events[-1].t - events[0].t
    assert span >= 1.0
    for speed, expected in ((2.0, span / 2), (0.0, 0.0)):
        slept: list[float] = []
        player = audit_cmd._Player(speed, step=False)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(audit_cmd.time, "sleep", slept.append)
            for event in events:
                player.wait(event)
        assert sum(slept) == pytest.approx(expected, abs=1e-6)
    # And the command itself plays it through.
    assert marker in run("replay", sid, "--speed", "0", config=gw.config_path).stdout


def test_replay_json_round_trips_to_the_stored_recording(gw: GatewayHarness) -> None:
    sid, _ = _recorded_session(gw)
    proc = run("replay", sid, "--json", config=gw.config_path)
    lines = proc.stdout.splitlines()
    assert json.loads(lines[0])["session"] == sid
    events = [json.loads(line) for line in lines[1:]]
    stored = read_recording(_stored_path(gw, _indexed(gw, sid)))
    assert [(e["seq"], e["type"], e["data"], e["h"]) for e in events] == [
        (e.seq, e.type, dict(e.data), e.h) for e in stored.events]
    assert gzip.decompress(_stored_path(gw, _indexed(gw, sid)).read_bytes()).decode() == \
        proc.stdout
    copy = Path(gw.config.data_dir) / f"{sid}-copy.pwrec"
    copy.write_text(proc.stdout)
    assert verify_recording(copy, final_hash=_indexed(gw, sid).final_hash) == []


def test_replay_follow_shows_a_live_session_as_it_runs_and_stops_at_its_end(
        gw: GatewayHarness) -> None:
    first, second = uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]
    conn = psycopg.connect(gw.dsn("rec-db"), autocommit=True)
    try:
        conn.execute(f"select 'first' /* {first} */")
        sid = _session_of(gw, first)
        proc = subprocess.Popen(
            [*PATHWARDEN, "replay", sid, "--follow", "--config", str(gw.config_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert proc.stdout is not None
        seen: list[str] = []

        def read_until(text: str) -> None:
            deadline = time.monotonic() + 20
            while not any(text in line for line in seen):
                assert time.monotonic() < deadline, f"{text!r} not shown; got {seen}"
                line = proc.stdout.readline()  # type: ignore[union-attr]
                assert line, f"replay ended early: {seen} {proc.stderr.read()}"  # type: ignore[union-attr]
                seen.append(line)

        read_until(first)
        conn.execute(f"select 'second' /* {second} */")
        read_until(second)
        assert proc.poll() is None, "follow must keep running while the session does"
    finally:
        conn.close()
    assert proc.wait(timeout=20) == 0, proc.stderr.read()  # type: ignore[union-attr]
    seen.append(proc.stdout.read())
    proc.stdout.close()
    proc.stderr.close()  # type: ignore[union-attr]
    _in_order("".join(seen), first, "ALLOW", second, "ALLOW", "session ended")


def test_replay_refuses_step_without_a_terminal(gw: GatewayHarness) -> None:
    proc = run("replay", "whatever", "--step", config=gw.config_path, check=False, input="")
    assert proc.returncode == 2
    assert "--step waits for Enter and needs a terminal" in proc.stderr


def test_replay_names_an_unknown_session_and_a_missing_recording(gw: GatewayHarness) -> None:
    proc = run("replay", "0000000000000000", config=gw.config_path, check=False)
    assert proc.returncode == 1
    assert "no session '0000000000000000'" in proc.stderr
    sid, _ = _recorded_session(gw)
    path = _stored_path(gw, _indexed(gw, sid))
    saved = path.read_bytes()
    path.unlink()
    try:
        proc = run("replay", sid, config=gw.config_path, check=False)
    finally:
        path.write_bytes(saved)
    assert proc.returncode == 1
    assert f"the recording of session {sid} is missing from the recording storage" in proc.stderr
    assert _indexed(gw, sid).location in proc.stderr


def test_replay_of_a_damaged_recording_shows_what_it_can_then_the_problems(
        gw: GatewayHarness) -> None:
    sid, marker = _recorded_session(gw)
    path = _stored_path(gw, _indexed(gw, sid))
    saved = path.read_bytes()
    lines = gzip.decompress(saved).split(b"\n")
    target = next(i for i, line in enumerate(lines) if b'"type":"operation"' in line
                  and marker.encode() in line)
    lines[target] = lines[target].replace(marker.encode(), b"x" * len(marker))
    path.write_bytes(gzip.compress(b"\n".join(lines)))
    try:
        proc = run("replay", sid, "--speed", "0", config=gw.config_path, check=False)
    finally:
        path.write_bytes(saved)
    assert proc.returncode == 1
    assert "x" * len(marker) in proc.stdout and "session ended" in proc.stdout
    assert "is damaged" in proc.stderr
    assert f"session {sid}: edited at event {target - 1}" in proc.stderr


# -- verify -----------------------------------------------------------------------------


def _gz_lines(path: Path) -> list[bytes]:
    return gzip.decompress(path.read_bytes()).split(b"\n")


def _write_gz(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(gzip.compress(b"\n".join(lines)))


def _edit_byte(path: Path, marker: str) -> int:
    lines = _gz_lines(path)
    i = next(i for i, line in enumerate(lines) if marker.encode() in line
             and b'"type":"operation"' in line)
    lines[i] = lines[i].replace(marker.encode(), marker.upper().encode(), 1)
    _write_gz(path, lines)
    return i - 1  # line 0 is the header


def _remove_line(path: Path, marker: str) -> int:
    lines = _gz_lines(path)
    del lines[3]
    _write_gz(path, lines)
    return 2


def _swap_lines(path: Path, marker: str) -> int:
    lines = _gz_lines(path)
    lines[3], lines[4] = lines[4], lines[3]
    _write_gz(path, lines)
    return 2


def _truncate(path: Path, marker: str) -> int:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return -1


TAMPERING: dict[str, tuple[Callable[[Path, str], int], str]] = {
    "edited": (_edit_byte, "edited event {seq}"),
    "removed": (_remove_line, "removed event {seq}"),
    "reordered": (_swap_lines, "reordered event {seq}"),
    "truncated": (_truncate, "truncated event"),
}


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_verify_names_a_tampered_recording_file(gw: GatewayHarness, kind: str) -> None:
    sid, marker = _recorded_session(gw)
    row = _indexed(gw, sid)
    run("audit", "verify", config=gw.config_path)
    path = _stored_path(gw, row)
    saved = path.read_bytes()
    tamper, expected = TAMPERING[kind]
    seq = tamper(path, marker)
    try:
        proc = run("audit", "verify", config=gw.config_path, check=False)
    finally:
        path.write_bytes(saved)
    assert proc.returncode == 1, proc.stdout
    who = f"PROBLEM session {sid} (gateway {row.gateway_id}, chain position {row.position}): "
    assert who + expected.format(seq=seq) in proc.stdout, proc.stdout
    problems = [line for line in proc.stdout.splitlines() if line.startswith("PROBLEM")]
    assert all(sid in line for line in problems), problems  # nothing else is blamed
    assert "problem(s) found" in proc.stderr
    run("audit", "verify", config=gw.config_path)


def test_verify_names_a_deleted_recording_file(gw: GatewayHarness) -> None:
    sid, _ = _recorded_session(gw)
    row = _indexed(gw, sid)
    path = _stored_path(gw, row)
    saved = path.read_bytes()
    path.unlink()
    try:
        proc = run("audit", "verify", config=gw.config_path, check=False)
    finally:
        path.write_bytes(saved)
    assert proc.returncode == 1
    assert (f"PROBLEM session {sid} (gateway {row.gateway_id}, chain position {row.position}): "
            "missing: the recording was removed from the storage") in proc.stdout


def _db(gw: GatewayHarness) -> sqlite3.Connection:
    return sqlite3.connect(Path(gw.config.data_dir) / "pathwarden.db", isolation_level=None)


def test_verify_names_a_session_removed_from_the_index(gw: GatewayHarness) -> None:
    sid, _ = _recorded_session(gw)
    _recorded_session(gw)  # so that the removed one is not the head
    row = _indexed(gw, sid)
    db = _db(gw)
    try:
        db.row_factory = sqlite3.Row
        saved = dict(db.execute("select * from recordings where session_id = ?", (sid,)).fetchone())
        db.execute("delete from recordings where session_id = ?", (sid,))
        proc = run("audit", "verify", config=gw.config_path, check=False)
        names = ", ".join(saved)
        db.execute(f"insert into recordings ({names}) values ({', '.join('?' * len(saved))})",
                   tuple(saved.values()))
    finally:
        db.close()
    assert proc.returncode == 1
    assert (f"PROBLEM gateway {row.gateway_id}, chain position {row.position}: chain_broken: "
            f"chain position {row.position} is missing") in proc.stdout
    run("audit", "verify", config=gw.config_path)


def test_verify_names_an_altered_signed_head(gw: GatewayHarness) -> None:
    _recorded_session(gw)
    db = _db(gw)
    try:
        gateway_id, signed = db.execute("select gateway_id, signed from audit_heads").fetchone()
        head = json.loads(signed)
        forged = {**head, "signed_at": head["signed_at"] + 1}
        db.execute("update audit_heads set signed = ? where gateway_id = ?",
                   (json.dumps(forged), gateway_id))
        proc = run("audit", "verify", config=gw.config_path, check=False)
        db.execute("update audit_heads set signed = ? where gateway_id = ?", (signed, gateway_id))
    finally:
        db.close()
    assert proc.returncode == 1
    assert (f"PROBLEM gateway {gateway_id}, chain position {head['position']}") in proc.stdout
    assert "bad_signature: the signature of the head" in proc.stdout
    run("audit", "verify", config=gw.config_path)


def test_verify_one_session(gw: GatewayHarness) -> None:
    sid, _ = _recorded_session(gw)
    proc = run("audit", "verify", "--session", sid[:10], config=gw.config_path)
    assert proc.stdout.strip() == f"OK: session {sid} verified"


# -- prune ------------------------------------------------------------------------------


def test_prune_removes_old_sessions_behind_a_checkpoint_and_verify_still_passes(
        pg_server: PgServer, schema: str, tmp_path: Path) -> None:
    gw = _gateway(pg_server, tmp_path)
    try:
        old = [_recorded_session(gw)[0] for _ in range(3)]
        old_rows = [_indexed(gw, s) for s in old]
        time.sleep(0.2)
        cut = datetime.now(UTC).isoformat()
        time.sleep(0.2)
        new = [_recorded_session(gw)[0] for _ in range(2)]
        proc = run("audit", "prune", "--before", cut, "--dry-run", config=gw.config_path)
        assert "would remove 3 session(s), chain positions 1-3" in proc.stdout
        assert all(s in proc.stdout for s in old) and not any(s in proc.stdout for s in new)
        assert all(_stored_path(gw, r).exists() for r in old_rows)

        proc = run("audit", "prune", "--before", cut, config=gw.config_path)
        assert "removed 3 session(s), chain positions 1-3" in proc.stdout
        assert not any(_stored_path(gw, r).exists() for r in old_rows)
        listing = run("sessions", "list", "--limit", "100", config=gw.config_path).stdout
        assert not any(s in listing for s in old)
        assert all(s in listing for s in new)
        assert gw.statements(old[0]) == []
        assert run("audit", "verify", config=gw.config_path).stdout.startswith(
            "OK: 2 recording(s) in 1 chain(s)")
        # The chain goes on after the checkpoint, and a later prune takes everything.
        _recorded_session(gw)
        run("audit", "verify", config=gw.config_path)
        run("audit", "prune", "--older-than", "0s", config=gw.config_path)
        assert run("audit", "verify", config=gw.config_path).stdout.startswith(
            "OK: 0 recording(s) in 1 chain(s)")
        _recorded_session(gw)
        assert run("audit", "verify", config=gw.config_path).stdout.startswith(
            "OK: 1 recording(s) in 1 chain(s)")
    finally:
        gw.stop()


def test_prune_refuses_without_an_age(gw: GatewayHarness) -> None:
    proc = run("audit", "prune", config=gw.config_path, check=False)
    assert proc.returncode == 2
    assert "give --older-than (e.g. 90d) or set recording.retention" in proc.stderr


def test_prune_uses_the_configured_retention(pg_server: PgServer, schema: str,
                                             tmp_path: Path) -> None:
    gw = _gateway(pg_server, tmp_path, retention="1s")
    try:
        sid, _ = _recorded_session(gw)
        time.sleep(1.5)
        proc = run("audit", "prune", config=gw.config_path)
        assert "removed 1 session(s)" in proc.stdout
        assert gw.session(sid) is None
    finally:
        gw.stop()


# -- export -----------------------------------------------------------------------------


def _export(gw: GatewayHarness, *args: str) -> list[dict[str, Any]]:
    proc = run("audit", "export", *args, config=gw.config_path)
    return [json.loads(line) for line in proc.stdout.splitlines()]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_export_writes_one_documented_line_per_statement_with_filters(
        pg_server: PgServer, schema: str, tmp_path: Path) -> None:
    gw = _gateway(pg_server, tmp_path)
    try:
        marker = uuid.uuid4().hex[:12]
        with psycopg.connect(gw.dsn("rec-db"), autocommit=True) as conn:
            conn.execute(f"select note from {SCHEMA}.t where id < 0 and note = %s /* {marker} */",
                         (f"key {AWS_KEY_ID}",))
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(f"delete from {SCHEMA}.t /* {marker} */")
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(f"create table {SCHEMA}.x{marker} (i int)")
        first = _session_of(gw, marker)
        time.sleep(0.2)
        between = datetime.now(UTC)
        time.sleep(0.2)
        with psycopg.connect(gw.dsn("test-db", identity="ci-deploy"), autocommit=True) as conn:
            conn.execute("select 'deploy' as what")
        second = _session_of(gw, "'deploy'")
        s1, s2 = gw.session(first), gw.session(second)
        assert s1 is not None and s2 is not None
        st1, st2 = gw.statements(first), gw.statements(second)

        everything = _export(gw)
        assert [(e["session"]["id"], e["event"]["sequence"]) for e in everything] == [
            (first, st.seq) for st in st1] + [(second, st.seq) for st in st2]
        select, delete, create = everything[:3]
        host, port = s1.client_addr.rsplit(":", 1)
        assert select == {
            "@timestamp": _iso(st1[0].started_at),
            "event": {"kind": "event", "category": ["database"], "type": ["allowed"],
                      "action": "read", "outcome": "success",
                      "dataset": "pathwarden.statement", "id": f"{first}:{st1[0].seq}",
                      "sequence": st1[0].seq,
                      "duration": round(st1[0].duration_ms * 1_000_000)},  # type: ignore[operator]
            "session": {"id": first, "protocol": "postgres", "started": _iso(s1.started_at),
                        "ended": _iso(s1.ended_at),  # type: ignore[arg-type]
                        "end_reason": s1.end_reason},
            "identity": {"name": "ci-test", "token_ref": s1.token_ref, "claims": {}},
            "client": {"address": s1.client_addr, "ip": host, "port": int(port)},
            "connection": {"name": "rec-db"},
            "db": {"statement":
                   f"select note from {SCHEMA}.t where id < 0 and note = $1 /* {marker} */",
                   "params": ["key [MASKED:aws-access-key]"], "command_tag": "SELECT 0",
                   "rows": 0, "error": None},
            "pathwarden": {"kind": st1[0].kind, "decision": "allow", "policy": "rec",
                           "reason": st1[0].reason, "masked": {}, "masked_total": 0},
        }
        assert delete["pathwarden"]["decision"] == "deny"
        assert delete["event"]["type"] == ["denied"] and delete["event"]["outcome"] == "failure"
        assert delete["db"]["error"].startswith("pathwarden: statement denied")
        # Needs approval, and nobody may approve here: refused at once.
        assert create["pathwarden"]["decision"] == "deny"
        assert "requires approval" in create["pathwarden"]["reason"]
        assert AWS_KEY_ID not in json.dumps(everything)

        def keys(lines: list[dict[str, Any]]) -> list[tuple[str, int]]:
            return [(e["session"]["id"], e["event"]["sequence"]) for e in lines]

        assert keys(_export(gw, "--identity", "ci-deploy")) == [(second, st2[0].seq)]
        assert keys(_export(gw, "--connection", "rec-db")) == keys(everything[:3])
        assert keys(_export(gw, "--decision", "deny")) == [(first, st1[1].seq),
                                                            (first, st1[2].seq)]
        assert keys(_export(gw, "--decision", "approve")) == []
        assert keys(_export(gw, "--since", between.isoformat())) == [(second, st2[0].seq)]
        assert keys(_export(gw, "--until", between.isoformat())) == keys(everything[:3])
        assert _export(gw, "--since", "1h", "--identity", "nobody") == []

        out = tmp_path / "audit.jsonl"
        proc = run("audit", "export", "--output", str(out), config=gw.config_path)
        assert proc.stdout == "" and f"{len(everything)} statement(s) written" in proc.stderr
        assert [json.loads(line) for line in out.read_text().splitlines()] == everything
        assert out.stat().st_mode & 0o777 == 0o600
        bad = run("audit", "export", "--decision", "maybe", config=gw.config_path, check=False)
        assert bad.returncode == 2 and "--decision" in bad.stderr
    finally:
        gw.stop()


# -- S3 ---------------------------------------------------------------------------------


def test_a_session_stored_in_s3_is_replayed_and_verified_from_the_bucket(
        pg_server: PgServer, schema: str, tmp_path: Path, s3_endpoint: str) -> None:  # noqa: F811
    bucket = f"rec-{uuid.uuid4().hex[:8]}"
    make_bucket(s3_endpoint, bucket)
    gw = _gateway(pg_server, tmp_path, storage={
        "type": "s3", "bucket": bucket, "prefix": "gw/", "endpoint_url": s3_endpoint,
        "access_key": "test", "secret_key": "test"})
    try:
        sid, marker = _recorded_session(gw)
        row = _indexed(gw, sid)
        assert gw.gateway.recorder is not None
        assert not (gw.gateway.recorder.root / row.location).exists()
        import boto3
        client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
        assert keys == [f"gw/{row.location}"]
        proc = run("replay", sid, "--speed", "0", config=gw.config_path)
        _in_order(proc.stdout, f"/* {marker} */", "key [MASKED:aws-access-key]", "DENY",
                  "session ended")
        assert run("audit", "verify", config=gw.config_path).stdout.startswith(
            "OK: 1 recording(s) in 1 chain(s)")
        client.delete_object(Bucket=bucket, Key=f"gw/{row.location}")
        proc = run("audit", "verify", config=gw.config_path, check=False)
        assert proc.returncode == 1
        assert f"s3://{bucket}/gw/{row.location}" in proc.stdout
    finally:
        gw.stop()
        shutil.rmtree(tmp_path / "data", ignore_errors=True)


def test_verify_notices_the_newest_sessions_removed_behind_an_old_head(
        pg_server: PgServer, schema: str, tmp_path: Path) -> None:
    gw = _gateway(pg_server, tmp_path)
    try:
        _recorded_session(gw)
        _recorded_session(gw)
        db = _db(gw)
        saved = db.execute("select gateway_id, position, signed from audit_heads").fetchone()
        sid, _ = _recorded_session(gw)
        row = _indexed(gw, sid)
        run("audit", "verify", config=gw.config_path)
        # Remove the newest session everywhere in the store and put the older head back.
        db.execute("delete from recordings where session_id = ?", (sid,))
        db.execute("delete from statements where session_id = ?", (sid,))
        db.execute("delete from sessions where id = ?", (sid,))
        db.execute("update audit_heads set position = ?, signed = ? where gateway_id = ?",
                   (saved[1], saved[2], saved[0]))
        db.close()
        _stored_path(gw, row).unlink()
        proc = run("audit", "verify", config=gw.config_path, check=False)
        assert proc.returncode == 1
        assert (f"gateway {saved[0]}: rolled_back: the store's chain head is at position "
                f"{saved[1]} but this gateway signed position {row.position}") in proc.stdout
    finally:
        gw.stop()
