"""Specification of the SQL store, run against both backends (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import stat
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

from pathwarden.config import parse_config
from pathwarden.model import Protocol, SessionRecord, StatementRecord, Verdict
from pathwarden.store import (
    AmbiguousPrefix,
    NotFound,
    SqlStore,
    StoreError,
    TokenRecord,
    open_store,
    store_url_for,
)
from pathwarden.store.tables import metadata

T = TypeVar("T")
T0 = datetime(2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC)
CET = timezone(timedelta(hours=1))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for an empty store: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'pathwarden.db'}"
    pg_server = request.getfixturevalue("pg_server")
    name = f"pw_store_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    return str(pg_server.dsn(user="postgres", dbname=name))


def using(url: str, body: Callable[[SqlStore], Awaitable[T]]) -> T:
    async def main() -> T:
        store = await open_store(url)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def sync_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def token(ref: str, identity: str = "ci-test", **changes: Any) -> TokenRecord:
    fields: dict[str, Any] = {
        "token_ref": ref,
        "identity": identity,
        "issued_at": T0,
        "expires_at": T0 + timedelta(minutes=15),
        "connections": ("test-db",),
        "claims": {"run": "7"},
    }
    fields.update(changes)
    return TokenRecord(**fields)


def session(sid: str, started_at: datetime = T0, **changes: Any) -> SessionRecord:
    fields: dict[str, Any] = {
        "id": sid,
        "protocol": Protocol.POSTGRES,
        "identity": "ci-test",
        "token_ref": "0123456789abcdef",
        "client_addr": "127.0.0.1:50000",
        "connection": "test-db",
        "started_at": started_at,
    }
    fields.update(changes)
    return SessionRecord(**fields)


def statement(sid: str, seq: int, **changes: Any) -> StatementRecord:
    fields: dict[str, Any] = {
        "session_id": sid,
        "seq": seq,
        "kind": "query",
        "text": f"select {seq}",
        "params": (str(seq), None),
        "verdict": Verdict.ALLOW,
        "reason": "allow_all",
        "started_at": T0 + timedelta(milliseconds=seq),
    }
    fields.update(changes)
    return StatementRecord(**fields)


# -- opening and migrations ----------------------------------------------------------


def test_opening_twice_is_idempotent_and_tables_match_the_migrations(store_url: str) -> None:
    using(store_url, lambda store: asyncio.sleep(0))
    using(store_url, lambda store: asyncio.sleep(0))

    engine = sa.create_engine(sync_url(store_url))
    try:
        with engine.connect() as conn:
            version = conn.execute(sa.text("select version_num from alembic_version")).all()
            inspector = sa.inspect(conn)
            for table in metadata.sorted_tables:
                migrated = {column["name"] for column in inspector.get_columns(table.name)}
                assert migrated == set(table.columns.keys()), table.name
                indexes = {index["name"] for index in inspector.get_indexes(table.name)}
                assert {index.name for index in table.indexes} <= indexes, table.name
    finally:
        engine.dispose()
    assert version == [("0004",)]


def test_concurrent_first_opens_do_not_race(store_url: str) -> None:
    async def main() -> None:
        stores = await asyncio.gather(*(open_store(store_url) for _ in range(4)))
        for store in stores:
            await store.close()

    asyncio.run(main())


def test_sqlite_store_is_private_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "new" / "pw.db"
    using(
        f"sqlite+aiosqlite:///{path}", lambda store: store.record_token(token("aaaaaaaaaaaaaaaa"))
    )

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with sqlite3.connect(path) as conn:
        assert conn.execute("pragma journal_mode").fetchone() == ("wal",)


def test_default_store_url_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    config = parse_config("data_dir: state\n", base_dir=tmp_path)
    assert store_url_for(config) == f"sqlite+aiosqlite:///{tmp_path}/state/pathwarden.db"


def test_store_url_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PW_STORE_URL", "postgresql://pw:secret@db:5432/pathwarden")
    config = parse_config("store: {url: {env: PW_STORE_URL}}\n")
    assert store_url_for(config) == "postgresql://pw:secret@db:5432/pathwarden"


def test_unreachable_postgresql_is_reported_without_the_password() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(StoreError) as info:
        asyncio.run(open_store(f"postgresql://pw:hunter2@127.0.0.1:{port}/pathwarden"))
    message = str(info.value)
    assert message.startswith(f"PostgreSQL store at 127.0.0.1:{port}/pathwarden unreachable: ")
    assert "Connection refused" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://u:hunter2@h/db", "unsupported store URL scheme 'mysql'"),
        ("not a url :: hunter2", "invalid store URL"),
    ],
)
def test_bad_store_urls_are_explained(url: str, problem: str) -> None:
    with pytest.raises(StoreError) as info:
        asyncio.run(open_store(url))
    assert problem in str(info.value)
    assert "hunter2" not in str(info.value)


def test_unopenable_sqlite_path_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match=r"cannot open SQLite store at .*/file/sub/pw\.db: "):
        asyncio.run(open_store(f"sqlite:///{blocker}/sub/pw.db"))


# -- tokens ------------------------------------------------------------------------------


def test_token_round_trip_keeps_aware_utc_times(store_url: str) -> None:
    issued_cet = T0.astimezone(CET)

    async def body(store: SqlStore) -> TokenRecord | None:
        await store.record_token(token("0123456789abcdef", issued_at=issued_cet))
        return await store.token_status("0123456789abcdef")

    record = using(store_url, body)
    assert record is not None
    assert record.issued_at == T0
    assert record.issued_at.tzinfo == UTC
    assert record.expires_at.utcoffset() == timedelta(0)
    assert record.connections == ("test-db",)
    assert dict(record.claims) == {"run": "7"}
    assert record.revoked_at is None


def test_unscoped_token_round_trips_as_none(store_url: str) -> None:
    async def body(store: SqlStore) -> TokenRecord | None:
        await store.record_token(token("0123456789abcdef", connections=None, claims={}))
        return await store.token_status("0123456789abcdef")

    record = using(store_url, body)
    assert record is not None
    assert record.connections is None
    assert dict(record.claims) == {}


def test_unknown_token_status_is_none(store_url: str) -> None:
    assert using(store_url, lambda store: store.token_status("ffffffffffffffff")) is None


def test_naive_datetimes_are_refused(store_url: str) -> None:
    naive = datetime(2026, 1, 1)
    with pytest.raises(StoreError, match="naive datetime 2026-01-01T00:00:00"):
        using(
            store_url, lambda store: store.record_token(token("0123456789abcdef", issued_at=naive))
        )


def test_list_tokens_filters_and_orders_newest_first(store_url: str) -> None:
    now = datetime.now(UTC)

    async def body(store: SqlStore) -> tuple[list[str], list[str], list[str]]:
        await store.record_token(
            token(
                "a" * 16, issued_at=now - timedelta(minutes=3), expires_at=now + timedelta(hours=1)
            )
        )
        await store.record_token(
            token(
                "b" * 16, issued_at=now - timedelta(minutes=1), expires_at=now + timedelta(hours=1)
            )
        )
        await store.record_token(
            token(
                "c" * 16,
                identity="ci-build",
                issued_at=now - timedelta(minutes=2),
                expires_at=now + timedelta(hours=1),
            )
        )
        await store.record_token(
            token("d" * 16, issued_at=now - timedelta(hours=2), expires_at=now - timedelta(hours=1))
        )
        live = [t.token_ref[0] for t in await store.list_tokens()]
        mine = [t.token_ref[0] for t in await store.list_tokens("ci-test")]
        everything = [
            t.token_ref[0] for t in await store.list_tokens("ci-test", include_expired=True)
        ]
        return live, mine, everything

    assert using(store_url, body) == (["b", "c", "a"], ["b", "a"], ["b", "a", "d"])


def test_revoke_by_unique_prefix(store_url: str) -> None:
    async def body(store: SqlStore) -> tuple[TokenRecord, TokenRecord | None]:
        await store.record_token(token("0123456789abcdef"))
        await store.record_token(token("fedcba9876543210"))
        revoked = await store.revoke_token("012345", "leaked")
        return revoked, await store.token_status("0123456789abcdef")

    revoked, stored = using(store_url, body)
    assert revoked.token_ref == "0123456789abcdef"
    assert revoked.revoked_reason == "leaked"
    assert revoked.revoked_at is not None
    assert revoked.revoked_at.tzinfo == UTC
    assert abs(revoked.revoked_at - datetime.now(UTC)) < timedelta(minutes=1)
    assert stored == revoked


def test_revoking_twice_keeps_the_first_revocation(store_url: str) -> None:
    async def body(store: SqlStore) -> tuple[TokenRecord, TokenRecord]:
        await store.record_token(token("0123456789abcdef"))
        first = await store.revoke_token("0123456789abcdef", "leaked")
        second = await store.revoke_token("0123456789", "again")
        return first, second

    first, second = using(store_url, body)
    assert second.revoked_at == first.revoked_at
    assert second.revoked_reason == "leaked"


def test_revoke_errors(store_url: str) -> None:
    async def body(store: SqlStore) -> None:
        await store.record_token(token("abcdef0000000001"))
        await store.record_token(token("abcdef0000000002"))
        with pytest.raises(AmbiguousPrefix) as ambiguous:
            await store.revoke_token("abcdef", None)
        assert str(ambiguous.value) == (
            "token id prefix 'abcdef' matches several: abcdef0000000001, abcdef0000000002; "
            "give more characters"
        )
        with pytest.raises(NotFound, match="no token id starts with '123456'"):
            await store.revoke_token("123456", None)
        with pytest.raises(StoreError, match="too short; give at least 6 characters"):
            await store.revoke_token("abc", None)
        # LIKE wildcards in the prefix are literal, not patterns.
        with pytest.raises(NotFound):
            await store.revoke_token("abcdef%", None)
        with pytest.raises(NotFound):
            await store.revoke_token("abcde_", None)
        assert all(not t.revoked for t in await store.list_tokens(include_expired=True))

    using(store_url, body)


def test_duplicate_token_is_a_store_error(store_url: str) -> None:
    async def body(store: SqlStore) -> None:
        await store.record_token(token("0123456789abcdef"))
        await store.record_token(token("0123456789abcdef"))

    with pytest.raises(StoreError, match="recording token 0123456789abcdef failed on "):
        using(store_url, body)


# -- sessions and statements ---------------------------------------------------------


def test_session_start_and_end_update_one_row(store_url: str) -> None:
    async def body(store: SqlStore) -> list[SessionRecord]:
        await store.upsert_sessions([session("s-000001", claims={"run": "7"})])
        ended = session(
            "s-000001",
            ended_at=T0 + timedelta(seconds=5),
            bytes_from_client=120,
            bytes_to_client=4096,
            end_reason="client closed",
            claims={"run": "7"},
        )
        await store.upsert_sessions([ended])
        return await store.list_sessions()

    (record,) = using(store_url, body)
    assert record.ended_at == T0 + timedelta(seconds=5)
    assert record.ended_at.tzinfo == UTC
    assert (record.bytes_from_client, record.bytes_to_client) == (120, 4096)
    assert record.end_reason == "client closed"
    assert record.protocol is Protocol.POSTGRES
    assert dict(record.claims) == {"run": "7"}


def test_session_batch_with_repeated_ids_keeps_the_last(store_url: str) -> None:
    batch = [session(f"s-{i:06d}") for i in range(300)]
    batch.append(session("s-000007", end_reason="done", ended_at=T0 + timedelta(seconds=1)))

    async def body(store: SqlStore) -> tuple[int, SessionRecord | None]:
        await store.upsert_sessions(batch)
        return len(await store.list_sessions(limit=1000)), await store.get_session("s-000007")

    count, seventh = using(store_url, body)
    assert count == 300
    assert seventh is not None
    assert seventh.end_reason == "done"


def test_statements_round_trip_in_seq_order(store_url: str) -> None:
    async def body(store: SqlStore) -> list[StatementRecord]:
        await store.upsert_sessions([session("s-000001")])
        await store.insert_statements(
            [
                statement(
                    "s-000001",
                    2,
                    verdict=Verdict.DENY,
                    reason="no",
                    policy="ro",
                    action="write",
                    error="denied",
                ),
                statement("s-000001", 1, duration_ms=1.5, command_tag="SELECT 1", rows=1),
            ]
        )
        return await store.list_statements("s-000001")

    first, second = using(store_url, body)
    assert (first.seq, second.seq) == (1, 2)
    assert first.params == ("1", None)
    assert (first.duration_ms, first.command_tag, first.rows) == (1.5, "SELECT 1", 1)
    assert first.started_at == T0 + timedelta(milliseconds=1)
    assert first.started_at.tzinfo == UTC
    assert second.verdict is Verdict.DENY
    assert (second.policy, second.action, second.error) == ("ro", "write", "denied")


def test_large_statement_batches_and_replays_are_stored_once(store_url: str) -> None:
    batch = [statement("s-000001", seq) for seq in range(2000)]

    async def body(store: SqlStore) -> tuple[int, dict[str, int]]:
        await store.upsert_sessions([session("s-000001"), session("s-000002")])
        await store.insert_statements(batch)
        await store.insert_statements(batch[-10:])  # replay after a crash
        rows = await store.list_statements("s-000001")
        return len(rows), await store.statement_counts(["s-000001", "s-000002"])

    count, counts = using(store_url, body)
    assert count == 2000
    assert counts == {"s-000001": 2000, "s-000002": 0}


def test_statement_for_an_unknown_session_is_refused_with_a_hint(store_url: str) -> None:
    async def body(store: SqlStore) -> None:
        await store.insert_statements([statement("no-such-session", 1)])

    with pytest.raises(StoreError) as info:
        using(store_url, body)
    assert str(info.value).startswith("storing 1 statement(s) failed on ")
    assert str(info.value).endswith("(upsert_sessions first)")


def test_failed_statement_batch_stores_nothing(store_url: str) -> None:
    async def body(store: SqlStore) -> int:
        await store.upsert_sessions([session("s-000001")])
        with pytest.raises(StoreError):
            await store.insert_statements([statement("s-000001", 1), statement("ghost", 1)])
        return len(await store.list_statements("s-000001"))

    assert using(store_url, body) == 0


def test_list_sessions_filters_and_orders_newest_first(store_url: str) -> None:
    async def body(store: SqlStore) -> dict[str, list[str]]:
        await store.upsert_sessions(
            [
                session("s-a", T0, identity="ci-build"),
                session("s-b", T0 + timedelta(minutes=1)),
                session("s-c", T0 + timedelta(minutes=2), connection="prod-db"),
                session("s-d", T0 + timedelta(minutes=3)),
            ]
        )

        async def ids(**filters: Any) -> list[str]:
            return [s.id for s in await store.list_sessions(**filters)]

        return {
            "all": await ids(),
            "identity": await ids(identity="ci-test"),
            "connection": await ids(connection="prod-db"),
            "since": await ids(since=(T0 + timedelta(minutes=2)).astimezone(CET)),
            "limit": await ids(limit=2),
        }

    assert using(store_url, body) == {
        "all": ["s-d", "s-c", "s-b", "s-a"],
        "identity": ["s-d", "s-c", "s-b"],
        "connection": ["s-c"],
        "since": ["s-d", "s-c"],
        "limit": ["s-d", "s-c"],
    }


def test_get_session_by_id_or_unique_prefix(store_url: str) -> None:
    async def body(store: SqlStore) -> None:
        await store.upsert_sessions(
            [session("7f3a9c01-aaaa"), session("7f3a9c02-bbbb"), session("abc")]
        )
        found = await store.get_session("7f3a9c01")
        assert found is not None
        assert found.id == "7f3a9c01-aaaa"
        exact = await store.get_session("abc")  # short ids still match exactly
        assert exact is not None
        assert exact.id == "abc"
        assert await store.get_session("7f3a9") is None  # prefix too short
        assert await store.get_session("000000") is None
        with pytest.raises(AmbiguousPrefix, match="session id prefix '7f3a9c' matches several"):
            await store.get_session("7f3a9c")

    using(store_url, body)


class _FlakyEngine:
    """Delegates to a real engine; its first connect fails like SQLite's I/O error."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.failures = 1

    def connect(self) -> Any:
        if self.failures:
            self.failures -= 1
            raise sa.exc.OperationalError("SELECT", {}, sqlite3.OperationalError(
                "disk I/O error"))
        return self._engine.connect()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def test_a_transient_sqlite_io_error_on_a_token_lookup_is_retried(tmp_path: Path) -> None:
    # The I/O error itself cannot be provoked on demand: it is injected (once) into the
    # engine's connect, around a real SQLite store.
    url = f"sqlite:///{tmp_path / 'data' / 'pathwarden.db'}"

    async def body(store: SqlStore) -> tuple[TokenRecord | None, int]:
        await store.record_token(token("abcdef0123456789"))
        real = store._engine
        flaky = _FlakyEngine(real)
        store._engine = flaky  # type: ignore[assignment]
        try:
            return await store.token_status("abcdef0123456789"), flaky.failures
        finally:
            store._engine = real

    found, failures_left = using(url, body)
    assert failures_left == 0  # the failure happened, and the lookup went on
    assert found is not None and found.identity == "ci-test"
