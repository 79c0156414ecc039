"""The PostgreSQL statement classifier (pathwarden.policy.sql) against its spec.

The corpus (tests/corpus/sql_corpus.yaml) pins the classification of each
statement; the unit tests below cover context handling, the caches, lexing
safety and robustness on arbitrary input.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pglast import parser as pg_parser

from pathwarden.model import Action, ConnectionRef, Identity, Operation, Protocol
from pathwarden.policy.sql import (
    DEFAULT_SIDE_EFFECT_FUNCTIONS,
    PostgresClassifier,
    SqlClassification,
    SqlContext,
    after_failure,
    apply_to_context,
    classify_sql,
    most_privileged,
)
from pathwarden.policy.sql_statements import base
from pathwarden.policy.sql_tree import _loads_deep

CORPUS_PATH = Path(__file__).parent / "corpus" / "sql_corpus.yaml"
CORPUS: list[dict[str, Any]] = yaml.safe_load(CORPUS_PATH.read_text(encoding="utf-8"))
CTX = SqlContext()


def _id(entry: dict[str, Any]) -> str:
    text = " ".join(str(entry["sql"]).split()) or "<empty>"
    text = text.replace("\0", "<NUL>")
    return text if len(text) <= 60 else text[:57] + "..."


def _run(ctx: SqlContext, sql: str) -> SqlContext:
    result = classify_sql(sql, ctx)
    assert result.error is None, (sql, result.error)
    return apply_to_context(ctx, result.actions, sql)


def _context(entry: dict[str, Any]) -> SqlContext:
    spec = dict(entry.get("context") or {})
    prepared = spec.pop("prepared", {}) or {}
    if "search_path" in spec:
        spec["search_path"] = tuple(spec["search_path"])
    ctx = SqlContext(**spec)
    for text in prepared.values():
        ctx = _run(ctx, text)
    for text in entry.get("setup") or ():
        ctx = _run(ctx, text)
    return ctx


_OBJECT_SORTS = ("tables", "functions", "search_path", "settings", "prepared")


def _check_action(action: Action, want: dict[str, Any], multi: bool) -> None:
    got = (action.action, action.kind)
    assert got == (want["action"], want["kind"]), got
    assert sorted(action.flags) == sorted(want.get("flags") or []), sorted(action.flags)
    for sort in _OBJECT_SORTS:
        if sort in want:
            expected = list(want[sort])
            names = list(action.names(sort))
            if sort != "search_path":
                expected, names = sorted(expected), sorted(names)
            assert names == expected, (sort, names)
    if "text" in want:
        assert action.text == want["text"]
    if not multi:
        assert action.text == ""


@pytest.mark.parametrize("entry", CORPUS, ids=[_id(e) for e in CORPUS])
def test_corpus(entry: dict[str, Any]) -> None:
    ctx = _context(entry)
    result = classify_sql(entry["sql"], ctx)
    if entry.get("error"):
        assert result.error is not None, result.actions
        assert result.actions == ()
        return
    assert result.error is None, result.error
    if "actions" in entry:
        assert list(result.actions) == entry["actions"]
        return
    wanted = entry.get("statements") or [entry]
    assert len(result.actions) == len(wanted), result.actions
    for action, want in zip(result.actions, wanted, strict=True):
        _check_action(action, want, multi=len(wanted) > 1)


def test_corpus_size_and_coverage() -> None:
    assert len(CORPUS) >= 320
    classes = {e.get("action") for e in CORPUS} | {
        s["action"] for e in CORPUS for s in e.get("statements") or ()}
    assert {"read", "write", "ddl", "privilege", "function", "procedural", "server_io",
            "transaction", "session", "maintenance"} <= classes


# --- table resolution and context ----------------------------------------------------

def _tables(sql: str, ctx: SqlContext = CTX) -> list[str]:
    result = classify_sql(sql, ctx)
    assert result.error is None, result.error
    return sorted({t for a in result.actions for t in a.names("tables")})


def test_table_resolution() -> None:
    assert _tables("select * from a, s.b, \"S\".\"B\", \"Mixed\"") == [
        "S.B", "public.Mixed", "public.a", "s.b"]
    # The server takes the first schema on the path that has the table; the gateway
    # cannot see the catalog, so an unqualified name stands for every candidate.
    assert _tables("select * from a", SqlContext(search_path=("app", "public"))) == [
        "app.a", "public.a"]
    # pg_catalog is implicitly first unless the path names it
    assert _tables("select * from pg_roles", SqlContext(search_path=("app",))) == [
        "app.pg_roles", "pg_catalog.pg_roles"]
    assert _tables("select * from pg_roles", SqlContext(search_path=("app", "pg_catalog"))) == [
        "app.pg_roles", "pg_catalog.pg_roles"]
    # CTE names are not tables, but only where they are visible
    assert _tables("with x as (select * from y) select * from x") == ["public.y"]
    assert _tables("select * from (with x as (select 1) select * from x) s, x") == ["public.x"]
    # a DML target is never a CTE
    assert _tables("with t as (select 1) delete from t") == ["public.t"]
    # FOR UPDATE OF names a FROM item, not a table
    assert _tables("select * from t a for update of a") == ["public.t"]
    # CREATE SCHEMA elements land in the new schema
    assert _tables("create schema s create view v as select * from w") == [
        "public.v", "public.w", "s.v", "s.w"]


def test_unknown_statement_node_is_unknown() -> None:
    part = base("SomeFutureStmt", {}, None)  # type: ignore[arg-type]
    assert (part.action, part.kind) == ("unknown", "SomeFutureStmt")
    unknown = Action("unknown", "SomeFutureStmt")
    assert most_privileged([Action("privilege", "grant"), unknown]) == "unknown"
    assert most_privileged([]) == "none"


def test_execute_of_self_referencing_statement_fails_closed() -> None:
    # a protocol-level statement named p whose text is EXECUTE p
    stored = (Action("read", "select", text="EXECUTE p"),)
    ctx = SqlContext(prepared=MappingProxyType({"p": stored}))
    error = classify_sql("execute p", ctx).error
    assert error is not None and "nest" in error


@pytest.mark.parametrize("sql", [
    "select 'é\\\"x', U&'\\0041', 1.5e3, -2, true, null from \"weird\"\"name\"",
    "with recursive r as (select 1 union all select 1 from r) select * from r",
    "select " + " + ".join(["1"] * 50),
])
def test_deep_json_reader_matches_json_module(sql: str) -> None:
    import json

    raw = pg_parser.parse_sql_json(sql)
    assert _loads_deep(raw) == json.loads(raw)


def test_apply_to_context_prepared_and_search_path() -> None:
    ctx = _run(CTX, "PREPARE p AS DELETE FROM t")
    assert set(ctx.prepared) == {"p"}
    assert ctx.prepared["p"][0].text == "PREPARE p AS DELETE FROM t"
    assert "prepare" not in ctx.prepared["p"][0].flags
    ctx = _run(ctx, "PREPARE q AS SELECT 1; SET search_path = \"$user\", app, 'Other'")
    assert set(ctx.prepared) == {"p", "q"}
    assert ctx.search_path == ("app", "Other")
    assert _run(ctx, "DEALLOCATE p").prepared.keys() == {"q"}
    assert not _run(ctx, "DEALLOCATE ALL").prepared
    assert _run(ctx, "RESET search_path").search_path == ("public",)
    assert _run(ctx, "RESET ALL").search_path == ("public",)
    discarded = _run(ctx, "DISCARD ALL")
    assert discarded.search_path == ("public",) and not discarded.prepared
    assert _run(ctx, "SET search_path TO DEFAULT").search_path == ("public",)
    assert _run(ctx, "SELECT 1") is ctx


def test_apply_to_context_transactions() -> None:
    ctx = _run(CTX, "SET search_path = a")
    ctx = _run(ctx, "BEGIN")
    ctx = _run(ctx, "SET search_path = b")
    ctx = _run(ctx, "SAVEPOINT s1")
    ctx = _run(ctx, "SET LOCAL search_path = c")
    assert ctx.search_path == ("c",)
    assert _run(ctx, "ROLLBACK TO SAVEPOINT s1").search_path == ("b",)
    assert _run(ctx, "ROLLBACK").search_path == ("a",)
    assert _run(ctx, "COMMIT").search_path == ("b",)  # SET LOCAL ends, SET stays
    chained = _run(ctx, "COMMIT AND CHAIN")
    assert chained.tx_frames and _run(_run(chained, "SET search_path = z"),
                                      "ROLLBACK").search_path == ("b",)
    # SET LOCAL outside a transaction block: gone at the end of the message
    assert _run(CTX, "SET LOCAL search_path = x").search_path == ("public",)
    # ...but in effect for the rest of that message
    assert _tables("SET LOCAL search_path = x; SELECT * FROM t") == ["x.t"]


def test_after_failure_reverts_settings_but_keeps_prepared() -> None:
    before = _run(CTX, "SET search_path = a")
    after = _run(before, "PREPARE p AS SELECT 1; SET search_path = b; SET NAMES 'LATIN1'")
    failed = after_failure(before, after)
    assert failed.search_path == ("a",)
    assert "p" in failed.prepared
    assert failed.client_encoding == "LATIN1"


def test_lexing_settings_only_move_towards_refusing() -> None:
    off = _run(CTX, "SET standard_conforming_strings = off")
    assert off.standard_conforming_strings is False
    # SET ... = on does not turn it back on: ParameterStatus from the server does
    assert _run(off, "SET standard_conforming_strings = on").standard_conforming_strings is False
    assert _run(CTX, "SET standard_conforming_strings = on").standard_conforming_strings is True
    assert _run(CTX, "RESET standard_conforming_strings").standard_conforming_strings is False
    assert _run(CTX, "SET client_encoding = 'UTF8'").client_encoding == "UTF8"
    assert _run(CTX, "SET NAMES 'win1252'").client_encoding == "win1252"
    permissive = SqlContext(side_effect_functions=frozenset())
    assert _run(permissive, "SELECT set_config('standard_conforming_strings', 'off', false)"
                ).standard_conforming_strings is False


def test_lexing_safety_errors() -> None:
    off = SqlContext(standard_conforming_strings=False)
    error = classify_sql("select 'a\\'; drop table t; --'", off).error
    assert error is not None and "standard_conforming_strings" in error
    assert classify_sql("select 1", off).error is None
    error = classify_sql("select 1", SqlContext(client_encoding="LATIN1")).error
    assert error is not None and "LATIN1" in error
    assert classify_sql("select 1", SqlContext(client_encoding="utf8")).error is None
    error = classify_sql("select 1\0; drop table t", CTX).error
    assert error is not None and "NUL" in error
    # text that is not valid Unicode (a lone surrogate, e.g. from surrogateescape)
    error = classify_sql("select '\udcff'; drop table t", CTX).error
    assert error is not None and "Unicode" in error


def test_side_effect_functions_are_configurable() -> None:
    ctx = SqlContext(side_effect_functions=frozenset({"My_Func"}))
    result = classify_sql("select app.my_func(1), pg_terminate_backend(2)", ctx)
    assert (result.actions[0].action, result.actions[0].kind) == ("function", "call_my_func")
    assert "pg_terminate_backend" in DEFAULT_SIDE_EFFECT_FUNCTIONS
    classifier = PostgresClassifier(side_effect_functions=["X"])
    assert classifier.new_context().side_effect_functions == frozenset({"x"})


# --- robustness ------------------------------------------------------------------------

def test_long_multi_statement_text() -> None:
    sql = "; ".join(f"select a{i} from t{i % 50} where x = {i}" for i in range(10000))
    sql += "; delete from t0"
    started = time.perf_counter()
    result = classify_sql(sql, CTX)
    elapsed = time.perf_counter() - started
    assert result.error is None
    assert len(result.actions) == 10001
    assert most_privileged(result.actions) == "write"
    assert result.actions[-1].text == "delete from t0"
    assert elapsed < 10


def test_deep_nesting_parses_or_fails_closed() -> None:
    # deeper than the C JSON decoder allows: parsed by the iterative fallback
    sql = "select " + " || ".join(["'a'"] * 3000) + ", pg_terminate_backend(1)"
    result = classify_sql(sql, CTX)
    assert result.error is None
    assert result.actions[0].action == "function"
    unions = " union all ".join(f"select a from t{i}" for i in range(1000))
    assert len(_tables(unions)) == 1000
    # deeper than the server's parser allows: its own error, denied
    sql = "select " + " || ".join(["'a'"] * 60000)
    assert "stack depth" in (classify_sql(sql, CTX).error or "")
    sql = "select " + "(" * 20000 + "1" + ")" * 20000
    assert classify_sql(sql, CTX).error is not None


_WORDS = st.sampled_from([
    "select", "insert", "into", "delete", "from", "update", "set", "where", "with", "as",
    "copy", "to", "program", "stdout", "explain", "analyze", "prepare", "execute", "do",
    "role", "values", "table", "t", "public.t", "pg_terminate_backend", "(", ")", ",", ";",
    "'", "''", '"', "$$", "$a$", "--", "/*", "*/", "\\", "e'", "U&'", "1", "*", "=", " ",
    "\n", "for update", "returning", "begin", "commit", "set search_path =", "\0",
])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_WORDS, st.text(max_size=4)), max_size=25),
       st.booleans())
def test_random_text_never_raises(parts: list[str], scs: bool) -> None:
    text = " ".join(parts)
    ctx = SqlContext(standard_conforming_strings=scs)
    result = classify_sql(text, ctx)
    assert isinstance(result, SqlClassification)
    assert (result.error is None) or result.actions == ()
    try:
        pg_parser.parse_sql_json(text)
    except Exception:
        assert result.error is not None
    else:
        if "\0" in text or (not scs and "\\" in text):
            assert result.error is not None


# --- the pipeline hook and its caches ------------------------------------------------

def _op(text: str) -> Operation:
    return Operation(session_id="s", seq=1, identity=Identity("ci"),
                     connection=ConnectionRef("db", Protocol.POSTGRES),
                     protocol=Protocol.POSTGRES, kind="query", text=text)


@pytest.mark.parametrize(("sql", "expected"), [
    ("", "none"),
    ("select 1", "read"),
    ("begin; select 1", "transaction"),
    ("set x = 1; begin", "session"),
    ("vacuum; set x = 1", "maintenance"),
    ("delete from t where a = 1; vacuum", "write"),
    ("create table t (a int); delete from t", "ddl"),
    ("select pg_cancel_backend(1); create table t (a int)", "function"),
    ("do $$ begin end $$; select pg_cancel_backend(1)", "procedural"),
    ("copy t to program 'x'; do $$ begin end $$", "server_io"),
    ("set role x; copy t to program 'x'", "privilege"),
])
def test_classifier_action_precedence(sql: str, expected: str) -> None:
    op = PostgresClassifier().classify(_op(sql))
    assert op.action == expected
    assert op.unclassified is None


def test_classifier_fills_operation() -> None:
    classifier = PostgresClassifier()
    op = classifier.classify(_op("select * from b.x; delete from a where true; select * from b.x"))
    assert op.action == "write"
    assert op.resources == ("b.x", "public.a")
    assert [a.kind for a in op.actions] == ["select", "delete", "select"]
    bad = classifier.classify(_op("SELEC 1"))
    assert bad.action == "unknown" and bad.actions == () and bad.unclassified
    ctx = classifier.new_context(search_path=("app",))
    assert classifier.classify_with(_op("select * from t"), ctx).resources == ("app.t",)
    assert classifier.classify_with(_op("execute p"), ctx).unclassified is not None
    ctx = _run(ctx, "PREPARE p AS SELECT * FROM t")
    assert classifier.classify_with(_op("execute p"), ctx).resources == ("app.t",)


# Pairs with one fingerprint that classify differently: why the cache does not use it.
FINGERPRINT_COLLISIONS = [
    ("select * from public.accounts", "select * from secret.accounts"),
    ("select * from users_2024", "select * from users_2025"),
    ("delete from t", "delete from t where true"),
    ("set search_path = a; select * from t", "set search_path = b; select * from t"),
    ("set role postgres", "set role nobody"),
]


@pytest.mark.parametrize(("one", "other"), FINGERPRINT_COLLISIONS)
def test_fingerprint_collides_but_classification_differs(one: str, other: str) -> None:
    assert pg_parser.fingerprint(one) == pg_parser.fingerprint(other)
    assert classify_sql(one, CTX) != classify_sql(other, CTX)
    classifier = PostgresClassifier()
    for sql in (one, other, one, other):
        assert classifier.classify_text(sql, CTX) == classify_sql(sql, CTX)


# Pairs the normalized-text cache must keep apart (different shape, same constants).
NORMALIZED_MUST_DIFFER = [
    ("select * from public.a", "select * from secret.a"),
    ("select * from a", "select * from b"),
    ('select * from "A"', "select * from a"),
    ("select f(1)", "select pg_terminate_backend(1)"),
    ("select x.a from t x", "select x.pg_read_file from t x"),
    ("copy t to '/tmp/x'", "copy t to program 'x'"),
    ("copy t to '/tmp/x'", "copy t to stdout"),
    ("select * from t", "select * from t for update"),
    ("select * from t for share", "select * from t for update"),
    ("explain (analyze false) delete from t", "explain (analyze true) delete from t"),
    ("explain (analyze 0) delete from t", "explain (analyze 1) delete from t"),
    ("with x as (select 1) select * from x", "with y as (select 1) select * from x"),
    ("create temp table x (a int)", "create table x (a int)"),
    ("select 1 into temp x", "select 1 into x"),
    ("delete from t", "delete from t where a = 1"),
    ("select * from t where a in (1, 2)", "select * from t where a in (1, pg_cancel_backend(2))"),
]


@pytest.mark.parametrize(("one", "other"), NORMALIZED_MUST_DIFFER)
def test_normalized_cache_keeps_shapes_apart(one: str, other: str) -> None:
    assert pg_parser.normalize(one) != pg_parser.normalize(other)
    classifier = PostgresClassifier()
    for sql in (one, other, one, other):
        assert classifier.classify_text(sql, CTX) == classify_sql(sql, CTX)


def test_normalized_cache_shares_constants_only() -> None:
    classifier = PostgresClassifier()
    first = classifier.classify_text("select * from pgbench_accounts where aid = 1", CTX)
    again = classifier.classify_text("select * from pgbench_accounts where aid = 2", CTX)
    assert again is first and classifier.hits_normalized == 1
    classifier.classify_text("select * from pgbench_accounts where aid = 2", CTX)
    assert classifier.hits_exact == 1
    # the search_path is part of the key
    other = classifier.classify_text("select * from pgbench_accounts where aid = 3",
                                     SqlContext(search_path=("bench",)))
    assert other.actions[0].names("tables") == ("bench.pgbench_accounts",)
    # SET values are constants that matter: never shared through normalization
    a = classifier.classify_text("set search_path = a", CTX)
    b = classifier.classify_text("set search_path = b", CTX)
    assert a.actions[0].names("search_path") == ("a",)
    assert b.actions[0].names("search_path") == ("b",)
    # multi-statement texts carry per-statement text: never shared either
    m1 = classifier.classify_text("select 1; select 2", CTX)
    m2 = classifier.classify_text("select 3; select 4", CTX)
    assert [a.text for a in m2.actions] == ["select 3", "select 4"] and m1 != m2
    # EXECUTE depends on the session's prepared statements: not cached
    ctx = _run(CTX, "PREPARE p AS SELECT 1")
    assert classifier.classify_text("execute p", ctx).error is None
    assert classifier.classify_text("execute p", CTX).error is not None


def test_cache_checks_lexing_settings_before_lookup() -> None:
    classifier = PostgresClassifier()
    sql = "select 'a\\'; drop table t; --'"
    assert classifier.classify_text(sql, CTX).error is None
    off = dataclasses.replace(CTX, standard_conforming_strings=False)
    assert classifier.classify_text(sql, off).error is not None
    latin = dataclasses.replace(CTX, client_encoding="LATIN1")
    assert classifier.classify_text("select 1", latin).error is not None
    # a NUL hides the rest from the C parser and from normalize(): checked before both
    classifier.classify_text("select 1", CTX)
    assert classifier.classify_text("select 1\0; drop table t", CTX).error is not None


def test_cache_is_bounded() -> None:
    classifier = PostgresClassifier(cache_size=10)
    for i in range(50):
        classifier.classify_text(f"select * from t{i}", CTX)
    assert len(classifier._cache) <= 10
    classifier = PostgresClassifier(cache_size=0)
    classifier.classify_text("select 1", CTX)
    assert not classifier._cache


def test_results_are_immutable() -> None:
    result = classify_sql("select * from t", CTX)
    assert isinstance(result.actions[0].objects, MappingProxyType)
    with pytest.raises(TypeError):
        result.actions[0].objects["tables"] = ()  # type: ignore[index]


def _per_call(fn: Any, texts: list[str]) -> float:
    started = time.perf_counter()
    for text in texts:
        fn(text)
    return (time.perf_counter() - started) / len(texts) * 1e6


def test_classifier_speed(capsys: pytest.CaptureFixture[str]) -> None:
    """Report µs per classify (exact hit, normalized hit, miss); loose bounds only."""
    classifier = PostgresClassifier(cache_size=100_000)
    template = ("SELECT a.aid, a.abalance, b.bbalance FROM pgbench_accounts a "
                "JOIN pgbench_branches b ON b.bid = a.bid WHERE a.aid = {} AND b.bid IN (1, 2, 3)")
    n = 2000
    misses = [template.replace("pgbench_accounts", f"acc{i}").format(i) for i in range(n)]
    miss = _per_call(lambda s: classifier.classify_text(s, CTX), misses)
    exact = _per_call(lambda s: classifier.classify_text(s, CTX), misses)
    normalized = _per_call(lambda s: classifier.classify_text(s, CTX),
                           [m.replace("a.aid = ", "a.aid = 9") for m in misses])
    with capsys.disabled():
        print(f"\nclassify: exact hit {exact:.1f} µs, normalized hit {normalized:.1f} µs, "
              f"miss {miss:.1f} µs")
    assert exact < normalized < miss
    assert exact < 50 and miss < 2000
