"""Per-statement classification rules (internal to :mod:`pathwarden.policy.sql`).

:func:`classify_node` turns one parsed statement into a :class:`Part`: its own
class and kind from the statement type (:func:`base`), raised by anything
inside it that runs now (data-modifying CTEs, locking sub-selects, EXECUTE of
a prepared statement, side-effect functions), with the objects the tree walk
found. The most privileged contribution wins (:data:`PRECEDENCE`); within
``write`` the most destructive kind wins (:data:`WRITE_SEVERITY`), so wrapping
a DELETE in the CTE of an INSERT still reads as ``delete``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .sql_kinds import OBJECT_NAMES, SIMPLE
from .sql_tree import Facts, Fields, Unclassifiable, strings, unwrap, walk

#: Action classes from least to most privileged.
PRECEDENCE: dict[str, int] = {
    "none": -1, "read": 0, "transaction": 1, "session": 2, "maintenance": 3, "write": 4,
    "ddl": 5, "function": 6, "procedural": 7, "server_io": 8, "privilege": 9, "unknown": 10,
}
WRITE_SEVERITY: dict[str, int] = {
    "merge": 6, "delete": 5, "truncate": 5, "update": 4, "insert": 3, "copy_from_stdin": 3,
    "refresh_materialized_view": 2, "lock": 2, "select_for_update": 1, "notify": 1,
}
DML_KINDS = frozenset({"insert", "update", "delete", "merge"})


@dataclass(slots=True)
class Part:
    """A classification in the making (mutable sets, merged into one Action at the end)."""

    action: str
    kind: str
    flags: set[str] = field(default_factory=set)
    objects: dict[str, list[str]] = field(default_factory=dict)

    def add(self, sort: str, names: Iterable[str]) -> None:
        self.objects.setdefault(sort, []).extend(names)


class Env(Protocol):
    """What classification needs from the caller."""

    side_effect_functions: frozenset[str]

    def resolve(self, rangevar: Fields) -> Sequence[str]: ...

    def resolve_name(self, names: Sequence[str], temp: bool = False) -> Sequence[str]: ...

    def execute(self, name: str) -> Part: ...

    def in_schema(self, schema: str) -> Env: ...


def _rank(part: Part) -> tuple[int, int]:
    return PRECEDENCE.get(part.action, 10), (
        WRITE_SEVERITY.get(part.kind, 0) if part.action == "write" else 0)


def combine(parts: Sequence[Part]) -> Part:
    """The most privileged of ``parts`` (the first wins ties), with all flags and objects."""
    winner = parts[0]
    for part in parts[1:]:
        if _rank(part) > _rank(winner):
            winner = part
    out = Part(winner.action, winner.kind)
    for part in parts:
        out.flags |= part.flags
        for sort, names in part.objects.items():
            out.add(sort, names)
    return out


def is_side_effect(name: str, functions: frozenset[str]) -> bool:
    return name in functions or name.rpartition(".")[2] in functions


# --- the statement as a whole --------------------------------------------------

def classify_node(node_type: str, fields: Fields, env: Env) -> Part:
    """Classify one statement (and everything nested in it)."""
    if node_type == "ExplainStmt":
        inner = classify_node(*unwrap(fields.get("query")), env)
        if _explain_analyze(fields.get("options")):
            inner.flags.add("explain_analyze")
            return inner
        out = Part("read", "explain")
        for sort in ("tables", "functions"):
            out.add(sort, inner.objects.get(sort, ()))
        return out
    if node_type == "PrepareStmt":
        inner = classify_node(*unwrap(fields.get("query")), env)
        inner.flags.add("prepare")
        inner.add("prepared", [str(fields.get("name", ""))])
        for arg in fields.get("argtypes") or ():  # types only; nothing to collect
            unwrap(arg)
        return inner

    if node_type == "CreateSchemaStmt" and fields.get("schemaname"):
        # Unqualified names inside CREATE SCHEMA s ... are created and found in s.
        env = env.in_schema(str(fields["schemaname"]))
    facts = walk(node_type, fields, env.resolve)
    parts = [base(node_type, fields, env)]
    for nested_type, nested, in_cte in facts.nested:
        part = base(nested_type, nested, env)
        if in_cte and nested_type in _DML_TYPES:
            part.flags.add("data_modifying_cte")
        if part.action == "read":
            continue
        if part.action == "write" and nested_type in _DML_TYPES:
            part.flags &= _NESTED_DML_FLAGS
        parts.append(part)
    parts.append(_objects(facts, env))
    side = sorted((loc, name) for loc, name in facts.calls
                  if is_side_effect(name, env.side_effect_functions))
    side += sorted((loc, name) for loc, name in facts.attr_calls
                   if is_side_effect(name, env.side_effect_functions))
    if side:
        parts.append(Part("function", "call_" + side[0][1].rpartition(".")[2]))
    return combine(parts)


_DML_TYPES = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
_NESTED_DML_FLAGS = frozenset({"without_where", "data_modifying_cte", "returning"})


def _objects(facts: Facts, env: Env) -> Part:
    part = Part("read", "select")
    part.add("tables", facts.tables)
    functions = {name for _, name in facts.calls}
    functions.update(name for _, name in facts.attr_calls
                     if is_side_effect(name, env.side_effect_functions))
    part.add("functions", functions)
    return part


def _explain_analyze(options: Any) -> bool:
    """True if EXPLAIN's options turn ANALYZE on (or say something we cannot read)."""
    analyze = False
    for option in options or ():
        _, elem = unwrap(option)
        if str(elem.get("defname", "")).lower() != "analyze":
            continue
        arg = elem.get("arg")
        if arg is None:
            analyze = True
            continue
        arg_type, value = unwrap(arg)
        if arg_type == "Integer" and int(value.get("ival", 0)) == 0:
            continue
        if arg_type == "String" and str(value.get("sval", "")).lower() in ("false", "off"):
            continue
        if arg_type == "Boolean" and not value.get("boolval", False):
            continue
        analyze = True  # true, 1, or anything the server would reject anyway
    return analyze


# --- one node's own class ------------------------------------------------------

# Object types whose DROP/COMMENT names are relations (reported as tables).
_RELATION_OBJECTS = frozenset({"OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW",
                               "OBJECT_FOREIGN_TABLE"})


def object_name(objtype: Any) -> str:
    """``OBJECT_MATVIEW`` -> ``materialized_view``."""
    name = str(objtype or "OBJECT_UNKNOWN").removeprefix("OBJECT_")
    return OBJECT_NAMES.get(name, name.lower())


def const_text(node: Any) -> str | None:
    """The text of an ``A_Const`` (or a bare value node) as the server would flatten it."""
    node_type, fields = unwrap(node)
    if node_type == "TypeCast":
        return const_text(fields.get("arg"))
    if node_type != "A_Const":
        return None
    if fields.get("isnull"):
        return None
    for key, inner in (("sval", "sval"), ("ival", "ival"), ("fval", "fval"),
                       ("boolval", "boolval"), ("bsval", "bsval")):
        if key in fields:
            value = fields[key].get(inner, 0 if key == "ival" else "")
            if key == "boolval":
                return "on" if value else "off"
            return str(value)
    return None


def base(node_type: str, f: Fields, env: Env) -> Part:
    """The class of the statement node itself, ignoring what is nested in it."""
    handler = _HANDLERS.get(node_type)
    if handler is not None:
        return handler(f, env)
    simple = SIMPLE.get(node_type)
    if simple is not None:
        return Part(*simple)
    return Part("unknown", node_type)


def _select(f: Fields, env: Env) -> Part:
    into = f.get("intoClause")
    if into:
        part = Part("ddl", "create_table_as")
        if (into.get("rel") or {}).get("relpersistence") == "t":
            part.flags.add("temp")
        return part
    locking = f.get("lockingClause")
    if locking:
        part = Part("write", "select_for_update", {"for_update"})
        for clause in locking:
            strength = str(unwrap(clause)[1].get("strength", ""))
            part.flags.add({"LCS_FORSHARE": "for_share", "LCS_FORKEYSHARE": "for_key_share",
                            "LCS_FORNOKEYUPDATE": "for_no_key_update"}.get(strength,
                                                                           "for_update"))
        return part
    if f.get("valuesLists"):
        return Part("read", "values")
    targets = list(f.get("targetList") or [])
    if len(targets) == 1 and f.get("fromClause"):
        res = unwrap(targets[0])[1]
        val = res.get("val")
        if val and "ColumnRef" in val and int(res.get("location", -1)) < 0:
            return Part("read", "table")  # TABLE t: the parser's synthetic "*" has no location
    return Part("read", "select")


def _dml(kind: str) -> Callable[[Fields, Env], Part]:
    def handler(f: Fields, env: Env) -> Part:
        part = Part("write", kind)
        if kind in ("update", "delete") and not f.get("whereClause"):
            part.flags.add("without_where")
        if f.get("returningClause") or f.get("returningList"):
            part.flags.add("returning")
        if kind == "insert" and f.get("onConflictClause"):
            part.flags.add("on_conflict")
        return part
    return handler


def _copy(f: Fields, env: Env) -> Part:
    if f.get("is_program"):
        part = Part("server_io", "copy_program")
    elif f.get("filename") is not None:
        part = Part("server_io", "copy_from_file" if f.get("is_from") else "copy_to_file")
    elif f.get("is_from"):
        part = Part("write", "copy_from_stdin")
    else:
        part = Part("read", "copy_to_stdout")
    return part


def _create(f: Fields, env: Env) -> Part:
    rel = f.get("relation") or {}
    if rel.get("relpersistence") == "t" or _temp_schema(rel.get("schemaname")):
        return Part("ddl", "create_temp_table", {"temp"})
    return Part("ddl", "create_table")


def _temp_schema(schema: Any) -> bool:
    return isinstance(schema, str) and (
        schema == "pg_temp" or (schema.startswith("pg_temp_") and schema[8:].isdigit()))


def _create_foreign_table(f: Fields, env: Env) -> Part:
    return Part("ddl", "create_foreign_table")


def _create_table_as(f: Fields, env: Env) -> Part:
    matview = f.get("objtype") == "OBJECT_MATVIEW"
    part = Part("ddl", "create_materialized_view" if matview else "create_table_as")
    rel = (f.get("into") or {}).get("rel") or {}
    if rel.get("relpersistence") == "t" or _temp_schema(rel.get("schemaname")):
        part.flags.add("temp")
    return part


def _create_seq(f: Fields, env: Env) -> Part:
    part = Part("ddl", "create_sequence")
    seq = f.get("sequence") or {}
    if seq.get("relpersistence") == "t" or _temp_schema(seq.get("schemaname")):
        part.flags.add("temp")
    return part


def _view(f: Fields, env: Env) -> Part:
    part = Part("ddl", "create_view")
    view = f.get("view") or {}
    if view.get("relpersistence") == "t" or _temp_schema(view.get("schemaname")):
        part.flags.add("temp")
    if f.get("replace"):
        part.flags.add("replace")
    return part


def _drop(f: Fields, env: Env) -> Part:
    remove = f.get("removeType")
    part = Part("ddl", "drop_" + object_name(remove))
    if f.get("behavior") == "DROP_CASCADE":
        part.flags.add("cascade")
    if remove in _RELATION_OBJECTS:
        part.add("tables", [table for obj in f.get("objects") or ()
                            for table in env.resolve_name(strings(unwrap(obj)[1].get("items")))])
    return part


def _alter_table(f: Fields, env: Env) -> Part:
    part = Part("ddl", "alter_" + object_name(f.get("objtype")))
    for cmd in f.get("cmds") or ():
        _, c = unwrap(cmd)
        subtype = c.get("subtype")
        if c.get("behavior") == "DROP_CASCADE":
            part.flags.add("cascade")
        if subtype == "AT_ChangeOwner":
            part = Part("privilege", "alter_owner", part.flags)
        elif subtype in ("AT_EnableRowSecurity", "AT_DisableRowSecurity",
                         "AT_ForceRowSecurity", "AT_NoForceRowSecurity"):
            part.flags.add("row_security")
    return part


def _rename(f: Fields, env: Env) -> Part:
    rename = f.get("renameType")
    if rename == "OBJECT_ROLE":
        return Part("privilege", "alter_role", {"rename"})
    part = Part("ddl", "rename")
    if rename in _RELATION_OBJECTS and not f.get("relation") and f.get("object"):
        part.add("tables", env.resolve_name(strings(unwrap(f["object"])[1].get("items"))))
    return part


def _alter_object_schema(f: Fields, env: Env) -> Part:
    return Part("ddl", "alter_" + object_name(f.get("objectType")), {"set_schema"})


def _comment(f: Fields, env: Env) -> Part:
    part = Part("ddl", "comment")
    obj = f.get("object")
    if f.get("objtype") in _RELATION_OBJECTS and obj:
        part.add("tables", env.resolve_name(strings(unwrap(obj)[1].get("items"))))
    return part


def _define(f: Fields, env: Env) -> Part:
    return Part("ddl", "create_" + object_name(f.get("kind")))


def _create_function(f: Fields, env: Env) -> Part:
    part = Part("ddl", "create_procedure" if f.get("is_procedure") else "create_function")
    if f.get("replace"):
        part.flags.add("replace")
    return part


def _grant(f: Fields, env: Env) -> Part:
    part = Part("privilege", "grant" if f.get("is_grant") else "revoke")
    if f.get("behavior") == "DROP_CASCADE":
        part.flags.add("cascade")
    if f.get("targtype") == "ACL_TARGET_ALL_IN_SCHEMA" and f.get("objtype") == "OBJECT_TABLE":
        part.add("tables", [f"{schema}.*" for schema in strings(f.get("objects"))])
    return part


def _grant_role(f: Fields, env: Env) -> Part:
    return Part("privilege", "grant" if f.get("is_grant") else "revoke", {"role_membership"})


def _vacuum(f: Fields, env: Env) -> Part:
    return Part("maintenance", "vacuum" if f.get("is_vacuumcmd") else "analyze")


def _truncate(f: Fields, env: Env) -> Part:
    part = Part("write", "truncate", {"without_where"})
    if f.get("behavior") == "DROP_CASCADE":
        part.flags.add("cascade")
    if f.get("restart_seqs"):
        part.flags.add("restart_identity")
    return part


def _fetch(f: Fields, env: Env) -> Part:
    return Part("read", "move" if f.get("ismove") else "fetch")


def _discard(f: Fields, env: Env) -> Part:
    target = str(f.get("target", "DISCARD_ALL")).removeprefix("DISCARD_").lower()
    return Part("session", "discard", {target})


def _deallocate(f: Fields, env: Env) -> Part:
    part = Part("session", "deallocate")
    if f.get("isall") or f.get("name") is None:
        part.flags.add("all")
    else:
        part.add("prepared", [str(f["name"])])
    return part


def _execute(f: Fields, env: Env) -> Part:
    name = str(f.get("name", ""))
    part = env.execute(name)
    part.flags.discard("prepare")
    part.flags.add("execute")
    part.objects["prepared"] = [name]
    return part


_TRANSACTION_KINDS = {
    "TRANS_STMT_BEGIN": "begin", "TRANS_STMT_START": "begin", "TRANS_STMT_COMMIT": "commit",
    "TRANS_STMT_ROLLBACK": "rollback", "TRANS_STMT_SAVEPOINT": "savepoint",
    "TRANS_STMT_RELEASE": "release_savepoint", "TRANS_STMT_ROLLBACK_TO": "rollback_to_savepoint",
    "TRANS_STMT_PREPARE": "prepare_transaction", "TRANS_STMT_COMMIT_PREPARED": "commit_prepared",
    "TRANS_STMT_ROLLBACK_PREPARED": "rollback_prepared",
}


def _transaction(f: Fields, env: Env) -> Part:
    kind = _TRANSACTION_KINDS.get(str(f.get("kind")))
    if kind is None:
        return Part("unknown", "TransactionStmt")
    part = Part("transaction", kind)
    if kind in ("prepare_transaction", "commit_prepared", "rollback_prepared"):
        part.flags.add("two_phase")
    if f.get("chain"):
        part.flags.add("chain")
    if f.get("savepoint_name") is not None:
        part.add("savepoints", [str(f["savepoint_name"])])
    return part


_PRIVILEGED_SETTINGS = {"role": "role", "session_authorization": "session_authorization"}
# Settings that bypass integrity checks, triggers or the server's own audit: a
# `privilege` action, never session plumbing.
_GUARDED_SETTINGS = frozenset({
    "session_replication_role", "allow_system_table_mods", "zero_damaged_pages",
    "ignore_checksum_failure", "ignore_system_indexes", "lo_compat_privileges",
    "row_security", "default_transaction_read_only", "transaction_read_only",
    "session_preload_libraries", "local_preload_libraries", "jit_provider",
})
_GUARDED_PREFIXES = ("log_", "pgaudit.", "debug_", "trace_")


def _guarded(name: str) -> bool:
    return name in _GUARDED_SETTINGS or name.startswith(_GUARDED_PREFIXES)


def _set(f: Fields, env: Env) -> Part:
    kind = str(f.get("kind", ""))
    # GUC names are case-insensitive: SET "ROLE" = x is SET ROLE.
    name = str(f.get("name") or "").lower()
    local = bool(f.get("is_local"))
    if kind == "VAR_SET_MULTI":
        part = Part("session", "set_transaction")
        if name.startswith("session characteristics"):
            part.flags.add("session_characteristics")
        elif name == "transaction snapshot":
            part.flags.add("snapshot")
    elif kind == "VAR_RESET_ALL":
        part = Part("session", "reset", {"all"})
    elif name in _PRIVILEGED_SETTINGS:
        verb = "reset" if kind == "VAR_RESET" else "set"
        part = Part("privilege", f"{verb}_{_PRIVILEGED_SETTINGS[name]}")
    elif _guarded(name):
        verb = "reset" if kind == "VAR_RESET" else "set"
        part = Part("privilege", f"{verb}_privileged_setting")
    elif kind == "VAR_RESET":
        part = Part("session", "reset")
    elif name == "search_path":
        part = Part("session", "set_search_path")
        if kind == "VAR_SET_DEFAULT":
            part.flags.add("default")
            part.add("search_path", ["public"])
        else:
            part.add("search_path", search_path_values(f.get("args")))
    else:
        part = Part("session", "set")
        if kind == "VAR_SET_DEFAULT":
            part.flags.add("default")
    if name and kind != "VAR_SET_MULTI":
        part.add("settings", [name])
    if kind == "VAR_SET_VALUE":
        values = [const_text(arg) for arg in f.get("args") or ()]
        part.add("values", [v for v in values if v is not None])
    if local:
        part.flags.add("local")
    return part


def search_path_values(args: Any) -> list[str]:
    """Schemas named by ``SET search_path`` arguments (each argument is one schema name)."""
    out = []
    for arg in args or ():
        value = const_text(arg)
        if value is None:
            raise Unclassifiable("cannot classify: unreadable search_path value")
        if value:
            out.append(value)  # "$user" is resolved against the session's login user
    return out


_HANDLERS: dict[str, Callable[[Fields, Env], Part]] = {
    "SelectStmt": _select,
    "InsertStmt": _dml("insert"),
    "UpdateStmt": _dml("update"),
    "DeleteStmt": _dml("delete"),
    "MergeStmt": _dml("merge"),
    "CopyStmt": _copy,
    "CreateStmt": _create,
    "CreateForeignTableStmt": _create_foreign_table,
    "CreateTableAsStmt": _create_table_as,
    "CreateSeqStmt": _create_seq,
    "ViewStmt": _view,
    "DropStmt": _drop,
    "AlterTableStmt": _alter_table,
    "RenameStmt": _rename,
    "AlterObjectSchemaStmt": _alter_object_schema,
    "CommentStmt": _comment,
    "DefineStmt": _define,
    "CreateFunctionStmt": _create_function,
    "GrantStmt": _grant,
    "GrantRoleStmt": _grant_role,
    "VacuumStmt": _vacuum,
    "TruncateStmt": _truncate,
    "FetchStmt": _fetch,
    "DiscardStmt": _discard,
    "DeallocateStmt": _deallocate,
    "ExecuteStmt": _execute,
    "TransactionStmt": _transaction,
    "VariableSetStmt": _set,
    "VariableShowStmt": lambda f, env: Part(
        "read", "show", objects={"settings": [str(f.get("name", "")).lower()]}),
}

#: Statement kinds after which a multi-statement text's context changes.
STATEFUL_KINDS = frozenset({
    "set_search_path", "reset", "discard", "deallocate", "begin", "commit", "rollback",
    "savepoint", "release_savepoint", "rollback_to_savepoint", "prepare_transaction",
})


def frozen_objects(objects: Mapping[str, list[str]]) -> dict[str, tuple[str, ...]]:
    """Sorted, de-duplicated object names per sort (order kept for search_path/values)."""
    out: dict[str, tuple[str, ...]] = {}
    for sort, names in objects.items():
        if not names:
            continue
        if sort in ("search_path", "values"):
            out[sort] = tuple(names)
        else:
            out[sort] = tuple(sorted(set(names)))
    return out
