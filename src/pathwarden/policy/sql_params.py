"""Which column (or option) each ``$n`` parameter of a statement is bound to.

Masking uses it to treat a bind parameter like the column it is written to or
compared with: ``insert into users (name, password) values ($1, $2)`` binds
``$2`` to ``password``, so its value is masked whole in the audit trail, as
the column's values are in results. Read with PostgreSQL's own parser; the
shapes recognised are the ones drivers and ORMs generate:

- ``INSERT INTO t (c1, c2) VALUES ($1, $2), ($3, $4)``
- ``UPDATE t SET c = $1`` (and ``ON CONFLICT ... DO UPDATE SET c = $1``)
- ``c = $1``, ``$1 = c``, ``c IN ($1, $2)``, ``c LIKE $1`` anywhere in a condition
- ``CREATE/ALTER ROLE ... PASSWORD $1`` (as ``password``)

Anything else maps to nothing (detectors still apply to every parameter).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

import pglast

__all__ = ["param_columns"]

_EMPTY: Mapping[int, str] = {}


@lru_cache(maxsize=2048)
def param_columns(sql: str) -> Mapping[int, str]:
    """``{parameter number: column name}`` for ``sql``; empty when it does not parse."""
    if "$" not in sql:
        return _EMPTY
    try:
        tree = json.loads(pglast.parser.parse_sql_json(sql))
    except Exception:
        return _EMPTY
    found: dict[int, str] = {}
    for node in _walk(tree):
        for key, value in node.items():
            if not isinstance(value, dict):
                continue
            if key == "InsertStmt":
                _insert(value, found)
            elif key == "ResTarget":
                _assign(value, found)
            elif key == "A_Expr":
                _compare(value, found)
            elif key == "DefElem" and value.get("defname") == "password":
                number = _param(value.get("arg"))
                if number is not None:
                    found[number] = "password"
    return found


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _param(node: Any) -> int | None:
    if isinstance(node, dict):
        ref = node.get("ParamRef")
        if isinstance(ref, dict) and isinstance(ref.get("number"), int):
            return int(ref["number"])
        cast = node.get("TypeCast")  # $1::text
        if isinstance(cast, dict):
            return _param(cast.get("arg"))
    return None


def _column(node: Any) -> str | None:
    if isinstance(node, dict):
        ref = node.get("ColumnRef")
        if isinstance(ref, dict):
            fields = ref.get("fields") or []
            last = fields[-1] if fields else None
            if isinstance(last, dict) and isinstance(last.get("String"), dict):
                return str(last["String"].get("sval", "")) or None
        cast = node.get("TypeCast")
        if isinstance(cast, dict):
            return _column(cast.get("arg"))
    return None


def _insert(stmt: dict[str, Any], found: dict[int, str]) -> None:
    names = [c.get("ResTarget", {}).get("name") for c in stmt.get("cols") or ()]
    select = (stmt.get("selectStmt") or {}).get("SelectStmt") or {}
    for row in select.get("valuesLists") or ():
        items = (row.get("List") or {}).get("items") or ()
        for name, item in zip(names, items, strict=False):
            number = _param(item)
            if number is not None and name:
                found[number] = name


def _assign(target: dict[str, Any], found: dict[int, str]) -> None:
    name = target.get("name")
    number = _param(target.get("val"))
    if name and number is not None:
        found[number] = str(name)


def _compare(expr: dict[str, Any], found: dict[int, str]) -> None:
    left, right = expr.get("lexpr"), expr.get("rexpr")
    column = _column(left)
    if column is not None:
        values = right.get("List", {}).get("items", ()) if isinstance(right, dict) and (
            "List" in right) else (right,)
        for value in values:
            number = _param(value)
            if number is not None:
                found[number] = column
        return
    column = _column(right)
    number = _param(left)
    if column is not None and number is not None:
        found[number] = column
