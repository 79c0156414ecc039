"""Approvals: operations held for a person's decision, and just-in-time grants.

:class:`ApprovalService` is the entry point (see service.py for how waiting
and waking work); the rules it applies are pure functions in rules.py and the
values it stores are in model.py. docs/approvals.md explains the concepts.
"""

from pathwarden.approvals.model import (
    ApprovalRequest,
    Grant,
    GrantScope,
    NotificationRecord,
    OperationDetails,
    RequestKind,
    RequestState,
    Vote,
    statement_hash,
)
from pathwarden.approvals.rules import ApprovalError
from pathwarden.approvals.service import ApprovalService, Notify

__all__ = [
    "ApprovalError",
    "ApprovalRequest",
    "ApprovalService",
    "Grant",
    "GrantScope",
    "NotificationRecord",
    "Notify",
    "OperationDetails",
    "RequestKind",
    "RequestState",
    "Vote",
    "statement_hash",
]
