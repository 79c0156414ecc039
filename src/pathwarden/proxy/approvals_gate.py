"""Holding operations for approval: the authorizer the session pipeline uses.

Theory of operation: :class:`ApprovalGate` wraps the policy engine. An
ALLOW or DENY passes through unchanged (the hot path costs one attribute
test). An APPROVE becomes an awaitable: the session holds that statement
(and what the client sent after it) while other sessions go on. The gate asks
the :class:`ApprovalService` whether an approval or a grant already covers
the operation; if not, it opens (or joins) the request, tells the client it
is waiting (a NOTICE naming the request and how to follow it), and waits until
approvers decide, the request expires, the wait times out, or the client
cancels (which withdraws the request). The statement then runs, or fails with
an error that names the request; a retry after approval runs.

Approvers and notifiers see the statement masked with the session's masking.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import replace
from typing import TYPE_CHECKING

from ..approvals import ApprovalRequest, ApprovalService
from ..approvals.notify.base import RequestView
from ..approvals.rules import missing_approvals
from ..model import Decision, Operation, Verdict

if TYPE_CHECKING:
    from ..policy import PolicyEngine
    from .gateway import Gateway

log = logging.getLogger(__name__)

__all__ = ["ApprovalGate", "request_view"]


def request_view(service: ApprovalService, request: ApprovalRequest) -> RequestView:
    """What notifiers may show of ``request`` (its statement is stored masked)."""
    rules = service.rules_for(request)
    op = request.operation
    return RequestView(
        id=request.id, kind=request.kind.value, state=request.state.value,
        requester=request.requester, groups=tuple(request.requester_groups),
        claims=dict(request.requester_claims), connection=request.connection,
        operation=op.text if op is not None else None,
        action=op.action if op is not None else None, policy=request.policy,
        rule=op.rule if op is not None else None,
        scope=tuple(request.scope.actions) + tuple(request.scope.resources)
        if request.scope is not None else (),
        duration_s=int(request.duration.total_seconds()) if request.duration else None,
        reason=request.reason or None, approvers=tuple(rules.approvers),
        required=rules.required,
        votes=tuple((v.approver, "approve" if v.approve else "deny", v.comment or None)
                    for v in request.votes),
        created_at=request.created_at, expires_at=request.expires_at,
        url=service.link(request.id),
    )


class ApprovalGate:
    """The pipeline's authorizer: policy decisions, with APPROVE held for people."""

    def __init__(self, engine: PolicyEngine, service: ApprovalService, gateway: Gateway) -> None:
        self.engine = engine
        self.service = service
        self._gateway = gateway

    def authorize(self, op: Operation) -> Decision | Awaitable[Decision]:
        decision = self.engine.authorize(op)
        if decision.verdict is not Verdict.APPROVE:
            return decision
        return self._hold(op, decision)

    async def _hold(self, op: Operation, decision: Decision) -> Decision:
        service = self.service
        if not service.config.rules_for(decision.policy).approvers:
            # Nobody can approve: only an existing grant covers it; nothing to wait for.
            allowed = await service.check(op, decision)
            if allowed is not None:
                return allowed
            where = (f"approvals.policies.{decision.policy}.approvers or "
                     if decision.policy else "")
            return Decision(
                Verdict.DENY, f"{decision.reason}; the statement requires approval, but nobody "
                f"may approve it (set {where}approvals.rules.approvers)",
                policy=decision.policy, rule=decision.rule)
        waiting: list[int] = []

        def tell(request: ApprovalRequest) -> None:
            waiting.append(request.id)
            self._gateway.approval_pending(op.session_id, request.id, _notice(service, request))

        # The reason quotes the statement: stored and sent to approvers masked.
        decision = replace(decision, reason=self._gateway.masked_text(op, decision.reason))
        try:
            decided = await service.resolve(op, decision,
                                            display_text=self._gateway.masked_text(op),
                                            on_request=tell)
        finally:
            for request_id in waiting:
                self._gateway.approval_done(op.session_id, request_id)
        if decided.verdict is Verdict.ALLOW:
            # The policy may have changed (a reload) while people decided: a deny now
            # wins over the approval.
            current = self._gateway.pipeline.authorizer
            engine = current.engine if isinstance(current, ApprovalGate) else self.engine
            now = engine.authorize(op)
            if now.verdict is Verdict.DENY:
                return now
        return decided


def _notice(service: ApprovalService, request: ApprovalRequest) -> str:
    rules = service.rules_for(request)
    link = service.link(request.id)
    follow = f" ({link})" if link else ""
    who = ", ".join(rules.approvers)
    return (f"pathwarden: waiting for approval #{request.id}{follow}; approvers: {who}; "
            f"{missing_approvals(rules, request)} more approval(s) needed; waiting up to "
            f"{_minutes(rules.wait_timeout.total_seconds())}; cancel (Ctrl-C) withdraws the "
            f"request")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"

