"""Classify PostgreSQL statements for policy: what each statement does and touches.

Theory of operation
-------------------
:func:`classify_sql` is pure: text and a :class:`SqlContext` in, a
:class:`SqlClassification` out, never an exception (any failure becomes
``error``, and policy denies an operation whose text could not be classified).

1. *Lexing safety.* The classifier must read the text exactly as the server
   will. The parser (libpg_query, PostgreSQL's own grammar) lexes with
   ``standard_conforming_strings = on`` and UTF-8, so a text containing a
   backslash while the session has that setting off, a session whose client
   encoding is not UTF-8, a NUL byte (the server's C string ends there, and so
   would the parser's) or text that is not valid Unicode is refused.
2. *Parsing.* :mod:`.sql_tree` parses with the server's grammar and walks the
   tree iteratively: tables (resolved against ``ctx.search_path``, CTE names
   excluded by scope), function calls, and statements nested anywhere
   (data-modifying CTEs, locking sub-selects, ``CREATE TABLE AS EXECUTE``).
3. *Classification.* :mod:`.sql_statements` gives each statement node its class
   and kind (the table in ``docs/policy.md``); nested
   statements and calls to ``ctx.side_effect_functions`` raise it, and the most
   privileged contribution wins. EXPLAIN without ANALYZE is a read whatever it
   explains; EXPLAIN ANALYZE and PREPARE carry the inner classification.
4. *Multi-statement texts* are classified in order against a context that
   evolves as the server's would (``SET search_path``, PREPARE/DEALLOCATE,
   transaction ends and savepoints), because in a simple Query the server
   analyses each statement only after running the ones before it.

:func:`apply_to_context` carries those changes across operations of a session.
It only ever moves the lexing settings towards the refusing side
(``standard_conforming_strings`` off, a non-UTF-8 encoding); the session's
ParameterStatus tracking moves them back, so a pipelined statement sent right
after ``SET standard_conforming_strings = off`` cannot be read with the old
setting.

:class:`PostgresClassifier` is the pipeline hook. Every statement of every
session passes through it, so it caches: by exact text, and by
``pglast.parser.normalize`` text (literal constants replaced by ``$n``) for
single SELECT/INSERT/UPDATE/DELETE/MERGE statements. It does not use
``pglast.parser.fingerprint``: the fingerprint ignores schema names
(``public.t`` and ``secret.t`` collide), numeric relation-name suffixes
(``t_1`` and ``t_2``) and constant-only WHERE clauses (``DELETE FROM t`` and
``DELETE FROM t WHERE true``), so statements that classify differently share
one fingerprint (see ``tests/test_sql_classifier.py``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from pglast import parser as _pg_parser

from ..model import Action, Operation
from . import sql_statements as _st
from .sql_statements import PRECEDENCE, Part, combine
from .sql_tree import Fields, Unclassifiable, parse

__all__ = [
    "DEFAULT_SIDE_EFFECT_FUNCTIONS",
    "PRECEDENCE",
    "PostgresClassifier",
    "SqlClassification",
    "SqlContext",
    "after_failure",
    "apply_to_context",
    "classify_sql",
    "most_privileged",
]

#: Functions whose call makes a statement a ``function`` action (matched by the
#: last name component, so ``pg_catalog.x`` and ``"x"`` count too).
DEFAULT_SIDE_EFFECT_FUNCTIONS: frozenset[str] = frozenset({
    # the spec's list
    "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile",
    "set_config", "lo_import", "lo_export", "lo_unlink", "pg_read_file", "pg_read_binary_file",
    "pg_ls_dir", "pg_stat_file", "pg_file_write", "dblink", "dblink_exec", "dblink_connect",
    "pg_switch_wal", "pg_promote", "pg_create_restore_point", "pg_logical_emit_message",
    # run SQL given as text (query_to_xml and kin, text search statistics, dblink, pg_background)
    "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "cursor_to_xml",
    "cursor_to_xmlschema", "ts_stat", "ts_rewrite", "dblink_connect_u", "dblink_send_query",
    "dblink_open", "pg_background_launch",
    # server files and large objects (data outside any table policy)
    "pg_file_rename", "pg_file_unlink", "pg_file_sync", "pg_ls_logdir", "pg_ls_waldir",
    "pg_ls_tmpdir", "pg_ls_archive_statusdir", "pg_ls_logicalmapdir", "pg_ls_logicalsnapdir",
    "pg_ls_replslotdir", "lo_get", "lo_put", "lo_from_bytea", "lo_open", "lo_truncate",
    # replication slots and origins (a logical slot reads every change to every table)
    "pg_create_logical_replication_slot", "pg_create_physical_replication_slot",
    "pg_drop_replication_slot", "pg_copy_logical_replication_slot",
    "pg_copy_physical_replication_slot", "pg_logical_slot_get_changes",
    "pg_logical_slot_get_binary_changes", "pg_logical_slot_peek_changes",
    "pg_logical_slot_peek_binary_changes", "pg_replication_slot_advance",
    "pg_replication_origin_create", "pg_replication_origin_drop",
    "pg_replication_origin_session_setup",
    # server state
    "pg_backup_start", "pg_backup_stop", "pg_wal_replay_pause", "pg_wal_replay_resume",
    "pg_stat_reset", "pg_stat_reset_shared", "pg_import_system_collations",
    # the function spelling of statements that are `write`
    "pg_notify", "setval", "nextval", "lo_create", "lo_creat", "lowrite", "lo_truncate64",
    # contrib functions that run SQL given as text
    "crosstab", "crosstab2", "crosstab3", "crosstab4", "connectby", "xpath_table",
    # contrib functions that change data or read server files
    "heap_force_kill", "heap_force_freeze", "pg_truncate_visibility_map",
    "pg_stat_statements_reset", "pg_logdir_ls", "pg_file_read", "pg_file_length",
    "pg_logfile_rotate",
    # core functions with effects beyond the statement
    "pg_read_file_old", "pg_rotate_logfile_old", "pg_stat_reset_single_table_counters",
    "pg_stat_reset_single_function_counters", "pg_stat_reset_slru",
    "pg_stat_reset_replication_slot", "pg_stat_reset_subscription_stats",
    "pg_replication_origin_advance", "pg_replication_origin_xact_setup",
    "pg_replication_origin_xact_reset", "pg_replication_origin_session_reset",
    "brin_summarize_new_values", "brin_summarize_range",
    "brin_desummarize_range", "gin_clean_pending_list", "pg_log_backend_memory_contexts",
    "pg_nextoid", "pg_hba_file_rules", "pg_ident_file_mappings", "pg_show_all_file_settings",
})

_DEFAULT_SEARCH_PATH: tuple[str, ...] = ("public",)
_EMPTY_PREPARED: Mapping[str, tuple[Action, ...]] = MappingProxyType({})
_UTF8_NAMES = frozenset({"UTF8", "UNICODE", "SQLASCII"})
_MAX_EXECUTE_DEPTH = 8

# (savepoint name or None for the transaction itself, search_path, session search_path)
TxFrame = tuple[str | None, tuple[str, ...], tuple[str, ...] | None]


@dataclass(frozen=True, slots=True)
class SqlContext:
    """The session state that changes how a statement reads.

    ``session_search_path`` and ``tx_frames`` are maintained by
    :func:`apply_to_context` (the value a ``SET LOCAL`` will revert to, and the
    search_path at each open transaction/savepoint); sessions leave them alone.
    """

    search_path: tuple[str, ...] = _DEFAULT_SEARCH_PATH
    prepared: Mapping[str, tuple[Action, ...]] = field(default_factory=lambda: _EMPTY_PREPARED)
    standard_conforming_strings: bool = True
    client_encoding: str = "UTF8"
    side_effect_functions: frozenset[str] = DEFAULT_SIDE_EFFECT_FUNCTIONS
    session_search_path: tuple[str, ...] | None = None
    tx_frames: tuple[TxFrame, ...] = ()
    # True once the lexing settings have been changed or reported refusing in this
    # session: from then on anything that can revert settings server-side
    # (transaction ends, RESET, DISCARD ALL) moves them to the refusing side until
    # the server reports their value again.
    lexing_unsettled: bool = False
    # What RESET / DISCARD ALL / SET ... TO DEFAULT return search_path to: the
    # session's starting value (role and database defaults included).
    default_search_path: tuple[str, ...] = _DEFAULT_SEARCH_PATH
    # The upstream login user, which "$user" in search_path names (None: dropped).
    login_user: str | None = None

    def __post_init__(self) -> None:
        functions = self.side_effect_functions
        if functions is not DEFAULT_SIDE_EFFECT_FUNCTIONS and any(
                name != name.lower() for name in functions):
            object.__setattr__(self, "side_effect_functions",
                               frozenset(name.lower() for name in functions))
        if not isinstance(self.search_path, tuple):
            object.__setattr__(self, "search_path", tuple(self.search_path))


@dataclass(frozen=True, slots=True)
class SqlClassification:
    """One Action per statement, or why the text could not be classified (policy denies)."""

    actions: tuple[Action, ...] = ()
    error: str | None = None


def most_privileged(actions: Iterable[Action]) -> str:
    """The most privileged action class among ``actions`` ("none" if there are none)."""
    best = "none"
    for action in actions:
        if PRECEDENCE.get(action.action, 10) > PRECEDENCE[best]:
            best = action.action
    return best


# --- classification ------------------------------------------------------------

@dataclass(slots=True)
class _Outcome:
    result: SqlClassification
    root_types: tuple[str, ...] = ()
    uses_prepared: bool = False


class _Env:
    """Resolution and prepared-statement lookup for one statement (see sql_statements.Env)."""

    __slots__ = ("ctx", "depth", "side_effect_functions", "uses_prepared")

    def __init__(self, ctx: SqlContext, depth: int) -> None:
        self.ctx = ctx
        self.depth = depth
        self.side_effect_functions = ctx.side_effect_functions
        self.uses_prepared = False

    def resolve(self, rangevar: Fields) -> Sequence[str]:
        schema = rangevar.get("schemaname")
        name = str(rangevar.get("relname", ""))
        if schema:
            return (f"{schema}.{name}",)
        return self.resolve_name([name], rangevar.get("relpersistence") == "t")

    def resolve_name(self, names: Sequence[str], temp: bool = False) -> Sequence[str]:
        """Every table an unqualified name may mean under the session's search_path.

        The server takes the first schema on the path that has the table, and
        the gateway cannot see the catalog: so with several schemas on the path
        the name stands for all of them. Deny and approval rules then match if
        any could be meant; allow rules must cover them all (fail closed).
        """
        if len(names) >= 2:
            return (f"{names[-2]}.{names[-1]}",)
        name = names[-1] if names else ""
        if temp:
            return (f"pg_temp.{name}",)
        path = self.ctx.search_path
        # pg_catalog is searched first unless the path names it; its relations all start pg_.
        if not path or (name.startswith("pg_") and "pg_catalog" not in path):
            return (f"pg_catalog.{name}", *(f"{schema}.{name}" for schema in path))
        return tuple(f"{schema}.{name}" for schema in path)

    def in_schema(self, schema: str) -> _Env:
        return _Env(replace(self.ctx, search_path=(schema, *self.ctx.search_path)), self.depth)

    def execute(self, name: str) -> Part:
        self.uses_prepared = True
        stored = self.ctx.prepared.get(name)
        if stored is None:
            raise Unclassifiable(
                f"cannot classify: EXECUTE of prepared statement {name!r}, which this session "
                "has not prepared through the gateway")
        if self.depth >= _MAX_EXECUTE_DEPTH:
            raise Unclassifiable("cannot classify: prepared statements nest too deeply")
        parts: list[Part] = []
        for action in stored:
            if action.text:
                # Re-read with the current search_path: the server re-analyses a prepared
                # statement when search_path changed since PREPARE.
                again = _classify(action.text, self.ctx, self.depth + 1).result
                if again.error is not None:
                    raise Unclassifiable(again.error)
                found: Sequence[Action] = again.actions
            else:
                found = (action,)
            parts.extend(Part(a.action, a.kind, set(a.flags),
                              {k: list(v) for k, v in a.objects.items()}) for a in found)
        if not parts:
            raise Unclassifiable(f"cannot classify: prepared statement {name!r} is empty")
        return combine(parts)


def _text_error(sql: str, ctx: SqlContext) -> str | None:
    if not is_utf8_encoding(ctx.client_encoding):
        return (f"cannot classify safely: client_encoding is {ctx.client_encoding}; "
                "the gateway reads statements as UTF8 (set client_encoding = 'UTF8')")
    if not ctx.standard_conforming_strings and "\\" in sql:
        return ("cannot classify safely: standard_conforming_strings is off and the statement "
                "contains a backslash; set standard_conforming_strings = on")
    if "\x00" in sql:
        return "cannot classify safely: the statement contains a NUL byte"
    if not sql.isascii():
        try:
            sql.encode("utf-8")
        except UnicodeEncodeError:
            return "cannot classify safely: the statement is not valid Unicode text"
    return None


def classify_sql(sql: str, ctx: SqlContext) -> SqlClassification:
    """Classify ``sql`` (one or more statements) under ``ctx``; never raises."""
    return _classify(sql, ctx, 0).result


def _classify(sql: str, ctx: SqlContext, depth: int) -> _Outcome:
    env: _Env | None = None
    uses_prepared = False
    try:
        problem = _text_error(sql, ctx)
        if problem is not None:
            return _Outcome(SqlClassification((), problem))
        statements = parse(sql)
        multi = len(statements) > 1
        data = sql.encode("utf-8") if multi else b""
        actions: list[Action] = []
        current = ctx
        for node_type, fields, start, length in statements:
            text = ""
            if multi:
                end = start + length if length else len(data)
                text = data[start:end].decode("utf-8").strip()
            env = _Env(current, depth)
            part = _st.classify_node(node_type, fields, env)
            uses_prepared = uses_prepared or env.uses_prepared
            action = Action(part.action, part.kind,
                            MappingProxyType(_st.frozen_objects(part.objects)),
                            frozenset(part.flags), text)
            action = _guard_catalogs(action)
            actions.append(action)
            if multi and (action.kind in _st.STATEFUL_KINDS or "prepare" in action.flags):
                current = _apply_one(current, action, text)
        return _Outcome(SqlClassification(tuple(actions)),
                        tuple(s[0] for s in statements), uses_prepared)
    except Exception as exc:  # fail closed on anything
        if isinstance(exc, Unclassifiable):
            error = str(exc)
        elif isinstance(exc, RecursionError):
            error = "cannot classify: statement nests too deeply"
        else:
            error = f"cannot classify: internal error ({type(exc).__name__}: {exc})"
        uses_prepared = uses_prepared or (env is not None and env.uses_prepared)
        return _Outcome(SqlClassification((), error), (), uses_prepared)


# The catalogs whose rows are roles, memberships and grants.
_ROLE_CATALOGS = frozenset({
    "pg_catalog.pg_authid", "pg_catalog.pg_auth_members", "pg_catalog.pg_db_role_setting",
    "pg_catalog.pg_default_acl", "pg_catalog.pg_init_privs", "pg_catalog.pg_shdepend",
})


def _guard_catalogs(action: Action) -> Action:
    """A write to a system catalog is schema (or role) surgery, never a plain write."""
    if action.action != "write":
        return action
    tables = action.names("tables")
    if not any(t.startswith("pg_catalog.") for t in tables):
        return action
    if any(t in _ROLE_CATALOGS for t in tables):
        return Action("privilege", "write_role_catalog", action.objects,
                      action.flags | {action.kind}, action.text)
    return Action("ddl", "write_system_catalog", action.objects,
                  action.flags | {action.kind}, action.text)


# --- session context -----------------------------------------------------------

def apply_to_context(ctx: SqlContext, actions: Sequence[Action], text: str = "") -> SqlContext:
    """The context after ``actions`` (one operation's, as classified) were sent to the server.

    Call it when forwarding an allowed operation, with ``text`` the operation's
    SQL (single-statement Actions carry no text, and a PREPARE must remember
    its statement to re-read it at EXECUTE). PREPARE adds to ``prepared``,
    DEALLOCATE removes, ``SET [LOCAL] search_path`` / ``RESET`` / ``DISCARD
    ALL`` change ``search_path``, and transaction ends and ``ROLLBACK TO
    SAVEPOINT`` restore it as the server does. If the server then rejects the
    operation outside a transaction block, use :func:`after_failure`.
    """
    multi = len(actions) > 1
    for action in actions:
        ctx = _apply_one(ctx, action, action.text or ("" if multi else text))
    if not ctx.tx_frames and ctx.session_search_path is not None:
        # SET LOCAL outside a transaction block lasts until the end of the message.
        ctx = replace(ctx, search_path=ctx.session_search_path, session_search_path=None)
    return ctx


def after_failure(before: SqlContext, after: SqlContext) -> SqlContext:
    """The context after the server rejected an operation and rolled back its implicit transaction.

    Settings return to ``before`` (the server rolled them back); prepared
    statements are not transactional, and the lexing settings keep the
    refusing side of the two.
    """
    encoding = (before.client_encoding if is_utf8_encoding(after.client_encoding)
                else after.client_encoding)
    return replace(before, prepared=after.prepared, client_encoding=encoding,
                   standard_conforming_strings=(before.standard_conforming_strings
                                                and after.standard_conforming_strings))


def is_utf8_encoding(name: str) -> bool:
    """Whether the server reads ``name`` as UTF8 or SQL_ASCII (aliases and spellings included)."""
    return name.upper().replace("-", "").replace("_", "") in _UTF8_NAMES


_LEXING_SETTINGS = frozenset({"standard_conforming_strings", "client_encoding"})
# What the context holds while the server's client_encoding is not known.
UNSETTLED_ENCODING = "(being changed; wait for the server's report)"
_TRUE_WORDS = frozenset({"on", "true", "yes", "1", "t", "y", "tr", "tru", "ye"})


def _apply_one(ctx: SqlContext, action: Action, text: str) -> SqlContext:
    kind, flags = action.kind, action.flags
    changes: dict[str, Any] = {}
    if "prepare" in flags:
        stored = Action(action.action, action.kind, action.objects, flags - {"prepare"}, text)
        prepared = dict(ctx.prepared)
        for name in action.names("prepared"):
            prepared[name] = (stored,)
        changes["prepared"] = MappingProxyType(prepared)
    elif kind == "deallocate" and "execute" not in flags:
        if "all" in flags:
            changes["prepared"] = _EMPTY_PREPARED
        else:
            prepared = dict(ctx.prepared)
            for name in action.names("prepared"):
                prepared.pop(name, None)
            changes["prepared"] = MappingProxyType(prepared)
    elif kind == "discard" and "all" in flags:
        changes.update(prepared=_EMPTY_PREPARED, search_path=ctx.default_search_path,
                       session_search_path=None, tx_frames=())
    elif kind == "set_search_path":
        if "default" in flags:
            path = ctx.default_search_path
        else:
            names = [ctx.login_user if name == "$user" else name
                     for name in action.names("search_path")]
            path = tuple(dict.fromkeys(name for name in names if name))
        changes.update(_set_path(ctx, path, "local" in flags))
    elif kind == "reset" and ("all" in flags or "search_path" in action.names("settings")):
        changes.update(_set_path(ctx, ctx.default_search_path, "local" in flags))
    elif action.action == "transaction":
        changes.update(_transaction(ctx, kind, flags, action.names("savepoints")))

    settings = action.names("settings")
    values = action.names("values")
    if "standard_conforming_strings" in settings and not (
            kind == "set" and len(values) == 1 and values[0].lower() in _TRUE_WORDS):
        changes["standard_conforming_strings"] = False
    if any(_st.is_side_effect(f, frozenset({"set_config"})) for f in action.names("functions")):
        changes["standard_conforming_strings"] = False  # could have set anything
        changes["lexing_unsettled"] = True
    if ("client_encoding" in settings and kind == "set" and values
            and not is_utf8_encoding(values[0])):
        changes["client_encoding"] = values[0]
    if _LEXING_SETTINGS & set(settings):
        changes["lexing_unsettled"] = True
    if ctx.lexing_unsettled and (
            action.action == "transaction" or kind in ("reset", "discard")):
        # The server may now be back on a refusing value it has not reported yet.
        changes["standard_conforming_strings"] = False
        changes["client_encoding"] = UNSETTLED_ENCODING
    return replace(ctx, **changes) if changes else ctx


def _set_path(ctx: SqlContext, path: tuple[str, ...], local: bool) -> dict[str, Any]:
    if local:
        session = ctx.session_search_path
        return {"search_path": path,
                "session_search_path": ctx.search_path if session is None else session}
    return {"search_path": path, "session_search_path": None}


def _transaction(ctx: SqlContext, kind: str, flags: frozenset[str],
                 savepoints: Sequence[str]) -> dict[str, Any]:
    frames = ctx.tx_frames
    path, session = ctx.search_path, ctx.session_search_path
    name = savepoints[0] if savepoints else None
    if kind == "begin":
        return {} if frames else {"tx_frames": ((None, path, session),)}
    if kind == "savepoint":
        return {"tx_frames": (*frames, (name, path, session))} if frames else {}
    if kind in ("release_savepoint", "rollback_to_savepoint"):
        index = next((i for i in range(len(frames) - 1, 0, -1) if frames[i][0] == name), None)
        if index is None:
            return {}
        if kind == "release_savepoint":
            return {"tx_frames": frames[:index]}
        _, path, session = frames[index]
        return {"tx_frames": frames[: index + 1], "search_path": path,
                "session_search_path": session}
    if kind in ("commit", "rollback", "prepare_transaction"):
        if kind == "rollback" and frames:
            _, path, session = frames[0]
        path = path if session is None else session
        chained = ((None, path, None),) if "chain" in flags else ()
        return {"search_path": path, "session_search_path": None, "tx_frames": chained}
    return {}


# --- the pipeline hook ---------------------------------------------------------

class _Summary:
    """A classification with the Operation fields derived from it (cached together)."""

    __slots__ = ("action", "resources", "result")

    def __init__(self, result: SqlClassification) -> None:
        self.result = result
        if result.error is not None:
            self.action = "unknown"
            self.resources: tuple[str, ...] = ()
        else:
            self.action = most_privileged(result.actions)
            self.resources = tuple(sorted({t for a in result.actions for t in a.names("tables")}))


_NORMALIZED_ROOTS = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt",
                               "MergeStmt"})
_MAX_NORMALIZE = 16 * 1024
_MAX_CACHED_TEXT = 64 * 1024


class PostgresClassifier:
    """The pipeline's SQL classifier: fills an Operation's actions, action, resources, unclassified.

    Sessions keep a :class:`SqlContext` (start from :meth:`new_context`, advance
    it with :func:`apply_to_context` and ParameterStatus) and call
    :meth:`classify_with`; :meth:`classify` uses a fresh default context.
    """

    def __init__(self, side_effect_functions: Iterable[str] = DEFAULT_SIDE_EFFECT_FUNCTIONS,
                 cache_size: int = 10000) -> None:
        functions = frozenset(side_effect_functions)
        self.side_effect_functions = (
            DEFAULT_SIDE_EFFECT_FUNCTIONS if functions == DEFAULT_SIDE_EFFECT_FUNCTIONS
            else frozenset(name.lower() for name in functions))
        self.cache_size = max(0, cache_size)
        self._default = SqlContext(side_effect_functions=self.side_effect_functions)
        self._cache: OrderedDict[tuple[Any, ...], _Summary] = OrderedDict()
        self.hits_exact = 0
        self.hits_normalized = 0
        self.misses = 0

    def new_context(self, **changes: Any) -> SqlContext:
        """A session's starting context, with this classifier's side-effect functions."""
        return replace(self._default, **changes) if changes else self._default

    def classify(self, op: Operation) -> Operation:
        return self.classify_with(op, self._default)

    def classify_with(self, op: Operation, ctx: SqlContext) -> Operation:
        summary = self._summary(op.text, ctx)
        # Built field by field: dataclasses.replace costs ~4 µs on this hot path.
        return Operation(
            session_id=op.session_id, seq=op.seq, identity=op.identity,
            connection=op.connection, protocol=op.protocol, kind=op.kind, text=op.text,
            action=summary.action, resources=summary.resources, params=op.params,
            actions=summary.result.actions, unclassified=summary.result.error)

    def classify_text(self, sql: str, ctx: SqlContext) -> SqlClassification:
        """:func:`classify_sql` with caching."""
        return self._summary(sql, ctx).result

    def _summary(self, sql: str, ctx: SqlContext) -> _Summary:
        problem = _text_error(sql, ctx) if (
            not ctx.standard_conforming_strings
            or not is_utf8_encoding(ctx.client_encoding)) else None
        if problem is not None:
            return _Summary(SqlClassification((), problem))
        cache = self._cache
        key = (0, sql, ctx.search_path, ctx.side_effect_functions, ctx.tx_frames,
               ctx.session_search_path)
        hit = cache.get(key)
        if hit is not None:
            cache.move_to_end(key)
            self.hits_exact += 1
            return hit
        problem = _text_error(sql, ctx)
        if problem is not None:
            summary = _Summary(SqlClassification((), problem))
            self._store(key, summary)
            return summary
        norm_key: tuple[Any, ...] | None = None
        if len(sql) <= _MAX_NORMALIZE:
            try:
                norm_key = (1, _pg_parser.normalize(sql), ctx.search_path,
                            ctx.side_effect_functions)
            except Exception:  # a parse error: the full path reports it
                norm_key = None
            if norm_key is not None:
                hit = cache.get(norm_key)
                if hit is not None:
                    cache.move_to_end(norm_key)
                    self.hits_normalized += 1
                    self._store(key, hit)
                    return hit
        self.misses += 1
        outcome = _classify(sql, ctx, 0)
        summary = _Summary(outcome.result)
        if not outcome.uses_prepared:
            if len(sql) <= _MAX_CACHED_TEXT:
                self._store(key, summary)
            if (norm_key is not None and summary.result.error is None
                    and len(outcome.root_types) == 1
                    and outcome.root_types[0] in _NORMALIZED_ROOTS):
                self._store(norm_key, summary)
        return summary

    def _store(self, key: tuple[Any, ...], value: _Summary) -> None:
        if not self.cache_size:
            return
        cache = self._cache
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)

    def cache_clear(self) -> None:
        self._cache.clear()
