"""Specification of the approval service: rules, lifecycle, grants, waiting and waking.

Most tests run on a SQLite store with an injected clock; the race on a
one-time approval runs on both backends, and waking across replicas runs on
PostgreSQL with two services (two gateways) sharing one store.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import pytest
from pydantic import ValidationError

from pathwarden.approvals import (
    ApprovalError,
    ApprovalRequest,
    ApprovalService,
    GrantScope,
    RequestKind,
    RequestState,
    statement_hash,
)
from pathwarden.config.approvals import ApprovalRules, ApprovalsConfig
from pathwarden.model import (
    Action,
    ConnectionRef,
    Decision,
    Identity,
    Operation,
    Protocol,
    Verdict,
)
from pathwarden.store import SqlStore, open_store

T = TypeVar("T")
T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)

DEPLOY = Identity("ci-deploy", groups=("deployers",), claims={"run": "7"})
ALICE = Identity("alice", groups=("dba",))
BOB = Identity("bob", groups=("dba", "sre"))
CAROL = Identity("carol", groups=("sre",))
DAVE = Identity("dave", groups=("security",))
MALLORY = Identity("mallory", groups=("dev",))
PROD = ConnectionRef("prod-db", Protocol.POSTGRES)
HELD = Decision(Verdict.APPROVE, "approval required for ci-deploy by policy prod rule "
                "require_approval[0] (ddl)", policy="prod", rule="require_approval[0]")


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def operation(text: str = "alter table public.users add column x int", *,
              identity: Identity = DEPLOY, action: str = "ddl", kind: str = "alter_table",
              tables: tuple[str, ...] = ("public.users",)) -> Operation:
    act = Action(action, kind, MappingProxyType({"tables": tables}))
    return Operation(session_id="s1", seq=1, identity=identity, connection=PROD,
                     protocol=Protocol.POSTGRES, kind="query", text=text, action=action,
                     resources=tables, actions=(act,))


def config(**rules: Any) -> ApprovalsConfig:
    base: dict[str, Any] = {"approvers": ["group:dba", "carol"]}
    base.update(rules)
    return ApprovalsConfig(rules=ApprovalRules(**base), base_url="https://gw.example.com",
                           poll_interval=timedelta(milliseconds=50))


def run(body: Callable[[ApprovalService, FakeClock], Awaitable[T]], tmp_path: Path,
        cfg: ApprovalsConfig | None = None, url: str | None = None,
        notify: Any = None) -> T:
    async def main() -> T:
        store = await open_store(url or f"sqlite:///{tmp_path / 'pw.db'}")
        clock = FakeClock()
        service = ApprovalService(store, cfg or config(), clock=clock, notify=notify)
        try:
            return await body(service, clock)
        finally:
            await service.stop()
            await store.close()

    return asyncio.run(main())


async def pending_request(svc: ApprovalService) -> ApprovalRequest:
    """The first pending request, once a held operation has made one."""
    for _ in range(500):
        pending = await svc.list(state="pending")
        if pending:
            return pending[0]
        await asyncio.sleep(0.01)
    raise AssertionError("no pending request appeared")


def pg_url(pg_server: Any) -> str:
    name = f"pw_appsvc_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    return str(pg_server.dsn(user="postgres", dbname=name))


# -- configuration ------------------------------------------------------------------


def test_config_defaults_and_per_policy_rules() -> None:
    cfg = ApprovalsConfig.model_validate({
        "rules": {"approvers": ["group:dba"]},
        "policies": {"prod": {"approvers": ["group:dba", "group:sre"], "required": 2,
                              "distinct_groups": True, "max_grant": "1h"}},
        "base_url": "https://gw.example.com/",
    })
    assert cfg.rules.request_ttl == timedelta(hours=1)
    assert cfg.rules.wait_timeout == timedelta(minutes=10)
    assert cfg.rules.max_grant == timedelta(hours=4)
    assert not cfg.rules.allow_self_approval
    assert cfg.rules_for("prod").required == 2
    assert cfg.rules_for("other") is cfg.rules
    assert cfg.link(17) == "https://gw.example.com/approvals/17"
    assert ApprovalsConfig().rules.approvers == []


@pytest.mark.parametrize(("rules", "message"), [
    ({"approvers": ["group:"]}, "needs a group name"),
    ({"approvers": ["*"]}, "not an approver"),
    ({"approvers": ["alice"], "required": 2}, "only 1 identities"),
    ({"approvers": ["group:dba", "alice"], "required": 2, "distinct_groups": True},
     "at least 2 approver groups"),
    ({"approvers": ["alice"], "wait_timeout": "soon"}, "invalid duration"),
    ({"approvers": ["alice"], "quorum": 2}, "Extra inputs"),
])
def test_config_refuses_rules_that_cannot_work(rules: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ApprovalRules.model_validate(rules)


# -- requests and votes -------------------------------------------------------------


def test_one_approval_approves_and_the_approval_is_used_once(tmp_path: Path) -> None:
    async def body(svc: ApprovalService, clock: FakeClock) -> None:
        op = operation()
        assert await svc.check(op, HELD) is None
        request = await svc.request_for(op, HELD)
        assert (request.id, request.state, request.kind) == (
            1, RequestState.PENDING, RequestKind.OPERATION)
        assert request.operation is not None
        assert request.operation.statement_hash == statement_hash(op)
        assert request.requester_claims == {"run": "7"}
        assert request.expires_at == T0 + timedelta(hours=1)

        clock.advance(minutes=2)
        decided = await svc.vote(request.id, ALICE, True, "looks fine")
        assert decided.state is RequestState.APPROVED
        assert [(v.approver, v.approve, v.comment, v.at) for v in decided.votes] == [
            ("alice", True, "looks fine", T0 + timedelta(minutes=2))]
        assert (decided.decided_by, decided.decided_at) == ("alice", clock.now)

        allowed = await svc.check(op, HELD)
        assert allowed is not None
        assert allowed.verdict is Verdict.ALLOW
        assert "approved once by alice (request 1)" in allowed.reason
        assert allowed.rule == "approval 1"
        assert await svc.check(op, HELD) is None
        used = await svc.get(1)
        assert used is not None
        assert used.state is RequestState.USED

    run(body, tmp_path)


def test_the_approval_binds_the_exact_statement_identity_and_connection(tmp_path: Path) -> None:
    async def body(svc: ApprovalService, _: FakeClock) -> None:
        request = await svc.request_for(operation("delete from t where id = 1"), HELD)
        await svc.vote(request.id, ALICE, True)
        assert await svc.check(operation("delete from t where id = 2"), HELD) is None
        other = operation("delete from t where id = 1", identity=Identity("ci-build"))
        assert await svc.check(other, HELD) is None
        # Whitespace around the statement is not part of it.
        assert await svc.check(operation("  delete from t where id = 1\n"), HELD) is not None

    run(body, tmp_path)


def test_check_ignores_decisions_that_do_not_need_approval(tmp_path: Path) -> None:
    async def body(svc: ApprovalService, _: FakeClock) -> None:
        op = operation()
        await svc.vote((await svc.request_for(op, HELD)).id, ALICE, True)
        denied = Decision(Verdict.DENY, "no")
        assert await svc.check(op, denied) is None
        assert await svc.resolve(op, denied) is denied

    run(body, tmp_path)


def test_n_of_m_needs_n_distinct_approvers(tmp_path: Path) -> None:
    async def body(svc: ApprovalService, _: FakeClock) -> None:
        request = await svc.request_for(operation(), HELD)
        first = await svc.vote(request.id, ALICE, True)
        assert first.state is RequestState.PENDING
        with pytest.raises(ApprovalError, match="alice has already voted on request 1") as err:
            await svc.vote(request.id, ALICE, True)
        assert err.value.code == "duplicate_vote"
        second = await svc.vote(request.id, CAROL, True)
        assert second.state is RequestState.APPROVED
        assert second.outcome == "approved by alice, carol"

    run(body, tmp_path, config(required=2))


def test_distinct_groups_needs_approvals_from_different_groups(tmp_path: Path) -> None:
    cfg = config(approvers=["group:dba", "group:sre", "group:security"], required=2,
                 distinct_groups=True)

    async def body(svc: ApprovalService, _: FakeClock) -> None:
        request = await svc.request_for(operation(), HELD)
        await svc.vote(request.id, ALICE, True)  # dba
        # Bob is in dba and sre: credited to sre, since alice needs dba.
        after_bob = await svc.vote(request.id, BOB, True)
        assert after_bob.state is RequestState.APPROVED

        other = await svc.request_for(operation("drop table x"), HELD)
        await svc.vote(other.id, ALICE, True)
        same_group = Identity("erin", groups=("dba",))
        still = await svc.vote(other.id, same_group, True)
        assert still.state is RequestState.PENDING  # two dba approvals count once
        assert (await svc.vote(other.id, DAVE, True)).state is RequestState.APPROVED

    run(body, tmp_path, cfg)


def test_the_requester_cannot_approve_its_own_request(tmp_path: Path) -> None:
    requester = Identity("alice", groups=("dba",))

    async def body(svc: ApprovalService, _: FakeClock) -> None:
        request = await svc.request_for(operation(identity=requester), HELD)
        with pytest.raises(ApprovalError, match="alice may not approve request 1: it is "
                           "alice's own request") as err:
            await svc.vote(request.id, requester, True)
        assert err.value.code == "self_approval"
        # Another identity of the same person is someone else: only names are compared.
        assert (await svc.vote(request.id, BOB, True)).state is RequestState.APPROVED

    run(body, tmp_path)


def test_self_approval_when_allowed(tmp_path: Path) -> None:
    async def body(svc: ApprovalService, _: FakeClock) -> None:
        request = await svc.request_for(operation(identity=ALICE), HELD)
        assert (await svc.vote(request.id, ALICE, True)).state is RequestState.APPROVED

    run(body, tmp_path, config(allow_self_approval=True))


def test_an_unauthorised_approver_is_refused_naming_the_approvers(tmp_path: Path) -> None:
    async def body(svc: ApprovalService, _: FakeClock) -> None:
        request = await svc.request_for(operation(), HELD)
        with pytest.raises(ApprovalError, match="mallory may not approve request 1: "
                           "approvers are group:dba, carol") as err:
            await svc.vote(request.id, MALLORY, True)
        assert err.value.code == "not_approver"
        with pytest.raises(ApprovalError, match="mallory may not approve"):
            await svc.vote(request.id, MALLORY, False)
        unchanged = await svc.get(request.id)
        assert unchanged is not None
        assert unchanged.votes == ()

    run(body, tmp_path)


def test_per_policy_rules_replace_the_defaults(tmp_path: Path) -> None:
    cfg = ApprovalsConfig(rules=ApprovalRules(approvers=["carol"]),
                          policies={"prod": ApprovalRules(approvers=["dave"])})

    async def body(svc: ApprovalService, _: FakeClock) -> None:
        request = await svc.request_for(operation(), HELD)
        with pytest.raises(ApprovalError, match="approvers are dave"):
            await svc.vote(request.id, CAROL, True)
        assert (await svc.vote(request.id, DAVE, True)).state is RequestState.APPROVED

    run(body, tmp_path, cfg)


def test_one_deny_ends_the_request(tmp_path: Path) -> None:
    async def body(svc: ApprovalService, _: FakeClock) -> None:
        request = await svc.request_for(operation(), HELD)
        await svc.vote(request.id, ALICE, True)
        denied = await svc.vote(request.id, CAROL, False, "not during the freeze")
        assert denied.state is RequestState.DENIED
        assert denied.outcome == "denied by carol: not during the freeze"
        assert [(v.approver, v.approve) for v in denied.votes] == [
            ("alice", True), ("carol", False)]
        with pytest.raises(ApprovalError, match="request 1 is denied by carol already") as err:
            await svc.vote(request.id, BOB, True)
        assert err.value.code == "not_pending"
        assert await svc.check(operation(), HELD) is None
        refused = await svc.resolve(operation(), HELD, timeout=0.05)
        # The denied request is over: a new attempt is a new request.
        assert "approval request 2" in refused.reason

    run(body, tmp_path, config(required=2))


def test_pending_requests_expire(tmp_path: Path) -> None:
    async def body(svc: ApprovalService, clock: FakeClock) -> None:
        request = await svc.request_for(operation(), HELD)
        clock.advance(minutes=59)
        assert await svc.expire_due() == []
        clock.advance(minutes=1)
        with pytest.raises(ApprovalError, match="request 1 is expired") as err:
            await svc.vote(request.id, ALICE, True)
        assert err.value.code == "not_pending"
        expired = await svc.get(request.id)
        assert expired is not None
        assert (expired.state, expired.decided_by) == (RequestState.EXPIRED, "expiry")
        # A new attempt gets a new request.
        assert (await svc.request_for(operation(), HELD)).id == 2

    run(body, tmp_path)


def test_an_unused_approval_expires_after_request_ttl(tmp_path: Path) -> None:
    async def body(svc: ApprovalService, clock: FakeClock) -> None:
        request = await svc.request_for(operation(), HELD)
        clock.advance(minutes=50)
        await svc.vote(request.id, ALICE, True)
        clock.advance(minutes=59)  # past the request's first expiry, within the approval's
        assert await svc.expire_due() == []
        clock.advance(minutes=1)
        assert await svc.expire_due() == [request.id]
        assert await svc.check(operation(), HELD) is None
        expired = await svc.get(request.id)
        assert expired is not None
        assert expired.state is RequestState.EXPIRED
        assert expired.decided_by == "alice"
        assert expired.outcome == "approved by alice; not used before it expired"

    run(body, tmp_path)


def test_a_retry_reuses_the_pending_request(tmp_path: Path) -> None:
    async def body(svc: ApprovalService, _: FakeClock) -> None:
        first = await svc.resolve(operation(), HELD, timeout=0.05)
        second = await svc.resolve(operation(), HELD, timeout=0.05)
        assert first.verdict is second.verdict is Verdict.DENY
        assert first.rule == second.rule == "approval 1"
        assert len(await svc.list()) == 1

    run(body, tmp_path)


def test_withdraw_by_the_requester_only(tmp_path: Path) -> None:
    async def body(svc: ApprovalService, _: FakeClock) -> None:
        request = await svc.request_for(operation(), HELD)
        with pytest.raises(ApprovalError, match="alice may not withdraw request 1") as err:
            await svc.withdraw(request.id, ALICE)
        assert err.value.code == "not_requester"
        withdrawn = await svc.withdraw(request.id, DEPLOY, "client cancelled")
        assert withdrawn.state is RequestState.WITHDRAWN
        assert withdrawn.outcome == "withdrawn by ci-deploy: client cancelled"
        with pytest.raises(ApprovalError, match="cannot be withdrawn"):
            await svc.withdraw(request.id, "ci-deploy")
        with pytest.raises(ApprovalError, match="no approval request 9"):
            await svc.withdraw(9, "ci-deploy")

    run(body, tmp_path)


def test_list_filters(tmp_path: Path) -> None:
    async def body(svc: ApprovalService, _: FakeClock) -> None:
        await svc.request_for(operation(), HELD)
        second = await svc.request_for(operation("drop table t", identity=CAROL), HELD)
        await svc.vote(second.id, ALICE, True)
        assert [r.id for r in await svc.list()] == [2, 1]
        assert [r.id for r in await svc.list(state="pending")] == [1]
        assert [r.id for r in await svc.list(identity="carol")] == [2]
        assert [r.id for r in await svc.list(connection="prod-db", kind="operation")] == [2, 1]
        assert await svc.get(42) is None

    run(body, tmp_path)


# -- grants -------------------------------------------------------------------------


def test_an_approved_grant_covers_its_scope_until_it_ends(tmp_path: Path) -> None:
    async def body(svc: ApprovalService, clock: FakeClock) -> None:
        request = await svc.request_grant(DEPLOY, PROD, GrantScope(("ddl",)),
                                          timedelta(minutes=30), "release 4.2 migration")
        assert (request.kind, request.duration) == (RequestKind.GRANT, timedelta(minutes=30))
        assert await svc.check(operation(), HELD) is None  # not approved yet
        clock.advance(minutes=10)
        approved = await svc.vote(request.id, ALICE, True)
        assert approved.grant_id is not None
        (grant,) = await svc.grants(identity="ci-deploy")
        assert (grant.starts_at, grant.ends_at) == (clock.now, clock.now + timedelta(minutes=30))

        allowed = await svc.check(operation(), HELD)
        assert allowed is not None
        assert allowed.verdict is Verdict.ALLOW
        assert f"covered by grant {grant.id} (ddl until 2026-11-26 10:40:00Z" in allowed.reason
        # Time-boxed, not one-time: it covers again, and other statements of its scope.
        assert await svc.check(operation("drop table public.old"), HELD) is not None
        write = operation("delete from public.users", action="write", kind="delete")
        assert await svc.check(write, HELD) is None  # outside the scope
        other = operation(identity=Identity("ci-build"))
        assert await svc.check(other, HELD) is None  # someone else

        clock.advance(minutes=29, seconds=59)
        assert await svc.check(operation(), HELD) is not None
        clock.advance(seconds=1)
        assert await svc.check(operation(), HELD) is None
        assert await svc.grants() == []
        assert len(await svc.grants(active=False)) == 1

    run(body, tmp_path)


def test_a_grant_naming_tables_covers_only_those_tables(tmp_path: Path) -> None:
    async def body(svc: ApprovalService, _: FakeClock) -> None:
        scope = GrantScope(("write",), ("public.orders*",))
        request = await svc.request_grant(DEPLOY, "prod-db", scope, timedelta(hours=1), "fix")
        await svc.vote(request.id, ALICE, True)
        orders = operation("delete from orders_2025", action="write", kind="delete",
                           tables=("public.orders_2025",))
        users = operation("delete from users", action="write", kind="delete",
                          tables=("public.users",))
        nothing = operation("notify x", action="write", kind="notify", tables=())
        assert await svc.check(orders, HELD) is not None
        assert await svc.check(users, HELD) is None
        assert await svc.check(nothing, HELD) is None

    run(body, tmp_path)


def test_grant_duration_is_capped_by_max_grant(tmp_path: Path) -> None:
    async def body(svc: ApprovalService, _: FakeClock) -> None:
        request = await svc.request_grant(DEPLOY, PROD, GrantScope(("ddl",)),
                                          timedelta(hours=8), "long job")
        assert request.duration == timedelta(hours=2)
        await svc.vote(request.id, ALICE, True)
        (grant,) = await svc.grants()
        assert grant.ends_at - grant.starts_at == timedelta(hours=2)
        with pytest.raises(ApprovalError, match="positive duration"):
            await svc.request_grant(DEPLOY, PROD, GrantScope(("ddl",)), timedelta(0), "x")
        with pytest.raises(ApprovalError, match="at least one action class"):
            await svc.request_grant(DEPLOY, PROD, GrantScope(()), timedelta(hours=1), "x")
        with pytest.raises(ApprovalError, match="say why"):
            await svc.request_grant(DEPLOY, PROD, GrantScope(("ddl",)), timedelta(hours=1), " ")

    run(body, tmp_path, config(max_grant="2h"))


# -- waiting ------------------------------------------------------------------------


def test_a_vote_wakes_a_waiter_in_the_same_process_at_once(tmp_path: Path) -> None:
    async def body(svc: ApprovalService, _: FakeClock) -> tuple[float, float]:
        request = await svc.request_for(operation(), HELD)
        resolved: list[float] = []

        async def waiter() -> ApprovalRequest:
            got = await svc.wait(request.id, timeout=10)
            resolved.append(time.perf_counter())
            return got

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0.2)  # parked, polling every 50 ms would be visible
        started = time.perf_counter()
        await svc.vote(request.id, ALICE, True)
        committed = time.perf_counter()
        got = await task
        assert got.state is RequestState.APPROVED
        return resolved[0] - started, resolved[0] - committed

    total, after_commit = run(body, tmp_path, config(), None)
    print(f"\nwake-up latency, same process (approve -> waiter resolved): {total * 1000:.2f} ms"
          f" ({after_commit * 1000:.2f} ms after the vote committed)")
    assert total < 0.045  # well under the 50 ms poll interval


def test_wait_times_out_with_the_request_still_pending(tmp_path: Path) -> None:
    async def body(svc: ApprovalService, _: FakeClock) -> None:
        request = await svc.request_for(operation(), HELD)
        started = time.perf_counter()
        got = await svc.wait(request.id, timeout=0.3)
        waited = time.perf_counter() - started
        assert got.state is RequestState.PENDING
        assert 0.3 <= waited < 1.0
        with pytest.raises(ApprovalError, match="no approval request 5"):
            await svc.wait(5, timeout=0.1)

    run(body, tmp_path)


def test_resolve_holds_until_approved(tmp_path: Path) -> None:
    async def body(svc: ApprovalService, _: FakeClock) -> None:
        held = asyncio.create_task(svc.resolve(operation(), HELD, timeout=5))
        await pending_request(svc)
        await svc.vote(1, ALICE, True)
        decision = await held
        assert decision.verdict is Verdict.ALLOW
        assert decision.rule == "approval 1"
        used = await svc.get(1)
        assert used is not None
        assert used.state is RequestState.USED

    run(body, tmp_path)


def test_resolve_timeout_names_the_request_and_what_to_do(tmp_path: Path) -> None:
    async def body(svc: ApprovalService, _: FakeClock) -> None:
        decision = await svc.resolve(operation(), HELD, timeout=0.1)
        assert decision.verdict is Verdict.DENY
        assert decision.rule == "approval 1"
        assert decision.reason.startswith(HELD.reason)
        assert ("approval request 1 (https://gw.example.com/approvals/1) still pending after "
                "100ms (needs 1 more approval(s) from group:dba, carol); approve with: "
                "pathwarden approve 1") in decision.reason

    run(body, tmp_path)


def test_resolve_reports_a_denial_and_a_withdrawal(tmp_path: Path) -> None:
    async def body(svc: ApprovalService, _: FakeClock) -> None:
        held = asyncio.create_task(svc.resolve(operation(), HELD, timeout=5))
        await pending_request(svc)
        await svc.vote(1, CAROL, False, "use the maintenance window")
        denied = await held
        assert denied.verdict is Verdict.DENY
        assert "approval request 1 (https://gw.example.com/approvals/1) denied by carol: " \
               "use the maintenance window" in denied.reason

        held = asyncio.create_task(svc.resolve(operation(), HELD, timeout=5))
        await pending_request(svc)
        await svc.withdraw(2, DEPLOY, "Ctrl-C")
        withdrawn = await held
        assert "withdrawn by ci-deploy: Ctrl-C" in withdrawn.reason

    run(body, tmp_path)


def test_two_sessions_holding_one_statement_share_the_request_but_not_the_use(
        tmp_path: Path) -> None:
    async def body(svc: ApprovalService, _: FakeClock) -> None:
        first = asyncio.create_task(svc.resolve(operation(), HELD, timeout=1))
        second = asyncio.create_task(svc.resolve(operation(), HELD, timeout=1))
        await pending_request(svc)
        await asyncio.sleep(0.05)
        await svc.vote(1, ALICE, True)
        decisions = await asyncio.gather(first, second)
        assert sorted(d.verdict for d in decisions) == [Verdict.ALLOW, Verdict.DENY]
        # The one that lost asked again: request 2, pending.
        assert [(r.id, r.state) for r in await svc.list()] == [
            (2, RequestState.PENDING), (1, RequestState.USED)]

    run(body, tmp_path)


def test_expiry_wakes_a_waiter(tmp_path: Path) -> None:
    async def body(svc: ApprovalService, clock: FakeClock) -> None:
        request = await svc.request_for(operation(), HELD)
        task = asyncio.create_task(svc.wait(request.id, timeout=5))
        await asyncio.sleep(0.05)
        clock.advance(hours=1)
        assert await svc.expire_due() == [request.id]
        got = await asyncio.wait_for(task, 1)
        assert got.state is RequestState.EXPIRED

    run(body, tmp_path)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_checks_use_a_one_time_approval_once(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = pg_url(request.getfixturevalue("pg_server")) if backend == "postgresql" else None

    async def body(svc: ApprovalService, _: FakeClock) -> None:
        req = await svc.request_for(operation(), HELD)
        await svc.vote(req.id, ALICE, True)
        results = await asyncio.gather(*(svc.check(operation(), HELD) for _ in range(8)))
        assert sum(r is not None for r in results) == 1

    run(body, tmp_path, url=url)


# -- notifications ------------------------------------------------------------------


def test_notifiers_hear_created_and_decided_and_cannot_break_requests(tmp_path: Path) -> None:
    heard: list[tuple[int, str, RequestState]] = []

    async def notify(request: ApprovalRequest, event: str) -> None:
        heard.append((request.id, event, request.state))
        if event == "created":
            raise ConnectionError("slack is down")
        await asyncio.sleep(0)

    async def body(svc: ApprovalService, _: FakeClock) -> None:
        request = await svc.request_for(operation(), HELD)
        await svc.request_for(operation(), HELD)  # the retry does not notify again
        await svc.vote(request.id, ALICE, True)
        await svc.drain_notifications()
        assert heard == [(1, "created", RequestState.PENDING),
                         (1, "decided", RequestState.APPROVED)]
        await svc.record_notification(request.id, "email", True)
        got = await svc.get(request.id)
        assert got is not None
        assert [(n.channel, n.state, n.last_error) for n in got.notifications] == [
            ("email", "sent", None), ("notify", "failed", "ConnectionError: slack is down")]
        await svc.record_notification(99, "email", True)  # logged, never raised

    run(body, tmp_path, notify=notify)


def test_a_hanging_notifier_does_not_hold_the_request(tmp_path: Path) -> None:
    async def notify(request: ApprovalRequest, event: str) -> None:
        await asyncio.sleep(3600)

    async def body(svc: ApprovalService, _: FakeClock) -> None:
        started = time.perf_counter()
        request = await svc.request_for(operation(), HELD)
        await svc.vote(request.id, ALICE, True)
        assert time.perf_counter() - started < 1

    run(body, tmp_path, notify=notify)


# -- across gateway replicas --------------------------------------------------------


async def _two_replicas(url: str) -> AsyncGenerator[tuple[ApprovalService, ApprovalService], None]:
    stores: list[SqlStore] = [await open_store(url), await open_store(url)]
    services = [ApprovalService(s, config()) for s in stores]
    for service in services:
        await service.start()
    try:
        yield services[0], services[1]
    finally:
        for service in services:
            await service.stop()
        for store in stores:
            await store.close()


async def _cross_latency(a: ApprovalService, b: ApprovalService,
                         rounds: int) -> list[tuple[float, float]]:
    latencies = []
    for n in range(rounds):
        request = await b.request_for(operation(f"alter table t{n} add column x int"), HELD)
        resolved: list[float] = []

        async def waiter(rid: int = request.id) -> ApprovalRequest:
            got = await b.wait(rid, timeout=10)
            resolved.append(time.perf_counter())
            return got

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0.1)
        started = time.perf_counter()
        await a.vote(request.id, ALICE, True)
        committed = time.perf_counter()
        assert (await task).state is RequestState.APPROVED
        latencies.append((resolved[0] - started, resolved[0] - committed))
    return latencies


def _ms(latencies: list[tuple[float, float]]) -> str:
    return (", ".join(f"{x * 1000:.1f}" for x, _ in latencies) + " ms (after the vote "
            "committed: " + ", ".join(f"{y * 1000:.1f}" for _, y in latencies) + " ms)")


def test_a_vote_on_one_replica_wakes_a_waiter_on_another(pg_server: Any) -> None:
    url = pg_url(pg_server)

    async def main() -> list[tuple[float, float]]:
        replicas = _two_replicas(url)
        a, b = await replicas.__anext__()
        try:
            assert a.listening
            assert b.listening
            return await _cross_latency(a, b, 5)
        finally:
            await replicas.aclose()

    latencies = asyncio.run(main())
    print(f"\nwake-up latency across replicas, PostgreSQL LISTEN/NOTIFY (approve -> waiter "
          f"resolved): {_ms(latencies)}")
    # Polling alone would take up to 5 s while listening.
    assert max(x for x, _ in latencies) < 1.0


def test_without_listen_replicas_wake_by_polling(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"

    async def main() -> list[tuple[float, float]]:
        replicas = _two_replicas(url)
        a, b = await replicas.__anext__()
        try:
            assert not b.listening
            return await _cross_latency(a, b, 3)
        finally:
            await replicas.aclose()

    latencies = asyncio.run(main())
    print(f"\nwake-up latency across replicas, SQLite polling every 50 ms: {_ms(latencies)}")
    assert max(x for x, _ in latencies) < 1.0
