"""Specification of the approvals tables, run against both backends (SQLite and PostgreSQL).

The store's guarantees hold across gateway replicas, so the races here use two
stores (two engines, as two replicas would) on one database.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from pathwarden.approvals.model import (
    ApprovalChange,
    ApprovalRequest,
    GrantScope,
    NewGrant,
    OperationDetails,
    RequestKind,
    RequestState,
    Vote,
)
from pathwarden.store import NotFound, SqlStore, StoreError, open_store

T = TypeVar("T")
T0 = datetime(2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'pathwarden.db'}"
    pg_server = request.getfixturevalue("pg_server")
    name = f"pw_appr_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    return str(pg_server.dsn(user="postgres", dbname=name))


def using(url: str, body: Callable[[SqlStore, SqlStore], Awaitable[T]]) -> T:
    """Run ``body`` with two stores on one database (two replicas)."""

    async def main() -> T:
        first = await open_store(url)
        second = await open_store(url)
        try:
            return await body(first, second)
        finally:
            await first.close()
            await second.close()

    return asyncio.run(main())


def op_request(requester: str = "ci-deploy", digest: str = "a" * 64,
               **changes: object) -> ApprovalRequest:
    request = ApprovalRequest(
        id=0, kind=RequestKind.OPERATION, state=RequestState.PENDING, requester=requester,
        connection="prod-db", created_at=T0, expires_at=T0 + timedelta(hours=1),
        requester_groups=("deployers",), requester_claims={"run": "7"}, policy="prod",
        operation=OperationDetails(
            text="alter table users add column x int", statement_hash=digest, action="ddl",
            kinds=("alter_table",), policy="prod", rule="require_approval[0]",
            decision_reason="approval required", session_id="s1", seq=3))
    return replace(request, **changes)  # type: ignore[arg-type]


def grant_request() -> ApprovalRequest:
    return ApprovalRequest(
        id=0, kind=RequestKind.GRANT, state=RequestState.PENDING, requester="alice",
        connection="prod-db", created_at=T0, expires_at=T0 + timedelta(hours=1),
        reason="incident 42", scope=GrantScope(("ddl", "write"), ("public.orders*",)),
        duration=timedelta(minutes=30))


def never(_: ApprovalRequest) -> ApprovalChange | None:
    return None


def approve_by(name: str, at: datetime = T0) -> Callable[[ApprovalRequest], ApprovalChange]:
    def change(_: ApprovalRequest) -> ApprovalChange:
        return ApprovalChange(RequestState.APPROVED, (Vote(name, True, at, "ok", ("dba",)),),
                              decided_at=at, decided_by=name, outcome=f"approved by {name}")
    return change


def test_requests_round_trip_with_sequential_ids(store_url: str) -> None:
    async def body(store: SqlStore, _other: SqlStore) -> None:
        first, created = await store.create_approval(op_request(), never)
        second, _ = await store.create_approval(grant_request(), never)
        assert created
        assert (first.id, second.id) == (1, 2)
        assert await store.get_approval(1) == first
        assert first == replace(op_request(), id=1)
        assert second.scope == GrantScope(("ddl", "write"), ("public.orders*",))
        assert second.duration == timedelta(minutes=30)
        assert await store.get_approval(99) is None

    using(store_url, body)


def test_a_retry_finds_the_pending_request_even_when_racing(store_url: str) -> None:
    async def body(a: SqlStore, b: SqlStore) -> None:
        results = await asyncio.gather(
            *(store.create_approval(op_request(), never) for store in (a, b, a, b, a, b)))
        assert len({r.id for r, _ in results}) == 1
        assert sum(created for _, created in results) == 1
        # Another statement, identity or connection is another request.
        other, created = await a.create_approval(op_request(digest="b" * 64), never)
        assert created
        assert other.id != results[0][0].id
        assert len(await a.list_approvals(state=RequestState.PENDING)) == 2

    using(store_url, body)


def test_an_expired_twin_gives_way_to_a_new_request(store_url: str) -> None:
    def expire(r: ApprovalRequest) -> ApprovalChange:
        return ApprovalChange(RequestState.EXPIRED, decided_at=T0, decided_by="expiry",
                              outcome="expired")

    async def body(store: SqlStore, _other: SqlStore) -> None:
        old, _ = await store.create_approval(op_request(), never)
        new, created = await store.create_approval(op_request(), expire)
        assert created
        assert new.id != old.id
        gone = await store.get_approval(old.id)
        assert gone is not None
        assert gone.state is RequestState.EXPIRED

    using(store_url, body)


def test_a_one_time_approval_is_used_exactly_once_across_replicas(store_url: str) -> None:
    async def body(a: SqlStore, b: SqlStore) -> None:
        request, _ = await a.create_approval(op_request(), never)
        await a.change_approval(request.id, approve_by("bob"))
        now = T0 + timedelta(minutes=1)
        results = await asyncio.gather(*(
            store.consume_approval("ci-deploy", "prod-db", "a" * 64, now)
            for store in (a, b) * 5))
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert winners[0].state is RequestState.USED
        assert winners[0].used_at == now
        assert await a.consume_approval("ci-deploy", "prod-db", "a" * 64, now) is None

    using(store_url, body)


def test_only_a_matching_unexpired_approval_is_used(store_url: str) -> None:
    async def body(store: SqlStore, _other: SqlStore) -> None:
        request, _ = await store.create_approval(op_request(), never)
        await store.change_approval(request.id, approve_by("bob"))
        now = T0 + timedelta(minutes=1)
        assert await store.consume_approval("ci-other", "prod-db", "a" * 64, now) is None
        assert await store.consume_approval("ci-deploy", "test-db", "a" * 64, now) is None
        assert await store.consume_approval("ci-deploy", "prod-db", "b" * 64, now) is None
        late = T0 + timedelta(hours=2)
        assert await store.consume_approval("ci-deploy", "prod-db", "a" * 64, late) is None
        assert await store.consume_approval("ci-deploy", "prod-db", "a" * 64, now,
                                            request_id=request.id + 1) is None
        assert await store.consume_approval("ci-deploy", "prod-db", "a" * 64, now,
                                            request_id=request.id) is not None

    using(store_url, body)


def test_votes_are_kept_once_per_approver(store_url: str) -> None:
    def vote(name: str) -> Callable[[ApprovalRequest], ApprovalChange]:
        def change(_: ApprovalRequest) -> ApprovalChange:
            return ApprovalChange(RequestState.PENDING, (Vote(name, True, T0, "", ()),))
        return change

    async def body(store: SqlStore, _other: SqlStore) -> None:
        request, _ = await store.create_approval(op_request(), never)
        after = await store.change_approval(request.id, vote("bob"))
        assert [v.approver for v in after.votes] == ["bob"]
        with pytest.raises(StoreError, match="failed"):
            await store.change_approval(request.id, vote("bob"))
        unchanged = await store.get_approval(request.id)
        assert unchanged == after
        with pytest.raises(NotFound, match="no approval request 99"):
            await store.change_approval(99, vote("bob"))

    using(store_url, body)


def test_a_refusing_change_writes_nothing(store_url: str) -> None:
    def refuse(_: ApprovalRequest) -> ApprovalChange:
        raise LookupError("no")

    async def body(store: SqlStore, _other: SqlStore) -> None:
        request, _ = await store.create_approval(op_request(), never)
        with pytest.raises(LookupError):
            await store.change_approval(request.id, refuse)
        assert await store.get_approval(request.id) == request

    using(store_url, body)


def test_an_approved_grant_request_creates_its_grant(store_url: str) -> None:
    async def body(store: SqlStore, _other: SqlStore) -> None:
        request, _ = await store.create_approval(grant_request(), never)
        scope = GrantScope(("ddl",), ("public.orders*",))
        grant = NewGrant("alice", "prod-db", scope, T0, T0 + timedelta(minutes=30))
        approved = await store.change_approval(
            request.id, lambda r: replace(approve_by("bob")(r), grant=grant))
        assert approved.state is RequestState.APPROVED
        assert approved.grant_id is not None
        (stored,) = await store.list_grants(identity="alice")
        assert (stored.id, stored.request_id, stored.scope) == (
            approved.grant_id, request.id, scope)
        active = await store.list_grants(active_at=T0 + timedelta(minutes=29))
        assert [g.id for g in active] == [stored.id]
        assert await store.list_grants(active_at=T0 + timedelta(minutes=30)) == []
        assert await store.list_grants(connection="test-db") == []

    using(store_url, body)


def test_sweep_expires_what_is_due(store_url: str) -> None:
    def expire(r: ApprovalRequest) -> ApprovalChange:
        return ApprovalChange(RequestState.EXPIRED, decided_at=T0, decided_by="expiry",
                              outcome="expired")

    async def body(store: SqlStore, _other: SqlStore) -> None:
        short, _ = await store.create_approval(
            op_request(expires_at=T0 + timedelta(minutes=5)), never)
        await store.create_approval(op_request(digest="b" * 64), never)
        assert await store.sweep_approvals(T0 + timedelta(minutes=4), expire) == []
        assert await store.sweep_approvals(T0 + timedelta(minutes=5), expire) == [short.id]
        states = {r.id: r.state for r in await store.list_approvals()}
        assert list(states.values()) == [RequestState.PENDING, RequestState.EXPIRED]

    using(store_url, body)


def test_notification_outcomes_count_attempts(store_url: str) -> None:
    async def body(store: SqlStore, _other: SqlStore) -> None:
        request, _ = await store.create_approval(op_request(), never)
        await store.record_approval_notification(request.id, "slack", False, "HTTP 500", T0)
        await store.record_approval_notification(request.id, "slack", True, None, T0)
        await store.record_approval_notification(request.id, "email", False, None, T0)
        got = await store.get_approval(request.id)
        assert got is not None
        assert [(n.channel, n.state, n.attempts, n.last_error) for n in got.notifications] == [
            ("email", "failed", 1, "failed"), ("slack", "sent", 2, None)]
        with pytest.raises(StoreError):
            await store.record_approval_notification(99, "slack", True, None, T0)

    using(store_url, body)


def test_lists_filter_and_go_newest_first(store_url: str) -> None:
    async def body(store: SqlStore, _other: SqlStore) -> None:
        await store.create_approval(op_request(), never)
        await store.create_approval(grant_request(), never)
        await store.create_approval(op_request("ci-build", "c" * 64), never)
        assert [r.id for r in await store.list_approvals()] == [3, 2, 1]
        assert [r.id for r in await store.list_approvals(requester="ci-deploy")] == [1]
        assert [r.id for r in await store.list_approvals(kind=RequestKind.GRANT)] == [2]
        assert [r.id for r in await store.list_approvals(connection="nope")] == []
        assert [r.id for r in await store.list_approvals(limit=1)] == [3]

    using(store_url, body)


def test_only_postgresql_offers_a_listen_url(store_url: str) -> None:
    async def body(store: SqlStore, _other: SqlStore) -> None:
        url = store.approvals_listen_url()
        if store.dialect == "sqlite":
            assert url is None
        else:
            assert url is not None
            assert url.startswith("postgresql://")

    using(store_url, body)
