"""Per-statement policy: rules over identities, connections and classified actions.

Theory of operation: the protocol's classifier turns each request into an
:class:`~pathwarden.model.Operation` whose ``actions`` describe its statements
(class, kind, objects, flags). The ``policies:`` section of the configuration
is parsed into :class:`PolicyConfig` values (:mod:`.rules`), and a
:class:`PolicyEngine` (:mod:`.engine`) decides each operation: default deny,
``deny`` over ``require_approval`` over ``allow`` across every policy that
applies to the identity and connection, with an explanation naming the policy,
the rule and the statement.
"""

from .engine import ActionDecision, Explanation, PolicyEngine, describe_action
from .rules import (
    ACTION_CLASSES,
    ACTION_FLAGS,
    CONDITION_KEYS,
    ConnectionMatcher,
    IdentityMatcher,
    PolicyConfig,
    Rule,
    class_of_kind,
    parse_rule,
)

__all__ = [
    "ACTION_CLASSES",
    "ACTION_FLAGS",
    "CONDITION_KEYS",
    "ActionDecision",
    "ConnectionMatcher",
    "Explanation",
    "IdentityMatcher",
    "PolicyConfig",
    "PolicyEngine",
    "Rule",
    "class_of_kind",
    "describe_action",
    "parse_rule",
]
