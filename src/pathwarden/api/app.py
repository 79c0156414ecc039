"""The HTTP API: token exchange for CI jobs, whoami, token administration, recordings.

Theory of operation: :func:`create_app` builds a FastAPI application over a
running :class:`~pathwarden.proxy.gateway.Gateway` and reads the gateway's
current configuration, authenticator and OIDC exchange on every request, so a
configuration reload applies to the next request. Callers authenticate with a
pathwarden token as ``Authorization: Bearer``; the admin endpoints also need
an identity with ``admin: true``. The exchange endpoint needs no pathwarden
token: the CI provider's OIDC token is the credential.

Every failed authentication (a refused OIDC token, a bad bearer token) counts
in the gateway's :class:`~pathwarden.identity.ratelimit.FailureLimiter`, per
client address and, for exchanges, per trust issuer; the PostgreSQL listeners
share it. Tokens never appear in a log line or an error message: refusals
name tokens by ``token_ref`` only. Store failures answer 503 and do not count.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints'
# annotations at run time, and they name dependencies local to create_app.
import asyncio
import logging
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import jwt
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as Path_
from fastapi.responses import JSONResponse, Response

from pathwarden.api.approvals_routes import approvals_router
from pathwarden.api.auth import authenticate, bearer_token, store_unavailable
from pathwarden.api.auth import client_of as _client_of
from pathwarden.api.auth import throttle as _throttle
from pathwarden.api.errors import ApiError, error_response, install_handlers
from pathwarden.api.schemas import (
    ExchangeRequest,
    IssueRequest,
    RevokeRequest,
    TokenInfo,
    TokenResponse,
    WhoAmI,
    iso,
)
from pathwarden.api.ssh_routes import ssh_router
from pathwarden.config import format_duration, parse_duration
from pathwarden.identity.authenticate import BearerGrant, IssueError
from pathwarden.identity.oidc import ExchangeError
from pathwarden.recording import Recording, RecordingError, RecordingNotFound, read_recording
from pathwarden.recording.export import event_dict, event_line
from pathwarden.store import AmbiguousPrefix, NotFound, RecordingRow, StoreError

if TYPE_CHECKING:
    from pathwarden.proxy.gateway import Gateway
    from pathwarden.proxy.recorder import Recorder

__all__ = ["MAX_BODY", "create_app"]

log = logging.getLogger(__name__)

_FORGEABLE_CHECKS = frozenset({"malformed", "too_large", "signature", "unknown_key",
                               "algorithm", "unknown_issuer"})

#: Request bodies larger than this are refused (413) before they are parsed.
MAX_BODY = 64 * 1024
_TOKEN_REF = frozenset("0123456789abcdef")
_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_App = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


def create_app(gateway: "Gateway") -> FastAPI:
    """The API application of ``gateway`` (served by :class:`~pathwarden.api.server.ApiServer`)."""
    app = FastAPI(
        title="pathwarden",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    install_handlers(app)
    app.add_middleware(_BodyLimit, limit=MAX_BODY)

    # -- authentication ---------------------------------------------------------

    def client_of(request: Request) -> str:
        return _client_of(request)

    def throttle(source: str, subject: str | None = None) -> None:
        _throttle(gateway, source, subject)

    async def bearer(request: Request) -> BearerGrant:
        return await authenticate(gateway, bearer_token(request), request)

    async def admin(grant: Annotated[BearerGrant, Depends(bearer)]) -> BearerGrant:
        name = grant.identity.name
        if not grant.admin:
            raise ApiError(
                403, "not_admin",
                f"identity {name} may not call admin endpoints "
                f"(identities.{name}.admin is not true)",
            )
        return grant

    # -- endpoints --------------------------------------------------------------

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/token/exchange")
    async def exchange(body: ExchangeRequest, request: Request) -> TokenResponse:
        oidc = gateway.oidc
        if oidc is None:
            raise ApiError(
                404, "no_trust",
                "this gateway trusts no OIDC issuer; add the CI provider under 'trust:' in "
                "its configuration",
            )
        requested = _ttl(body.ttl)
        source = client_of(request)
        throttle(source, _subject(_issuer_name(gateway, body.oidc_token)))
        try:
            result = await oidc.exchange(body.oidc_token)
        except ExchangeError as exc:
            if exc.check == "jwks_unavailable":
                raise ApiError(503, exc.check, str(exc), {"Retry-After": "30"}) from None
            # A forged or garbled token costs an attacker nothing: it counts against
            # the address only, never against the issuer every pipeline shares.
            counted = None if exc.check in _FORGEABLE_CHECKS else _subject(exc.issuer)
            gateway.auth_limiter.failed(source, counted)
            raise ApiError(401, exc.check, str(exc)) from None
        config = gateway.config
        settings = config.identities.get(result.identity)
        if settings is None:  # the configuration check rules this out; a reload raced
            raise ApiError(403, "unknown_identity",
                           f"rule {result.rule_number} of trust issuer {result.issuer_name} "
                           f"maps to identity {result.identity}, which is not configured")
        limits = [result.ttl, settings.max_token_ttl, config.tokens.max_ttl]
        if requested is not None:
            limits.append(requested)
        ttl = min(limits)
        claims = dict(result.claims)
        claims.setdefault("trust_issuer", result.issuer_name)
        claims.setdefault("trust_rule", str(result.rule_number))
        try:
            issued = await gateway.authenticator.issue_token(
                result.identity, ttl, body.connections, claims=claims)
        except IssueError as exc:
            raise ApiError(403, "scope_not_allowed", f"pathwarden: {exc}") from None
        except StoreError as exc:
            raise _store_unavailable("recording an exchanged token", exc) from None
        gateway.auth_limiter.succeeded(source, _subject(result.issuer_name))
        log.info("API: OIDC token of %s exchanged for token %s of %s (%s, scope %s) from %s",
                 result.issuer_name, issued.token_ref, issued.identity, format_duration(ttl),
                 ",".join(issued.connections) if issued.connections else "*", source)
        return TokenResponse.of(issued)

    @app.get("/v1/whoami")
    async def whoami(grant: Annotated[BearerGrant, Depends(bearer)]) -> WhoAmI:
        who = grant.identity
        return WhoAmI(
            identity=who.name,
            groups=list(who.groups),
            claims=dict(who.claims),
            token_ref=who.token_ref,
            expires_at=iso(who.expires_at) if who.expires_at is not None else None,
            connections=list(grant.usable),
            token_scope=list(grant.scope) if grant.scope is not None else None,
            admin=grant.admin,
        )

    @app.post("/v1/tokens")
    async def issue(body: IssueRequest,
                    grant: Annotated[BearerGrant, Depends(admin)]) -> TokenResponse:
        config = gateway.config
        settings = config.identities.get(body.identity)
        if settings is None:
            raise ApiError(404, "unknown_identity",
                           f"unknown identity {body.identity!r}; configured identities: "
                           f"{', '.join(sorted(config.identities)) or '(none)'}")
        if settings.admin:
            # An admin token that can mint admin tokens would never have to expire.
            raise ApiError(
                403, "admin_token_refused",
                f"tokens for admin identity {body.identity} are issued only on the gateway "
                f"host: pathwarden token issue {body.identity} --ttl 15m",
            )
        try:
            issued = await gateway.authenticator.issue_token(
                body.identity, _ttl(body.ttl), body.connections,
                claims={"issued_by": grant.identity.name})
        except IssueError as exc:
            raise ApiError(403, "not_allowed", f"pathwarden: {exc}") from None
        except StoreError as exc:
            raise _store_unavailable("recording a token", exc) from None
        log.info("API: %s issued token %s for %s (expires %s)", grant.identity.name,
                 issued.token_ref, issued.identity, iso(issued.expires_at))
        return TokenResponse.of(issued)

    @app.get("/v1/tokens")
    async def list_tokens(
        grant: Annotated[BearerGrant, Depends(admin)],
        identity: Annotated[str | None, Query(max_length=63)] = None,
        include_expired: bool = False,
    ) -> dict[str, list[TokenInfo]]:
        try:
            records = await gateway.store.list_tokens(identity or None, include_expired)
        except StoreError as exc:
            raise _store_unavailable("listing tokens", exc) from None
        now = datetime.now(UTC)
        return {"tokens": [TokenInfo.of(record, now) for record in records]}

    @app.post("/v1/tokens/{token_ref}/revoke")
    async def revoke(token_ref: str, grant: Annotated[BearerGrant, Depends(admin)],
                     body: RevokeRequest | None = None) -> dict[str, Any]:
        ref = token_ref.strip().lower()
        if not 6 <= len(ref) <= 16 or not _TOKEN_REF.issuperset(ref):
            raise ApiError(400, "invalid_request",
                           "a token ref is 6 to 16 hexadecimal characters (see GET /v1/tokens)")
        reason = body.reason if body is not None else None
        try:
            record = await gateway.store.revoke_token(ref, reason)
        except NotFound:
            raise ApiError(404, "unknown_token", f"no token ref starts with {ref!r}") from None
        except AmbiguousPrefix as exc:
            raise ApiError(409, "ambiguous_ref", str(exc)) from None
        except StoreError as exc:
            raise _store_unavailable("revoking a token", exc) from None
        ended = gateway.end_revoked(record)
        log.info("API: %s revoked token %s of %s; %d live session(s) ended",
                 grant.identity.name, record.token_ref, record.identity, ended)
        info = TokenInfo.of(record, datetime.now(UTC)).model_dump()
        return {**info, "sessions_ended": ended}

    @app.get("/v1/sessions/{session_id}/events")
    async def session_events(
        session_id: Annotated[str, Path_(max_length=128)],
        request: Request,
        grant: Annotated[BearerGrant, Depends(admin)],
        after_seq: Annotated[int, Query(ge=-1)] = -1,
        format: Annotated[Literal["json", "jsonl"] | None, Query()] = None,
    ) -> Response:
        recorder = gateway.recorder
        if recorder is None:
            raise ApiError(404, "recording_disabled",
                           "this gateway does not record sessions (recording.enabled is false)")
        try:
            found = await gateway.store.get_session(session_id)
            live_ids = {s.record.id for s in gateway.sessions}
            sid = found.id if found is not None else (
                session_id if session_id in live_ids else None)
            if sid is None:
                raise ApiError(404, "unknown_session", f"no session {session_id!r}")
            row = await gateway.store.get_recording(sid)
        except AmbiguousPrefix as exc:
            raise ApiError(409, "ambiguous_id", str(exc)) from None
        except StoreError as exc:
            raise _store_unavailable("looking up a recording", exc) from None
        try:
            recording, live = await asyncio.to_thread(_read_session_recording, recorder, sid, row)
        except RecordingNotFound as exc:
            log.error("API: the recording of session %s is missing: %s", sid, exc)
            raise ApiError(404, "recording_missing",
                           f"the recording of session {sid} is missing from the recording "
                           "storage; run: pathwarden audit verify") from None
        except RecordingError as exc:
            log.error("API: the recording of session %s cannot be read: %s", sid, exc)
            raise ApiError(503, "storage_unavailable",
                           "the recording storage is unavailable; retry in a moment",
                           {"Retry-After": "5"}) from None
        if recording is None:
            raise ApiError(404, "no_recording",
                           f"session {sid} has no recording (it was not recorded, or it has "
                           "just ended and is being stored: retry in a moment)")
        events = [e for e in recording.events if e.seq > after_seq]
        headers = {"X-Pathwarden-Session": sid,
                   "X-Pathwarden-Recording": "live" if live else "finished",
                   "X-Pathwarden-Complete": "true" if recording.complete else "false"}
        accept = request.headers.get("accept", "")
        if format == "jsonl" or (format is None and "application/x-ndjson" in accept):
            body = "".join(event_line(e) + "\n" for e in events)
            return Response(body, media_type="application/x-ndjson", headers=headers)
        return JSONResponse([event_dict(e) for e in events], headers=headers)

    app.include_router(approvals_router(gateway))
    app.include_router(ssh_router(gateway))
    return app


def _read_session_recording(
    recorder: "Recorder", session_id: str, row: RecordingRow | None,
) -> tuple[Recording | None, bool]:
    """A session's recording (from the storage, or its live file) and whether it is live."""
    if row is not None:
        data = recorder.storage.get(row.location)
        with tempfile.TemporaryDirectory(prefix="pathwarden-") as tmp:
            path = Path(tmp) / "recording.pwrec.gz"
            path.write_bytes(data)
            return read_recording(path), False
    for name, live in ((f"{session_id}.pwrec", True), (f"{session_id}.pwrec.gz", False)):
        try:
            return read_recording(recorder.live_dir / name), live
        except FileNotFoundError:
            continue
    return None, False


def _ttl(text: str | None) -> timedelta | None:
    if text is None:
        return None
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise ApiError(400, "invalid_request", f"ttl: {exc}") from None
    if value < timedelta(seconds=1):
        raise ApiError(400, "invalid_request", "ttl: a token lives at least 1s")
    return value


def _issuer_name(gateway: "Gateway", token: str) -> str | None:
    """The trust issuer an OIDC token names (unverified), for per-issuer rate limiting."""
    try:
        iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except (jwt.PyJWTError, ValueError, TypeError, AttributeError):
        return None
    if not isinstance(iss, str):
        return None
    for issuer in gateway.config.trust:
        if issuer.issuer.rstrip("/") == iss.rstrip("/"):
            return issuer.name
    return None


def _subject(issuer: str | None) -> str | None:
    # The limiter's subjects are shared with the listeners, which count identity names.
    return None if issuer is None else f"trust:{issuer}"


_store_unavailable = store_unavailable


class _BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, before any handler reads them."""

    def __init__(self, app: _App, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await self._refuse(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; let the app see it
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        response = error_response(
            413, "body_too_large", f"request bodies are limited to {self.limit // 1024} KiB")
        response.headers["connection"] = "close"
        await response(scope, receive, send)
