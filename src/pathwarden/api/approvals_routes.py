"""Deciding approval requests over HTTP: JSON routes, a small web page, Slack's buttons.

Theory of operation: :func:`approvals_router` builds an :class:`APIRouter`
over a running gateway and uses its :class:`~pathwarden.approvals.ApprovalService`
(``gateway.approvals``), so a vote here wakes a statement held on this gateway
at once (and on other replicas through the store). Every JSON route takes a
pathwarden token as ``Authorization: Bearer``; the voter, the withdrawer and
the grant requester are the token's identity, never a field of the body.

Who sees what: a request is visible to its requester, to the approvers its
rules name (by identity or group) and to admin identities; to anyone else it
does not exist (404), so ids cannot be probed for statements.

The web page ``/approvals/{id}`` is what notification links open. Browsers do
not send bearer tokens and the API sets no cookies, so the page by itself
shows only the request's state; a form with a token field (POSTed, never in the
URL) shows the statement and the votes, and approves or denies. Without
cookies there is nothing for a cross-site request to ride on (the token is
the credential, typed by the person), so no CSRF token is needed. Pages are
rendered on the server, every value HTML-escaped, with a Content-Security-
Policy that allows no script at all.

``/v1/slack/actions`` takes Slack's signed button presses: the body is
checked against the signing secret of each interactive Slack notifier (size,
timestamp, ``v0`` signature), the Slack user is mapped to an identity by that
notifier's ``users``, and the vote is recorded as that identity. Slack gets
200 with an ephemeral message for every outcome it can show to the person
(recorded, refused, unmapped), 401 for requests that are not from Slack.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints'
# annotations at run time.
import html
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as Path_
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from pathwarden.api.auth import authenticate as _authenticate
from pathwarden.api.auth import bearer_token, store_unavailable
from pathwarden.api.auth import client_of as _client_of
from pathwarden.api.auth import throttle as _throttle
from pathwarden.api.errors import ApiError
from pathwarden.api.schemas import iso
from pathwarden.approvals import (
    ApprovalError,
    ApprovalRequest,
    ApprovalService,
    Grant,
    GrantScope,
    RequestKind,
    RequestState,
)
from pathwarden.approvals.notify import (
    SlackAuthError,
    SlackPayloadError,
    parse_slack_action,
    slack_decider,
    verify_slack_request,
)
from pathwarden.approvals.rules import may_approve, missing_approvals
from pathwarden.config import ConfigError, format_duration, parse_duration
from pathwarden.config.notifiers import SlackNotifierConfig
from pathwarden.identity.authenticate import BearerGrant
from pathwarden.model import Identity
from pathwarden.policy import ALL_ACTION_CLASSES, class_of_kind
from pathwarden.store import StoreError

if TYPE_CHECKING:
    from pathwarden.proxy.gateway import Gateway

__all__ = [
    "APPROVAL_ERROR_STATUS",
    "MAX_SLACK_BODY",
    "SLACK_TOLERANCE_S",
    "approval_error",
    "approvals_router",
    "grant_dict",
    "grant_of",
    "parse_scope",
    "refine",
    "request_dict",
]

log = logging.getLogger(__name__)

#: HTTP status of each :class:`ApprovalError` code (anything else: 409).
APPROVAL_ERROR_STATUS = {
    "not_approver": 403,
    "self_approval": 403,
    "not_requester": 403,
    "duplicate_vote": 409,
    "not_pending": 409,
    "expired": 410,
    "not_found": 404,
    "grant_scope": 400,
    "grant_reason": 400,
    "grant_duration": 400,
}
#: Slack callbacks larger than this are refused before their signature is computed.
MAX_SLACK_BODY = 64 * 1024
#: Slack callbacks whose timestamp is further than this from the gateway's clock are refused.
SLACK_TOLERANCE_S = 300
#: The longest ``GET /v1/approvals/{id}?wait=`` holds an answer.
MAX_WAIT = timedelta(seconds=60)
_STATES = ("all", *(s.value for s in RequestState))
_MAX_TEXT = 1000
_MAX_TABLES = 50
_GLOB_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.*?[]$-")
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


# -- shared with the CLI ------------------------------------------------------------------


def approval_error(exc: ApprovalError) -> ApiError:
    """The API's answer to a refused approval step: its code, with a fitting status."""
    return ApiError(APPROVAL_ERROR_STATUS.get(exc.code, 409), exc.code, exc.message)


def parse_scope(actions: Sequence[str], tables: Sequence[str] = ()) -> GrantScope:
    """A grant scope from action classes or kinds (``ddl``, ``write,drop_table``) and table
    globs (``public.orders*``); ValueError saying what is wrong."""
    names: list[str] = []
    for entry in actions:
        for part in entry.split(","):
            name = part.strip().lower()
            if not name:
                continue
            if name not in ALL_ACTION_CLASSES and class_of_kind(name) is None:
                raise ValueError(
                    f"unknown action class or kind {part.strip()!r}; classes: "
                    f"{', '.join(sorted(c for c in ALL_ACTION_CLASSES if c != 'unknown'))} "
                    f"(or a precise kind such as drop_table)")
            if name == "unknown":
                raise ValueError("'unknown' cannot be granted: statements the classifier "
                                 "cannot read are never covered")
            if name not in names:
                names.append(name)
    if not names:
        raise ValueError("name at least one action class, e.g. ddl or write")
    globs: list[str] = []
    for entry in tables:
        for part in entry.split(","):
            glob = part.strip()
            if not glob:
                continue
            if len(glob) > 200 or not _GLOB_CHARS.issuperset(glob):
                raise ValueError(f"table glob {glob[:60]!r} is not schema.table with * or ? "
                                 f"wildcards")
            if glob not in globs:
                globs.append(glob)
    if len(globs) > _MAX_TABLES:
        raise ValueError(f"at most {_MAX_TABLES} table globs")
    return GrantScope(tuple(names), tuple(globs))


def grant_dict(grant: Grant, now: datetime | None = None) -> dict[str, Any]:
    """A grant as the API shows it."""
    moment = now or datetime.now(UTC)
    return {
        "id": grant.id, "identity": grant.identity, "connection": grant.connection,
        "scope": {"actions": list(grant.scope.actions),
                  "resources": list(grant.scope.resources)},
        "describe": grant.scope.describe(), "starts_at": iso(grant.starts_at),
        "ends_at": iso(grant.ends_at), "request_id": grant.request_id,
        "active": grant.active(moment),
    }


def request_dict(service: ApprovalService, request: ApprovalRequest,
                 grant: Grant | None = None) -> dict[str, Any]:
    """A request as the API shows it: everything, with its statement as stored (masked)."""
    rules = service.rules_for(request)
    op = request.operation
    body: dict[str, Any] = {
        "id": request.id, "kind": request.kind.value, "state": request.state.value,
        "requester": request.requester, "requester_groups": list(request.requester_groups),
        "requester_claims": dict(request.requester_claims),
        "connection": request.connection, "created_at": iso(request.created_at),
        "expires_at": iso(request.expires_at), "reason": request.reason,
        "policy": request.policy, "subject": request.subject(),
        "operation": None if op is None else {
            "text": op.text, "statement_hash": op.statement_hash, "action": op.action,
            "kinds": list(op.kinds), "policy": op.policy, "rule": op.rule,
            "decision_reason": op.decision_reason, "session_id": op.session_id,
            "seq": op.seq,
        },
        "scope": None if request.scope is None else {
            "actions": list(request.scope.actions),
            "resources": list(request.scope.resources),
            "describe": request.scope.describe(),
        },
        "duration": format_duration(request.duration) if request.duration else None,
        "decided_at": iso(request.decided_at) if request.decided_at else None,
        "decided_by": request.decided_by, "outcome": request.outcome,
        "used_at": iso(request.used_at) if request.used_at else None,
        "grant_id": request.grant_id,
        "grant": grant_dict(grant) if grant is not None else None,
        "approvals": {"have": len(request.approvals), "required": rules.required,
                      "missing": missing_approvals(rules, request) if request.pending else 0},
        "approvers": list(rules.approvers),
        "distinct_groups": rules.distinct_groups,
        "votes": [{"approver": v.approver, "verdict": "approve" if v.approve else "deny",
                   "at": iso(v.at), "comment": v.comment, "groups": list(v.groups)}
                  for v in request.votes],
        "notifications": [{"channel": n.channel, "state": n.state, "attempts": n.attempts,
                           "last_error": n.last_error, "updated_at": iso(n.updated_at)}
                          for n in request.notifications],
        "link": service.link(request.id),
    }
    return body


async def refine(service: ApprovalService, request_id: int,
                 exc: ApprovalError) -> ApprovalError:
    """``exc``, with ``not_pending`` on an expired request made ``expired`` (a clearer code)."""
    if exc.code != "not_pending":
        return exc
    try:
        found = await service.get(request_id)
    except StoreError:
        return exc
    if found is None or found.state is not RequestState.EXPIRED:
        return exc
    return ApprovalError("expired", f"request {request_id} expired at "
                         f"{iso(found.expires_at)} ({found.outcome or 'expired'}); the requester "
                         f"must ask again")


async def grant_of(service: ApprovalService, request: ApprovalRequest) -> Grant | None:
    """The grant an approved grant request created, if any."""
    if request.grant_id is None:
        return None
    for grant in await service.grants(request.requester, request.connection, active=False):
        if grant.id == request.grant_id:
            return grant
    return None


# -- bodies -------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VoteBody(_Body):
    """``POST /v1/approvals/{id}/approve`` and ``/deny``."""

    comment: Annotated[str, Field(max_length=_MAX_TEXT)] = ""


class WithdrawBody(_Body):
    """``POST /v1/approvals/{id}/withdraw``."""

    reason: Annotated[str, Field(max_length=_MAX_TEXT)] = ""


class GrantBody(_Body):
    """``POST /v1/grants``: ask for time-boxed access."""

    connection: Annotated[str, Field(min_length=1, max_length=63)]
    scope: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]],
                     Field(min_length=1, max_length=50)]
    tables: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]],
                      Field(max_length=_MAX_TABLES)] = Field(default_factory=list)
    duration: Annotated[str, Field(min_length=1, max_length=32)]
    reason: Annotated[str, Field(min_length=1, max_length=_MAX_TEXT)]


# -- the router ---------------------------------------------------------------------------


def approvals_router(gateway: "Gateway") -> APIRouter:
    """The approval routes of ``gateway``'s API (included by ``create_app``)."""
    router = APIRouter()

    def service() -> ApprovalService:
        return gateway.approvals

    def client_of(request: Request) -> str:
        return _client_of(request)

    def throttle(source: str) -> None:
        _throttle(gateway, source)

    async def bearer(request: Request) -> BearerGrant:
        return await _authenticate(gateway, bearer_token(request), request)

    def may_see(who: BearerGrant, request: ApprovalRequest) -> bool:
        return (who.admin or who.identity.name == request.requester
                or may_approve(service().rules_for(request), who.identity))

    async def visible(who: BearerGrant, request_id: int) -> ApprovalRequest:
        try:
            found = await service().get(request_id)
        except StoreError as exc:
            raise _store_unavailable("reading an approval request", exc) from None
        if found is None or not may_see(who, found):
            raise ApiError(404, "not_found",
                           f"no approval request {request_id} that {who.identity.name} may see "
                           f"(requests are shown to their requester, their approvers and "
                           f"admins)")
        return found

    async def answer(request: ApprovalRequest) -> dict[str, Any]:
        try:
            grant = await grant_of(service(), request)
        except StoreError as exc:
            raise _store_unavailable("reading a grant", exc) from None
        return request_dict(service(), request, grant)

    async def vote(request_id: int, who: BearerGrant, approve: bool,
                   comment: str) -> ApprovalRequest:
        await visible(who, request_id)
        try:
            decided = await service().vote(request_id, who.identity, approve, comment.strip())
        except ApprovalError as exc:
            exc = await refine(service(), request_id, exc)
            log.info("API: %s's %s on request %d refused (%s)", who.identity.name,
                     "approval" if approve else "deny", request_id, exc.code)
            raise approval_error(exc) from None
        except StoreError as exc:
            raise _store_unavailable("recording a vote", exc) from None
        return decided

    # -- JSON ---------------------------------------------------------------------------

    @router.get("/v1/approvals")
    async def list_approvals(
        who: Annotated[BearerGrant, Depends(bearer)],
        state: Annotated[str, Query(max_length=16)] = "pending",
        identity: Annotated[str | None, Query(max_length=63)] = None,
        connection: Annotated[str | None, Query(max_length=63)] = None,
        kind: Annotated[str | None, Query(max_length=16)] = None,
    ) -> dict[str, list[dict[str, Any]]]:
        if state not in _STATES:
            raise ApiError(400, "invalid_request",
                           f"state: expected one of {', '.join(_STATES)}")
        if kind is not None and kind not in {k.value for k in RequestKind}:
            raise ApiError(400, "invalid_request", "kind: expected operation or grant")
        try:
            found = await service().list(None if state == "all" else state, identity or None,
                                         connection or None, kind)
            return {"approvals": [await answer(r) for r in found if may_see(who, r)]}
        except StoreError as exc:
            raise _store_unavailable("listing approval requests", exc) from None

    @router.get("/v1/approvals/{request_id}")
    async def get_approval(
        request_id: Annotated[int, Path_(ge=1, le=2**62)],
        who: Annotated[BearerGrant, Depends(bearer)],
        wait: Annotated[str | None, Query(max_length=16)] = None,
    ) -> dict[str, Any]:
        found = await visible(who, request_id)
        if wait is not None and found.pending:
            try:
                limit = min(parse_duration(wait), MAX_WAIT)
            except ValueError as exc:
                raise ApiError(400, "invalid_request", f"wait: {exc}") from None
            try:
                found = await service().wait(request_id, limit)
            except StoreError as exc:
                raise _store_unavailable("waiting for an approval request", exc) from None
        return await answer(found)

    @router.post("/v1/approvals/{request_id}/approve")
    async def approve(
        request_id: Annotated[int, Path_(ge=1, le=2**62)],
        who: Annotated[BearerGrant, Depends(bearer)],
        body: VoteBody | None = None,
    ) -> dict[str, Any]:
        decided = await vote(request_id, who, True, body.comment if body else "")
        return await answer(decided)

    @router.post("/v1/approvals/{request_id}/deny")
    async def deny(
        request_id: Annotated[int, Path_(ge=1, le=2**62)],
        who: Annotated[BearerGrant, Depends(bearer)],
        body: VoteBody | None = None,
    ) -> dict[str, Any]:
        decided = await vote(request_id, who, False, body.comment if body else "")
        return await answer(decided)

    @router.post("/v1/approvals/{request_id}/withdraw")
    async def withdraw(
        request_id: Annotated[int, Path_(ge=1, le=2**62)],
        who: Annotated[BearerGrant, Depends(bearer)],
        body: WithdrawBody | None = None,
    ) -> dict[str, Any]:
        await visible(who, request_id)
        try:
            done = await service().withdraw(request_id, who.identity,
                                            body.reason.strip() if body else "")
        except ApprovalError as exc:
            raise approval_error(exc) from None
        except StoreError as exc:
            raise _store_unavailable("withdrawing a request", exc) from None
        return await answer(done)

    @router.post("/v1/grants")
    async def request_grant(body: GrantBody,
                            who: Annotated[BearerGrant, Depends(bearer)]) -> dict[str, Any]:
        if body.connection not in who.usable:
            raise ApiError(
                403, "scope_not_allowed",
                f"{who.identity.name}'s token cannot use connection {body.connection!r} "
                f"(usable: {', '.join(who.usable) or 'none'}); a grant is asked for a "
                f"connection the identity may already connect to")
        try:
            scope = parse_scope(body.scope, body.tables)
            duration = parse_duration(body.duration)
        except ValueError as exc:
            raise ApiError(400, "invalid_request", str(exc)) from None
        try:
            created = await service().request_grant(who.identity, body.connection, scope,
                                                    duration, body.reason)
        except ApprovalError as exc:
            raise approval_error(exc) from None
        except StoreError as exc:
            raise _store_unavailable("requesting a grant", exc) from None
        log.info("API: %s asked for a grant of %s on %s for %s (request %d)",
                 who.identity.name, scope.describe(), body.connection,
                 format_duration(created.duration or duration), created.id)
        return await answer(created)

    @router.get("/v1/grants")
    async def list_grants(
        who: Annotated[BearerGrant, Depends(bearer)],
        identity: Annotated[str | None, Query(max_length=63)] = None,
        connection: Annotated[str | None, Query(max_length=63)] = None,
        active: bool = True,
    ) -> dict[str, list[dict[str, Any]]]:
        sees_all = who.admin or may_approve(gateway.config.approvals.rules, who.identity)
        if not sees_all:
            if identity not in (None, "", who.identity.name):
                raise ApiError(403, "forbidden",
                               f"{who.identity.name} may list only its own grants (admins "
                               f"and approvers see all)")
            identity = who.identity.name
        try:
            grants = await service().grants(identity or None, connection or None, active)
        except StoreError as exc:
            raise _store_unavailable("listing grants", exc) from None
        now = datetime.now(UTC)
        return {"grants": [grant_dict(g, now) for g in grants]}

    # -- the web page -------------------------------------------------------------------

    @router.get("/approvals/{request_id}", response_class=HTMLResponse)
    async def page(request_id: Annotated[int, Path_(ge=1, le=2**62)]) -> HTMLResponse:
        try:
            found = await service().get(request_id)
        except StoreError as exc:
            log.error("API: store failure while showing request %d: %s", request_id, exc)
            return _page(request_id, None, None, "The gateway's store is unavailable; "
                         "retry in a moment.", status=503)
        if found is None:
            return _page(request_id, None, None, f"There is no approval request {request_id}.",
                         status=404)
        return _page(request_id, _summary(service(), found), None, None)

    @router.post("/approvals/{request_id}", response_class=HTMLResponse)
    async def page_action(request_id: Annotated[int, Path_(ge=1, le=2**62)],
                          request: Request) -> HTMLResponse:
        form = _form(await request.body())
        token = form.get("token", "").strip()
        action = form.get("action", "view")
        comment = form.get("comment", "")[:_MAX_TEXT]
        if action not in ("view", "approve", "deny"):
            return _page(request_id, None, None, "Unknown action.", status=400)
        if not token:
            return _page(request_id, None, None,
                         "Paste a pathwarden token to see the request and decide.", status=401)
        try:
            who = await _authenticate(gateway, token, request)
            found = await visible(who, request_id)
            message = None
            if action != "view":
                found = await vote(request_id, who, action == "approve", comment)
                message = (f"Recorded: {who.identity.name} "
                           f"{'approved' if action == 'approve' else 'denied'}; the request "
                           f"is {found.state.value}.")
        except ApiError as exc:
            return _page(request_id, None, None, exc.message, status=exc.status)
        return _page(request_id, _summary(service(), found), _details(service(), found),
                     message, token=token, who=who.identity.name)

    # -- Slack --------------------------------------------------------------------------

    @router.post("/v1/slack/actions")
    async def slack_actions(request: Request) -> JSONResponse:
        body = await request.body()
        if len(body) > MAX_SLACK_BODY:
            raise ApiError(413, "body_too_large",
                           f"Slack callbacks are limited to {MAX_SLACK_BODY // 1024} KiB")
        configs = [n for n in gateway.config.notifiers
                   if isinstance(n, SlackNotifierConfig) and n.signing_secret is not None]
        if not configs:
            raise ApiError(404, "slack_disabled",
                           "no Slack notifier with a signing_secret is configured, so this "
                           "gateway takes no Slack button presses")
        source = client_of(request)
        throttle(source)
        timestamp = request.headers.get("x-slack-request-timestamp", "")
        signature = request.headers.get("x-slack-signature", "")
        now = time.time()
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12) \
                or abs(now - int(timestamp)) > SLACK_TOLERANCE_S:
            gateway.auth_limiter.failed(source)
            log.info("API: Slack callback from %s refused: missing or stale timestamp", source)
            raise ApiError(401, "stale_request",
                           "X-Slack-Request-Timestamp is missing or more than "
                           f"{SLACK_TOLERANCE_S // 60} minutes from the gateway's clock")
        matched: SlackNotifierConfig | None = None
        unreadable: list[str] = []
        for config in configs:
            assert config.signing_secret is not None
            try:
                secret = config.signing_secret.reveal()
            except ConfigError as exc:
                log.error("API: Slack notifier %s: %s", config.name, exc)
                unreadable.append(config.name)
                continue
            try:
                verify_slack_request(secret, timestamp, body, signature, now,
                                     SLACK_TOLERANCE_S)
            except SlackAuthError:
                continue
            matched = config
            break
        if matched is None:
            if len(unreadable) == len(configs):
                raise ApiError(503, "slack_unavailable",
                               "the Slack signing secret cannot be read on the gateway; see "
                               "its log", {"Retry-After": "30"})
            gateway.auth_limiter.failed(source)
            log.info("API: Slack callback from %s refused: bad signature", source)
            raise ApiError(401, "bad_signature",
                           "X-Slack-Signature does not match the body and a configured "
                           "signing secret")
        gateway.auth_limiter.succeeded(source)
        try:
            action = parse_slack_action(body)
        except SlackPayloadError as exc:
            log.info("API: Slack callback via %s ignored: %s", matched.name, exc)
            return _slack(f"pathwarden cannot act on this: {exc}.")
        rid = action.request_id
        try:
            name = slack_decider(matched, action.slack_user_id)
        except SlackAuthError as exc:
            log.info("API: Slack user %s pressed a button of request %d but is not mapped",
                     action.slack_user_id, rid)
            return _slack(f"Not recorded: {exc} (ask an admin to add you under the users of "
                          f"notifier {matched.name}).")
        settings = gateway.config.identities.get(name)
        if settings is None:
            return _slack(f"Not recorded: your Slack user is mapped to identity {name}, which "
                          f"is not configured on this gateway.")
        voter = Identity(name, tuple(settings.groups), dict(settings.labels))
        verb = "approval" if action.approve else "deny"
        try:
            decided = await service().vote(rid, voter, action.approve,
                                           f"via Slack ({action.slack_user_id})")
        except ApprovalError as exc:
            exc = await refine(service(), rid, exc)
            log.info("API: %s's Slack %s on request %d refused (%s)", name, verb, rid, exc.code)
            return _slack(f"Not recorded: {exc.message}")
        except StoreError as exc:
            log.error("API: store failure while recording a Slack vote: %s", exc)
            return _slack("Not recorded: the gateway's store is unavailable; press the button "
                          "again in a moment.")
        log.info("API: %s (Slack %s) recorded a %s on request %d", name,
                 action.slack_user_id, verb, rid)
        return _slack(f"Recorded your {verb} of request #{rid} as {name}; the request is "
                      f"{decided.state.value}"
                      + (f" ({decided.outcome})." if decided.outcome else "."))

    return router


# -- helpers ------------------------------------------------------------------------------


_store_unavailable = store_unavailable


def _slack(text: str) -> JSONResponse:
    """An answer Slack shows only to the person who pressed the button."""
    return JSONResponse({"response_type": "ephemeral", "replace_original": False,
                         "text": text})


def _form(body: bytes) -> dict[str, str]:
    """The fields of an ``application/x-www-form-urlencoded`` body (first value each)."""
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in fields.items() if v}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _summary(service: ApprovalService, request: ApprovalRequest) -> list[tuple[str, str]]:
    """What the page shows without a token: the state, not the statement or the people."""
    rules = service.rules_for(request)
    rows = [("state", request.state.value), ("kind", request.kind.value),
            ("approvals", f"{len(request.approvals)} of {rules.required} required"),
            ("expires", iso(request.expires_at))]
    if request.decided_at is not None:
        rows.append(("decided", iso(request.decided_at)))
    return rows


def _details(service: ApprovalService, request: ApprovalRequest) -> str:
    """The request in full, as escaped HTML."""
    rules = service.rules_for(request)
    rows: list[tuple[str, str]] = [
        ("requester", request.requester + (f" (groups: {', '.join(request.requester_groups)})"
                                           if request.requester_groups else "")),
        ("connection", request.connection),
        ("created", iso(request.created_at)),
        ("approvers", ", ".join(rules.approvers) or "none configured"),
    ]
    if request.policy:
        rows.append(("policy", request.policy))
    if request.reason:
        rows.append(("reason", request.reason))
    if request.scope is not None:
        rows.append(("grant", f"{request.scope.describe()} for "
                              f"{format_duration(request.duration) if request.duration else '?'}"))
    if request.outcome:
        rows.append(("outcome", request.outcome))
    for key, value in sorted(request.requester_claims.items()):
        rows.append((f"claim {key}", value))
    parts = ["<table>"]
    parts += [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows]
    parts.append("</table>")
    if request.operation is not None:
        op = request.operation
        parts.append(f"<h2>Statement ({_e(op.action)}, masked)</h2>")
        parts.append(f"<pre>{_e(op.text)}</pre>")
        if op.decision_reason:
            parts.append(f"<p>Why: {_e(op.decision_reason)}</p>")
    parts.append("<h2>Votes</h2>")
    if request.votes:
        parts.append("<table><tr><th>approver</th><th>vote</th><th>at</th><th>comment</th></tr>")
        parts += [f"<tr><td>{_e(v.approver)}</td><td>{'approve' if v.approve else 'deny'}</td>"
                  f"<td>{_e(iso(v.at))}</td><td>{_e(v.comment)}</td></tr>"
                  for v in request.votes]
        parts.append("</table>")
    else:
        parts.append("<p>No votes yet.</p>")
    return "\n".join(parts)


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem}"
          "th{text-align:left;padding-right:1rem;vertical-align:top}"
          "pre{background:#f4f4f4;padding:.75rem;white-space:pre-wrap;word-break:break-all}"
          ".msg{padding:.5rem;border:1px solid #999}"
          "input[type=password],textarea{width:100%;box-sizing:border-box}")


def _page(request_id: int, summary: list[tuple[str, str]] | None, details: str | None,
          message: str | None, *, status: int = 200, token: str = "",
          who: str | None = None) -> HTMLResponse:
    rid = _e(request_id)
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>pathwarden approval #{rid}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Approval request #{rid}</h1>",
    ]
    if message:
        parts.append(f'<p class="msg">{_e(message)}</p>')
    if summary:
        parts.append("<table>")
        parts += [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in summary]
        parts.append("</table>")
    if details:
        parts.append(details)
    if status not in (404, 503):
        seen = f" (signed in as {_e(who)} for this page only)" if who else ""
        parts += [
            f'<h2>Decide{seen}</h2>',
            '<form method="post" action="">',
            '<p><label>pathwarden token<br><input type="password" name="token" '
            f'autocomplete="off" required value="{_e(token)}"></label></p>',
            '<p><label>comment<br><textarea name="comment" rows="2" maxlength="1000">'
            '</textarea></label></p>',
            '<p><button name="action" value="view">Show details</button> '
            '<button name="action" value="approve">Approve</button> '
            '<button name="action" value="deny">Deny</button></p>',
            "</form>",
            "<p>The token is sent in the form body only and never stored. From a terminal: "
            f"<code>pathwarden approve {rid}</code> or <code>pathwarden deny {rid}</code>.</p>",
        ]
    parts.append("</body></html>")
    return HTMLResponse("\n".join(parts), status_code=status, headers=_PAGE_HEADERS)

