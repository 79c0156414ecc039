"""The policy engine: turns a classified :class:`~pathwarden.model.Operation` into a Decision.

Theory of operation (docs/policy.md, "How a statement is decided"):

1. An operation the classifier could not classify (``op.unclassified``) is
   denied with the classifier's reason (fail closed).
2. The *applicable* policies are those with an ``identities`` entry matching
   the operation's identity and a ``connections`` entry matching its
   connection. None applicable: default deny.
3. Each action (one per statement) gets a verdict: the first matching ``deny``
   rule of any applicable policy wins, then the first ``require_approval``
   rule, then the first ``allow`` rule. Without a match, ``transaction`` and
   ``session`` actions (BEGIN, SET ...) are allowed when some applicable policy
   allows something, because every client needs them; anything else is
   denied (default deny).
4. The operation's verdict: any DENY action -> DENY (the reason names that
   statement), else any APPROVE -> APPROVE, else ALLOW. No actions (an empty
   query) -> ALLOW, since a policy applies.

Every :class:`~pathwarden.model.Decision` carries the deciding ``policy``, the
``rule`` id (``deny[1]``, ``allow[0]``; ``plumbing`` for transaction/session
control; None for default deny) and a ``reason`` naming the statement kind,
its tables, the identity and what to look at.

Decisions depend only on the identity (name, groups, labels, claims), the
connection (name, labels) and the actions, so :meth:`PolicyEngine.decide`
caches them in an LRU keyed by exactly those values. The cache is a plain dict
whose ``pop``/``setitem`` are atomic under the GIL: safe to share between
threads without a lock; a race at worst evicts one entry too many. An engine is
immutable: a configuration reload builds a new engine (with a new
``version``), which starts with an empty cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from ..model import Action, ConnectionRef, Decision, Identity, Operation, Verdict
from .rules import RULE_SECTIONS, SSH_CLASSES, PolicyConfig, Rule, RuleSection

__all__ = ["ActionDecision", "Explanation", "PolicyEngine", "describe_action"]

#: Action classes allowed without a rule once some applicable policy allows anything.
#: SQL only: no SSH class is plumbing (an SSH ``shell`` is not a SQL ``session``).
PLUMBING_CLASSES = frozenset({"transaction", "session"})
# The object sort naming what an SSH action of these classes touches.
_SSH_OBJECTS = {"file_transfer": "paths", "forwarding": "targets"}

_VERDICT_OF: dict[RuleSection, Verdict] = {
    "deny": Verdict.DENY,
    "require_approval": Verdict.APPROVE,
    "allow": Verdict.ALLOW,
}
_MAX_LISTED = 4
_MAX_TEXT = 80
_MAX_SUMMARISED = 8


@dataclass(frozen=True, slots=True)
class ActionDecision:
    """The verdict on one action (statement), with its explanation.

    ``subject`` names the statement (``delete on public.users``), ``detail``
    says why (``no rule of policy p allows write for ci-test (default deny)``).
    """

    index: int
    action: Action
    verdict: Verdict
    policy: str | None
    rule: str | None
    subject: str
    detail: str

    @property
    def reason(self) -> str:
        return f"{self.subject}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Explanation:
    """A decision plus the per-action verdicts and the policies that applied."""

    decision: Decision
    actions: tuple[ActionDecision, ...]
    policies: tuple[str, ...]
    unclassified: str | None = None


def describe_action(action: Action) -> str:
    """``delete on public.users``, ``set statement_timeout``, ``call_pg_sleep`` ...

    SSH actions: ``exec systemctl restart shop`` (the canonical command line,
    cut to about 80 characters), ``opaque shell program (here-document)``,
    ``upload /srv/releases/app.tgz``, ``local_port db.internal:5432``.
    """
    if action.action == "exec":
        if action.kind == "opaque":
            reason = action.names("reason")
            return f"opaque shell program ({_one_line(reason[0] if reason else 'unreadable')})"
        commands = action.names("commands")
        return "exec " + _one_line(commands[0] if commands else action.text)
    if action.action in _SSH_OBJECTS:
        names = action.names(_SSH_OBJECTS[action.action])
        return f"{action.kind} {_list([_one_line(n) for n in names])}" if names else action.kind
    for sort, joiner in (("tables", " on "), ("settings", " "), ("prepared", " ")):
        names = action.names(sort)
        if names:
            return action.kind + joiner + _list(names)
    return action.kind


def _one_line(text: str) -> str:
    """``text`` on one line (control characters escaped), cut to about 80 characters."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def _list(names: Sequence[str]) -> str:
    if len(names) <= _MAX_LISTED:
        return ", ".join(names)
    shown = ", ".join(names[: _MAX_LISTED - 1])
    return f"{shown} and {len(names) - _MAX_LISTED + 1} more"


def _statement_text(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def _policies_phrase(names: Sequence[str]) -> str:
    return f"policy {names[0]}" if len(names) == 1 else "policies " + ", ".join(names)


class PolicyEngine:
    """Decides operations against ``policies``; implements the pipeline's ``Authorizer``.

    ``version`` identifies the configuration the policies came from (reloads
    bump it); ``cache_size`` bounds the decision cache (0 disables it).
    """

    def __init__(
        self, policies: Sequence[PolicyConfig], version: int = 0, *, cache_size: int = 4096
    ) -> None:
        self.policies: tuple[PolicyConfig, ...] = tuple(policies)
        self.version = version
        self._cache: dict[Hashable, Decision] = {}
        self._by_identity: dict[
            tuple[int, int, int], tuple[Decision, Identity, ConnectionRef, tuple[Action, ...]]
        ] = {}
        self._cache_size = max(0, cache_size)
        self.hits = 0
        self.misses = 0

    # -- the Authorizer protocol -------------------------------------------------

    def authorize(self, op: Operation) -> Decision:
        return self.decide(op)

    def decide(self, op: Operation) -> Decision:
        """The decision on ``op``, from the cache when the same request was decided before."""
        if op.unclassified is not None or not self._cache_size:
            return self.explain(op).decision
        # Fast path: sessions reuse their Identity and ConnectionRef objects and the
        # classifier returns the same actions tuple for the same statement, so the
        # objects' identities are a key. The entry holds the objects themselves and
        # is checked with `is`, so an id reused by a new object can never match.
        fast = (id(op.identity), id(op.connection), id(op.actions))
        entry = self._by_identity.get(fast)
        if (entry is not None and entry[1] is op.identity and entry[2] is op.connection
                and entry[3] is op.actions):
            self.hits += 1
            return entry[0]
        key = self.cache_key(op)
        cache = self._cache
        try:
            decision = cache.pop(key)
        except KeyError:
            self.misses += 1
            decision = self.explain(op).decision
            if len(cache) >= self._cache_size:
                # Another thread may have evicted first: nothing to do then.
                with contextlib.suppress(KeyError, StopIteration, RuntimeError):
                    del cache[next(iter(cache))]
        else:
            self.hits += 1
        cache[key] = decision  # (re)inserted last: most recently used
        if len(self._by_identity) >= self._cache_size:
            self._by_identity.clear()
        self._by_identity[fast] = (decision, op.identity, op.connection, op.actions)
        return decision

    @staticmethod
    def cache_key(op: Operation) -> Hashable:
        """Everything a decision depends on, hashable (``Action.objects`` is a Mapping)."""
        ident = op.identity
        return (
            ident.name,
            ident.groups,
            tuple(ident.labels.items()),
            tuple(ident.claims.items()),
            op.connection.name,
            tuple(op.connection.labels.items()),
            tuple(
                (a.action, a.kind, tuple(a.objects.items()), a.flags, a.text)
                for a in op.actions
            ),
            op.unclassified,
        )

    def cache_clear(self) -> None:
        self._cache.clear()
        self._by_identity.clear()
        self.hits = self.misses = 0

    # -- deciding ----------------------------------------------------------------------

    def applicable(self, identity: Identity, connection: ConnectionRef) -> tuple[PolicyConfig, ...]:
        """The policies that govern ``identity`` on ``connection``, in configuration order."""
        return tuple(p for p in self.policies if p.applies_to(identity, connection))

    def explain(self, op: Operation) -> Explanation:
        """Decide ``op`` without the cache, keeping every action's verdict."""
        ident = op.identity.name
        if op.unclassified is not None:
            return Explanation(
                Decision(Verdict.DENY,
                         f"statement could not be classified: {op.unclassified} "
                         "(denied: the gateway only runs statements it understands)"),
                (), (), op.unclassified)
        policies = self.applicable(op.identity, op.connection)
        names = tuple(p.name for p in policies)
        if not policies:
            reason = (f"no policy applies to identity {ident} on connection "
                      f"{op.connection.name} (default deny); add them to a policy's "
                      "identities and connections")
            decided = tuple(
                ActionDecision(i, a, Verdict.DENY, None, None, describe_action(a), reason)
                for i, a in enumerate(op.actions))
            return Explanation(Decision(Verdict.DENY, reason), decided, names)
        if not op.actions:
            return Explanation(
                Decision(Verdict.ALLOW, f"empty query: nothing to run ({_policies_phrase(names)} "
                         f"applies to {ident})", policy=names[0]),
                (), names)
        decided = tuple(self._decide_action(i, a, policies, ident)
                        for i, a in enumerate(op.actions))
        return Explanation(self._combine(decided, ident), decided, names)

    def _decide_action(
        self, index: int, action: Action, policies: Sequence[PolicyConfig], ident: str
    ) -> ActionDecision:
        subject = describe_action(action)
        for section in RULE_SECTIONS:
            for policy in policies:
                for number, rule in enumerate(policy.rules(section)):
                    if rule.matches(action, section):
                        return ActionDecision(
                            index, action, _VERDICT_OF[section], policy.name,
                            f"{section}[{number}]", subject,
                            _rule_detail(section, ident, policy.name, section, number, rule))
        allowing = [p.name for p in policies if p.allow]
        # Two-phase commit acts on transactions of other sessions: it needs a rule.
        if action.action in PLUMBING_CLASSES and allowing and "two_phase" not in action.flags:
            what = "transaction control" if action.action == "transaction" else "session setup"
            return ActionDecision(
                index, action, Verdict.ALLOW, allowing[0], "plumbing", subject,
                f"{what} allowed for {ident} (policy {allowing[0]} allows statements here)")
        return ActionDecision(index, action, Verdict.DENY, ", ".join(p.name for p in policies),
                              None, subject, _default_deny(action, policies, ident))

    @staticmethod
    def _combine(decided: Sequence[ActionDecision], ident: str) -> Decision:
        total = len(decided)

        def where(ad: ActionDecision) -> str:
            if total == 1:
                return ""
            text = _statement_text(ad.action.text)
            unit = "command" if ad.action.action in SSH_CLASSES else "statement"
            return f"{unit} {ad.index + 1} of {total}" + (f" ({text})" if text else "") + ": "

        for verdict in (Verdict.DENY, Verdict.APPROVE):
            hits = [ad for ad in decided if ad.verdict is verdict]
            if hits:
                # A rule that names the problem explains more than a default deny
                # (`sh -c 'rm -rf /'`: the rule denying rm, not the unlisted sh).
                first = next((ad for ad in hits if ad.rule is not None), hits[0])
                reason = where(first) + first.reason
                if verdict is Verdict.APPROVE and len(hits) > 1:
                    reason += f" (and {len(hits) - 1} more statement(s) need approval)"
                return Decision(verdict, reason, policy=first.policy, rule=first.rule)
        if total == 1:
            (only,) = decided
            return Decision(Verdict.ALLOW, only.reason, policy=only.policy, rule=only.rule)
        policies = list(dict.fromkeys(ad.policy for ad in decided if ad.policy))
        rules = list(dict.fromkeys(ad.rule for ad in decided if ad.rule))
        parts = "; ".join(f"{ad.subject} ({ad.policy} {ad.rule})"
                          for ad in decided[:_MAX_SUMMARISED])
        if total > _MAX_SUMMARISED:
            parts += f"; and {total - _MAX_SUMMARISED} more"
        return Decision(Verdict.ALLOW, f"all {total} statements allowed for {ident}: {parts}",
                        policy=", ".join(policies), rule=", ".join(rules))


def _rule_detail(
    section: RuleSection, ident: str, policy: str, name: str, number: int, rule: Rule
) -> str:
    what = {
        "deny": "denied",
        "require_approval": "approval required",
        "allow": "allowed",
    }[section]
    return f"{what} for {ident} by policy {policy} rule {name}[{number}] ({rule.source})"


def _default_deny(action: Action, policies: Sequence[PolicyConfig], ident: str) -> str:
    names = [p.name for p in policies]
    what = (f"unknown statement kind {action.kind}" if action.action == "unknown"
            else action.action)
    detail = f"no rule of {_policies_phrase(names)} allows {what} for {ident} (default deny)"
    # The closest miss: an allow rule for this class/kind whose conditions did not hold.
    for policy in policies:
        for number, rule in enumerate(policy.allow):
            why = rule.mismatch(action, "allow")
            if why not in (None, "class", "kind"):
                return f"{detail}; {policy.name} allow[{number}] ({rule.source}) {why}"
    return detail
