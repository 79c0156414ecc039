"""The ``policies:`` section of the configuration: models, rule parsing and matching.

Theory of operation: a policy names *who* (``identities``), *where*
(``connections``) and three rule lists, ``allow``, ``require_approval`` and
``deny``. Each rule is written as a string naming an action class (``read``)
or kind (``delete``), or as a one-key mapping ``{class_or_kind: conditions}``.
Parsing happens once, when the configuration is validated: every rule becomes
an immutable :class:`Rule` whose :meth:`Rule.matches` is a handful of set and
glob tests, so the engine never looks at YAML again. Validation is strict and
explicit: an unknown class, kind, condition or flag is an error naming the
offending value, the valid alternatives and, through ``ctx["at"]``, the exact
place inside the rule so the config loader can print ``file:line:column``.

Matching direction matters. In ``deny`` and ``require_approval`` a condition
over objects matches when ANY table/function/setting of the action matches (one
bad object is enough to stop the statement); in ``allow`` it matches only when
EVERY such object of the action matches and there is at least one (a statement
is allowed only if everything it touches is covered). ``{function: [names]}``
matches whatever the action's class in ``deny``/``require_approval``; in
``allow`` it matches only ``function``-class actions (side-effect calls). Both
asymmetries fail closed: a condition can never widen an allow to objects it
does not name.

SSH operations (:mod:`.shell` classifies exec command lines; the SSH gateway
builds the others) add the classes ``exec``, ``shell``, ``file_transfer`` and
``forwarding``, with their own conditions (``commands``, ``programs``,
``paths``, ``targets``; :data:`CLASS_CONDITIONS` says which class takes which).
They fail closed the same way, and more:

- ``programs`` in ``allow`` match the program as written (every program of the
  action, wrappers included); in ``deny``/``require_approval`` the basename
  too (``/usr/bin/rm`` is ``rm``), and any one program is enough.
- ``paths`` are matched after lexical normalisation; a relative or ``~`` path
  (a redirection in an exec) matches an ``allow`` pattern only as written, but
  a ``deny``/``require_approval`` pattern whenever some tail of the pattern
  matches it, since the directory it resolves against is not known here.
- In ``allow``, an ``opaque`` action (a shell program the classifier could not
  read) is matched only by a rule naming the kind ``opaque``, and an action
  flagged ``dynamic`` or ``assignment`` only by a rule whose ``flags:`` lists
  that flag: ``allow: [exec]`` never covers what the gateway could not see.
- A kind rule in ``allow`` matches its own class only; in ``deny`` and
  ``require_approval`` it matches that kind in any class. This matters for the
  two kinds whose name is taken (:data:`QUALIFIED_KINDS`): the SFTP
  ``rename`` (``rename`` alone is the SQL ``ddl`` kind) and the ``shell``
  kind, written ``{file_transfer: {kinds: [rename]}}`` and ``shell``.

This module must not import :mod:`pathwarden.config` (the config schema
imports it).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator
from pydantic_core import PydanticCustomError

from ..model import Action, ConnectionRef, Identity
from .shell import normalize_path

__all__ = [
    "ACTION_CLASSES",
    "ACTION_FLAGS",
    "ALLOW_EVERYTHING",
    "ALL_ACTION_CLASSES",
    "CLASS_CONDITIONS",
    "CONDITION_KEYS",
    "KIND_CLASS",
    "QUALIFIED_KINDS",
    "RULE_SECTIONS",
    "SSH_ACTION_CLASSES",
    "SSH_CLASSES",
    "SSH_FLAGS",
    "SSH_KIND_CLASS",
    "ConnectionMatcher",
    "IdentityMatcher",
    "PolicyConfig",
    "Rule",
    "RuleSection",
    "class_of_kind",
    "kinds_of",
    "parse_connection_entry",
    "parse_identity_entry",
    "parse_rule",
    "render_value",
]

# -- vocabulary -----------------------------------------------------------------

# Objects PostgreSQL has CREATE/ALTER/DROP statements for (ddl kinds are <verb>_<object>).
_DDL_OBJECTS = (
    "access_method", "aggregate", "cast", "collation", "conversion", "database", "domain",
    "event_trigger", "extension", "foreign_data_wrapper", "foreign_table", "function", "index",
    "language", "materialized_view", "operator", "operator_class", "operator_family", "policy",
    "procedure", "publication", "routine", "rule", "schema", "sequence", "server", "statistics",
    "subscription", "table", "tablespace", "text_search_configuration",
    "text_search_dictionary", "text_search_parser", "text_search_template", "transform",
    "trigger", "type", "view",
)

#: Every SQL action class and its kinds (see docs/policy.md). ``function``
#: kinds are ``call_<function name>`` and ``unknown`` kinds are parser node
#: names; neither can be listed, so both sets are empty here. Each kind belongs
#: to exactly one class, so a kind alone names it in a rule.
ACTION_CLASSES: Mapping[str, frozenset[str]] = {
    "read": frozenset({
        "select", "values", "table", "show", "explain", "fetch", "declare_cursor",
        "close_cursor", "move", "copy_to_stdout", "listen", "unlisten",
    }),
    "write": frozenset({
        "insert", "update", "delete", "merge", "copy_from_stdin", "select_for_update",
        "notify", "truncate", "lock", "refresh_materialized_view",
    }),
    "ddl": frozenset(
        {f"{verb}_{obj}" for verb in ("create", "alter", "drop") for obj in _DDL_OBJECTS}
        | {"create_temp_table", "create_table_as", "comment", "rename",
           "import_foreign_schema", "alter_extension_dependency", "write_system_catalog"}
    ),
    "privilege": frozenset({
        "grant", "revoke", "create_role", "alter_role", "drop_role", "set_role", "reset_role",
        "set_session_authorization", "reset_session_authorization", "alter_default_privileges",
        "alter_system", "security_label", "reassign_owned", "drop_owned",
        "create_user_mapping", "alter_user_mapping", "drop_user_mapping", "load", "alter_owner",
        "write_role_catalog", "set_privileged_setting", "reset_privileged_setting",
    }),
    "function": frozenset(),
    "procedural": frozenset({"do", "call"}),
    "server_io": frozenset({"copy_program", "copy_from_file", "copy_to_file"}),
    "transaction": frozenset({
        "begin", "commit", "rollback", "savepoint", "release_savepoint",
        "rollback_to_savepoint", "prepare_transaction", "commit_prepared", "rollback_prepared",
    }),
    "session": frozenset({
        "set", "reset", "discard", "deallocate", "set_search_path", "set_transaction",
        "set_constraints",
    }),
    "maintenance": frozenset({"vacuum", "analyze", "cluster", "reindex", "checkpoint"}),
    "unknown": frozenset(),
}

#: The action classes of SSH operations and their kinds (docs/policy.md, "SSH
#: operations"): ``exec`` is one command of an exec command line
#: (:mod:`.shell`), ``shell`` an interactive shell, ``file_transfer`` an SFTP
#: request or a legacy scp (``upload``/``download``), ``forwarding`` a port,
#: agent, X11 or socket forwarding request.
SSH_ACTION_CLASSES: Mapping[str, frozenset[str]] = {
    "exec": frozenset({"command", "assignment", "opaque"}),
    "shell": frozenset({"shell"}),
    "file_transfer": frozenset({
        "read_file", "write_file", "list_dir", "stat", "remove", "rename", "mkdir", "rmdir",
        "symlink", "set_attributes", "upload", "download", "sftp",
    }),
    "forwarding": frozenset({"local_port", "remote_port", "agent", "x11", "unix_socket"}),
}

#: Every action class, SQL then SSH.
ALL_ACTION_CLASSES: Mapping[str, frozenset[str]] = {**ACTION_CLASSES, **SSH_ACTION_CLASSES}

#: The classes of SSH operations.
SSH_CLASSES: frozenset[str] = frozenset(SSH_ACTION_CLASSES)

#: kind -> its class, for every listable SQL kind.
KIND_CLASS: Mapping[str, str] = {
    kind: cls for cls, kinds in ACTION_CLASSES.items() for kind in kinds
}

#: SSH kinds whose name is already a class or a SQL kind: they are named only
#: under their class. ``rename`` alone is the ``ddl`` kind, the SFTP one is
#: ``{file_transfer: {kinds: [rename]}}``; the rule ``shell`` is the class,
#: whose only kind is ``shell``.
QUALIFIED_KINDS: Mapping[str, frozenset[str]] = {
    cls: taken for cls, kinds in SSH_ACTION_CLASSES.items()
    if (taken := frozenset(k for k in kinds if k in KIND_CLASS or k in ALL_ACTION_CLASSES))
}

#: kind -> its class, for every SSH kind that a kind alone can name.
SSH_KIND_CLASS: Mapping[str, str] = {
    kind: cls for cls, kinds in SSH_ACTION_CLASSES.items() for kind in kinds
    if kind not in QUALIFIED_KINDS.get(cls, ())
}

#: The flags of SSH actions: exec command lines (policy/shell.py), sessions, transfers.
SSH_FLAGS: frozenset[str] = frozenset({
    "dynamic", "assignment", "redirect", "write_redirect", "pipeline", "sequence",
    "background", "substitution", "nested", "pty", "recursive", "outside_home",
})

#: Flags the classifiers set on actions; ``flags:`` conditions may name these.
ACTION_FLAGS: frozenset[str] = frozenset({
    # statements
    "without_where", "returning", "data_modifying_cte", "on_conflict", "explain_analyze",
    "prepare", "execute",
    # row locks of SELECT ... FOR UPDATE/SHARE
    "for_update", "for_no_key_update", "for_share", "for_key_share",
    # ddl and privilege
    "temp", "cascade", "replace", "rename", "set_schema", "row_security", "role_membership",
    "restart_identity",
    # transaction and session
    "two_phase", "chain", "local", "default", "all", "plans", "sequences",
    "session_characteristics", "snapshot",
}) | SSH_FLAGS

#: Keys a rule's condition mapping may hold (CLASS_CONDITIONS: which class takes which).
CONDITION_KEYS: tuple[str, ...] = (
    "tables", "kinds", "functions", "settings", "without_where", "flags",
    "commands", "programs", "paths", "targets",
)

_SQL_CONDITIONS = ("tables", "kinds", "functions", "settings", "without_where", "flags")
#: The conditions each class's rules may use.
CLASS_CONDITIONS: Mapping[str, tuple[str, ...]] = {
    cls: _SQL_CONDITIONS for cls in ACTION_CLASSES
} | {
    "exec": ("kinds", "flags", "commands", "programs", "paths"),
    "shell": ("kinds", "flags"),
    "file_transfer": ("kinds", "flags", "paths"),
    "forwarding": ("kinds", "flags", "targets"),
}

#: In ``allow``, actions of these kinds are matched only by a rule naming the kind ...
_NAMED_ONLY_KINDS = frozenset({"opaque"})
#: ... and actions with these flags only by a rule listing the flag in ``flags:``.
_LISTED_ONLY_FLAGS = frozenset({"dynamic", "assignment"})

#: An ``allow`` list that covers every action, fail-closed ones included (what a
#: connection's ``allow_all`` means).
ALLOW_EVERYTHING: tuple[object, ...] = (
    *ALL_ACTION_CLASSES,
    "opaque",
    {"exec": {"flags": ["dynamic"]}},
    {"exec": {"flags": ["assignment"]}},
    {"exec": {"flags": ["dynamic", "assignment"]}},
)

RuleSection = Literal["allow", "require_approval", "deny"]
#: The rule lists of a policy, in the order the engine consults them.
RULE_SECTIONS: tuple[RuleSection, ...] = ("deny", "require_approval", "allow")

_MAX_LISTED_KINDS = 30
_FUNCTION_KIND = re.compile(r"call_[a-z_][a-z0-9_$.]*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def class_of_kind(kind: str) -> str | None:
    """The class a kind belongs to (``call_<f>`` -> ``function``); None if unknown.

    Kinds in :data:`QUALIFIED_KINDS` are not looked up here: ``rename`` is the
    ``ddl`` kind, ``shell`` the class.
    """
    cls = KIND_CLASS.get(kind)
    if cls is None:
        if _FUNCTION_KIND.fullmatch(kind):
            return "function"
        return SSH_KIND_CLASS.get(kind)
    return cls


def kinds_of(cls: str) -> frozenset[str]:
    """Every listable kind of ``cls`` (SQL or SSH), those named only under it included."""
    return ALL_ACTION_CLASSES.get(cls, frozenset())


# -- rendering --------------------------------------------------------------------


def render_value(value: object) -> str:
    """Render a parsed YAML value in compact flow style, as users write rules."""
    if isinstance(value, Mapping):
        inner = ", ".join(f"{render_value(k)}: {render_value(v)}" for k, v in value.items())
        return "{" + inner + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(render_value(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def _error(detail: str, at: tuple[str | int, ...] = ()) -> PydanticCustomError:
    ctx: dict[str, Any] = {"detail": detail}
    if at:
        ctx["at"] = at
    return PydanticCustomError("policy", "{detail}", ctx)


def _suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.7)
    return f"; did you mean {close[0]!r}?" if close else ""


# -- rules ---------------------------------------------------------------------------


def _match_table(pattern: str, name: str) -> bool:
    return fnmatchcase(name, pattern)


def _match_function(pattern: str, name: str, loose: bool) -> bool:
    """Function names match by last component unless the pattern is schema-qualified.

    ``loose`` (deny/approval) also lets a qualified pattern match an unqualified
    call of the same name: which schema such a call resolves to is unknown here.
    """
    if "." in pattern:
        if "." in name or not loose:
            return fnmatchcase(name, pattern)
        return fnmatchcase(name, pattern.rsplit(".", 1)[1])
    return fnmatchcase(name.rsplit(".", 1)[-1], pattern)


def _match_setting(pattern: str, name: str) -> bool:
    return fnmatchcase(name.lower(), pattern)


def _match_program(pattern: str, name: str, loose: bool) -> bool:
    """Programs match as written; ``loose`` (deny/approval) also by basename.

    Loose matching also lets a pattern with a directory (``/usr/bin/rm``) match
    the bare name (``rm``): which file a PATH lookup finds is unknown here.
    """
    if fnmatchcase(name, pattern):
        return True
    if not loose:
        return False
    if fnmatchcase(name.rsplit("/", 1)[-1], pattern):
        return True
    return "/" in pattern and "/" not in name and fnmatchcase(name, pattern.rsplit("/", 1)[-1])


def _match_path(pattern: str, path: str, loose: bool) -> bool:
    """Absolute paths match after normalisation; others as written, or loosely by their tail.

    A relative path (``out.txt``), a ``~`` path or one starting with an
    expansion (``$HOME/x``) resolves against a directory unknown here, so in
    ``deny``/``require_approval`` it matches when some tail of the pattern
    (the part after one of its ``/``) matches what follows that unknown start.
    """
    if path.startswith("/"):
        return fnmatchcase(normalize_path(path), pattern)
    if fnmatchcase(path, pattern):
        return True
    if not loose:
        return False
    rest = path
    if rest.startswith(("~", "$")):
        rest = rest.partition("/")[2]
    while rest.startswith(("../", "./")):
        rest = rest.partition("/")[2]
    if not rest:
        return True
    start = pattern.find("/")
    while start >= 0:
        if fnmatchcase(rest, pattern[start + 1:]):
            return True
        start = pattern.find("/", start + 1)
    return False


_MATCHERS: Mapping[str, Callable[[str, str, bool], bool]] = {
    "tables": lambda p, n, _loose: _match_table(p, n),
    "functions": _match_function,
    "settings": lambda p, n, _loose: _match_setting(p, n),
    "commands": lambda p, n, _loose: fnmatchcase(n, p),
    "programs": _match_program,
    "paths": _match_path,
    "targets": lambda p, n, _loose: fnmatchcase(n, p),
}


@dataclass(frozen=True, slots=True)
class Rule:
    """One parsed rule.

    ``key`` is the class or kind it is written under; ``action`` the class it
    requires (None: any class, only for ``{function: [...]}`` in deny/approval),
    ``kind`` the kind it requires. Object conditions are tuples of glob
    patterns by sort (``tables`` patterns are already ``schema.table``).
    ``source`` is the rule as written, in flow style, for explanations.
    """

    key: str
    action: str | None
    kind: str | None = None
    kinds: frozenset[str] | None = None
    objects: tuple[tuple[str, tuple[str, ...]], ...] = ()
    flags: frozenset[str] = frozenset()
    absent_flags: frozenset[str] = frozenset()
    any_class_functions: bool = False  # the {function: [...]} shorthand
    source: str = ""
    raw: object = field(default=None, compare=False, hash=False)

    def matches(self, action: Action, section: RuleSection) -> bool:
        """Whether this rule, in ``section``, applies to ``action``."""
        return self.mismatch(action, section) is None

    def mismatch(self, action: Action, section: RuleSection) -> str | None:
        """None when the rule matches, else a short reason why not (for explanations)."""
        loose = section != "allow"
        if self.kind is not None:
            # In deny/approval a kind matches in any class (fail closed where two
            # classes share a kind's name); in allow only in its own class.
            if action.kind != self.kind or (not loose and action.action != self.action):
                return "kind"
        elif self.action is not None and action.action != self.action and not (
            loose and self.any_class_functions
        ):
            return "class"
        if self.kinds is not None and action.kind not in self.kinds:
            return f"kind {action.kind} is not in kinds"
        if not loose:
            if action.kind in _NAMED_ONLY_KINDS and action.kind != self.kind and (
                    self.kinds is None or action.kind not in self.kinds):
                return (f"does not name the kind {action.kind} (an allow covers "
                        f"{action.kind} programs only when it does, e.g. "
                        f"{{{action.action}: {{kinds: [{action.kind}]}}}})")
            unlisted = (action.flags & _LISTED_ONLY_FLAGS) - self.flags
            if unlisted:
                listed = ", ".join(sorted(unlisted))
                return (f"does not list flag {listed} (an allow covers such commands only "
                        f"with flags: [{listed}])")
        if not self.flags <= action.flags:
            missing = ", ".join(sorted(self.flags - action.flags))
            return f"flag {missing} not set"
        if self.absent_flags & action.flags:
            return f"flag {', '.join(sorted(self.absent_flags & action.flags))} set"
        for sort, patterns in self.objects:
            names = action.objects.get(sort, ())
            match = _MATCHERS[sort]
            if loose:
                if not any(match(p, n, True) for n in names for p in patterns):
                    return f"no {sort[:-1]} matches"
            else:
                if not names:
                    return f"touches no {sort}"
                uncovered = [n for n in names if not any(match(p, n, False) for p in patterns)]
                if uncovered:
                    return f"does not cover {', '.join(uncovered)}"
        return None

    def __str__(self) -> str:
        return self.source


def _as_names(value: object, what: str, at: tuple[str | int, ...]) -> list[str]:
    """A list of non-empty strings (a single string is a one-element list)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _error(f"{what} must be a non-empty list of names, got {render_value(value)}", at)
    out: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise _error(f"{what} entries must be non-empty strings, got {render_value(item)}",
                         (*at, index))
        out.append(item.strip())
    return out


def _known_key_error(key: str) -> PydanticCustomError:
    """Names the valid alternatives: of SQL, of SSH, or of both when nothing is close."""
    sql_names = [*ACTION_CLASSES, *KIND_CLASS]
    ssh_names = [*SSH_ACTION_CLASSES, *SSH_KIND_CLASS]
    close = difflib.get_close_matches(key, sql_names + ssh_names, n=1, cutoff=0.7)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    sql = (f"classes: {', '.join(ACTION_CLASSES)}; kinds: e.g. select, insert, delete, "
           "drop_table, set_role, call_<function>")
    ssh = (f"SSH classes: {', '.join(SSH_ACTION_CLASSES)}; SSH kinds: e.g. command, opaque, "
           "upload, read_file, local_port")
    if close and close[0] in sql_names:
        listing = sql
    elif close:
        listing = ssh
    else:
        listing = f"{sql}; {ssh}"
    return _error(f"unknown action class or kind {key!r}{hint} "
                  f"({listing}; `pathwarden policy kinds` lists them all)")


def _resolve_key(key: str) -> tuple[str | None, str | None]:
    """(class, kind) a rule key stands for; raises for unknown keys."""
    if key in ALL_ACTION_CLASSES:
        return key, None
    cls = class_of_kind(key)
    if cls is None:
        raise _known_key_error(key)
    return cls, key


def parse_rule(value: object) -> Rule:
    """Parse one rule as written in YAML (see the module docstring)."""
    if isinstance(value, Rule):
        return value
    if isinstance(value, str):
        key = value.strip()
        cls, kind = _resolve_key(key)
        return Rule(key=key, action=cls, kind=kind, source=key, raw=value)
    if not isinstance(value, Mapping) or len(value) != 1:
        raise _error(
            "a rule is an action class or kind (read, delete, ...) or a one-key mapping "
            "{class_or_kind: {conditions}}, e.g. {write: {tables: [billing.*]}}; "
            f"got {render_value(value)}"
        )
    ((key, conditions),) = value.items()
    if not isinstance(key, str):
        raise _error(f"rule key must be an action class or kind, got {render_value(key)}")
    source = render_value(value)
    cls, kind = _resolve_key(key)
    at: tuple[str | int, ...] = (key,)
    if isinstance(conditions, list | str) and key == "function":
        names = _as_names(conditions, "function names", at)
        return Rule(key=key, action="function",
                    objects=(("functions", tuple(n.lower() for n in names)),),
                    any_class_functions=True, source=source, raw=value)
    if isinstance(conditions, list):
        raise _error(
            f"a list after {key!r} is only allowed as {{function: [names]}}; write conditions "
            f"as a mapping, e.g. {{{key}: {{tables: [schema.table]}}}}"
            + (f" or {{{key}: {{kinds: [...]}}}}" if kind is None else ""),
            at,
        )
    if conditions is None:
        conditions = {}
    valid = CLASS_CONDITIONS.get(cls or "", CONDITION_KEYS)
    if not isinstance(conditions, Mapping):
        raise _error(
            f"conditions of {key!r} must be a mapping with keys {', '.join(valid)}; "
            f"got {render_value(conditions)}",
            at,
        )
    kinds: frozenset[str] | None = None
    objects: list[tuple[str, tuple[str, ...]]] = []
    flags: set[str] = set()
    absent: set[str] = set()
    for name, cond in conditions.items():
        cat = (*at, str(name))
        if name in CONDITION_KEYS and name not in valid:
            raise _error(
                f"condition {name!r} does not apply to {cls} actions in rule {source} "
                f"(valid conditions for {cls}: {', '.join(valid)})",
                cat,
            )
        if name == "kinds":
            kinds = frozenset(_parse_kinds(cls, kind, key, cond, cat))
        elif name == "tables":
            objects.append(("tables", tuple(
                p if "." in p else f"*.{p}" for p in _as_names(cond, "tables", cat))))
        elif name == "functions":
            objects.append(("functions", tuple(
                n.lower() for n in _as_names(cond, "functions", cat))))
        elif name == "settings":
            objects.append(("settings", tuple(
                n.lower() for n in _as_names(cond, "settings", cat))))
        elif name in ("commands", "programs", "targets"):
            objects.append((str(name), tuple(_as_names(cond, str(name), cat))))
        elif name == "paths":
            objects.append(("paths", tuple(
                _path_pattern(p, (*cat, index))
                for index, p in enumerate(_as_names(cond, "paths", cat)))))
        elif name == "flags":
            for index, flag in enumerate(_as_names(cond, "flags", cat)):
                if flag not in ACTION_FLAGS:
                    raise _error(
                        f"unknown flag {flag!r}{_suggest(flag, ACTION_FLAGS)} "
                        f"(valid flags: {', '.join(sorted(ACTION_FLAGS))})",
                        (*cat, index),
                    )
                flags.add(flag)
        elif name == "without_where":
            if not isinstance(cond, bool):
                raise _error(f"without_where must be true or false, got {render_value(cond)}",
                             cat)
            (flags if cond else absent).add("without_where")
        else:
            raise _error(
                f"unknown condition {name!r}{_suggest(str(name), valid)} in rule "
                f"{source} (valid conditions: {', '.join(valid)})",
                cat,
            )
    # {function: {functions: [...]}} is the long form of {function: [...]}.
    any_class = key == "function" and any(sort == "functions" for sort, _ in objects)
    return Rule(key=key, action=cls, kind=kind, kinds=kinds, objects=tuple(objects),
                flags=frozenset(flags), absent_flags=frozenset(absent),
                any_class_functions=any_class, source=source, raw=value)


def _path_pattern(pattern: str, at: tuple[str | int, ...]) -> str:
    """A ``paths`` glob: absolute (or starting with ``*``), normalised like the paths."""
    if not pattern.startswith(("/", "*")):
        raise _error(f"path pattern {pattern!r} must be absolute, e.g. /srv/releases/* "
                     "(paths are matched as normalised absolute paths; * matches across /)",
                     at)
    return normalize_path(pattern) if pattern.startswith("/") else pattern


def _parse_kinds(
    cls: str | None, kind: str | None, key: str, value: object, at: tuple[str | int, ...]
) -> list[str]:
    if kind is not None:
        raise _error(f"{key!r} is already a kind; use kinds: under its class "
                     f"({class_of_kind(kind)}) instead", at)
    kinds = _as_names(value, "kinds", at)
    for index, name in enumerate(kinds):
        if cls == "unknown":
            continue  # parser node names: any spelling
        owner = class_of_kind(name)
        if owner == cls or name in QUALIFIED_KINDS.get(cls or "", ()):
            continue
        valid = sorted(kinds_of(cls or "")) or (
            ["call_<function>"] if cls == "function" else [])
        if owner is not None:
            detail = f"kind {name!r} belongs to class {owner}, not {cls}"
        else:
            detail = f"unknown {cls} kind {name!r}{_suggest(name, valid)}"
        if len(valid) > _MAX_LISTED_KINDS:
            listing = (f"{cls} kinds are <verb>_<object> like create_table, alter_table, "
                       f"drop_schema; `pathwarden policy kinds {cls}` lists all {len(valid)}")
        else:
            listing = f"valid {cls} kinds: {', '.join(valid)}"
        raise _error(f"{detail} ({listing})", (*at, index))
    return kinds


def _dump_rule(rule: Rule) -> object:
    return rule.raw if rule.raw is not None else rule.source


#: A rule field in a pydantic model: parsed by :func:`parse_rule`.
RuleSpec = Annotated[Rule, PlainValidator(parse_rule), PlainSerializer(_dump_rule)]


# -- who and where -------------------------------------------------------------------------


def _glob_map(value: object, what: str, at: tuple[str | int, ...]) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping) or not value:
        raise _error(f"{what} must be a non-empty mapping of name: glob, "
                     f"got {render_value(value)}", at)
    items: list[tuple[str, str]] = []
    for key, pattern in value.items():
        if not isinstance(key, str) or not key:
            raise _error(f"{what} keys must be strings, got {render_value(key)}", at)
        if isinstance(pattern, bool) or not isinstance(pattern, str | int):
            raise _error(f"{what}.{key} must be a string or glob, got {render_value(pattern)}",
                         (*at, key))
        items.append((key, str(pattern)))
    return tuple(items)


def _globs_match(globs: tuple[tuple[str, str], ...], values: Mapping[str, str]) -> bool:
    for key, pattern in globs:
        value = values.get(key)
        if value is None or not fnmatchcase(str(value), pattern):
            return False
    return True


@dataclass(frozen=True, slots=True)
class IdentityMatcher:
    """One entry of a policy's ``identities``.

    ``kind`` is ``any`` (``"*"``), ``name``, ``group`` (``"group:<g>"``) or
    ``attributes`` (``{identity: n, group: g, claims: {...}, labels: {...}}``:
    every key given must match, so ``{identity: ci-deploy, claims: {ref:
    refs/heads/main}}`` is the deploy stage only when it runs from main).
    """

    kind: Literal["any", "name", "group", "attributes"]
    value: str = ""
    group: str = ""
    claims: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    source: str = ""
    raw: object = field(default=None, compare=False, hash=False)

    def matches(self, identity: Identity) -> bool:
        if self.kind == "any":
            return True
        if self.kind == "name":
            return identity.name == self.value
        if self.kind == "group":
            return self.value in identity.groups
        if self.value and identity.name != self.value:
            return False
        if self.group and self.group not in identity.groups:
            return False
        return _globs_match(self.claims, identity.claims) and _globs_match(
            self.labels, identity.labels)


def parse_identity_entry(value: object) -> IdentityMatcher:
    if isinstance(value, IdentityMatcher):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text == "*":
            return IdentityMatcher("any", source=text)
        if text.startswith("group:"):
            group = text[len("group:"):].strip()
            if not group:
                raise _error("'group:' needs a group name, e.g. group:ci")
            return IdentityMatcher("group", group, source=text)
        if not text:
            raise _error('an identity entry must not be empty; use "*" for everyone')
        return IdentityMatcher("name", text, source=text)
    if isinstance(value, Mapping) and value:
        unknown = [k for k in value if k not in ("identity", "group", "claims", "labels")]
        if unknown:
            raise _error(f"unknown key {render_value(unknown[0])} in identity entry "
                         "(valid keys: identity, group, claims, labels)", (str(unknown[0]),))
        names: dict[str, str] = {}
        for key in ("identity", "group"):
            if key in value:
                given = value[key]
                if not isinstance(given, str) or not given.strip():
                    raise _error(f"{key} must be a name, got {render_value(given)}", (key,))
                names[key] = given.strip()
        claims = _glob_map(value["claims"], "claims", ("claims",)) if "claims" in value else ()
        labels = _glob_map(value["labels"], "labels", ("labels",)) if "labels" in value else ()
        return IdentityMatcher("attributes", names.get("identity", ""),
                               group=names.get("group", ""), claims=claims, labels=labels,
                               source=render_value(value), raw=value)
    raise _error('an identity entry is an identity name, "group:<group>", "*" or '
                 "{identity: name, group: g, claims: {key: glob}, labels: {key: glob}}; "
                 f"got {render_value(value)}")


@dataclass(frozen=True, slots=True)
class ConnectionMatcher:
    """One entry of a policy's ``connections``: ``"*"``, a name, or ``{labels: {...}}``."""

    kind: Literal["any", "name", "labels"]
    value: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    source: str = ""
    raw: object = field(default=None, compare=False, hash=False)

    def matches(self, connection: ConnectionRef) -> bool:
        if self.kind == "any":
            return True
        if self.kind == "name":
            return connection.name == self.value
        return _globs_match(self.labels, connection.labels)


def parse_connection_entry(value: object) -> ConnectionMatcher:
    if isinstance(value, ConnectionMatcher):
        return value
    if isinstance(value, str) and value.strip():
        text = value.strip()
        return ConnectionMatcher("any" if text == "*" else "name", text, source=text)
    if isinstance(value, Mapping) and value:
        unknown = [k for k in value if k != "labels"]
        if unknown:
            raise _error(f"unknown key {render_value(unknown[0])} in connection entry "
                         "(valid key: labels)", (str(unknown[0]),))
        return ConnectionMatcher("labels", labels=_glob_map(value["labels"], "labels",
                                                            ("labels",)),
                                 source=render_value(value), raw=value)
    raise _error('a connection entry is a connection name, "*" or {labels: {key: glob}}; '
                 f"got {render_value(value)}")


def _dump_entry(entry: IdentityMatcher | ConnectionMatcher) -> object:
    """The entry as written (strings are their own source), so dumps validate again."""
    return entry.raw if entry.raw is not None else entry.source


IdentityEntry = Annotated[IdentityMatcher, PlainValidator(parse_identity_entry),
                          PlainSerializer(_dump_entry)]
ConnectionEntry = Annotated[ConnectionMatcher, PlainValidator(parse_connection_entry),
                            PlainSerializer(_dump_entry)]


def _check_policy_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise PydanticCustomError(
            "name",
            "invalid policy name '{name}': use 1-63 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit",
            {"name": value},
        )
    return value


class PolicyConfig(BaseModel):
    """One entry of ``policies:``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, AfterValidator(_check_policy_name)]
    description: str = ""
    identities: Annotated[list[IdentityEntry], Field(min_length=1)]
    connections: Annotated[list[ConnectionEntry], Field(min_length=1)]
    allow: list[RuleSpec] = Field(default_factory=list)
    require_approval: list[RuleSpec] = Field(default_factory=list)
    deny: list[RuleSpec] = Field(default_factory=list)
    # Masking settings for sessions this policy governs, merged over the
    # connection's; validated against MaskingSettings by the configuration
    # (kept untyped here so that policy/ does not depend on the config package).
    masking: dict[str, Any] | None = None

    def rules(self, section: RuleSection) -> Sequence[Rule]:
        """The rules of one section, in order (``allow`` -> ``self.allow``)."""
        rules: Sequence[Rule] = getattr(self, section)
        return rules

    def applies_to(self, identity: Identity, connection: ConnectionRef) -> bool:
        """Whether this policy governs ``identity`` on ``connection``."""
        return any(entry.matches(identity) for entry in self.identities) and any(
            entry.matches(connection) for entry in self.connections)
