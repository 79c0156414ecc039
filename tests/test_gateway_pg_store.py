"""The scale-out store: a gateway whose audit trail lives in PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import psycopg

from gateway_harness import GatewayHarness, standard_config, write_config
from pathwarden.store import open_store
from pgserver import PgServer, free_port


def test_gateway_audits_into_a_postgresql_store(pg_server: PgServer, tmp_path: Path) -> None:
    dbname = f"pwstore_{uuid.uuid4().hex[:8]}"
    pg_server.create_database(dbname)
    store_url = pg_server.dsn(dbname=dbname)
    (tmp_path / "md5pw").write_text("md5-secret\n")
    config = standard_config(pg_server, tmp_path / "data", free_port())
    config["store"] = {"url": store_url}
    harness = GatewayHarness(write_config(tmp_path / "pathwarden.yaml", config))
    try:
        with psycopg.connect(harness.dsn(), autocommit=True) as conn:
            conn.execute("select 'stored in postgres'")
            conn.execute("select %s::text", ("param",))
    finally:
        harness.stop()
    assert not (tmp_path / "data" / "pathwarden.db").exists()

    async def read() -> tuple[list[str], list[tuple[str, tuple[str | None, ...]]]]:
        store = await open_store(store_url)
        try:
            sessions = await store.list_sessions(identity="ci-test")
            statements = await store.list_statements(sessions[0].id)
            return ([s.end_reason or "" for s in sessions],
                    [(s.text, s.params) for s in statements])
        finally:
            await store.close()

    reasons, statements = asyncio.run(read())
    assert reasons == ["client terminated"]
    assert statements == [("select 'stored in postgres'", ()), ("select $1::text", ("param",))]
