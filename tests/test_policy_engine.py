"""Specification of the policy engine: verdicts, precedence, explanations, the decision cache.

Actions are built by hand here; tests/test_policy_cli.py runs the real classifier.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import pytest

from pathwarden.model import (
    Action,
    ConnectionRef,
    Decision,
    Identity,
    Operation,
    Protocol,
    Verdict,
)
from pathwarden.policy import PolicyConfig, PolicyEngine, describe_action
from pathwarden.proxy.pipeline import Authorizer, PassThroughClassifier, Pipeline

SPEC_POLICY: dict[str, Any] = {
    "name": "test-readonly",
    "identities": ["ci-test", "group:ci", {"claims": {"repository": "acme/*",
                                                      "ref": "refs/heads/main"}}],
    "connections": ["test-db", {"labels": {"env": "test"}}],
    "allow": ["read"],
    "require_approval": ["ddl", {"write": {"tables": ["billing.*"]}},
                         {"delete": {"without_where": True}}],
    "deny": [{"ddl": {"kinds": ["drop_database", "drop_schema"]}}, "privilege",
             {"function": ["pg_terminate_backend", "lo_export"]}],
}
DEPLOY_POLICY: dict[str, Any] = {
    "name": "deploy-writes",
    "identities": ["ci-deploy"],
    "connections": ["*"],
    "allow": ["read", "write", "ddl"],
    "require_approval": [{"ddl": {"kinds": ["drop_table"]}}],
    "deny": [{"ddl": {"kinds": ["drop_database", "drop_schema"]}}],
}


def policies(*raw: Mapping[str, Any]) -> list[PolicyConfig]:
    return [PolicyConfig.model_validate(p) for p in raw]


def engine(*raw: Mapping[str, Any], cache_size: int = 4096) -> PolicyEngine:
    return PolicyEngine(policies(*(raw or (SPEC_POLICY,))), version=1, cache_size=cache_size)


def act(action: str, kind: str, *tables: str, functions: Sequence[str] = (),
        flags: Sequence[str] = (), text: str = "", **objects: tuple[str, ...]) -> Action:
    objs: dict[str, tuple[str, ...]] = dict(objects)
    if tables:
        objs["tables"] = tuple(tables)
    if functions:
        objs["functions"] = tuple(functions)
    return Action(action, kind, MappingProxyType(objs), frozenset(flags), text)


def op(*actions: Action, identity: str = "ci-test", groups: Sequence[str] = (),
       connection: str = "test-db", conn_labels: Mapping[str, str] | None = None,
       claims: Mapping[str, str] | None = None, unclassified: str | None = None,
       seq: int = 1) -> Operation:
    return Operation(
        session_id="s1", seq=seq,
        identity=Identity(identity, tuple(groups), claims=MappingProxyType(dict(claims or {}))),
        connection=ConnectionRef(connection, Protocol.POSTGRES,
                                 MappingProxyType(dict(conn_labels or {}))),
        protocol=Protocol.POSTGRES, kind="query", text="...", actions=tuple(actions),
        unclassified=unclassified)


SELECT = act("read", "select", "public.users")
DELETE = act("write", "delete", "public.users")
BEGIN = act("transaction", "begin")


# -- the basic verdicts ---------------------------------------------------------------


def test_read_is_allowed_and_explained() -> None:
    decision = engine().decide(op(SELECT))
    assert decision == Decision(
        Verdict.ALLOW,
        "select on public.users: allowed for ci-test by policy test-readonly rule allow[0] (read)",
        policy="test-readonly", rule="allow[0]")


def test_write_without_a_rule_is_denied_by_default() -> None:
    decision = engine().decide(op(DELETE))
    assert decision.verdict is Verdict.DENY
    assert decision.reason == ("delete on public.users: no rule of policy test-readonly allows "
                               "write for ci-test (default deny)")
    assert decision.policy == "test-readonly"
    assert decision.rule is None


def test_deny_rule_explains_itself() -> None:
    decision = engine().decide(op(act("ddl", "drop_schema", schema=("app",))))
    assert decision.verdict is Verdict.DENY
    assert decision.reason == ("drop_schema: denied for ci-test by policy test-readonly rule "
                               "deny[0] ({ddl: {kinds: [drop_database, drop_schema]}})")
    assert (decision.policy, decision.rule) == ("test-readonly", "deny[0]")


def test_approval_reason_says_approval_is_required() -> None:
    decision = engine().decide(op(act("ddl", "create_table", "public.t")))
    assert decision.verdict is Verdict.APPROVE
    assert decision.reason == ("create_table on public.t: approval required for ci-test by "
                               "policy test-readonly rule require_approval[0] (ddl)")
    assert decision.rule == "require_approval[0]"


def test_approval_by_table_and_by_flag() -> None:
    e = engine()
    billing = e.decide(op(act("write", "update", "billing.invoices")))
    assert (billing.verdict, billing.rule) == (Verdict.APPROVE, "require_approval[1]")
    wipe = e.decide(op(act("write", "delete", "public.users", flags=["without_where"])))
    assert (wipe.verdict, wipe.rule) == (Verdict.APPROVE, "require_approval[2]")


def test_function_deny_applies_whatever_the_class() -> None:
    e = engine()
    call = e.decide(op(act("function", "call_pg_terminate_backend",
                           functions=["pg_terminate_backend"])))
    assert (call.verdict, call.rule) == (Verdict.DENY, "deny[2]")
    inside_a_read = e.decide(op(act("read", "select", "pg_catalog.pg_stat_activity",
                                    functions=["pg_catalog.lo_export"])))
    assert (inside_a_read.verdict, inside_a_read.rule) == (Verdict.DENY, "deny[2]")


def test_privilege_is_denied() -> None:
    decision = engine().decide(op(act("privilege", "set_role")))
    assert (decision.verdict, decision.rule) == (Verdict.DENY, "deny[1]")
    assert decision.reason.startswith("set_role: denied for ci-test by policy test-readonly")


def test_unknown_actions_are_denied_unless_named() -> None:
    decision = engine().decide(op(act("unknown", "CreateFdwStmt")))
    assert decision.reason == ("CreateFdwStmt: no rule of policy test-readonly allows unknown "
                               "statement kind CreateFdwStmt for ci-test (default deny)")
    named = {**SPEC_POLICY, "allow": ["read", {"unknown": {"kinds": ["CreateFdwStmt"]}}]}
    assert engine(named).decide(op(act("unknown", "CreateFdwStmt"))).verdict is Verdict.ALLOW


def test_allow_rule_near_miss_is_explained() -> None:
    narrow = {**SPEC_POLICY, "allow": ["read", {"write": {"tables": ["staging.*"]}}]}
    e = engine(narrow)
    assert e.decide(op(act("write", "insert", "staging.t"))).verdict is Verdict.ALLOW
    decision = e.decide(op(act("write", "insert", "staging.t", "public.users")))
    assert decision.verdict is Verdict.DENY
    assert decision.reason == (
        "insert on staging.t, public.users: no rule of policy test-readonly allows write for "
        "ci-test (default deny); test-readonly allow[1] ({write: {tables: [staging.*]}}) does "
        "not cover public.users")


# -- who and where ---------------------------------------------------------------------


def test_no_applicable_policy_is_default_deny_naming_identity_and_connection() -> None:
    decision = engine().decide(op(SELECT, identity="ci-deploy", connection="prod-db"))
    assert decision.verdict is Verdict.DENY
    assert decision.reason == ("no policy applies to identity ci-deploy on connection prod-db "
                               "(default deny); add them to a policy's identities and "
                               "connections")
    assert decision.policy is None


def test_policy_applies_by_group_claims_and_labels() -> None:
    e = engine()
    assert e.decide(op(SELECT, identity="other", groups=["ci"])).allowed
    assert not e.decide(op(SELECT, identity="other", groups=["cid"])).allowed
    main = {"repository": "acme/api", "ref": "refs/heads/main"}
    assert e.decide(op(SELECT, identity="gh", claims=main)).allowed
    assert not e.decide(op(SELECT, identity="gh",
                           claims={**main, "ref": "refs/heads/feature"})).allowed
    assert e.decide(op(SELECT, connection="db2", conn_labels={"env": "test"})).allowed
    assert not e.decide(op(SELECT, connection="db2", conn_labels={"env": "prod"})).allowed


def test_star_matches_everyone_everywhere() -> None:
    star = {"name": "all", "identities": ["*"], "connections": ["*"], "allow": ["read"]}
    assert engine(star).decide(op(SELECT, identity="x", connection="y")).allowed


# -- precedence across policies ---------------------------------------------------------


def test_deny_in_one_policy_beats_allow_in_another() -> None:
    allow_all = {"name": "a", "identities": ["*"], "connections": ["*"],
                 "allow": ["read", "write", "privilege"]}
    deny = {"name": "b", "identities": ["group:ci"], "connections": ["*"],
            "deny": [{"delete": {"without_where": True}}]}
    e = engine(allow_all, deny)
    wipe = act("write", "delete", "public.users", flags=["without_where"])
    assert e.decide(op(wipe, groups=["ci"])).verdict is Verdict.DENY
    assert e.decide(op(wipe, groups=["ci"])).policy == "b"
    assert e.decide(op(wipe, groups=["other"])).verdict is Verdict.ALLOW


def test_approval_in_one_policy_beats_allow_in_another() -> None:
    allow = {"name": "a", "identities": ["*"], "connections": ["*"], "allow": ["ddl"]}
    approve = {"name": "b", "identities": ["*"], "connections": ["*"],
               "require_approval": [{"ddl": {"tables": ["billing.*"]}}]}
    e = engine(allow, approve)
    assert e.decide(op(act("ddl", "alter_table", "billing.invoices"))).verdict is Verdict.APPROVE
    assert e.decide(op(act("ddl", "alter_table", "public.t"))).verdict is Verdict.ALLOW


def test_deny_beats_approval_within_a_policy() -> None:
    decision = engine().decide(op(act("ddl", "drop_database")))
    assert (decision.verdict, decision.rule) == (Verdict.DENY, "deny[0]")


def test_rules_are_consulted_in_policy_order_for_the_explanation() -> None:
    first = {"name": "first", "identities": ["*"], "connections": ["*"], "allow": ["select"]}
    second = {"name": "second", "identities": ["*"], "connections": ["*"], "allow": ["read"]}
    assert engine(first, second).decide(op(SELECT)).policy == "first"
    assert engine(second, first).decide(op(SELECT)).policy == "second"


# -- plumbing ----------------------------------------------------------------------------


def test_transaction_and_session_plumbing_is_allowed_when_something_is_allowed() -> None:
    e = engine()
    decision = e.decide(op(BEGIN))
    assert decision == Decision(
        Verdict.ALLOW, "begin: transaction control allowed for ci-test (policy test-readonly "
        "allows statements here)", policy="test-readonly", rule="plumbing")
    assert e.decide(op(act("session", "set", settings=("statement_timeout",)))).allowed
    assert e.decide(op(act("session", "set_search_path", search_path=("app",)))).allowed


def test_plumbing_is_denied_when_no_applicable_policy_allows_anything() -> None:
    only_deny = {"name": "lock", "identities": ["*"], "connections": ["*"], "deny": ["write"],
                 "require_approval": ["ddl"]}
    decision = engine(only_deny).decide(op(BEGIN))
    assert decision.verdict is Verdict.DENY
    assert decision.reason == ("begin: no rule of policy lock allows transaction for ci-test "
                               "(default deny)")


def test_rules_still_apply_to_plumbing() -> None:
    p = {**SPEC_POLICY, "deny": [{"transaction": {"flags": ["two_phase"]}},
                                 {"set": {"settings": ["session_replication_role"]}}]}
    e = engine(p)
    assert e.decide(op(act("transaction", "prepare_transaction",
                           flags=["two_phase"]))).verdict is Verdict.DENY
    assert e.decide(op(act("session", "set",
                           settings=("session_replication_role",)))).verdict is Verdict.DENY
    assert e.decide(op(act("session", "set", settings=("work_mem",)))).allowed


# -- operations --------------------------------------------------------------------------


def test_unclassified_operation_is_denied_with_the_classifier_reason() -> None:
    decision = engine().decide(op(SELECT, unclassified="syntax error at or near \"selec\""))
    assert decision.verdict is Verdict.DENY
    assert decision.reason == ('statement could not be classified: syntax error at or near '
                               '"selec" (denied: the gateway only runs statements it '
                               'understands)')


def test_empty_query_is_allowed_only_under_some_policy() -> None:
    e = engine()
    assert e.decide(op()).verdict is Verdict.ALLOW
    assert e.decide(op(connection="prod-db")).verdict is Verdict.DENY


def test_multi_statement_deny_names_the_statement() -> None:
    stmts = (act("transaction", "begin", text="begin"),
             act("read", "select", "public.users", text="select * from users"),
             act("write", "delete", "public.users", text="delete from users where id = 1"),
             act("transaction", "commit", text="commit"))
    decision = engine().decide(op(*stmts))
    assert decision.verdict is Verdict.DENY
    assert decision.reason == (
        "statement 3 of 4 (delete from users where id = 1): delete on public.users: no rule "
        "of policy test-readonly allows write for ci-test (default deny)")


def test_deny_anywhere_beats_approval_elsewhere() -> None:
    stmts = (act("ddl", "create_table", "public.t", text="create table t ()"),
             act("privilege", "grant", text="grant all on t to public"))
    decision = engine().decide(op(*stmts))
    assert (decision.verdict, decision.rule) == (Verdict.DENY, "deny[1]")
    assert decision.reason.startswith("statement 2 of 2 (grant all on t to public): grant: ")


def test_approval_of_several_statements() -> None:
    stmts = (act("ddl", "create_table", "public.t", text="create table t ()"),
             act("read", "select", text="select 1"),
             act("ddl", "create_index", "public.t", text="create index on t (id)"))
    decision = engine().decide(op(*stmts))
    assert decision.verdict is Verdict.APPROVE
    assert decision.reason == (
        "statement 1 of 3 (create table t ()): create_table on public.t: approval required "
        "for ci-test by policy test-readonly rule require_approval[0] (ddl) (and 1 more "
        "statement(s) need approval)")


def test_all_allowed_statements_are_summarised() -> None:
    stmts = (BEGIN, SELECT, act("transaction", "commit"))
    decision = engine().decide(op(*stmts))
    assert decision.verdict is Verdict.ALLOW
    assert decision.reason == (
        "all 3 statements allowed for ci-test: begin (test-readonly plumbing); select on "
        "public.users (test-readonly allow[0]); commit (test-readonly plumbing)")
    assert (decision.policy, decision.rule) == ("test-readonly", "plumbing, allow[0]")


def test_long_allowed_operations_are_summarised_briefly() -> None:
    decision = engine().decide(op(*[act("read", "select", f"public.t{i}") for i in range(20)]))
    assert decision.allowed
    assert decision.reason.endswith("select on public.t7 (test-readonly allow[0]); and 12 more")


def test_explain_keeps_every_statement() -> None:
    explanation = engine().explain(op(BEGIN, DELETE))
    assert [a.verdict for a in explanation.actions] == [Verdict.ALLOW, Verdict.DENY]
    assert explanation.policies == ("test-readonly",)
    assert explanation.actions[1].detail == ("no rule of policy test-readonly allows write for "
                                             "ci-test (default deny)")


def test_describe_action() -> None:
    assert describe_action(SELECT) == "select on public.users"
    assert describe_action(act("session", "set", settings=("work_mem",))) == "set work_mem"
    assert describe_action(act("read", "select", *[f"s.t{i}" for i in range(6)])) == (
        "select on s.t0, s.t1, s.t2 and 3 more")


# -- protocol and pipeline -------------------------------------------------------------------


class _Audit:
    def session_started(self, record: object) -> None: ...

    def session_ended(self, record: object) -> None: ...

    def statement(self, record: object) -> None: ...


def test_engine_is_an_authorizer_in_the_pipeline() -> None:
    e = engine()
    authorizer: Authorizer = e
    assert authorizer.authorize(op(SELECT)) == e.decide(op(SELECT))
    pipeline = Pipeline(PassThroughClassifier(), e, _Audit())  # type: ignore[arg-type]
    _, decision = pipeline.decide(op(DELETE))
    assert isinstance(decision, Decision) and decision.verdict is Verdict.DENY


# -- the cache ---------------------------------------------------------------------------------


def test_cache_hits_for_the_same_request_in_another_session() -> None:
    e = engine()
    first = e.decide(op(SELECT, seq=1))
    again = e.decide(op(act("read", "select", "public.users"), seq=2))
    assert first is again
    assert (e.hits, e.misses) == (1, 1)


def test_cache_key_separates_everything_a_decision_depends_on() -> None:
    e = engine()
    main = {"repository": "acme/api", "ref": "refs/heads/main"}
    variants = [
        op(SELECT),
        op(SELECT, identity="gh", claims=main),
        op(SELECT, identity="gh", claims={**main, "ref": "refs/heads/x"}),
        op(SELECT, identity="other", groups=["ci"]),
        op(SELECT, identity="other", groups=["dev"]),
        op(SELECT, connection="db2", conn_labels={"env": "test"}),
        op(SELECT, connection="db2", conn_labels={"env": "prod"}),
        op(act("write", "delete", "public.users", flags=["without_where"])),
        op(DELETE),
        op(act("write", "delete", "billing.users")),
        op(SELECT, unclassified="parse error"),
    ]
    verdicts = [e.decide(v).verdict for v in variants]
    assert verdicts == [Verdict.ALLOW, Verdict.ALLOW, Verdict.DENY, Verdict.ALLOW, Verdict.DENY,
                        Verdict.ALLOW, Verdict.DENY, Verdict.APPROVE, Verdict.DENY,
                        Verdict.APPROVE, Verdict.DENY]
    assert [e.decide(v).verdict for v in variants] == verdicts
    assert e.misses == 10, "unclassified operations are not cached"
    assert len({e.cache_key(v) for v in variants}) == len(variants)


def test_cache_is_bounded_lru() -> None:
    e = engine(cache_size=3)
    tables = [act("read", "select", f"public.t{i}") for i in range(4)]
    for a in tables[:3]:
        e.decide(op(a))
    e.decide(op(tables[0]))  # most recently used now
    e.decide(op(tables[3]))  # evicts t1, the least recently used
    assert len(e._cache) == 3
    e.decide(op(tables[0]))
    assert e.hits == 2
    e.decide(op(tables[1]))
    assert e.misses == 5


def test_cache_can_be_disabled_and_cleared() -> None:
    off = engine(cache_size=0)
    off.decide(op(SELECT))
    off.decide(op(SELECT))
    assert (off.hits, off.misses) == (0, 0)
    on = engine()
    on.decide(op(SELECT))
    on.cache_clear()
    on.decide(op(SELECT))
    assert (on.hits, on.misses) == (0, 1)


def _per_decision_us(e: PolicyEngine, ops: Sequence[Operation], rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        for o in ops:
            e.decide(o)
    return (time.perf_counter() - start) / (rounds * len(ops)) * 1e6


def test_decision_cost(capsys: pytest.CaptureFixture[str]) -> None:
    """Cached decisions cost about a dict lookup; uncached ones a few rule tests."""
    many = [{**SPEC_POLICY, "name": f"p{i}", "identities": [f"group:g{i}"]} for i in range(20)]
    ops = [op(SELECT, claims={"repository": "acme/api", "ref": "refs/heads/main", "run": "1"}),
           op(act("write", "update", "billing.invoices", flags=["returning"])),
           op(DELETE), op(BEGIN, SELECT, act("transaction", "commit"))]
    cached = engine(SPEC_POLICY, *many)
    uncached = engine(SPEC_POLICY, *many, cache_size=0)
    _per_decision_us(cached, ops, 10)
    hit = min(_per_decision_us(cached, ops, 2000) for _ in range(3))
    miss = min(_per_decision_us(uncached, ops, 200) for _ in range(3))
    with capsys.disabled():
        print(f"\npolicy decision: {hit:.2f} us cached, {miss:.2f} us uncached "
              f"(21 policies, 4 operations)")
    assert hit < 25, f"cached decision took {hit:.1f} us"
    assert hit < miss
