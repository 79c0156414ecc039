"""The interim authorizer: a connection's ``allow_all`` flag, else default deny.

Per-statement policy (rules over identities, connections and action classes)
replaces this; until then a connection either trusts every authenticated
identity with every statement or refuses them all.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..model import Decision, Operation, Verdict


class ConnectionAllowAll:
    """Allow every operation on connections whose ``allow_all`` is true."""

    def __init__(self, allow_all: Mapping[str, bool]) -> None:
        self._allow = dict(allow_all)
        self._allowed = Decision(Verdict.ALLOW, "connection allows all statements (allow_all)",
                                 policy="allow_all")

    def authorize(self, op: Operation) -> Decision:
        if self._allow.get(op.connection.name, False):
            return self._allowed
        return Decision(
            Verdict.DENY,
            f"no policy allows statements on connection {op.connection.name} "
            "(default deny; set allow_all: true on the connection to allow everything)",
        )
