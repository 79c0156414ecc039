"""`pathwarden policy check|test|kinds`, and the decision corpus end to end.

These run the real SQL classifier (pathwarden.policy.sql) and the policy engine, in process
through the Typer app (tests/test_cli.py covers running the installed command).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from pathwarden.cli.main import app
from pathwarden.cli.policy_cmd import PolicyCase, Simulator, load_cases, run_cases
from pathwarden.config import GatewayConfig, parse_config
from pathwarden.model import Verdict

CORPUS = Path(__file__).parent / "corpus" / "policy_decisions.yaml"

CONFIG = """\
connections:
  test-db: {host: 127.0.0.1, database: test, user: app, labels: {env: test}}
  prod-db: {host: 127.0.0.1, database: prod, user: app, labels: {env: prod}}
identities:
  ci-test: {groups: [ci]}
  ci-build: {groups: [build]}
  ci-deploy: {groups: [deployers]}
sql:
  extra_side_effect_functions: [app.purge_all]
policies:
  - name: test-readonly
    identities: [ci-test, {claims: {repository: "acme/*", ref: refs/heads/main}}]
    connections: [test-db]
    allow: [read]
  - name: deploy-writes
    identities: [ci-deploy]
    connections: ["*"]
    allow: [read, write]
    require_approval: [ddl, {write: {tables: [billing.*]}}]
    deny: [{ddl: {kinds: [drop_database, drop_schema]}}, privilege]
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "pathwarden.yaml"
    path.write_text(CONFIG)
    return path


def pw(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(app, list(args), input=input)


def check(config: Path, sql: str, *extra: str, identity: str = "ci-test",
          connection: str = "test-db") -> Result:
    return pw("policy", "check", "--config", str(config), "--identity", identity,
              "--connection", connection, *extra, sql)


# -- policy check ---------------------------------------------------------------------------


def test_check_denies_a_write_and_exits_1(config_file: Path) -> None:
    result = check(config_file, "delete from users")
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == [
        "DENY  delete on public.users — no rule of policy test-readonly allows write for "
        "ci-test (default deny)",
        "verdict: DENY (policy test-readonly)",
    ]


def test_check_allows_a_read_and_exits_0(config_file: Path) -> None:
    result = check(config_file, "select * from users")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "ALLOW select on public.users — allowed for ci-test by policy test-readonly rule "
        "allow[0] (read)",
        "verdict: ALLOW (policy test-readonly, rule allow[0])",
    ]


def test_check_needing_approval_exits_3(config_file: Path) -> None:
    result = check(config_file, "alter table users add c int", identity="ci-deploy",
                   connection="prod-db")
    assert result.exit_code == 3, result.output
    assert result.stdout.splitlines()[-1] == (
        "verdict: APPROVAL REQUIRED (policy deploy-writes, rule require_approval[0])")
    assert "approval required for ci-deploy" in result.stdout


def test_check_prints_one_line_per_statement(config_file: Path) -> None:
    result = check(config_file, "begin; insert into users values (1); drop schema app; commit",
                   identity="ci-deploy", connection="prod-db")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[:4]] == ["ALLOW", "ALLOW", "DENY", "ALLOW"]
    assert lines[2].startswith("DENY  drop_schema — denied for ci-deploy by policy "
                               "deploy-writes rule deny[0]")
    assert lines[4] == "verdict: DENY (policy deploy-writes, rule deny[0])"


def test_check_with_claims(config_file: Path) -> None:
    denied = check(config_file, "select 1", identity="ci-build")
    assert denied.exit_code == 1
    assert "no policy applies to identity ci-build on connection test-db" in denied.stdout
    allowed = check(config_file, "select 1", "--claim", "repository=acme/api",
                    "--claim", "ref=refs/heads/main", identity="ci-build")
    assert allowed.exit_code == 0, allowed.output


def test_check_unclassifiable_sql(config_file: Path) -> None:
    result = check(config_file, "selec 1")
    assert result.exit_code == 1
    assert result.stdout.startswith("DENY  (statement) — statement could not be classified: ")


def test_check_uses_the_configured_side_effect_functions(config_file: Path) -> None:
    result = check(config_file, "select app.purge_all()")
    assert result.exit_code == 1
    assert "allows function" in result.stdout


def test_check_search_path(config_file: Path) -> None:
    result = check(config_file, "insert into invoices values (1)", "--search-path",
                   "billing,public", identity="ci-deploy", connection="prod-db")
    assert result.exit_code == 3, result.output
    assert "insert on billing.invoices" in result.stdout


def test_check_reads_sql_from_a_file_and_stdin(config_file: Path, tmp_path: Path) -> None:
    sql = tmp_path / "0001.sql"
    sql.write_text("create table t (id int);\ninsert into t values (1);\n")
    result = pw("policy", "check", "--config", str(config_file), "-i", "ci-deploy",
                "-C", "prod-db", "--file", str(sql))
    assert result.exit_code == 3, result.output
    stdin = pw("policy", "check", "--config", str(config_file), "-i", "ci-test",
               "-C", "test-db", "-", input="select 1")
    assert stdin.exit_code == 0, stdin.output


def test_check_empty_query(config_file: Path) -> None:
    # A leading "-" would read as an option: "--" ends the options.
    result = pw("policy", "check", "--config", str(config_file), "-i", "ci-test",
                "-C", "test-db", "--", "-- nothing")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ALLOW (empty query) — empty query")
    nobody = check(config_file, " ", identity="ci-build")
    assert nobody.exit_code == 1
    assert nobody.stdout.startswith("DENY  (empty query) — no policy applies to identity "
                                    "ci-build on connection test-db")


@pytest.mark.parametrize(("args", "message"), [
    (["-i", "nobody", "-C", "test-db", "select 1"],
     "unknown identity 'nobody'; identities in the configuration: ci-build, ci-deploy, ci-test"),
    (["-i", "ci-test", "-C", "nowhere", "select 1"],
     "unknown connection 'nowhere'; connections in the configuration: prod-db, test-db"),
    (["-i", "ci-test", "-C", "test-db", "--claim", "oops", "select 1"],
     "--claim 'oops': expected key=value"),
    (["-i", "ci-test", "-C", "test-db"], "no SQL given"),
])
def test_check_usage_errors_exit_2(config_file: Path, args: list[str], message: str) -> None:
    result = pw("policy", "check", "--config", str(config_file), *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stdout == ""


def test_check_config_error_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.replace("allow: [read]\n  - name", "allow: [reed]\n  - name"))
    result = check(bad, "select 1")
    assert result.exit_code == 2
    assert "bad.yaml:14:13: policies[0].allow[0]: unknown action class or kind 'reed'; " \
           "did you mean 'read'?" in result.stderr


def test_check_warns_about_a_config_without_policies(tmp_path: Path) -> None:
    bare = tmp_path / "bare.yaml"
    bare.write_text(CONFIG.split("policies:")[0])
    result = check(bare, "select 1")
    assert result.exit_code == 1
    assert "has no policies" in result.stderr


# -- policy test --------------------------------------------------------------------------------

CASES = """\
- {identity: ci-test, connection: test-db, sql: "select * from users", expect: allow}
- {identity: ci-test, connection: test-db, sql: "delete from users", expect: deny}
- identity: ci-deploy
  connection: prod-db
  sql: "insert into billing.invoices values (1)"
  expect: allow
- {identity: ci-build, connection: test-db, sql: "select 1", expect: allow,
   claims: {repository: acme/api, ref: refs/heads/main}}
- {identity: ci-test, connection: test-db, sql: "select 1", expect: allow, reason: "plumbing"}
"""


def test_policy_test_reports_a_table_and_fails_on_a_failed_case(
        config_file: Path, tmp_path: Path) -> None:
    cases = tmp_path / "policy-tests.yaml"
    cases.write_text(CASES)
    result = pw("policy", "test", "--config", str(config_file), str(cases))
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["result", "line", "identity", "connection", "expect", "got", "sql"]
    assert lines[1].split()[:6] == ["PASS", "1", "ci-test", "test-db", "allow", "allow"]
    assert lines[2].split()[:6] == ["PASS", "2", "ci-test", "test-db", "deny", "deny"]
    assert lines[3].split()[:6] == ["FAIL", "3", "ci-deploy", "prod-db", "allow", "approve"]
    assert lines[4] == (f"    {cases}:3: insert on billing.invoices: approval required for "
                        "ci-deploy by policy deploy-writes rule require_approval[1] "
                        "({write: {tables: [billing.*]}})")
    assert lines[5].split()[:6] == ["PASS", "7", "ci-build", "test-db", "allow", "allow"]
    assert lines[6].split()[:6] == ["FAIL", "9", "ci-test", "test-db", "allow", "allow"]
    assert "(expected the reason to contain 'plumbing')" in lines[7]
    assert lines[-1] == f"{cases}: 3 passed, 2 failed"


def test_policy_test_passes(config_file: Path, tmp_path: Path) -> None:
    cases = tmp_path / "ok.yaml"
    cases.write_text("cases:\n" + CASES.splitlines()[0] + "\n")
    result = pw("policy", "test", "--config", str(config_file), str(cases))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == f"{cases}: 1 passed, 0 failed"


@pytest.mark.parametrize(("text", "message"), [
    ("- {identity: ci-test, connection: test-db, sql: x, expect: maybe}",
     ":1: cases[0].expect: Input should be 'allow', 'deny' or 'approve'"),
    ("- {identity: ci-test, sql: x, expect: deny}", ":1: cases[0].connection: required field"),
    ("- {identity: ci-test, connection: test-db, sql: x, expect: deny}\n"
     "- {identity: ci-test, connection: test-db,\n   sqll: x, expect: deny}",
     ":3: cases[1].sqll: unknown field (valid: identity, connection, sql, expect"),
    ("- [1, 2]", ":1: cases[0]: expected a mapping"),
    ("identity: x", ":1:1: expected a list of cases or a mapping with 'cases:'"),
    ("- {a: [}", "YAML syntax error"),
])
def test_policy_test_file_errors_exit_2(config_file: Path, tmp_path: Path, text: str,
                                        message: str) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(text)
    result = pw("policy", "test", "--config", str(config_file), str(cases))
    assert result.exit_code == 2, result.output
    assert f"{cases}{message}" in result.stderr or message in result.stderr, result.stderr


def test_policy_test_unknown_identity_fails_the_case(config_file: Path, tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text("- {identity: ci-tset, connection: test-db, sql: 'select 1', "
                     "expect: allow}\n")
    result = pw("policy", "test", "--config", str(config_file), str(cases))
    assert result.exit_code == 1
    assert "FAIL" in result.stdout and "error" in result.stdout
    assert "unknown identity 'ci-tset'" in result.stdout


# -- policy kinds ---------------------------------------------------------------------------------


def test_policy_kinds_lists_classes_flags_and_conditions() -> None:
    result = pw("policy", "kinds")
    assert result.exit_code == 0
    assert "write: copy_from_stdin, delete, insert" in result.stdout
    assert "flags: all, cascade, chain" in result.stdout
    assert "conditions: tables, kinds" in result.stdout
    ddl = pw("policy", "kinds", "ddl")
    assert ddl.stdout.startswith("ddl: ") and "drop_schema" in ddl.stdout
    assert len(ddl.stdout.splitlines()) == 1
    assert pw("policy", "kinds", "nope").exit_code == 2
    function = pw("policy", "kinds", "function").stdout.splitlines()
    assert function[0] == "function: call_<function name> (one per side-effect function)"
    assert "pg_terminate_backend" in function[1] and "lo_export" in function[1]


# -- the decision corpus --------------------------------------------------------------------------


def _corpus() -> tuple[GatewayConfig, list[PolicyCase]]:
    data: dict[str, Any] = yaml.safe_load(CORPUS.read_text())
    config = parse_config(yaml.safe_dump(data["config"]), source=str(CORPUS))
    return config, load_cases(CORPUS)


def test_corpus_is_large_and_covers_every_verdict_and_identity() -> None:
    config, cases = _corpus()
    assert len(cases) >= 150
    assert {c.expect for c in cases} == {"allow", "deny", "approve"}
    assert {c.identity for c in cases} == set(config.identities)
    assert {c.connection for c in cases} == set(config.connections)


@pytest.fixture(scope="module")
def corpus_simulator() -> Simulator:
    return Simulator(_corpus()[0])


@pytest.mark.parametrize("case", load_cases(CORPUS), ids=lambda c: f"line{c.line}")
def test_corpus_case(corpus_simulator: Simulator, case: PolicyCase) -> None:
    (result,) = run_cases(corpus_simulator, [case])
    assert result.passed, (
        f"{CORPUS.name}:{case.line}: {case.identity}@{case.connection} {case.sql!r}: "
        f"expected {case.expect}"
        + (f" with reason containing {case.reason!r}" if case.reason else "")
        + f", got {result.verdict.value if result.verdict else 'error'}: {result.reason}")


def test_corpus_cached_decisions_equal_explained_ones(corpus_simulator: Simulator) -> None:
    _, cases = _corpus()
    sim = corpus_simulator
    ops = [sim.operation(sim.identity(c.identity, c.claims), sim.connection(c.connection),
                         c.sql, c.search_path) for c in cases]
    explained = [sim.engine.explain(op).decision for op in ops]
    assert [sim.engine.decide(op) for op in ops] == explained
    assert [sim.engine.decide(op) for op in ops] == explained
    assert sim.engine.hits >= len(ops) - sum(op.unclassified is not None for op in ops)
    assert all(d.verdict in (Verdict.ALLOW, Verdict.DENY, Verdict.APPROVE) for d in explained)


# -- the rule vocabulary knows everything the classifier says ------------------------------------

VOCABULARY_SAMPLE = [
    "create table t (id int)", "create temp table t (id int)", "create unlogged table t ()",
    "create table t as select 1", "select 1 into t", "create materialized view m as select 1",
    "create view v as select 1", "create or replace view v as select 1", "create temp view v "
    "as select 1", "create index i on t (id)", "create sequence s", "create temp sequence s",
    "create schema s", "create database d", "create extension e", "create type ty as (a int)",
    "create type e as enum ('a')", "create domain d as int", "create function f() returns int "
    "language sql as 'select 1'", "create or replace procedure p() language sql as ''",
    "create aggregate a (int) (sfunc = int4pl, stype = int)", "create operator === "
    "(function = int4eq, leftarg = int, rightarg = int)", "create collation c (locale = 'C')",
    "create text search dictionary d (template = simple)", "create cast (int as text) with "
    "inout", "create trigger tr after insert on t for each row execute function f()",
    "create event trigger et on ddl_command_start execute function f()", "create policy p on t "
    "using (true)", "create rule r as on insert to t do nothing", "create publication p",
    "create subscription s connection 'x' publication p", "create server s foreign data "
    "wrapper w", "create foreign table f () server s", "create foreign data wrapper w",
    "create statistics st on a, b from t", "create tablespace ts location '/x'",
    "create language plpgsql", "create access method am type table handler h",
    "create transform for int language sql (from sql with function f(internal))",
    "create operator class oc for type int using btree as operator 1 <",
    "create operator family of using btree", "create conversion c for 'LATIN1' to 'UTF8' "
    "from f", "import foreign schema s from server x into y", "alter table t add c int",
    "alter table t owner to r", "alter table t enable row level security",
    "alter table t set schema s", "alter index i rename to j", "alter table t rename to u",
    "alter view v rename to w", "alter materialized view m set schema s", "alter sequence s "
    "restart", "alter type ty add value 'b'", "alter domain d set default 1", "alter function "
    "f() immutable", "alter extension e update", "alter extension e add table t",
    "alter function f() depends on extension e", "alter database d set x = 1",
    "alter schema s rename to s2", "alter role r rename to r2", "alter role r superuser",
    "alter schema s owner to r", "alter policy p on t using (false)", "alter publication p "
    "add table t", "alter subscription s disable", "alter server s options (add a 'b')",
    "alter foreign data wrapper w options (add a 'b')", "alter statistics st set statistics 1",
    "alter tablespace ts set (seq_page_cost = 1)", "alter collation c refresh version",
    "alter text search dictionary d (x = 1)", "alter text search configuration c add mapping "
    "for word with simple", "alter event trigger et disable", "alter operator === (int, int) "
    "set (restrict = eqsel)", "alter operator family of using btree add operator 1 < (int, "
    "int)", "alter table t replica identity full", "alter default privileges grant select on "
    "tables to r", "drop table t", "drop table t cascade", "drop view v", "drop materialized "
    "view m", "drop index i", "drop sequence s", "drop schema s", "drop database d",
    "drop extension e", "drop type ty", "drop domain d", "drop function f()", "drop procedure "
    "p()", "drop routine r()", "drop aggregate a(int)", "drop operator === (int, int)",
    "drop operator class oc using btree", "drop operator family of using btree",
    "drop collation c", "drop conversion c", "drop text search dictionary d", "drop text "
    "search configuration c", "drop text search parser p", "drop text search template t",
    "drop cast (int as text)", "drop trigger tr on t", "drop event trigger et", "drop policy "
    "p on t", "drop rule r on t", "drop publication p", "drop subscription s", "drop server s",
    "drop foreign table f", "drop foreign data wrapper w", "drop statistics st",
    "drop tablespace ts", "drop language plpgsql", "drop access method am", "drop transform "
    "for int language sql", "drop owned by r", "drop role r", "drop user mapping for r server "
    "s", "create user mapping for r server s", "alter user mapping for r server s options "
    "(add a 'b')", "reassign owned by r to s", "security label on table t is 'x'", "comment on "
    "table t is 'x'", "comment on column t.c is 'x'", "grant select on t to r", "grant r to s",
    "revoke all on all tables in schema s from r", "set role r", "reset role",
    "set session authorization r", "reset session authorization", "alter system set x = 1",
    "load 'x'", "vacuum", "vacuum full t", "analyze t", "cluster t", "reindex index i",
    "checkpoint", "refresh materialized view m", "lock t", "notify c", "listen c", "unlisten *",
    "insert into t values (1) on conflict do nothing", "insert into t values (1) returning *",
    "update t set a = 1", "delete from t", "truncate t restart identity cascade",
    "merge into t using u on t.id = u.id when matched then delete",
    "select * from t for update", "select * from t for share", "select * from t for key share",
    "select * from t for no key update", "copy t from stdin", "copy t to stdout",
    "copy t from '/x'", "copy t to '/x'", "copy t from program 'x'", "values (1)", "table t",
    "show x", "explain select 1", "explain analyze delete from t", "declare c cursor for "
    "select 1", "fetch c", "move c", "close c", "do 'begin end'", "call p()", "begin",
    "start transaction", "commit", "commit and chain", "rollback", "savepoint s",
    "release savepoint s", "rollback to savepoint s", "prepare transaction 'x'",
    "commit prepared 'x'", "rollback prepared 'x'", "set x = 1", "set local x = 1",
    "set x to default", "reset x", "reset all", "set search_path = a, b",
    "set transaction isolation level serializable", "set session characteristics as "
    "transaction read only", "set transaction snapshot 'x'", "set constraints all deferred",
    "discard all", "discard plans", "discard sequences", "discard temp", "deallocate all",
    "deallocate q", "prepare q as select 1", "select pg_terminate_backend(1)",
    "select pg_catalog.lo_export(1, 'x')",
]


def test_every_kind_and_flag_the_classifier_emits_can_be_named_in_a_rule() -> None:
    from pathwarden.policy.rules import ACTION_CLASSES, ACTION_FLAGS, class_of_kind
    from pathwarden.policy.sql import SqlContext, classify_sql

    _, cases = _corpus()
    unknown: list[str] = []
    for sql in VOCABULARY_SAMPLE + [c.sql for c in cases]:
        result = classify_sql(sql, SqlContext())
        for a in result.actions:
            if a.action not in ACTION_CLASSES:
                unknown.append(f"{sql!r}: class {a.action}")
            elif a.action != "unknown" and class_of_kind(a.kind) != a.action:
                unknown.append(f"{sql!r}: kind {a.kind} ({a.action})")
            for flag in a.flags - ACTION_FLAGS:
                unknown.append(f"{sql!r}: flag {flag}")
    assert not unknown, "\n".join(unknown)


# -- docs/policy.md shows real output -------------------------------------------------------------

DOCS = Path(__file__).parent.parent / "docs" / "policy.md"


def _docs_block(prefix: str, lang: str = "yaml") -> str:
    blocks: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    for line in DOCS.read_text().splitlines():
        if current is None and line.startswith("```"):
            current = []
            blocks.append((line[3:].strip(), current))
        elif current is not None and line == "```":
            current = None
        elif current is not None:
            current.append(line)
    for block_lang, lines in blocks:
        text = "\n".join(lines) + "\n"
        if block_lang == lang and text.startswith(prefix):
            return text
    raise AssertionError(f"no {lang!r} block starting with {prefix!r} in {DOCS}")


def _docs_output(command: str) -> list[str]:
    block = _docs_block(f"$ {command}", "")
    return [line for line in block.splitlines()[1:] if not line.startswith("$ ")]


def test_docs_examples_are_real(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "pathwarden.yaml"
    config.write_text(_docs_block("connections:"))
    result = pw("policy", "check", "--config", str(config), "--identity", "ci-test",
                "--connection", "test-db", "delete from users")
    expected = _docs_output("pathwarden policy check --config pathwarden.yaml --identity "
                            "ci-test --connection test-db \"delete from users\"")
    assert result.stdout.splitlines() == expected[:2]
    assert expected[2:] == ["1"] and result.exit_code == 1
    cases = tmp_path / "policy-tests.yaml"
    cases.write_text(_docs_block("# policy-tests.yaml"))
    result = pw("policy", "test", "--config", str(config), "policy-tests.yaml")
    assert result.stdout.splitlines() == _docs_output(
        "pathwarden policy test --config pathwarden.yaml policy-tests.yaml")


def test_check_decides_like_the_gateway_with_allow_all(tmp_path: Path) -> None:
    config = tmp_path / "pathwarden.yaml"
    config.write_text(CONFIG.replace("user: app, labels: {env: prod}",
                                     "user: app, labels: {env: prod}, allow_all: true"))
    result = check(config, "drop table users", identity="ci-build", connection="prod-db")
    assert result.exit_code == 0, result.output
    assert "prod-db.allow_all" in result.stdout
    # deny rules of policies still apply on an allow_all connection.
    result = check(config, "drop schema app", identity="ci-deploy", connection="prod-db")
    assert result.exit_code == 1
