"""SQL implementation of :class:`~pathwarden.store.base.Store` (SQLite or PostgreSQL).

Theory of operation: SQLAlchemy 2 Core on an async engine, ``sqlite+aiosqlite``
for the embedded default and ``postgresql+psycopg`` for several replicas. The
schema is owned by the Alembic migrations next to this file and is brought to
head every time a store is opened, under a lock so that replicas starting
together do not race: ``pg_advisory_xact_lock`` on PostgreSQL, ``BEGIN
IMMEDIATE`` (the database write lock) on SQLite.

SQLite details, set on every new connection: WAL journal (readers do not
block the writer), ``synchronous=NORMAL`` (safe against a process crash, which
is what the audit design asks of the database index), ``busy_timeout=5000`` and
foreign keys on. pysqlite's legacy transaction handling does not BEGIN before
DDL or SELECT, so the driver's own BEGIN is switched off and SQLAlchemy's
``begin`` event emits it; write transactions use ``BEGIN IMMEDIATE`` so that a
read-then-write (revoke) waits for the lock instead of failing with
SQLITE_BUSY when another writer commits in between.

Every SQLAlchemy/driver error leaving this module is a :class:`StoreError`
built from the driver's message (never SQLAlchemy's, which quotes the SQL and
its parameters), with the URL's password masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.util.exc import CommandError
from sqlalchemy import Connection, event, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from pathwarden.config import GatewayConfig
from pathwarden.model import SessionRecord, StatementRecord
from pathwarden.store.approvals import ApprovalIndex
from pathwarden.store.base import (
    MIN_PREFIX,
    AmbiguousPrefix,
    NotFound,
    StoreError,
    TokenRecord,
)
from pathwarden.store.recordings import RecordingIndex
from pathwarden.store.rows import (
    INSERT_STATEMENTS_PG,
    INSERT_STATEMENTS_SQLITE,
    session_record,
    session_row,
    statement_record,
    statement_tuple,
    token_record,
    token_row,
)
from pathwarden.store.tables import sessions, statements, tokens

__all__ = ["SqlStore", "open_store", "store_url_for"]

_READ_ATTEMPTS = 3

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Arbitrary but fixed: every replica must take the same advisory lock.
_MIGRATION_LOCK_KEY = 0x7061_7468_7764  # "pathwd"
_BEGIN_OPTION = "pathwarden_sqlite_begin"
_CONNECT_TIMEOUT_S = 10
_AMBIGUITY_SHOWN = 5
# SQLite (since 3.32) and asyncpg both take over 30,000 bound parameters.
_MAX_IN_LIST = 10_000
_WAL_RETRY_S = 10.0


def store_url_for(config: GatewayConfig) -> str:
    """The store URL a gateway config selects (reveals ``store.url`` if it is a secret)."""
    if config.store.url is None:
        path = config.data_dir / "pathwarden.db"
        return URL.create("sqlite+aiosqlite", database=str(path)).render_as_string()
    return config.store.url.reveal()


async def open_store(url: str) -> SqlStore:
    """Connect to the store at ``url`` and migrate its schema to the current version.

    ``url`` is ``sqlite:///path`` / ``sqlite+aiosqlite:///path`` or
    ``postgresql://user:pass@host:port/db`` (``postgresql+psycopg://`` also
    accepted). Raises :class:`StoreError`.
    """
    target = _Target.parse(url)
    engine = target.create_engine()
    store = SqlStore(engine, target)
    try:
        await store.migrate()
    except BaseException:
        await engine.dispose()
        raise
    return store


class _Target:
    """A parsed store URL and how to describe it without its password."""

    def __init__(self, url: URL) -> None:
        self.url = url
        self.is_sqlite = url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            self.display = f"SQLite store at {url.database or ':memory:'}"
        else:
            self.display = (
                f"PostgreSQL store at {url.host or 'localhost'}:{url.port or 5432}"
                f"/{url.database or ''}"
            )

    @classmethod
    def parse(cls, raw: str) -> _Target:
        try:
            url = make_url(raw)
        except (ArgumentError, ValueError):
            # Not echoing `raw`: an unparsable URL may still contain a password.
            raise StoreError(
                "invalid store URL; expected postgresql://user:password@host:port/dbname "
                "or sqlite:///path/to/pathwarden.db"
            ) from None
        scheme = url.drivername
        if scheme in ("sqlite", "sqlite+aiosqlite"):
            url = url.set(drivername="sqlite+aiosqlite")
        elif scheme in ("postgresql", "postgres", "postgresql+psycopg"):
            url = url.set(drivername="postgresql+psycopg")
        else:
            raise StoreError(
                f"unsupported store URL scheme {scheme!r}; use postgresql://... or sqlite:///..."
            )
        return cls(url)

    def create_engine(self) -> AsyncEngine:
        if not self.is_sqlite:
            return create_async_engine(
                self.url,
                pool_pre_ping=True,
                connect_args={
                    "connect_timeout": _CONNECT_TIMEOUT_S,
                    "application_name": "pathwarden",
                },
            )
        database = self.url.database
        memory = not database or database == ":memory:"
        if not memory:
            assert database is not None
            try:
                Path(database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                # The audit index holds statement text: owner-only, like the
                # signing key. SQLite gives its -wal/-shm files the same mode.
                os.close(os.open(database, os.O_WRONLY | os.O_CREAT, 0o600))
            except OSError as exc:
                raise StoreError(f"cannot open {self.display}: {exc.strerror}") from None
        engine = create_async_engine(
            self.url,
            # One shared connection, or each would get its own empty database.
            poolclass=StaticPool if memory else None,
        )
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
        return engine

    def mask(self, message: str) -> str:
        password = self.url.password
        return message.replace(password, "***") if password else message


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (_sqlite_on_begin)
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout = 5000")
        # journal_mode is not set here: it is a property of the file, set once
        # by SqlStore._enable_wal, and switching it ignores busy_timeout.
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    mode = connection.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


class SqlStore(RecordingIndex, ApprovalIndex):
    """The store on SQLite or PostgreSQL; create it with :func:`open_store`."""

    def __init__(self, engine: AsyncEngine, target: _Target) -> None:
        self._engine = engine
        self._target = target
        self._inline: sqlite3.Connection | None = None
        self._writer = engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        self.dialect = "sqlite" if target.is_sqlite else "postgresql"
        self.display = target.display

    async def __aenter__(self) -> SqlStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        await self._engine.dispose()

    async def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent; done by open_store)."""
        with self._errors("migrating the schema", opening=True):
            if self._target.is_sqlite:
                await self._enable_wal()
            async with self._writer.begin() as conn:
                if not self._target.is_sqlite:
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                    )
                await conn.run_sync(_upgrade_to_head)

    async def _enable_wal(self) -> None:
        # Switching to WAL needs a moment alone with the file and fails at once
        # with "database is locked" (no busy wait) when processes open a new
        # store together; retry briefly. Runs on the driver connection because
        # the mode cannot change inside the transaction SQLAlchemy would begin.
        deadline = asyncio.get_running_loop().time() + _WAL_RETRY_S
        async with self._engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            while True:
                try:
                    cursor = await driver.execute("PRAGMA journal_mode = WAL")
                    await cursor.close()
                    return
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or asyncio.get_running_loop().time() > deadline:
                        raise StoreError(f"cannot open {self.display}: {exc}") from None
                await asyncio.sleep(0.02)

    # -- tokens ---------------------------------------------------------------

    async def record_token(self, rec: TokenRecord) -> None:
        with self._errors(f"recording token {rec.token_ref}"):
            async with self._writer.begin() as conn:
                await conn.execute(tokens.insert().values(**token_row(rec)))

    async def token_status(self, token_ref: str) -> TokenRecord | None:
        query = select(tokens).where(tokens.c.token_ref == token_ref)
        for attempt in range(_READ_ATTEMPTS):
            try:
                with self._errors(f"looking up token {token_ref}"):
                    async with self._engine.connect() as conn:
                        row = (await conn.execute(query)).first()
                break
            except StoreError as exc:
                # Every login reads here: a transient SQLite I/O error (seen while
                # another process opened the same file) is retried, not a refusal.
                if attempt + 1 == _READ_ATTEMPTS or "disk I/O error" not in str(exc):
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
        return token_record(row) if row is not None else None

    async def list_tokens(
        self, identity: str | None = None, include_expired: bool = False
    ) -> list[TokenRecord]:
        query = select(tokens).order_by(tokens.c.issued_at.desc(), tokens.c.token_ref)
        if identity is not None:
            query = query.where(tokens.c.identity == identity)
        if not include_expired:
            query = query.where(tokens.c.expires_at > datetime.now(UTC))
        with self._errors("listing tokens"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query)).all()
        return [token_record(row) for row in rows]

    async def revoked_among(self, token_refs: Collection[str]) -> dict[str, TokenRecord]:
        refs = sorted(set(token_refs))
        found: dict[str, TokenRecord] = {}
        with self._errors("looking up revoked tokens"):
            async with self._engine.connect() as conn:
                # Chunked only past what both drivers take as bound parameters.
                for start in range(0, len(refs), _MAX_IN_LIST):
                    rows = (
                        await conn.execute(
                            select(tokens).where(
                                tokens.c.token_ref.in_(refs[start : start + _MAX_IN_LIST]),
                                tokens.c.revoked_at.is_not(None),
                            )
                        )
                    ).all()
                    for row in rows:
                        record = token_record(row)
                        found[record.token_ref] = record
        return found

    async def revoke_token(self, ref_prefix: str, reason: str | None) -> TokenRecord:
        prefix = ref_prefix.strip().lower()
        if len(prefix) < MIN_PREFIX:
            raise StoreError(
                f"token ref {ref_prefix!r} is too short; give at least {MIN_PREFIX} characters "
                f"(see: pathwarden token list)"
            )
        with self._errors(f"revoking token {prefix}"):
            async with self._writer.begin() as conn:
                rows = (
                    await conn.execute(
                        select(tokens)
                        .where(tokens.c.token_ref.startswith(prefix, autoescape=True))
                        .order_by(tokens.c.token_ref)
                        .limit(_AMBIGUITY_SHOWN + 1)
                    )
                ).all()
                _require_unique("token", prefix, [row.token_ref for row in rows])
                record = token_record(rows[0])
                if record.revoked:
                    return record
                revoked_at = datetime.now(UTC)
                await conn.execute(
                    tokens.update()
                    .where(tokens.c.token_ref == record.token_ref)
                    .values(revoked_at=revoked_at, revoked_reason=reason)
                )
        return TokenRecord(
            token_ref=record.token_ref,
            identity=record.identity,
            issued_at=record.issued_at,
            expires_at=record.expires_at,
            connections=record.connections,
            claims=record.claims,
            revoked_at=revoked_at,
            revoked_reason=reason,
        )

    # -- sessions and statements ---------------------------------------------

    async def upsert_sessions(self, records: Sequence[SessionRecord]) -> None:
        if not records:
            return
        # One multi-row INSERT .. ON CONFLICT may not touch a row twice
        # (PostgreSQL raises CardinalityViolation), so keep the last per id.
        latest = {record.id: session_row(record) for record in records}
        insert = pg_insert(sessions) if not self._target.is_sqlite else sqlite_insert(sessions)
        stmt = insert.on_conflict_do_update(
            index_elements=[sessions.c.id],
            set_={
                column.name: (
                    # A session's end, once stored, is never undone by a stale row.
                    func.coalesce(insert.excluded[column.name], column)
                    if column.name in ("ended_at", "end_reason")
                    else insert.excluded[column.name]
                )
                for column in sessions.columns
                if not column.primary_key
            },
        )
        with self._errors(f"storing {len(latest)} session(s)"):
            async with self._writer.begin() as conn:
                await conn.execute(stmt, list(latest.values()))

    async def insert_statements(self, records: Sequence[StatementRecord]) -> None:
        if not records:
            return
        # The audit hot path: one driver-level executemany per batch. SQLAlchemy's
        # per-row parameter processing cost ~15 us a row; these tuples ~2 us.
        sqlite = self._target.is_sqlite
        sql = INSERT_STATEMENTS_SQLITE if sqlite else INSERT_STATEMENTS_PG
        rows = [statement_tuple(record, sqlite) for record in records]
        hint = "; statements can be stored only after their session (upsert_sessions first)"
        with self._errors(f"storing {len(records)} statement(s)", integrity_hint=hint):
            if sqlite and self._insert_inline(sql, rows):
                return
            async with self._writer.begin() as conn:
                await conn.exec_driver_sql(sql, rows)

    def _insert_inline(self, sql: str, rows: list[tuple[Any, ...]]) -> bool:
        """Write a statement batch on the calling thread; False if the database is busy.

        A batch costs SQLite a few microseconds a row. Handing it to aiosqlite's
        thread instead makes the two threads trade the GIL around every row,
        which costs the event loop far more (measured: ~20 us per statement and
        a futex round trip per relayed query). A short busy timeout keeps a
        competing writer (the CLI revoking a token) from stalling the loop; the
        batch then goes the threaded way.
        """
        database = self._target.url.database
        if not database or database == ":memory:":
            return False
        conn = self._inline
        if conn is None:
            conn = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 50")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._inline = conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return False
            raise
        try:
            conn.executemany(sql, rows)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return True

    async def list_sessions(
        self,
        *,
        identity: str | None = None,
        connection: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[SessionRecord]:
        if limit < 1:
            raise StoreError(f"limit must be at least 1, got {limit}")
        query = (
            select(sessions)
            .order_by(sessions.c.started_at.desc(), sessions.c.id.desc())
            .limit(limit)
        )
        if identity is not None:
            query = query.where(sessions.c.identity == identity)
        if connection is not None:
            query = query.where(sessions.c.connection == connection)
        if since is not None:
            query = query.where(sessions.c.started_at >= since)
        with self._errors("listing sessions"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query)).all()
        return [session_record(row) for row in rows]

    async def statement_counts(self, session_ids: Sequence[str]) -> dict[str, int]:
        counts = dict.fromkeys(session_ids, 0)
        ids = list(counts)
        with self._errors("counting statements"):
            async with self._engine.connect() as conn:
                # Chunked to stay well inside SQLite's bound-parameter limit.
                for start in range(0, len(ids), 500):
                    query = (
                        select(statements.c.session_id, func.count())
                        .where(statements.c.session_id.in_(ids[start : start + 500]))
                        .group_by(statements.c.session_id)
                    )
                    for session_id, count in (await conn.execute(query)).all():
                        counts[session_id] = count
        return counts

    async def get_session(self, id_or_prefix: str) -> SessionRecord | None:
        with self._errors(f"looking up session {id_or_prefix}"):
            async with self._engine.connect() as conn:
                row = (
                    await conn.execute(select(sessions).where(sessions.c.id == id_or_prefix))
                ).first()
                if row is not None:
                    return session_record(row)
                if len(id_or_prefix) < MIN_PREFIX:
                    return None
                rows = (
                    await conn.execute(
                        select(sessions)
                        .where(sessions.c.id.startswith(id_or_prefix, autoescape=True))
                        .order_by(sessions.c.id)
                        .limit(_AMBIGUITY_SHOWN + 1)
                    )
                ).all()
        if not rows:
            return None
        _require_unique("session", id_or_prefix, [row.id for row in rows])
        return session_record(rows[0])

    async def list_statements(self, session_id: str) -> list[StatementRecord]:
        query = (
            select(statements)
            .where(statements.c.session_id == session_id)
            .order_by(statements.c.seq)
        )
        with self._errors(f"listing statements of session {session_id}"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query)).all()
        return [statement_record(row) for row in rows]

    # -- error mapping --------------------------------------------------------

    @contextlib.contextmanager
    def _errors(
        self, action: str, *, opening: bool = False, integrity_hint: str = ""
    ) -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except CommandError as exc:
            # Typically the database was migrated by a newer pathwarden.
            raise StoreError(
                f"cannot open {self.display}: schema migration failed: "
                f"{self._target.mask(str(exc))}; is this pathwarden older than the one "
                f"that last used the store?"
            ) from None
        except (SQLAlchemyError, sqlite3.Error, OSError, ValueError) as exc:
            reason = self._target.mask(_reason(exc))
            if _unreachable(exc) and not self._target.is_sqlite:
                during = "" if opening else f" while {action}"
                raise StoreError(f"{self.display} unreachable{during}: {reason}") from None
            if opening:
                raise StoreError(f"cannot open {self.display}: {reason}") from None
            integrity = isinstance(exc, IntegrityError | sqlite3.IntegrityError)
            hint = integrity_hint if integrity else ""
            raise StoreError(f"{action} failed on {self.display}: {reason}{hint}") from None


def _upgrade_to_head(connection: Connection) -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _reason(exc: BaseException) -> str:
    # SQLAlchemy's own str() appends the SQL and its parameters (which may be
    # audit text); the driver's message is what explains the failure.
    orig = getattr(exc, "orig", None)
    source = orig if isinstance(orig, BaseException) else exc
    if isinstance(source, OSError) and source.strerror:
        return source.strerror
    message = " ".join(str(source).split())
    return message or type(source).__name__


def _unreachable(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and (
        exc.connection_invalidated or type(exc.orig).__name__ == "OperationalError"
    )


def _require_unique(kind: str, prefix: str, matches: Sequence[str]) -> None:
    if not matches:
        raise NotFound(f"no {kind} id starts with {prefix!r}")
    if len(matches) > 1:
        shown = ", ".join(matches[:_AMBIGUITY_SHOWN])
        more = ", ..." if len(matches) > _AMBIGUITY_SHOWN else ""
        raise AmbiguousPrefix(
            f"{kind} id prefix {prefix!r} matches several: {shown}{more}; give more characters"
        )
