"""The ``approvals:`` configuration block: who approves held operations and grants.

``rules`` are the defaults; ``policies`` replace them whole for the requests a
named policy's ``require_approval`` rules raise (no field-by-field merging, so
what a policy's approvers are can be read in one place). Grant requests (just-in-
time access) follow ``rules``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from pathwarden.config.durations import Duration

__all__ = ["ApprovalRules", "ApprovalsConfig", "approver_group"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def approver_group(entry: str) -> str | None:
    """The group an approvers entry names (``group:dba`` -> ``dba``), None for an identity."""
    return entry[len("group:"):] if entry.startswith("group:") else None


def _check_approver(value: str) -> str:
    entry = value.strip()
    if not entry:
        raise PydanticCustomError("approver", "an approver is an identity name or group:<group>")
    if entry.startswith("group:") and not entry[len("group:"):].strip():
        raise PydanticCustomError("approver", "'group:' needs a group name, e.g. group:dba")
    if entry == "*":
        raise PydanticCustomError(
            "approver", "'*' is not an approver: name identities or group:<group>")
    return entry


ApproverEntry = Annotated[str, AfterValidator(_check_approver)]


class ApprovalRules(_Model):
    """Who may approve, how many must, and how long requests and grants last."""

    # Identity names or "group:<group>"; empty: nobody can approve (requests expire).
    approvers: list[ApproverEntry] = Field(default_factory=list)
    # N of M: this many distinct approvers must approve; one deny ends the request.
    required: Annotated[int, Field(ge=1, le=20)] = 1
    # The `required` approvals must come from that many different approver groups.
    distinct_groups: bool = False
    # The requester may never approve its own request unless this is on. Only
    # identity names are compared: another identity of the same person counts as
    # someone else, so give people one identity each.
    allow_self_approval: bool = False
    # A pending request expires after this; an approved one-time approval must
    # be used within this after it was approved.
    request_ttl: Duration = timedelta(hours=1)
    # How long a held operation waits for a decision before it fails with an
    # error naming the request (which stays pending: a retry reuses it).
    wait_timeout: Duration = timedelta(minutes=10)
    # The longest a time-boxed grant lasts from its approval.
    max_grant: Duration = timedelta(hours=4)

    @model_validator(mode="after")
    def _satisfiable(self) -> ApprovalRules:
        groups = {g for g in map(approver_group, self.approvers) if g is not None}
        names = [a for a in self.approvers if approver_group(a) is None]
        if self.distinct_groups and self.approvers and len(groups) < self.required:
            raise PydanticCustomError(
                "approvers",
                "distinct_groups needs at least {required} approver groups "
                "(group:<group> entries); approvers name {count}",
                {"required": self.required, "count": len(groups)})
        if not groups and self.approvers and len(set(names)) < self.required:
            raise PydanticCustomError(
                "approvers",
                "required is {required} but approvers name only {count} identities",
                {"required": self.required, "count": len(set(names))})
        return self


def _check_base_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PydanticCustomError(
            "base_url", "expected an http(s) URL such as https://gw.example.com")
    return value.strip().rstrip("/")


class ApprovalsConfig(_Model):
    """The ``approvals:`` block."""

    rules: ApprovalRules = Field(default_factory=ApprovalRules)
    # Per policy name: the rules for requests raised by that policy (replace `rules`).
    policies: dict[str, ApprovalRules] = Field(default_factory=dict)
    # Where people open a request from a message: <base_url>/approvals/<id>.
    base_url: Annotated[str | None, AfterValidator(_check_base_url)] = None
    # Pending requests past their TTL are marked expired (and waiters woken) this often.
    sweep_interval: Duration = timedelta(seconds=15)
    # How often a waiter re-reads the store when no LISTEN/NOTIFY is available (SQLite).
    poll_interval: Duration = timedelta(milliseconds=500)

    def rules_for(self, policy: str | None) -> ApprovalRules:
        """The rules for a request raised by ``policy`` (the defaults when none override)."""
        if policy is not None and policy in self.policies:
            return self.policies[policy]
        return self.rules

    def link(self, request_id: int) -> str | None:
        """The web address of a request, when ``base_url`` is set."""
        return f"{self.base_url}/approvals/{request_id}" if self.base_url else None
