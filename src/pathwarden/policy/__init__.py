"""Per-statement policy: rules over identities, connections and classified actions.

Theory of operation: the protocol's classifier turns each request into an
:class:`~pathwarden.model.Operation` whose ``actions`` describe its statements
(class, kind, objects, flags). The ``policies:`` section of the configuration
is parsed into :class:`PolicyConfig` values (:mod:`.rules`), and a
:class:`PolicyEngine` (:mod:`.engine`) decides each operation: default deny,
``deny`` over ``require_approval`` over ``allow`` across every policy that
applies to the identity and connection, with an explanation naming the policy,
the rule and the statement.

SSH operations use the same engine: :mod:`.shell` turns an exec command line
into one action per command it runs (``exec`` class), and the SSH gateway
builds ``shell``, ``file_transfer`` and ``forwarding`` actions itself; the
rule vocabulary for them is in :mod:`.rules` (``SSH_ACTION_CLASSES``).
"""

from .engine import ActionDecision, Explanation, PolicyEngine, describe_action
from .rules import (
    ACTION_CLASSES,
    ACTION_FLAGS,
    ALL_ACTION_CLASSES,
    ALLOW_EVERYTHING,
    CLASS_CONDITIONS,
    CONDITION_KEYS,
    SSH_ACTION_CLASSES,
    SSH_FLAGS,
    ConnectionMatcher,
    IdentityMatcher,
    PolicyConfig,
    Rule,
    class_of_kind,
    kinds_of,
    parse_rule,
)
from .shell import ShellClassifier, classify_command, normalize_path

__all__ = [
    "ACTION_CLASSES",
    "ACTION_FLAGS",
    "ALLOW_EVERYTHING",
    "ALL_ACTION_CLASSES",
    "CLASS_CONDITIONS",
    "CONDITION_KEYS",
    "SSH_ACTION_CLASSES",
    "SSH_FLAGS",
    "ActionDecision",
    "ConnectionMatcher",
    "Explanation",
    "IdentityMatcher",
    "PolicyConfig",
    "PolicyEngine",
    "Rule",
    "ShellClassifier",
    "class_of_kind",
    "classify_command",
    "describe_action",
    "kinds_of",
    "normalize_path",
    "parse_rule",
]
