"""The hook pipeline every protocol session runs its operations through.

Theory of operation: a session turns each client request into an
:class:`~pathwarden.model.Operation` and asks :meth:`Pipeline.decide` for a
:class:`~pathwarden.model.Decision`. The pipeline runs the hooks in order:
classify (fill in the action class and resources), then authorize. A hook may
answer synchronously (the hot path: a cached decision costs a dict lookup) or
with an awaitable, which the session treats as "hold": it stops reading from
that client, keeps the messages behind the held one in order, and resumes when
the awaitable resolves. That is the seam approvals use.

Hooks fail closed: an exception in classify or authorize becomes a DENY whose
reason names the failing hook, never an allow and never a crashed session.

Response-side hooks (:class:`ResponseFilter`) may rewrite what the server
sends before it reaches the client (masking); with none registered, the
session forwards the server's bytes untouched.

The :class:`AuditSink` receives session and statement records; it must not
block (the default implementation queues them for a batched writer).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol, runtime_checkable

from ..model import Decision, Operation, SessionRecord, StatementRecord, Verdict

log = logging.getLogger(__name__)

DecisionResult = Decision | Awaitable[Decision]


class Classifier(Protocol):
    def classify(self, op: Operation) -> Operation:
        """Return ``op`` with its action class and resources filled in."""
        ...


@runtime_checkable
class ContextClassifier(Protocol):
    def classify(self, op: Operation) -> Operation: ...

    def classify_with(self, op: Operation, context: Any) -> Operation:
        """Classify ``op`` as read in one session's state."""
        ...


class Authorizer(Protocol):
    def authorize(self, op: Operation) -> DecisionResult:
        """Decide on ``op``; an awaitable result holds the operation until it resolves."""
        ...


class AuditSink(Protocol):
    def session_started(self, record: SessionRecord) -> None: ...

    def session_ended(self, record: SessionRecord) -> None: ...

    def statement(self, record: StatementRecord) -> None: ...


class ResponseFilter(Protocol):
    """Rewrites protocol responses (masking). Protocol-specific message types."""

    def filter(self, op: Operation | None, messages: Sequence[object]) -> Sequence[object]: ...


class PassThroughClassifier:
    """Classifier used until a protocol has a real one: action from the first word."""

    def classify(self, op: Operation) -> Operation:
        return op


def _deny(hook: str, exc: BaseException) -> Decision:
    return Decision(Verdict.DENY, f"{hook} failed ({type(exc).__name__}); denied (fail closed)")


class Pipeline:
    """Classify and authorize, failing closed."""

    def __init__(
        self,
        classifier: Classifier,
        authorizer: Authorizer,
        audit: AuditSink,
        response_filters: Sequence[ResponseFilter] = (),
    ) -> None:
        self.classifier = classifier
        self.authorizer = authorizer
        self.audit = audit
        self.response_filters = tuple(response_filters)

    @property
    def classifier(self) -> Classifier:
        return self._classifier

    @classifier.setter
    def classifier(self, classifier: Classifier) -> None:
        # Resolved once here, not per statement (a runtime Protocol check is slow).
        self._classifier = classifier
        self._classify_with = (classifier.classify_with
                               if isinstance(classifier, ContextClassifier) else None)

    def decide(
        self, op: Operation, context: object | None = None
    ) -> tuple[Operation, DecisionResult]:
        """Classify and authorize ``op``; never raises.

        ``context`` is the session state the protocol's classifier reads
        (for SQL: search_path, prepared statements, lexing settings); a
        classifier that takes one has a ``classify_with(op, context)`` method.
        """
        try:
            with_context = self._classify_with
            if context is not None and with_context is not None:
                op = with_context(op, context)
            else:
                op = self._classifier.classify(op)
        except Exception as exc:
            log.exception("classifier failed; operation denied")
            return op, _deny("classification", exc)
        try:
            result = self.authorizer.authorize(op)
        except Exception as exc:
            log.exception("authorizer failed; operation denied")
            return op, _deny("authorization", exc)
        if isinstance(result, Decision):
            return op, result
        if inspect.isawaitable(result):
            return op, _guard(result)
        return op, Decision(Verdict.DENY, "authorizer returned no decision; denied (fail closed)")


async def _guard(result: Awaitable[Decision]) -> Decision:
    try:
        decision = await result
    except Exception as exc:
        log.exception("authorization wait failed; operation denied")
        return _deny("authorization", exc)
    if not isinstance(decision, Decision):
        return Decision(Verdict.DENY, "authorizer returned no decision; denied (fail closed)")
    return decision

