"""What the server's SQL parser state is in one session, as far as the gateway can tell.

Theory of operation: the classifier must read each statement the way the
server will when it runs it. That depends on session state the client
changes as it goes: search_path (which table an unqualified name means),
SQL-level PREPAREd statements, and the lexing settings
(standard_conforming_strings, client_encoding). :class:`SqlState` keeps the
gateway's model of that state for one session:

- when an allowed statement is forwarded, its effects are applied at once
  (the next message may already be behind it in the pipeline);
- until the server has run it, a statement that may move search_path
  leaves names resolving against every path the server might be on;
- the server's answers correct the model: a failed or skipped statement is
  rolled back, a COMMIT the server turned into a ROLLBACK restores the path;
- lexing settings move to the refusing side (off, not UTF8) at once and back
  to the permissive side only when the server reports it with nothing in
  flight.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ..model import Action, Operation
from ..policy.sql import (
    PostgresClassifier,
    SqlContext,
    after_failure,
    apply_to_context,
    is_utf8_encoding,
)

LEXING_PARAMETERS = frozenset({"standard_conforming_strings", "client_encoding"})
_ROLLBACK = Action("transaction", "rollback")


class SqlState:
    """The SQL context of one PostgreSQL session (None while no SQL classifier is in use)."""

    def __init__(self, server_parameters: Mapping[str, str], login_user: str) -> None:
        self._parameters = server_parameters
        self._login_user = login_user
        self.ctx: SqlContext | None = None
        # The search_path the server reported at login (None: unknown).
        self.initial_search_path: tuple[str, ...] | None = None
        self._classifier_seen: object | None = None
        self._lexing_pending: dict[str, str] = {}
        self._paths_in_flight: tuple[str, ...] = ()

    def for_statement(self, classifier: object, in_flight: bool) -> SqlContext | None:
        """The context to classify the next statement with.

        ``in_flight``: forwarded statements have not all completed yet.
        """
        ctx = self._settled(classifier)
        if ctx is None or not self._paths_in_flight or not in_flight:
            self._paths_in_flight = ()
            return ctx
        merged = tuple(dict.fromkeys((*ctx.search_path, *self._paths_in_flight)))
        return ctx if merged == ctx.search_path else replace(ctx, search_path=merged)

    def _settled(self, classifier: object) -> SqlContext | None:
        if classifier is self._classifier_seen:
            return self.ctx
        # First statement, or the configuration was reloaded.
        self._classifier_seen = classifier
        if not isinstance(classifier, PostgresClassifier):
            self.ctx = None
        elif self.ctx is None:
            params = self._parameters
            scs = params.get("standard_conforming_strings", "on") == "on"
            encoding = params.get("client_encoding", "UTF8")
            extra: dict[str, Any] = {"login_user": self._login_user}
            if self.initial_search_path is not None:
                extra["search_path"] = self.initial_search_path
                extra["default_search_path"] = self.initial_search_path
            self.ctx = classifier.new_context(
                standard_conforming_strings=scs, client_encoding=encoding,
                lexing_unsettled=not scs or not is_utf8_encoding(encoding), **extra)
        else:
            self.ctx = replace(self.ctx, side_effect_functions=classifier.side_effect_functions)
        return self.ctx

    def ran(self, op: Operation, text: str) -> SqlContext | None:
        """An allowed statement is forwarded: apply it. Returns the context before it."""
        before = self.ctx
        if before is None or not op.actions:
            return None
        after = apply_to_context(before, op.actions, text)
        self.ctx = after
        if after.search_path != before.search_path or any(
                a.action == "transaction" for a in op.actions):
            # Until the server has run it, either path may be in effect (and a
            # transaction end may restore any path saved in the transaction).
            saved = tuple(p for frame in before.tx_frames for p in frame[1])
            self._paths_in_flight = tuple(dict.fromkeys(
                (*self._paths_in_flight, *before.search_path, *after.search_path, *saved)))
        return before

    def completed(self, before: SqlContext, op: Operation, *, tag: str | None,
                  failed: bool, skipped: bool, idle: bool) -> None:
        """The server answered a statement forwarded from ``before``: correct the model.

        ``idle``: the server's transaction status after it is idle (an error then
        rolled back the statement's implicit transaction).
        """
        if self.ctx is None:
            return
        if tag == "ROLLBACK" and any(
                a.action == "transaction" and a.kind in ("commit", "prepare_transaction")
                for a in op.actions):
            # COMMIT of a failed transaction: the server rolled it back instead.
            self.ctx = apply_to_context(before, (_ROLLBACK,))
        elif skipped or (failed and idle):
            after = self.ctx
            ctx = after_failure(before, after)
            if not skipped and any(a.action == "transaction" for a in op.actions):
                # A COMMIT before the failing statement may have made some of its
                # settings stick: which, the gateway cannot tell. Names resolve
                # against both paths until the next SET search_path.
                merged = tuple(dict.fromkeys((*before.search_path, *after.search_path)))
                ctx = replace(ctx, search_path=merged)
            self.ctx = ctx

    def lexing_reported(self, name: str, value: str) -> None:
        """The server reported standard_conforming_strings or client_encoding.

        A refusing value (off, not UTF8) applies at once. A permissive one waits
        for :meth:`settle`: a statement still in flight (a ROLLBACK, RESET,
        DISCARD) may revert it, and what the client sends next must be read as
        the server will read it.
        """
        ctx = self.ctx
        if ctx is None:
            return
        permissive = (value == "on" if name == "standard_conforming_strings"
                      else is_utf8_encoding(value))
        if permissive:
            self._lexing_pending[name] = value
            return
        self._lexing_pending.pop(name, None)
        if name == "standard_conforming_strings":
            self.ctx = replace(ctx, standard_conforming_strings=False, lexing_unsettled=True)
        else:
            self.ctx = replace(ctx, client_encoding=value, lexing_unsettled=True)

    def settle(self) -> None:
        """Nothing is in flight: the server's last reported values are its current ones."""
        pending = self._lexing_pending
        ctx = self.ctx
        if ctx is None or not pending:
            return
        if "standard_conforming_strings" in pending:
            ctx = replace(ctx, standard_conforming_strings=True)
        if "client_encoding" in pending:
            ctx = replace(ctx, client_encoding=pending["client_encoding"])
        pending.clear()
        self.ctx = ctx

    @property
    def unsettled(self) -> bool:
        return bool(self._lexing_pending)
