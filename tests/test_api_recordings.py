"""GET /v1/sessions/{id}/events: a session's recording over the HTTP API, live or finished."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from gateway_harness import (
    GatewayHarness,
    api_settings,
    running_gateway,
    standard_config,
    wait_until,
)
from pathwarden.recording import read_recording
from pathwarden.store import RecordingRow
from pgserver import PgServer, free_port


@pytest.fixture(scope="module")
def gw(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[GatewayHarness]:
    base = tmp_path_factory.mktemp("api-rec")
    (base / "md5pw").write_text("md5-secret\n")
    config = standard_config(pg_server, base / "data", free_port())
    config["identities"]["ops-admin"] = {"admin": True}
    config["api"] = api_settings()
    config["recording"] = {"fsync": "off"}
    with running_gateway(base, config) as harness:
        yield harness


@pytest.fixture
def api(gw: GatewayHarness) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.api_url(), timeout=10,
                      headers={"Authorization": f"Bearer {gw.token('ops-admin')}"}) as client:
        yield client


def _session_of(gw: GatewayHarness, marker: str) -> str:
    def find() -> str | None:
        for s in gw.sessions(limit=1000):
            if any(marker in st.text for st in gw.statements(s.id)):
                return s.id
        return None

    found: str = wait_until(find, timeout=10, what=f"the session that ran {marker}")
    return found


def _finished(gw: GatewayHarness) -> tuple[str, RecordingRow]:
    marker = uuid.uuid4().hex[:12]
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        conn.execute(f"select 'one' /* {marker} */")
        conn.execute("select 'two'")
    sid = _session_of(gw, marker)
    row: RecordingRow = wait_until(lambda: gw.call(gw.gateway.store.get_recording(sid)),
                                   timeout=10, what="the recording to be indexed")
    return sid, row


def _texts(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["text"] for e in events if e["type"] == "operation"]


def test_events_of_a_finished_session_are_its_recording(
        gw: GatewayHarness, api: httpx.Client) -> None:
    sid, row = _finished(gw)
    assert gw.gateway.recorder is not None
    stored = read_recording(gw.gateway.recorder.root / row.location)
    response = api.get(f"/v1/sessions/{sid[:8]}/events")
    assert response.status_code == 200, response.text
    assert response.headers["x-pathwarden-recording"] == "finished"
    assert response.headers["x-pathwarden-complete"] == "true"
    assert response.headers["x-pathwarden-session"] == sid
    events = response.json()
    assert [(e["seq"], e["type"], e["data"], e["h"]) for e in events] == [
        (e.seq, e.type, dict(e.data), e.h) for e in stored.events]
    assert events[0]["type"] == "session_start" and events[-1]["type"] == "session_end"

    lines = api.get(f"/v1/sessions/{sid}/events", params={"format": "jsonl"})
    assert lines.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line) for line in lines.text.splitlines()] == events
    accepted = api.get(f"/v1/sessions/{sid}/events",
                       headers={"Accept": "application/x-ndjson"})
    assert accepted.text == lines.text
    tail = api.get(f"/v1/sessions/{sid}/events", params={"after_seq": events[-3]["seq"]})
    assert tail.json() == events[-2:]


def test_a_live_session_is_polled_with_after_seq(gw: GatewayHarness, api: httpx.Client) -> None:
    first, second = uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        conn.execute(f"select 'first' /* {first} */")
        sid = _session_of(gw, first)
        response = api.get(f"/v1/sessions/{sid}/events")
        assert response.status_code == 200, response.text
        assert response.headers["x-pathwarden-recording"] == "live"
        assert response.headers["x-pathwarden-complete"] == "false"
        events = response.json()
        assert _texts(events) == [f"select 'first' /* {first} */"]
        conn.execute(f"select 'second' /* {second} */")
        newer = wait_until(lambda: [e for e in api.get(
            f"/v1/sessions/{sid}/events", params={"after_seq": events[-1]["seq"]}).json()
            if e["type"] == "result"], what="the second statement's result")
        polled = api.get(f"/v1/sessions/{sid}/events",
                         params={"after_seq": events[-1]["seq"]}).json()
        assert polled[0]["seq"] == events[-1]["seq"] + 1
        assert _texts(polled) == [f"select 'second' /* {second} */"]
        assert newer
    last = polled[-1]["seq"]
    ending = wait_until(lambda: api.get(f"/v1/sessions/{sid}/events",
                                        params={"after_seq": last}).json(),
                        what="the session's end")
    assert ending[-1]["type"] == "session_end"


def test_events_need_an_admin_token(gw: GatewayHarness) -> None:
    sid, _ = _finished(gw)
    with httpx.Client(base_url=gw.api_url(), timeout=10) as client:
        anonymous = client.get(f"/v1/sessions/{sid}/events")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"] == "missing_token"
        other = client.get(f"/v1/sessions/{sid}/events",
                           headers={"Authorization": f"Bearer {gw.token('ci-test')}"})
        assert other.status_code == 403
        assert other.json()["error"] == "not_admin"


def test_unknown_sessions_and_missing_recordings_answer_404(
        gw: GatewayHarness, api: httpx.Client) -> None:
    unknown = api.get("/v1/sessions/ffffffffffffffff/events")
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_session"
    sid, row = _finished(gw)
    assert gw.gateway.recorder is not None
    path: Path = gw.gateway.recorder.root / row.location
    saved = path.read_bytes()
    path.unlink()
    try:
        missing = api.get(f"/v1/sessions/{sid}/events")
    finally:
        path.write_bytes(saved)
    assert missing.status_code == 404
    assert missing.json()["error"] == "recording_missing"
    assert "pathwarden audit verify" in missing.json()["message"]
    bad = api.get(f"/v1/sessions/{sid}/events", params={"after_seq": "x"})
    assert bad.status_code == 400
