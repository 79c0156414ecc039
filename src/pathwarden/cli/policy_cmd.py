"""``pathwarden policy``: check statements against the configured policies, test policies.

Theory of operation: both commands do offline exactly what the gateway does
online for one operation. The identity comes from the configuration's
``identities`` (groups, labels) plus ``--claim``/``claims:``, the connection
from ``connections`` (labels); the SQL text is classified by the same
classifier the gateway runs (:mod:`pathwarden.policy.sql`, with the config's
``sql:`` settings) and decided by the gateway's own
:class:`~pathwarden.policy.PolicyEngine` (``proxy.gateway.build_authorizer``:
the config's ``policies`` plus each ``allow_all`` connection). Nothing connects
to a database.

``check`` prints one line per statement and the overall verdict; its exit
status is the verdict (0 allow, 1 deny, 3 approval required; 2 for usage and
configuration errors), so a pipeline can gate on it. ``test`` runs a YAML
table of cases and exits non-zero when any case fails: the policy's unit tests
for pull-request checks. ``kinds`` lists the action classes and kinds rules
may name.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..config import GatewayConfig
from ..model import ConnectionRef, Identity, Operation, Protocol, Verdict
from ..policy.engine import Explanation, PolicyEngine
from ..policy.rules import ACTION_CLASSES, ACTION_FLAGS, CONDITION_KEYS
from .common import DEFAULT_CONFIG, EXIT_USAGE, ConfigOpt, fail, load

if TYPE_CHECKING:
    from ..policy.sql import SqlContext

__all__ = [
    "EXIT_CODES",
    "CaseResult",
    "PolicyCase",
    "Simulator",
    "load_cases",
    "policy_app",
    "run_cases",
]

policy_app = typer.Typer(
    no_args_is_help=True,
    help="Check SQL against the configured policies and test policies (for PR checks).",
)

#: Exit status of `policy check` per verdict.
EXIT_CODES: Mapping[Verdict, int] = {Verdict.ALLOW: 0, Verdict.DENY: 1, Verdict.APPROVE: 3}

class UsageError(Exception):
    """A problem with the command line or its inputs (exit status 2)."""


def _fail(message: str) -> typer.Exit:
    return fail(message, EXIT_USAGE)


_load = load


# -- simulation ---------------------------------------------------------------------------


class Simulator:
    """Classify and decide SQL as the gateway would, for a configuration."""

    def __init__(self, config: GatewayConfig) -> None:
        from ..proxy.gateway import build_authorizer

        self.config = config
        # The gateway's own engine: policies plus the connections' allow_all.
        self.engine: PolicyEngine = build_authorizer(config)
        self._contexts: dict[tuple[str, ...], SqlContext] = {}

    def identity(self, name: str, claims: Mapping[str, str] | None = None) -> Identity:
        found = self.config.identities.get(name)
        if found is None:
            known = ", ".join(sorted(self.config.identities)) or "(none)"
            raise UsageError(f"unknown identity {name!r}; identities in the configuration: "
                             f"{known}")
        return Identity(name, tuple(found.groups), labels=MappingProxyType(dict(found.labels)),
                        claims=MappingProxyType(dict(claims or {})))

    def connection(self, name: str) -> ConnectionRef:
        found = self.config.connections.get(name)
        if found is None:
            known = ", ".join(sorted(self.config.connections)) or "(none)"
            raise UsageError(f"unknown connection {name!r}; connections in the configuration: "
                             f"{known}")
        return ConnectionRef(name, Protocol(found.protocol), MappingProxyType(dict(found.labels)))

    def context(self, search_path: Sequence[str] = ("public",)) -> SqlContext:
        key = tuple(search_path)
        ctx = self._contexts.get(key)
        if ctx is None:
            sql = _classifier()
            functions = self.config.sql.effective_side_effect_functions(
                sql.DEFAULT_SIDE_EFFECT_FUNCTIONS)
            ctx = sql.SqlContext(search_path=key, side_effect_functions=functions)
            self._contexts[key] = ctx
        return ctx

    def operation(self, identity: Identity, connection: ConnectionRef, text: str,
                  search_path: Sequence[str] = ("public",)) -> Operation:
        """``text`` as the gateway would see it: classified, ready for the engine.

        On an SSH connection ``text`` is an exec command line (empty: a shell).
        """
        if connection.protocol is Protocol.SSH:
            from ..model import Action
            from ..policy.shell import classify_command

            actions = classify_command(text) if text.strip() else (
                Action("shell", "shell", text="shell"),)
            return Operation(
                session_id="policy-check", seq=1, identity=identity, connection=connection,
                protocol=connection.protocol, kind="exec" if text.strip() else "shell",
                text=text, actions=actions)
        sql = _classifier()
        classified = sql.classify_sql(text, self.context(search_path))
        return Operation(
            session_id="policy-check", seq=1, identity=identity, connection=connection,
            protocol=connection.protocol, kind="query", text=text,
            actions=classified.actions, unclassified=classified.error,
        )

    def explain(self, identity: Identity, connection: ConnectionRef, text: str,
                search_path: Sequence[str] = ("public",)) -> Explanation:
        return self.engine.explain(self.operation(identity, connection, text, search_path))


def _classifier() -> Any:
    """The SQL classifier module, imported on first use (it pulls in the parser)."""
    try:
        from ..policy import sql
    except ImportError as exc:  # pragma: no cover - only while the classifier is missing
        raise UsageError(f"the SQL classifier is not available ({exc})") from None
    return sql


def _parse_claims(values: Sequence[str]) -> dict[str, str]:
    claims: dict[str, str] = {}
    for value in values:
        key, sep, claim = value.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--claim {value!r}: expected key=value, e.g. "
                             "--claim repository=acme/api")
        claims[key.strip()] = claim
    return claims


def _label(verdict: Verdict) -> str:
    text = verdict.value.upper()
    return text.ljust(6) if len(text) < 6 else text + " "


def format_explanation(explanation: Explanation) -> list[str]:
    """One line per statement (``DENY  delete on public.users — ...``), then the verdict."""
    decision = explanation.decision
    lines: list[str] = []
    if not explanation.actions:
        what = "(statement)" if explanation.unclassified is not None else "(empty query)"
        lines.append(f"{_label(decision.verdict)}{what} — {decision.reason}")
    for ad in explanation.actions:
        lines.append(f"{_label(ad.verdict)}{ad.subject} — {ad.detail}")
    where = ", ".join(part for part in (
        f"policy {decision.policy}" if decision.policy else "",
        f"rule {decision.rule}" if decision.rule else "") if part)
    verdict = {
        Verdict.ALLOW: "ALLOW",
        Verdict.DENY: "DENY",
        Verdict.APPROVE: "APPROVAL REQUIRED",
    }[decision.verdict]
    lines.append(f"verdict: {verdict}" + (f" ({where})" if where else ""))
    return lines


# -- policy check -----------------------------------------------------------------------------


@policy_app.command("check")
def check(
    identity: Annotated[str, typer.Option(
        "--identity", "-i", help="Identity from the configuration.", show_default=False)],
    connection: Annotated[str, typer.Option(
        "--connection", "-C", help="Connection from the configuration.", show_default=False)],
    sql: Annotated[str | None, typer.Argument(
        help="SQL text (several statements allowed); '-' reads standard input.",
        show_default=False)] = None,
    claim: Annotated[list[str] | None, typer.Option(
        "--claim", help="Token claim key=value (repeatable), e.g. repository=acme/api.")] = None,
    file: Annotated[Path | None, typer.Option(
        "--file", "-f", help="Read the SQL from this file.")] = None,
    search_path: Annotated[str, typer.Option(
        help="Schemas unqualified names resolve to, comma-separated.")] = "public",
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Decide SQL as the gateway would: one line per statement, then the verdict.

    Exit status: 0 allow, 1 deny, 3 approval required, 2 usage or configuration error.
    """
    text = _read_sql(sql, file)
    cfg = _load(config)
    if not cfg.policies and not any(c.allow_all for c in cfg.connections.values()):
        typer.echo(f"warning: {config} has no policies: every statement is denied "
                   "(default deny)", err=True)
    sim = Simulator(cfg)
    try:
        explanation = sim.explain(sim.identity(identity, _parse_claims(claim or [])),
                                  sim.connection(connection), text,
                                  [s.strip() for s in search_path.split(",") if s.strip()])
    except UsageError as exc:
        raise _fail(str(exc)) from None
    for line in format_explanation(explanation):
        typer.echo(line)
    raise typer.Exit(EXIT_CODES[explanation.decision.verdict])


def _read_sql(sql: str | None, file: Path | None) -> str:
    if file is not None:
        if sql is not None:
            raise _fail("give the SQL either as an argument or with --file, not both")
        try:
            return file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise _fail(f"{file}: cannot read SQL file: {exc}") from None
    if sql is None:
        raise _fail("no SQL given: pass it as an argument, '-' for standard input, or --file")
    if sql == "-":
        return sys.stdin.read()
    return sql


# -- policy test --------------------------------------------------------------------------------

Expect = Literal["allow", "deny", "approve"]


class PolicyCase(BaseModel):
    """One case of a policy test file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    identity: Annotated[str, Field(min_length=1)]
    connection: Annotated[str, Field(min_length=1)]
    sql: str
    expect: Expect
    claims: dict[str, str] = Field(default_factory=dict)
    search_path: list[str] = Field(default_factory=lambda: ["public"])
    # Optional: a text the decision's reason must contain.
    reason: str | None = None
    name: str | None = None
    line: int = 0  # set by the loader: where the case starts in its file


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: PolicyCase
    verdict: Verdict | None  # None: the case could not run
    reason: str
    passed: bool


def load_cases(path: Path) -> list[PolicyCase]:
    """Read a test file: a list of cases, or a mapping with ``cases:``. Errors carry file:line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read test file: {exc}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UsageError(f"{where}: YAML syntax error: {exc.problem}") from None
    if isinstance(root, MappingNode):
        cases_node = next((v for k, v in root.value
                           if isinstance(k, ScalarNode) and k.value == "cases"), None)
        if cases_node is None:
            raise UsageError(f"{path}:1:1: expected a list of cases or a mapping with 'cases:'")
        root = cases_node
    if not isinstance(root, SequenceNode):
        raise UsageError(f"{path}:1:1: expected a list of cases like "
                         "- {identity: ci-test, connection: test-db, sql: 'select 1', "
                         "expect: allow}")
    loader = yaml.SafeLoader("")
    cases: list[PolicyCase] = []
    for index, node in enumerate(root.value):
        data = loader.construct_document(node)
        line = node.start_mark.line + 1
        if not isinstance(data, dict):
            raise UsageError(f"{path}:{line}: cases[{index}]: expected a mapping with identity, "
                             "connection, sql and expect")
        try:
            cases.append(PolicyCase.model_validate({**data, "line": line}))
        except ValidationError as exc:
            problems = []
            for error in exc.errors(include_url=False):
                field = str(error["loc"][0]) if error["loc"] else ""
                at = _line_of(node, field) or line
                message = ("required field is missing" if error["type"] == "missing"
                           else "unknown field (valid: identity, connection, sql, expect, "
                           "claims, search_path, reason, name)"
                           if error["type"] == "extra_forbidden" else str(error["msg"]))
                loc = ".".join(str(part) for part in error["loc"])
                problems.append(f"{path}:{at}: cases[{index}].{loc}: {message}")
            raise UsageError("\n".join(problems)) from None
    return cases


def _line_of(node: Node, key: str) -> int | None:
    if isinstance(node, MappingNode):
        for k, v in node.value:
            if isinstance(k, ScalarNode) and k.value == key:
                return int(v.start_mark.line) + 1
    return None


def run_cases(sim: Simulator, cases: Sequence[PolicyCase]) -> list[CaseResult]:
    """Decide every case; a case whose identity/connection is unknown fails."""
    results: list[CaseResult] = []
    for case in cases:
        try:
            explanation = sim.explain(sim.identity(case.identity, case.claims),
                                      sim.connection(case.connection), case.sql,
                                      case.search_path)
        except UsageError as exc:
            results.append(CaseResult(case, None, str(exc), False))
            continue
        decision = explanation.decision
        passed = decision.verdict.value == case.expect and (
            case.reason is None or case.reason in decision.reason)
        results.append(CaseResult(case, decision.verdict, decision.reason, passed))
    return results


def _one_line(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def format_results(path: Path, results: Sequence[CaseResult]) -> list[str]:
    rows = [("result", "line", "identity", "connection", "expect", "got", "sql")]
    for r in results:
        rows.append(("PASS" if r.passed else "FAIL", str(r.case.line), r.case.identity,
                     r.case.connection, r.case.expect, r.verdict.value if r.verdict else "error",
                     _one_line(r.case.name or r.case.sql, 60)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for number, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
                     + "  " + row[-1])
        if number and not results[number - 1].passed:
            r = results[number - 1]
            extra = (f" (expected the reason to contain {r.case.reason!r})"
                     if r.case.reason and r.verdict is not None
                     and r.verdict.value == r.case.expect else "")
            lines.append(f"    {path}:{r.case.line}: {r.reason}{extra}")
    failed = sum(not r.passed for r in results)
    lines.append(f"{path}: {len(results) - failed} passed, {failed} failed")
    return lines


@policy_app.command("test")
def run_tests(
    files: Annotated[list[Path], typer.Argument(
        help="Test files: YAML lists of {identity, connection, sql, expect[, claims, reason]}.")],
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Run policy test cases; exit 1 when any case fails (use it in PR checks)."""
    cfg = _load(config)
    sim = Simulator(cfg)
    failed = 0
    for path in files:
        try:
            cases = load_cases(path)
            results = run_cases(sim, cases)
        except UsageError as exc:
            raise _fail(str(exc)) from None
        for line in format_results(path, results):
            typer.echo(line)
        failed += sum(not r.passed for r in results)
    if failed:
        raise typer.Exit(1)


# -- policy kinds -------------------------------------------------------------------------------


@policy_app.command("kinds")
def kinds(
    action_class: Annotated[str | None, typer.Argument(
        metavar="CLASS", help="Only this action class.", show_default=False)] = None,
) -> None:
    """List the action classes and kinds rules can name, the flags and the conditions."""
    from ..policy.rules import (
        ALL_ACTION_CLASSES,
        CLASS_CONDITIONS,
        KIND_CLASS,
        SSH_ACTION_CLASSES,
        SSH_FLAGS,
    )

    if action_class is not None and action_class not in ALL_ACTION_CLASSES:
        raise _fail(f"unknown action class {action_class!r}; classes: "
                    f"{', '.join(ALL_ACTION_CLASSES)}")
    notes = {"function": "call_<function name> (one per side-effect function)",
             "unknown": "the parser's node name of the statement (e.g. CreateFdwStmt)"}
    for cls, names in ACTION_CLASSES.items():
        if action_class not in (None, cls):
            continue
        typer.echo(f"{cls}: {', '.join(sorted(names)) or notes[cls]}")
        if cls == "function" and action_class == "function":
            default = sorted(_classifier().DEFAULT_SIDE_EFFECT_FUNCTIONS)
            typer.echo(f"side-effect functions by default (sql.side_effect_functions): "
                       f"{', '.join(default)}")
    for cls, names in SSH_ACTION_CLASSES.items():
        if action_class not in (None, cls):
            continue
        shared = sorted(n for n in names if n in KIND_CLASS)
        note = "".join(f" ({n} only as {{{cls}: {{kinds: [{n}]}}}}: alone, {n} is the "
                       f"{KIND_CLASS[n]} kind)" for n in shared)
        typer.echo(f"{cls}: {', '.join(sorted(names))}{note}")
    if action_class is None:
        sql_conditions = CLASS_CONDITIONS["read"]
        typer.echo(f"flags: {', '.join(sorted(ACTION_FLAGS - SSH_FLAGS))}")
        typer.echo(f"SSH flags: {', '.join(sorted(SSH_FLAGS))}")
        typer.echo(f"conditions: {', '.join(k for k in CONDITION_KEYS if k in sql_conditions)}")
        typer.echo("SSH conditions: " + "; ".join(
            f"{cls}: {', '.join(CLASS_CONDITIONS[cls])}" for cls in SSH_ACTION_CLASSES))
