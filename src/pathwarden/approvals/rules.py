"""The approval rules as pure functions: who may vote, when a request is decided.

Theory of operation: the service reads a request and the store applies an
:class:`~pathwarden.approvals.model.ApprovalChange` computed here, inside the
transaction that holds the request's row, so two approvers voting at once are
both counted and exactly one of them decides. No I/O and no clock here: ``now``
is passed in.

Counting: a request is approved when ``required`` distinct approvers approved
it (with ``distinct_groups``, when the approvals can be credited to that many
different approver groups, one group per approver); a single deny by an
allowed approver ends it as denied. Every refusal is an :class:`ApprovalError`
whose message names the rule and what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from pathwarden.approvals.model import (
    ApprovalChange,
    ApprovalRequest,
    NewGrant,
    RequestKind,
    RequestState,
    Vote,
)
from pathwarden.config.approvals import ApprovalRules, approver_group
from pathwarden.model import Identity

__all__ = [
    "ApprovalError",
    "approver_groups",
    "check_voter",
    "decide_vote",
    "distinct_group_count",
    "expire",
    "grant_duration",
    "may_approve",
    "missing_approvals",
    "withdraw",
]


class ApprovalError(Exception):
    """A refused approval step; ``code`` is stable, ``message`` names the rule."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _approvers_phrase(rules: ApprovalRules) -> str:
    return ", ".join(rules.approvers) if rules.approvers else "none configured"


def approver_groups(rules: ApprovalRules, identity: Identity) -> tuple[str, ...]:
    """The approver groups (``group:<g>`` entries) ``identity`` belongs to."""
    groups = set(identity.groups)
    return tuple(g for g in (approver_group(a) for a in rules.approvers)
                 if g is not None and g in groups)


def may_approve(rules: ApprovalRules, identity: Identity) -> bool:
    """Whether ``identity`` is one of the approvers (by name or by group)."""
    return identity.name in rules.approvers or bool(approver_groups(rules, identity))


def check_voter(rules: ApprovalRules, request: ApprovalRequest, voter: Identity,
                now: datetime) -> None:
    """Raise :class:`ApprovalError` unless ``voter`` may vote on ``request`` now."""
    rid = request.id
    if request.state is not RequestState.PENDING:
        by = (f" by {request.decided_by}"
              if request.decided_by and request.decided_by != "expiry" else "")
        raise ApprovalError(
            "not_pending", f"request {rid} is {request.state}{by} already; nothing to vote on")
    if now >= request.expires_at:
        raise ApprovalError(
            "expired", f"request {rid} expired at {request.expires_at:%Y-%m-%d %H:%M:%S}Z; "
            f"the requester must ask again")
    if not may_approve(rules, voter):
        raise ApprovalError(
            "not_approver", f"{voter.name} may not approve request {rid}: approvers are "
            f"{_approvers_phrase(rules)}")
    if voter.name == request.requester and not rules.allow_self_approval:
        raise ApprovalError(
            "self_approval", f"{voter.name} may not approve request {rid}: it is "
            f"{voter.name}'s own request and self-approval is not allowed; ask another "
            f"approver ({_approvers_phrase(rules)})")
    if any(v.approver == voter.name for v in request.votes):
        raise ApprovalError(
            "duplicate_vote", f"{voter.name} has already voted on request {rid}; each approver "
            f"votes once")


def distinct_group_count(votes: Sequence[Vote]) -> int:
    """How many approvals can be credited to different groups (one group per vote).

    A maximum bipartite matching between approving votes and their approver
    groups, so an approver in two groups is credited to whichever one another
    approver does not need.
    """
    owner: dict[str, int] = {}

    def assign(i: int, seen: set[str]) -> bool:
        for group in votes[i].groups:
            if group in seen:
                continue
            seen.add(group)
            if group not in owner or assign(owner[group], seen):
                owner[group] = i
                return True
        return False

    return sum(1 for i in range(len(votes)) if assign(i, set()))


def _count(rules: ApprovalRules, approvals: Sequence[Vote]) -> int:
    return distinct_group_count(approvals) if rules.distinct_groups else len(approvals)


def missing_approvals(rules: ApprovalRules, request: ApprovalRequest) -> int:
    """How many more approvals ``request`` needs."""
    return max(0, rules.required - _count(rules, request.approvals))


def grant_duration(rules: ApprovalRules, requested: timedelta) -> timedelta:
    """A grant's duration: as requested, capped by ``max_grant``."""
    if requested <= timedelta(0):
        raise ApprovalError("grant_duration", "a grant needs a positive duration, e.g. 30m")
    return min(requested, rules.max_grant)


def decide_vote(rules: ApprovalRules, request: ApprovalRequest, voter: Identity,
                approve: bool, comment: str, now: datetime) -> ApprovalChange:
    """The change one vote makes: recorded, and maybe deciding the request."""
    check_voter(rules, request, voter, now)
    vote = Vote(voter.name, approve, now, comment, approver_groups(rules, voter))
    if not approve:
        why = f": {comment}" if comment else ""
        return ApprovalChange(RequestState.DENIED, (vote,), decided_at=now,
                              decided_by=voter.name, outcome=f"denied by {voter.name}{why}")
    approvals = (*request.approvals, vote)
    counted = _count(rules, approvals)
    if counted < rules.required:
        return ApprovalChange(RequestState.PENDING, (vote,))
    names = ", ".join(v.approver for v in approvals)
    if request.kind is RequestKind.GRANT:
        assert request.scope is not None
        assert request.duration is not None
        duration = grant_duration(rules, request.duration)
        grant = NewGrant(request.requester, request.connection, request.scope, now,
                         now + duration)
        return ApprovalChange(RequestState.APPROVED, (vote,), decided_at=now,
                              decided_by=voter.name, outcome=f"approved by {names}",
                              expires_at=now + duration, grant=grant)
    # A one-time approval must be used within request_ttl of being given.
    return ApprovalChange(RequestState.APPROVED, (vote,), decided_at=now,
                          decided_by=voter.name, outcome=f"approved by {names}",
                          expires_at=now + rules.request_ttl)


def withdraw(request: ApprovalRequest, by: str, now: datetime, why: str = "") -> ApprovalChange:
    """The change withdrawing ``request``: only its requester may, and only while pending."""
    rid = request.id
    if request.state is not RequestState.PENDING:
        raise ApprovalError(
            "not_pending", f"request {rid} is {request.state} already; it cannot be withdrawn")
    if by != request.requester:
        raise ApprovalError(
            "not_requester", f"{by} may not withdraw request {rid}: only its requester "
            f"{request.requester} may (approvers deny instead)")
    detail = f": {why}" if why else ""
    return ApprovalChange(RequestState.WITHDRAWN, decided_at=now, decided_by=by,
                          outcome=f"withdrawn by {by}{detail}")


def expire(request: ApprovalRequest, now: datetime) -> ApprovalChange | None:
    """The change expiring ``request`` if it is due, else None."""
    if now < request.expires_at:
        return None
    if request.state is RequestState.PENDING:
        return ApprovalChange(RequestState.EXPIRED, decided_at=now, decided_by="expiry",
                              outcome="expired while pending")
    if request.state is RequestState.APPROVED and request.kind is RequestKind.OPERATION:
        # Keep who approved it; only the state says it can no longer be used.
        return ApprovalChange(RequestState.EXPIRED, decided_at=request.decided_at,
                              decided_by=request.decided_by,
                              outcome=f"{request.outcome}; not used before it expired")
    return None
