"""Specification of the `policies:` section: rule syntax, matching, and config errors."""

from __future__ import annotations

from types import MappingProxyType

import pytest
from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from pathwarden.config import ConfigError, parse_config
from pathwarden.model import Action, ConnectionRef, Identity, Protocol
from pathwarden.policy.rules import (
    ACTION_CLASSES,
    KIND_CLASS,
    PolicyConfig,
    class_of_kind,
    parse_connection_entry,
    parse_identity_entry,
    parse_rule,
    render_value,
)


def act(action: str, kind: str, *, tables: tuple[str, ...] = (),
        functions: tuple[str, ...] = (), settings: tuple[str, ...] = (),
        flags: frozenset[str] = frozenset()) -> Action:
    objects = {k: v for k, v in (("tables", tables), ("functions", functions),
                                 ("settings", settings)) if v}
    return Action(action, kind, MappingProxyType(objects), flags)


def parse_error(value: object) -> str:
    with pytest.raises(ValidationError) as info:
        PolicyConfig.model_validate({"name": "p", "identities": ["*"], "connections": ["*"],
                                     "allow": [value]})
    (error,) = info.value.errors()
    return str(error["msg"])


# -- vocabulary ---------------------------------------------------------------


def test_every_kind_belongs_to_exactly_one_class() -> None:
    seen: dict[str, str] = {}
    for cls, kinds in ACTION_CLASSES.items():
        for kind in kinds:
            assert kind not in seen, f"{kind} in {cls} and {seen[kind]}"
            assert kind not in ACTION_CLASSES, "a kind must not be spelt like a class"
            seen[kind] = cls
    assert seen == KIND_CLASS


@pytest.mark.parametrize(("kind", "cls"), [
    ("delete", "write"), ("drop_schema", "ddl"), ("set_role", "privilege"),
    ("alter_system", "privilege"), ("load", "privilege"), ("do", "procedural"),
    ("copy_program", "server_io"), ("savepoint", "transaction"),
    ("set_search_path", "session"), ("vacuum", "maintenance"),
    ("call_pg_terminate_backend", "function"), ("copy_to_stdout", "read"),
    ("create_temp_table", "ddl"), ("create_table_as", "ddl"),
])
def test_kinds_of_the_spec_have_their_class(kind: str, cls: str) -> None:
    assert class_of_kind(kind) == cls


def test_unknown_kind_has_no_class() -> None:
    assert class_of_kind("delet") is None
    assert class_of_kind("call_") is None


# -- rule syntax ------------------------------------------------------------------


def test_string_rules_name_a_class_or_a_kind() -> None:
    read = parse_rule("read")
    assert (read.action, read.kind) == ("read", None)
    delete = parse_rule("delete")
    assert (delete.action, delete.kind) == ("write", "delete")
    assert str(delete) == "delete"


def test_mapping_rule_with_conditions_keeps_its_source_for_explanations() -> None:
    rule = parse_rule({"ddl": {"kinds": ["drop_database", "drop_schema"]}})
    assert rule.source == "{ddl: {kinds: [drop_database, drop_schema]}}"
    assert rule.kinds == frozenset({"drop_database", "drop_schema"})
    assert rule.matches(act("ddl", "drop_schema"), "deny")
    assert not rule.matches(act("ddl", "drop_table"), "deny")
    assert not rule.matches(act("write", "delete"), "deny")


def test_empty_conditions_mean_the_bare_key() -> None:
    assert parse_rule({"read": None}).matches(act("read", "select"), "allow")
    assert parse_rule({"read": {}}).matches(act("read", "select"), "allow")


def test_table_pattern_without_a_dot_means_any_schema() -> None:
    rule = parse_rule({"write": {"tables": ["users"]}})
    assert rule.objects == (("tables", ("*.users",)),)
    assert rule.matches(act("write", "delete", tables=("public.users",)), "deny")
    assert rule.matches(act("write", "delete", tables=("app.users",)), "deny")
    assert not rule.matches(act("write", "delete", tables=("public.users2",)), "deny")


def test_a_single_string_is_accepted_where_a_list_is_expected() -> None:
    assert parse_rule({"write": {"tables": "billing.*"}}).objects == (
        ("tables", ("billing.*",)),)


def test_table_conditions_match_any_table_in_deny_and_every_table_in_allow() -> None:
    rule = parse_rule({"write": {"tables": ["billing.*"]}})
    mixed = act("write", "insert", tables=("staging.t", "billing.invoices"))
    only_billing = act("write", "insert", tables=("billing.invoices", "billing.items"))
    assert rule.matches(mixed, "deny")
    assert rule.matches(mixed, "require_approval")
    assert not rule.matches(mixed, "allow")
    assert rule.mismatch(mixed, "allow") == "does not cover staging.t"
    assert rule.matches(only_billing, "allow")
    # An allow rule over tables never covers a statement that touches none.
    assert not rule.matches(act("write", "notify"), "allow")
    assert not rule.matches(act("write", "notify"), "deny")


def test_table_globs_are_case_sensitive_like_quoted_identifiers() -> None:
    rule = parse_rule({"read": {"tables": ["public.Users"]}})
    assert rule.matches(act("read", "select", tables=("public.Users",)), "allow")
    assert not rule.matches(act("read", "select", tables=("public.users",)), "allow")


def test_without_where_and_flags_conditions() -> None:
    rule = parse_rule({"delete": {"without_where": True}})
    assert rule.matches(act("write", "delete", flags=frozenset({"without_where"})), "deny")
    assert not rule.matches(act("write", "delete"), "deny")
    assert not rule.matches(act("write", "update", flags=frozenset({"without_where"})), "deny")
    narrow = parse_rule({"delete": {"without_where": False}})
    assert narrow.matches(act("write", "delete"), "allow")
    assert not narrow.matches(act("write", "delete", flags=frozenset({"without_where"})),
                              "allow")
    both = parse_rule({"write": {"flags": ["returning", "data_modifying_cte"]}})
    assert both.matches(act("write", "delete",
                            flags=frozenset({"returning", "data_modifying_cte", "x"})), "deny")
    assert not both.matches(act("write", "delete", flags=frozenset({"returning"})), "deny")


def test_function_shorthand_is_the_long_form() -> None:
    short = parse_rule({"function": ["pg_terminate_backend", "lo_export"]})
    long = parse_rule({"function": {"functions": ["pg_terminate_backend", "lo_export"]}})
    assert short.objects == long.objects
    assert short.any_class_functions and long.any_class_functions


def test_function_rule_in_deny_matches_whatever_the_class() -> None:
    rule = parse_rule({"function": ["pg_terminate_backend"]})
    call = act("function", "call_pg_terminate_backend", functions=("pg_terminate_backend",))
    write = act("write", "delete", tables=("public.t",),
                functions=("now", "pg_catalog.pg_terminate_backend"))
    assert rule.matches(call, "deny")
    assert rule.matches(write, "deny"), "schema-qualified calls match by last component"
    assert not rule.matches(act("read", "select", functions=("now",)), "deny")


def test_function_rule_in_allow_only_covers_function_actions_calling_listed_functions() -> None:
    rule = parse_rule({"function": ["pg_cancel_backend"]})
    call = act("function", "call_pg_cancel_backend", functions=("pg_cancel_backend",))
    assert rule.matches(call, "allow")
    # A write that happens to call the function is not allowed by a function rule.
    sneaky = act("write", "delete", tables=("public.users",), functions=("pg_cancel_backend",))
    assert not rule.matches(sneaky, "allow")
    # Every called function must be listed for an allow.
    two = act("function", "call_pg_cancel_backend",
              functions=("pg_cancel_backend", "pg_terminate_backend"))
    assert not rule.matches(two, "allow")
    assert rule.matches(two, "deny")


def test_qualified_function_patterns() -> None:
    rule = parse_rule({"function": ["dblink.dblink_exec"]})
    assert rule.matches(act("read", "select", functions=("dblink.dblink_exec",)), "deny")
    # Unqualified calls may resolve to that schema: deny errs on the safe side ...
    assert rule.matches(act("read", "select", functions=("dblink_exec",)), "deny")
    assert not rule.matches(act("read", "select", functions=("other.dblink_exec",)), "deny")
    # ... and allow does not widen to them.
    call = act("function", "call_dblink_exec", functions=("dblink_exec",))
    assert not rule.matches(call, "allow")


def test_settings_condition() -> None:
    rule = parse_rule({"set": {"settings": ["session_replication_role", "log_*"]}})
    assert rule.matches(act("session", "set", settings=("session_replication_role",)), "deny")
    assert rule.matches(act("session", "set", settings=("log_statement",)), "deny")
    assert not rule.matches(act("session", "set", settings=("statement_timeout",)), "deny")


def test_function_names_are_case_folded() -> None:
    rule = parse_rule({"function": ["PG_Terminate_Backend"]})
    assert rule.matches(act("function", "call_pg_terminate_backend",
                            functions=("pg_terminate_backend",)), "deny")


def test_kind_rule_with_function_kind() -> None:
    rule = parse_rule("call_pg_cancel_backend")
    assert rule.matches(act("function", "call_pg_cancel_backend"), "allow")
    assert not rule.matches(act("function", "call_pg_terminate_backend"), "allow")


def test_unknown_class_kinds_are_free_form() -> None:
    rule = parse_rule({"unknown": {"kinds": ["CreateForeignTableStmt"]}})
    assert rule.matches(act("unknown", "CreateForeignTableStmt"), "allow")


def test_render_value() -> None:
    rendered = render_value({"a": [1, True, None], "b": {"c": "d"}})
    assert rendered == "{a: [1, true, null], b: {c: d}}"


# -- rule errors ---------------------------------------------------------------------


def test_unknown_class_or_kind_lists_the_classes_and_suggests() -> None:
    msg = parse_error("delet")
    assert "unknown action class or kind 'delet'" in msg
    assert "did you mean 'delete'?" in msg
    for cls in ACTION_CLASSES:
        assert cls in msg
    assert "pathwarden policy kinds" in msg


def test_unknown_kind_in_kinds_lists_the_class_kinds() -> None:
    msg = parse_error({"write": {"kinds": ["delete", "upsert"]}})
    assert "unknown write kind 'upsert'" in msg
    assert "valid write kinds: copy_from_stdin, delete, insert" in msg


def test_kind_of_another_class_in_kinds() -> None:
    msg = parse_error({"write": {"kinds": ["select"]}})
    assert "kind 'select' belongs to class read, not write" in msg


def test_kinds_under_a_kind_is_an_error() -> None:
    assert "'delete' is already a kind" in parse_error({"delete": {"kinds": ["delete"]}})


@pytest.mark.parametrize(("rule", "expected"), [
    ({"write": {"table": ["x"]}},
     "unknown condition 'table'; did you mean 'tables'? in rule {write: {table: [x]}} "
     "(valid conditions: tables, kinds, functions, settings, without_where, flags)"),
    ({"write": {"flags": ["for_updat"]}}, "unknown flag 'for_updat'; did you mean 'for_update'?"),
    ({"delete": {"without_where": "yes"}}, "without_where must be true or false, got yes"),
    ({"write": {"tables": []}}, "tables must be a non-empty list of names, got []"),
    ({"write": {"tables": [3]}}, "tables entries must be non-empty strings, got 3"),
    ({"ddl": ["drop_table"]}, "a list after 'ddl' is only allowed as {function: [names]}"),
    ({"read": "x"}, "conditions of 'read' must be a mapping"),
    ({"read": {}, "write": {}}, "a rule is an action class or kind"),
    (42, "a rule is an action class or kind (read, delete, ...) or a one-key mapping"),
    ({"function": []}, "function names must be a non-empty list"),
])
def test_rule_errors_name_the_problem(rule: object, expected: str) -> None:
    assert expected in parse_error(rule)


# -- identities and connections -------------------------------------------------------


def ident(name: str = "ci-test", groups: tuple[str, ...] = (), **claims: str) -> Identity:
    return Identity(name, groups, labels=MappingProxyType({"stage": "test"}),
                    claims=MappingProxyType(claims))


def test_identity_entries() -> None:
    assert parse_identity_entry("*").matches(ident("anyone"))
    assert parse_identity_entry("ci-test").matches(ident())
    assert not parse_identity_entry("ci-test").matches(ident("ci-deploy"))
    assert parse_identity_entry("group:ci").matches(ident(groups=("x", "ci")))
    assert not parse_identity_entry("group:ci").matches(ident(groups=("cid",)))
    claims = parse_identity_entry(
        {"claims": {"repository": "acme/*", "ref": "refs/heads/main"}})
    assert claims.matches(ident(repository="acme/api", ref="refs/heads/main"))
    assert not claims.matches(ident(repository="acme/api", ref="refs/heads/dev"))
    assert not claims.matches(ident(repository="acme/api")), "a missing claim never matches"
    assert not claims.matches(ident(repository="evil/acme", ref="refs/heads/main"))
    labels = parse_identity_entry({"labels": {"stage": "te*"}})
    assert labels.matches(ident())
    numeric = parse_identity_entry({"claims": {"run_attempt": 1}})
    assert numeric.matches(ident(run_attempt="1"))


def test_identity_entry_combines_name_group_and_claims() -> None:
    # The deploy stage, and only when its pipeline runs from main.
    entry = parse_identity_entry({"identity": "ci-deploy",
                                  "claims": {"ref": "refs/heads/main"}})
    assert entry.matches(ident("ci-deploy", ref="refs/heads/main"))
    assert not entry.matches(ident("ci-deploy", ref="refs/heads/feature"))
    assert not entry.matches(ident("ci-test", ref="refs/heads/main"))
    grouped = parse_identity_entry({"group": "deployers", "claims": {"environment": "prod*"}})
    assert grouped.matches(ident("x", ("deployers",), environment="production"))
    assert not grouped.matches(ident("x", ("ci",), environment="production"))


@pytest.mark.parametrize(("entry", "expected"), [
    ("group:", "'group:' needs a group name"),
    ("", "must not be empty"),
    ({"claim": {"a": "b"}},
     "unknown key claim in identity entry (valid keys: identity, group, claims, labels)"),
    ({"identity": ""}, "identity must be a name"),
    ({"group": ["ci"]}, "group must be a name"),
    ({"claims": {}}, "claims must be a non-empty mapping"),
    ({"claims": {"a": ["x"]}}, "claims.a must be a string or glob"),
    (["x"], 'an identity entry is an identity name, "group:<group>", "*"'),
])
def test_identity_entry_errors(entry: object, expected: str) -> None:
    with pytest.raises(PydanticCustomError) as info:
        parse_identity_entry(entry)
    assert expected in str(info.value)


def test_connection_entries() -> None:
    conn = ConnectionRef("test-db", Protocol.POSTGRES, MappingProxyType({"env": "test"}))
    assert parse_connection_entry("*").matches(conn)
    assert parse_connection_entry("test-db").matches(conn)
    assert not parse_connection_entry("prod-db").matches(conn)
    assert parse_connection_entry({"labels": {"env": "t*"}}).matches(conn)
    assert not parse_connection_entry({"labels": {"env": "prod"}}).matches(conn)
    assert not parse_connection_entry({"labels": {"tier": "*"}}).matches(conn)
    with pytest.raises(PydanticCustomError, match="valid key: labels"):
        parse_connection_entry({"names": ["x"]})


def test_policy_needs_identities_and_connections() -> None:
    with pytest.raises(ValidationError) as info:
        PolicyConfig.model_validate({"name": "p", "identities": [], "connections": ["*"]})
    assert info.value.errors()[0]["loc"] == ("identities",)


def test_policy_round_trips_through_model_dump() -> None:
    raw = {"name": "p", "identities": ["ci-test", {"claims": {"ref": "refs/*"}}],
           "connections": ["*"], "allow": ["read", {"write": {"tables": ["t"]}}],
           "deny": [{"function": ["lo_export"]}]}
    policy = PolicyConfig.model_validate(raw)
    again = PolicyConfig.model_validate(policy.model_dump())
    assert again.allow == policy.allow and again.deny == policy.deny
    assert [e.source for e in again.identities] == ["ci-test", "{claims: {ref: refs/*}}"]


# -- in the configuration file -------------------------------------------------------

CONFIG = """\
connections:
  test-db: {host: 127.0.0.1, database: test, user: app, labels: {env: test}}
  prod-db: {host: 127.0.0.1, database: prod, user: app, labels: {env: prod}}
identities:
  ci-test: {groups: [ci]}
  ci-deploy: {groups: [ci, deployers]}
policies:
  - name: test-readonly
    identities: [ci-test, "group:ci", {claims: {repository: "acme/*"}}]
    connections: [test-db, {labels: {env: test}}]
    allow: [read]
    require_approval: [ddl, {write: {tables: [billing.*]}}, {delete: {without_where: true}}]
    deny: [{ddl: {kinds: [drop_database, drop_schema]}}, privilege,
           {function: [pg_terminate_backend, lo_export]}]
"""


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="pw.yaml")
    return str(info.value)


def test_spec_example_loads() -> None:
    config = parse_config(CONFIG, source="pw.yaml")
    (policy,) = config.policies
    assert policy.name == "test-readonly"
    assert [r.source for r in policy.deny] == [
        "{ddl: {kinds: [drop_database, drop_schema]}}", "privilege",
        "{function: [pg_terminate_backend, lo_export]}"]
    assert config.sql.side_effect_functions is None
    assert config.sql.extra_side_effect_functions == []


def test_no_policies_by_default() -> None:
    assert parse_config("{}").policies == []


def test_bad_action_name_points_at_its_line_and_column() -> None:
    text = CONFIG.replace("allow: [read]", "allow:\n      - read\n      - writ")
    assert config_error(text) == (
        "pw.yaml:13:9: policies[0].allow[1]: unknown action class or kind 'writ'; "
        "did you mean 'write'? (classes: read, write, ddl, privilege, function, procedural, "
        "server_io, transaction, session, maintenance, unknown; kinds: e.g. select, insert, "
        "delete, drop_table, set_role, call_<function>; `pathwarden policy kinds` lists them all)"
    )


def test_errors_inside_a_rule_point_at_the_value() -> None:
    text = CONFIG.replace("drop_schema]", "drop_schemas]")
    msg = config_error(text)
    assert msg.startswith("pw.yaml:13:42: policies[0].deny[0].ddl.kinds[1]: unknown ddl kind "
                          "'drop_schemas'; did you mean 'drop_schema'?"), msg


def test_bad_condition_key_points_at_its_value() -> None:
    text = CONFIG.replace("{write: {tables: [billing.*]}}", "{write: {tabels: [billing.*]}}")
    msg = config_error(text)
    assert msg.startswith("pw.yaml:12:46: policies[0].require_approval[1].write.tabels: "
                          "unknown condition 'tabels'; did you mean 'tables'?"), msg


def test_unknown_policy_field_suggests() -> None:
    msg = config_error(CONFIG.replace("    allow: [read]", "    allows: [read]"))
    assert "pw.yaml:11:5: policies[0].allows: unknown field 'allows'; did you mean 'allow'?" in msg


def test_unknown_connection_name_in_a_policy() -> None:
    msg = config_error(CONFIG.replace("connections: [test-db, {labels",
                                      "connections: [test-db, staging-db, {labels"))
    assert msg == (
        "pw.yaml:10:28: policies[0].connections[1]: unknown connection 'staging-db' in policy "
        "test-readonly; defined connections: prod-db, test-db "
        '(use {labels: {key: glob}} to match by label, "*" for all)')


def test_unknown_identity_name_in_a_policy() -> None:
    msg = config_error(CONFIG.replace("identities: [ci-test,", "identities: [ci-tset,"))
    assert msg.startswith("pw.yaml:9:18: policies[0].identities[0]: unknown identity 'ci-tset' "
                          "in policy test-readonly; defined identities: ci-deploy, ci-test"), msg


def test_unknown_identity_name_in_an_attribute_entry() -> None:
    msg = config_error(CONFIG.replace("identities: [ci-test,",
                                      "identities: [{identity: ci-tset, claims: {ref: main}},"))
    assert msg.startswith("pw.yaml:9:18: policies[0].identities[0]: unknown identity 'ci-tset' "
                          "in policy test-readonly"), msg


def test_duplicate_policy_names() -> None:
    second = """\
  - name: test-readonly
    identities: ["*"]
    connections: ["*"]
"""
    msg = config_error(CONFIG + second)
    assert msg.startswith("pw.yaml:15:11: policies[1].name: duplicate policy name "
                          "'test-readonly' (also policies[0])"), msg


def test_missing_identities_field() -> None:
    msg = config_error("policies:\n  - name: p\n    connections: ['*']\n")
    assert msg == "pw.yaml:2:5: policies[0].identities: required field is missing"


# -- sql settings ------------------------------------------------------------------------


def test_sql_settings_replace_or_extend_the_default() -> None:
    default = frozenset({"pg_terminate_backend", "lo_export"})
    extend = parse_config("sql: {extra_side_effect_functions: [App.Purge, pg_sleep]}").sql
    assert extend.effective_side_effect_functions(default) == default | {"app.purge", "pg_sleep"}
    replace = parse_config("sql: {side_effect_functions: [lo_export]}").sql
    assert replace.effective_side_effect_functions(default) == {"lo_export"}
    empty = parse_config("sql: {side_effect_functions: []}").sql
    assert empty.effective_side_effect_functions(default) == frozenset()
    assert parse_config("{}").sql.effective_side_effect_functions(default) == default


def test_sql_settings_errors() -> None:
    msg = config_error("sql:\n  extra_side_effect_functions: [ok, 'not ok']\n")
    assert msg == ("pw.yaml:2:37: sql.extra_side_effect_functions[1]: invalid function name "
                   "'not ok': use a name like pg_terminate_backend or schema.function")
    msg = config_error("sql:\n  side_effect_function: [x]\n")
    assert "did you mean 'side_effect_functions'?" in msg


def test_config_with_policies_round_trips_through_json() -> None:
    from pathwarden.config import GatewayConfig

    config = parse_config(CONFIG)
    again = GatewayConfig.model_validate_json(config.model_dump_json())
    assert again.policies == config.policies
    assert again.policies[0].identities[2].claims == (("repository", "acme/*"),)
