"""Parse SQL with the server's own parser and collect what a statement touches.

Internal to :mod:`pathwarden.policy.sql`. The parser is libpg_query (via
pglast): PostgreSQL's grammar compiled as a library, so comments, dollar
quoting, unicode escapes and keyword games lex exactly as they do in the
server. We ask it for its JSON parse tree (``parse_sql_json`` costs a fraction
of ``parse_sql``, which builds Python objects) and walk the resulting plain
dicts and lists.

In that JSON a ``Node *`` field holds a one-key wrapper ``{"RangeVar": {...}}``
while a field typed as a concrete struct (``RangeVar *relation``) holds the
struct's fields directly; :data:`STRUCT_FIELDS`, derived from pglast's typed
AST classes, says which is which. Anything else is an unexpected shape and
raises :class:`Unclassifiable` (fail closed).

The walk is iterative (no recursion limit on deep expression chains) and
scope-aware: an unqualified name that matches a visible CTE is that CTE, not a
table, except as the target of INSERT/UPDATE/DELETE/MERGE or SELECT INTO,
where PostgreSQL never resolves CTEs.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from pglast import ast as _pg_ast
from pglast import parser as _pg_parser

Fields = dict[str, Any]
Resolver = Callable[[Fields], Sequence[str]]


class Unclassifiable(Exception):
    """The input cannot be classified safely; the message says why."""


def _struct_fields() -> dict[str, dict[str, str]]:
    nodes = {name for name, cls in inspect.getmembers(_pg_ast, inspect.isclass)
             if issubclass(cls, _pg_ast.Node)}
    out: dict[str, dict[str, str]] = {}
    for name in nodes:
        slots = getattr(getattr(_pg_ast, name), "__slots__", None)
        if not isinstance(slots, dict):
            continue
        for field_name, info in slots.items():
            base = str(info.c_type).rstrip("*")
            if base in nodes and base not in ("Node", "List", "Expr", "ValUnion"):
                out.setdefault(name, {})[field_name] = base
    return out


#: For each node type, its fields that hold an unwrapped struct, and the struct's type.
STRUCT_FIELDS: dict[str, dict[str, str]] = _struct_fields()
_NO_STRUCTS: dict[str, str] = {}

# --- loading -------------------------------------------------------------------

_JSON_TOKEN = re.compile(
    r'\s*(?:([{}\[\],:])|("(?:[^"\\]|\\.)*")|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|(true|false|null))'
)
_JSON_CONSTS: dict[str, Any] = {"true": True, "false": False, "null": None}


def _loads_deep(text: str) -> Any:
    """json.loads without recursion: for parse trees nested deeper than the C decoder allows.

    The input is libpg_query's own JSON output (not client text), so a token
    regex is a faithful reader here.
    """
    stack: list[Any] = []
    keys: list[str | None] = []
    root: Any = None
    have_root = False
    pos = 0
    end = len(text)

    def put(value: Any) -> None:
        nonlocal root, have_root
        if not stack:
            root, have_root = value, True
        elif isinstance(stack[-1], list):
            stack[-1].append(value)
        else:
            key = keys[-1]
            if key is None:
                raise Unclassifiable("cannot classify: malformed parse tree")
            stack[-1][key] = value
            keys[-1] = None

    while pos < end:
        match = _JSON_TOKEN.match(text, pos)
        if match is None:
            if text[pos:].strip():
                raise Unclassifiable("cannot classify: malformed parse tree")
            break
        pos = match.end()
        punct, string, number, const = match.groups()
        if punct == "{":
            value: Any = {}
            put(value)
            stack.append(value)
            keys.append(None)
        elif punct == "[":
            value = []
            put(value)
            stack.append(value)
            keys.append(None)
        elif punct in ("}", "]"):
            stack.pop()
            keys.pop()
        elif punct in (",", ":"):
            continue
        elif string is not None:
            decoded = json.loads(string)
            if stack and isinstance(stack[-1], dict) and keys[-1] is None:
                keys[-1] = decoded  # an object key; its value follows the ':'
            else:
                put(decoded)
        elif number is not None:
            put(float(number) if any(c in number for c in ".eE") else int(number))
        else:
            put(_JSON_CONSTS[const])
    if stack or not have_root:
        raise Unclassifiable("cannot classify: malformed parse tree")
    return root


def parse(sql: str) -> list[tuple[str, Fields, int, int]]:
    """Parse ``sql``: one ``(node type, fields, byte offset, byte length)`` per statement.

    A byte length of 0 means "to the end of the text". Raises
    :class:`Unclassifiable` with the server's own error message on a syntax error.
    """
    try:
        raw = _pg_parser.parse_sql_json(sql)
    except _pg_parser.ParseError as exc:
        raise Unclassifiable(f"cannot parse: {exc}") from None
    try:
        tree = json.loads(raw)
    except RecursionError:
        tree = _loads_deep(raw)
    out: list[tuple[str, Fields, int, int]] = []
    for item in tree.get("stmts", ()):
        node_type, fields = unwrap(item["stmt"])
        out.append((node_type, fields, int(item.get("stmt_location", 0)),
                    int(item.get("stmt_len", 0))))
    return out


def unwrap(node: Any) -> tuple[str, Fields]:
    """``{"Type": {fields}}`` -> ``("Type", fields)``; anything else is a shape error."""
    if not isinstance(node, dict) or len(node) != 1:
        raise Unclassifiable("cannot classify: unexpected parse tree shape")
    ((node_type, fields),) = node.items()
    if not node_type[:1].isupper() or not isinstance(fields, dict):
        raise Unclassifiable(f"cannot classify: unexpected parse tree node {node_type!r}")
    return node_type, fields


def strings(items: Any) -> list[str]:
    """The ``sval`` of each ``String`` node in a list (other nodes are skipped)."""
    out: list[str] = []
    for item in items or ():
        if isinstance(item, dict) and "String" in item:
            out.append(str(item["String"].get("sval", "")))
    return out


# --- walking -------------------------------------------------------------------

DEFERRED = 1  # inside a definition (rule action, function body, view query): not run now
IN_CTE = 2    # inside a WITH list entry
TARGET = 4    # a RangeVar that is a DML/INTO target: CTE names never hide it
SKIP = 8      # RangeVars that are not table references (FOR UPDATE OF <alias>)

_TARGET_FIELDS = {
    ("InsertStmt", "relation"), ("UpdateStmt", "relation"), ("DeleteStmt", "relation"),
    ("MergeStmt", "relation"), ("IntoClause", "rel"),
}
_DEFERRED_FIELDS = {
    ("RuleStmt", "actions"), ("RuleStmt", "whereClause"),
    ("CreateFunctionStmt", "sql_body"), ("CreateFunctionStmt", "options"),
    ("AlterFunctionStmt", "actions"), ("ViewStmt", "query"),
    ("AlterRoleSetStmt", "setstmt"), ("AlterDatabaseSetStmt", "setstmt"),
    ("AlterSystemStmt", "setstmt"), ("CreateTrigStmt", "whenClause"),
}
_LEAVES = frozenset({"A_Const", "String", "Integer", "Float", "Boolean", "BitString",
                     "A_Star", "ParamRef", "RoleSpec", "SQLValueFunction"})


class Facts:
    """What one statement's tree mentions."""

    __slots__ = ("attr_calls", "calls", "nested", "tables")

    def __init__(self) -> None:
        self.tables: set[str] = set()
        self.calls: list[tuple[int, str]] = []        # (location, lower-case qualified name)
        self.attr_calls: list[tuple[int, str]] = []   # x.f / (x).f: f(x) if f is a function
        self.nested: list[tuple[str, Fields, bool]] = []  # (type, fields, in a CTE)


def walk(root_type: str, root: Fields, resolve: Resolver) -> Facts:
    """Collect tables, function calls and nested statements under ``root``."""
    facts = Facts()
    stack: list[tuple[str, Fields, frozenset[str], int]] = [(root_type, root, frozenset(), 0)]
    first = True
    while stack:
        node_type, fields, scope, flags = stack.pop()
        if node_type in _LEAVES:
            continue
        if node_type == "RangeVar":
            if not flags & SKIP:
                schema = fields.get("schemaname")
                name = fields.get("relname", "")
                if schema or flags & TARGET or name not in scope:
                    facts.tables.update(resolve(fields))
            continue
        if node_type == "FuncCall":
            name = ".".join(strings(fields.get("funcname"))).lower()
            facts.calls.append((int(fields.get("location", -1)), name))
        elif node_type == "ColumnRef":
            parts = fields.get("fields") or []
            if len(parts) >= 2 and isinstance(parts[-1], dict) and "String" in parts[-1]:
                facts.attr_calls.append((int(fields.get("location", -1)),
                                         str(parts[-1]["String"].get("sval", "")).lower()))
            continue
        elif node_type == "A_Indirection":
            for sval in strings(fields.get("indirection")):
                facts.attr_calls.append((-1, sval.lower()))
        elif node_type.endswith("Stmt") and not first and not flags & DEFERRED:
            facts.nested.append((node_type, fields, bool(flags & IN_CTE)))
        first = False

        structs = STRUCT_FIELDS.get(node_type, _NO_STRUCTS)
        with_clause = fields.get("withClause")
        if with_clause:
            ctes = [unwrap(c)[1] for c in with_clause.get("ctes") or ()]
            names = [str(c.get("ctename", "")) for c in ctes]
            recursive = bool(with_clause.get("recursive"))
            for i, cte in enumerate(ctes):
                query = cte.get("ctequery")
                if query is None:
                    continue
                visible = scope.union(names if recursive else names[:i])
                child_type, child = unwrap(query)
                stack.append((child_type, child, visible, (flags | IN_CTE) & ~(TARGET | SKIP)))
            scope = scope.union(names)

        for key, value in fields.items():
            if key == "withClause" or value is None or isinstance(value, (str, int, float, bool)):
                continue
            child_flags = flags & ~(TARGET | SKIP)
            if (node_type, key) in _TARGET_FIELDS:
                child_flags |= TARGET
            elif (node_type, key) in _DEFERRED_FIELDS:
                child_flags |= DEFERRED
            elif node_type == "LockingClause" and key == "lockedRels":
                child_flags |= SKIP
            if isinstance(value, dict):
                if not value:
                    continue  # a NULL node
                struct = structs.get(key)
                if struct is not None:
                    stack.append((struct, value, scope, child_flags))
                else:
                    child_type, child = unwrap(value)
                    stack.append((child_type, child, scope, child_flags))
            elif isinstance(value, list):
                for item in reversed(value):
                    if isinstance(item, dict) and not item:
                        continue  # a NULL list element
                    child_type, child = unwrap(item)
                    stack.append((child_type, child, scope, child_flags))
            else:
                raise Unclassifiable(f"cannot classify: unexpected value in {node_type}.{key}")
    return facts
