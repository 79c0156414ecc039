"""``pathwarden approvals list|show``, ``approve``, ``deny`` and ``request``: deciding and asking.

Two modes:

- **local** (the default): the configuration (``--config``) names the store,
  which is opened directly. Whoever can read the configuration and the data
  directory can act here, as with ``token issue``: the approver or the
  requester is named with ``--as IDENTITY`` (a configured identity), and the
  approval rules still apply to it (approvers, no self-approval ...).
- **remote**: with ``--gateway URL`` (or ``PATHWARDEN_GATEWAY``) the gateway's
  HTTP API is called with the pathwarden token in ``PATHWARDEN_TOKEN`` (or
  ``--token-env VAR``); the voter or requester is the token's identity.
  ``--local`` forces local mode when ``PATHWARDEN_GATEWAY`` is set.

Both modes render the same JSON shape (:func:`pathwarden.api.approvals_routes.request_dict`).
Exit status: 0 done (``request --wait``: approved); 1 refused, denied, expired or
failed; 2 usage; 130 interrupted (``request --wait``: the request was withdrawn).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..config import GatewayConfig, format_duration, parse_duration
from .common import DEFAULT_CONFIG, EXIT_USAGE, ConfigOpt, err, fail, load, with_store
from .pipeline_cmd import ENV_CACERT, ENV_GATEWAY, ENV_TOKEN, _api_url, _verify

if TYPE_CHECKING:
    from ..approvals import ApprovalRequest, ApprovalService
    from ..store import Store

__all__ = [
    "approvals_app",
    "approve_command",
    "deny_command",
    "request_command",
]

T = TypeVar("T")

EXIT_REFUSED = 1
EXIT_INTERRUPTED = 130
# How long a local command waits for notifiers (Slack, email ...) before it gives up on them.
NOTIFY_GRACE_S = 15.0
# Each remote wait asks the gateway to hold its answer this long (the gateway caps it at 60s).
REMOTE_WAIT = "30s"

approvals_app = typer.Typer(no_args_is_help=True,
                            help="List and inspect approval requests (see also: approve, deny, "
                                 "request).")

out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)

GatewayOpt = Annotated[str | None, typer.Option(
    "--gateway", envvar=ENV_GATEWAY, show_envvar=True,
    help="Remote mode: the gateway's HTTP API base URL, such as https://gateway:15480 "
         "(the token's identity acts).")]
TokenEnvOpt = Annotated[str, typer.Option(
    "--token-env", metavar="VAR", help="Remote mode: the variable holding the pathwarden token.")]
CacertOpt = Annotated[Path | None, typer.Option(
    "--cacert", envvar=ENV_CACERT, show_envvar=True,
    help="Remote mode: the gateway's certificate (self-signed) or its CA.")]
LocalOpt = Annotated[bool, typer.Option(
    "--local", help="Use the store named by --config even when PATHWARDEN_GATEWAY is set.")]
TimeoutOpt = Annotated[float, typer.Option(help="Remote mode: seconds to wait for each answer.")]


@dataclass(frozen=True)
class Mode:
    """Where a command acts: the local store (config) or the gateway's API (url, token)."""

    config_path: Path
    gateway: str | None
    token_env: str
    cacert: Path | None
    timeout: float

    @property
    def remote(self) -> bool:
        return self.gateway is not None


def _mode(config: Path, gateway: str | None, token_env: str, cacert: Path | None,
          local: bool, timeout: float) -> Mode:
    return Mode(config, None if local or not gateway else gateway, token_env, cacert, timeout)


def die(message: str, code: int = EXIT_REFUSED) -> NoReturn:
    """Print ``error: message`` (literally, never as markup) and exit."""
    raise fail(escape(message), code)


# -- the API client ----------------------------------------------------------------------


class Remote:
    """Calls the gateway's approval routes with the token; dies with a clear line on failure."""

    def __init__(self, mode: Mode) -> None:
        assert mode.gateway is not None
        self.base = mode.gateway
        token = os.environ.get(mode.token_env, "").strip()
        if not token:
            die(f"remote mode needs a pathwarden token in ${mode.token_env} (get one with: "
                f"pathwarden login, or pathwarden token issue on the gateway host); or use "
                f"--local", EXIT_USAGE)
        self._headers = {"Authorization": f"Bearer {token}"}
        self._verify: ssl.SSLContext | bool = _verify(mode.cacert)
        self.timeout = mode.timeout
        _api_url(self.base, "/")  # dies on a malformed or plain-http non-loopback URL

    def call(self, method: str, path: str, *, json: Any = None,
             params: dict[str, str] | None = None, timeout: float | None = None,
             ) -> tuple[int, dict[str, Any]]:
        import httpx

        url = _api_url(self.base, path)
        try:
            with httpx.Client(verify=self._verify, timeout=timeout or self.timeout,
                              follow_redirects=False) as client:
                response = client.request(method, url, json=json, params=params,
                                          headers=self._headers)
        except httpx.ConnectError as exc:
            hint = ("; pass the gateway's certificate with --cacert (or PATHWARDEN_CACERT)"
                    if "CERTIFICATE_VERIFY_FAILED" in str(exc) else "")
            die(f"cannot reach {url}: {exc}{hint}")
        except httpx.HTTPError as exc:
            die(f"request to {url} failed: {exc or type(exc).__name__}")
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            snippet = " ".join(response.text.split())[:200]
            die(f"{url} answered HTTP {response.status_code} without a JSON object: {snippet}"
                + (" (is --gateway the API base URL, such as https://gateway:15480?)"
                   if response.status_code == 404 else ""))
        return response.status_code, body

    def ok(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The answer's body; dies with the gateway's reason on anything but 200."""
        status, body = self.call(method, path, **kwargs)
        if status != 200:
            refuse(body.get("error", f"HTTP {status}"), str(body.get("message", "")), status)
        return body


def refuse(code: str, message: str, status: int | None = None) -> NoReturn:
    """Exit 1 with a line naming why the gateway or the rules refused."""
    what = {
        "not_approver": "not an approver",
        "self_approval": "self-approval",
        "duplicate_vote": "already voted",
        "not_pending": "already decided",
        "expired": "expired",
        "not_found": "no such request",
        "not_requester": "not the requester",
        "scope_not_allowed": "connection not allowed",
        "missing_token": "no token",
        "rate_limited": "rate limited",
    }.get(code, code)
    code_exit = EXIT_USAGE if status == 400 else EXIT_REFUSED
    die(f"refused ({what}): {message}", code_exit)


# -- local mode ---------------------------------------------------------------------------


def _local_identity(cfg: GatewayConfig, name: str | None, what: str) -> Any:
    from ..model import Identity

    if not name:
        die(f"{what} needs --as IDENTITY in local mode (a configured identity; local mode "
            f"trusts whoever can read the configuration and the data directory), or use "
            f"--gateway with a token", EXIT_USAGE)
    settings = cfg.identities.get(name)
    if settings is None:
        die(f"--as {name}: not a configured identity; configured: "
            f"{', '.join(sorted(cfg.identities)) or '(none)'}", EXIT_USAGE)
    return Identity(name, tuple(settings.groups), dict(settings.labels))


def _local(cfg: GatewayConfig, fn: Callable[[ApprovalService], Awaitable[T]], *,
           notify: bool = False, start: bool = False) -> T:
    """Run ``fn`` with an approval service on the configuration's store.

    ``notify``: changes are announced through the configured notifiers, which get
    up to NOTIFY_GRACE_S to deliver before the command returns.
    """
    from ..approvals import ApprovalService

    async def go(store: Store) -> T:
        dispatcher: Any = None
        service: ApprovalService
        if notify and cfg.notifiers:
            from ..approvals.notify import build_notifiers
            from ..approvals.notify.base import Dispatcher
            from ..proxy.approvals_gate import request_view

            async def tell(request: ApprovalRequest, event: str) -> None:
                await dispatcher.notify(event, request_view(service, request))

            service = ApprovalService(store, cfg.approvals, notify=tell)
            dispatcher = Dispatcher(build_notifiers(cfg.notifiers),
                                    record=service.record_notification)
        else:
            service = ApprovalService(store, cfg.approvals)
        if start:
            await service.start()
        try:
            return await fn(service)
        finally:
            if start:
                await service.stop()
            if dispatcher is not None:
                try:
                    await asyncio.wait_for(_drain(service, dispatcher), NOTIFY_GRACE_S)
                except TimeoutError:
                    err.print(escape(f"warning: notifications not delivered within "
                                     f"{NOTIFY_GRACE_S:g}s were abandoned (see approvals "
                                     f"show for their outcome)"))

    return with_store(cfg, go)


async def _drain(service: ApprovalService, dispatcher: Any) -> None:
    await service.drain_notifications()
    await dispatcher.drain()


def _as_dict(service: ApprovalService, request: ApprovalRequest) -> Awaitable[dict[str, Any]]:
    from ..api.approvals_routes import grant_of, request_dict

    async def go() -> dict[str, Any]:
        return request_dict(service, request, await grant_of(service, request))

    return go()


def _run_local(cfg: GatewayConfig, fn: Callable[[ApprovalService], Awaitable[T]],
               **kwargs: bool) -> T:
    from ..approvals import ApprovalError

    try:
        return _local(cfg, fn, **kwargs)
    except ApprovalError as exc:
        if exc.code.startswith("grant_"):
            die(exc.message, EXIT_USAGE)
        refuse(exc.code, exc.message)


# -- rendering ----------------------------------------------------------------------------


def _when(text: str | None) -> str:
    """``2026-11-26T12:43:54Z`` as ``2026-11-26 12:43:54Z``."""
    return text.replace("T", " ") if text else "-"


def _in(text: str | None) -> str:
    """How far ``text`` (an ISO time) is from now: ``in 42m`` or ``3m ago``."""
    if not text:
        return ""
    try:
        moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return ""
    delta = moment - datetime.now(UTC)
    span = format_duration(timedelta(seconds=round(abs(delta.total_seconds())))) \
        if abs(delta) >= timedelta(seconds=1) else "0s"
    return f"in {span}" if delta > timedelta(0) else f"{span} ago"


def what_of(body: dict[str, Any], width: int = 70) -> str:
    """The masked statement or the grant's scope, on one line."""
    op = body.get("operation")
    if isinstance(op, dict):
        text = " ".join(str(op.get("text", "")).split())
        return text if len(text) <= width else text[: width - 3] + "..."
    scope = body.get("scope")
    describe = scope.get("describe", "?") if isinstance(scope, dict) else "?"
    return f"grant: {describe} for {body.get('duration') or '?'}"


def print_table(items: list[dict[str, Any]]) -> None:
    table = Table("id", "state", "kind", "requester", "connection", "what", "approvals",
                  "expires")
    for body in items:
        counts = body.get("approvals") or {}
        expires = body.get("expires_at")
        state = str(body.get("state"))
        table.add_row(
            str(body.get("id")), state, str(body.get("kind")), escape(str(body.get("requester"))),
            escape(str(body.get("connection"))), escape(what_of(body)),
            f"{counts.get('have', 0)}/{counts.get('required', '?')}",
            f"{_when(expires)} ({_in(expires)})" if state in ("pending", "approved")
            else _when(expires))
    out.print(table)
    if not items:
        err.print("no approval requests match (--state all shows decided ones too)")


def print_request(body: dict[str, Any]) -> None:
    """Everything about one request, for people."""
    p = out.print
    counts = body.get("approvals") or {}
    p(escape(f"request #{body['id']}  {body['kind']}  {body['state']}"))
    p(escape(f"  requester:   {body['requester']}"
             + (f" (groups: {', '.join(body['requester_groups'])})"
                if body.get("requester_groups") else "")))
    p(escape(f"  connection:  {body['connection']}"))
    if body.get("requester_claims"):
        p(escape("  claims:      " + ", ".join(
            f"{k}={v}" for k, v in sorted(body["requester_claims"].items()))))
    op = body.get("operation")
    if isinstance(op, dict):
        p(escape(f"  action:      {op.get('action')} ({', '.join(op.get('kinds') or [])})"))
        p(escape(f"  policy:      {op.get('policy') or '-'}  rule: {op.get('rule') or '-'}"))
        if op.get("decision_reason"):
            p(escape(f"  why held:    {op['decision_reason']}"))
        if op.get("session_id"):
            p(escape(f"  session:     {op['session_id']} (statement {op.get('seq')})"))
        p(escape(f"  sha256:      {op.get('statement_hash')}"))
        p("  statement (masked):")
        for line in str(op.get("text", "")).splitlines() or [""]:
            p(escape(f"    {line}"))
    scope = body.get("scope")
    if isinstance(scope, dict):
        p(escape(f"  grant scope: {scope.get('describe')}"))
        p(escape(f"  duration:    {body.get('duration')}"))
    if body.get("reason"):
        p(escape(f"  reason:      {body['reason']}"))
    p(escape(f"  approvers:   {', '.join(body.get('approvers') or []) or 'none configured'}"
             f"  ({counts.get('have', 0)} of {counts.get('required', '?')} approvals"
             + (f", {counts['missing']} more needed" if counts.get("missing") else "")
             + (", from distinct groups" if body.get("distinct_groups") else "") + ")"))
    p(escape(f"  created:     {_when(body.get('created_at'))}"))
    expires = body.get("expires_at")
    p(escape(f"  expires:     {_when(expires)} ({_in(expires)})"))
    if body.get("decided_at"):
        p(escape(f"  decided:     {_when(body['decided_at'])} by {body.get('decided_by')}: "
                 f"{body.get('outcome')}"))
    if body.get("used_at"):
        p(escape(f"  used:        {_when(body['used_at'])}"))
    grant = body.get("grant")
    if isinstance(grant, dict):
        p(escape(f"  grant:       #{grant['id']} {grant['describe']} from "
                 f"{_when(grant['starts_at'])} to {_when(grant['ends_at'])}"
                 + (" (active)" if grant.get("active") else "")))
    if body.get("link"):
        p(escape(f"  link:        {body['link']}"))
    votes = body.get("votes") or []
    if votes:
        table = Table("approver", "vote", "at", "groups", "comment", title="votes")
        for v in votes:
            table.add_row(escape(str(v["approver"])), str(v["verdict"]), _when(v["at"]),
                          escape(", ".join(v.get("groups") or [])), escape(str(v["comment"])))
        p(table)
    else:
        p("  votes:       none yet")
    notes = body.get("notifications") or []
    if notes:
        table = Table("channel", "state", "attempts", "last error", "updated",
                      title="notifications")
        for n in notes:
            table.add_row(escape(str(n["channel"])), str(n["state"]), str(n["attempts"]),
                          escape(str(n.get("last_error") or "")), _when(n.get("updated_at")))
        p(table)
    else:
        p("  notifications: none recorded")


def _vote_line(body: dict[str, Any], who: str, approve: bool) -> str:
    counts = body.get("approvals") or {}
    verb = "approved" if approve else "denied"
    state = body.get("state")
    if state == "pending":
        return (f"{who} {verb} request #{body['id']}: {counts.get('have', 0)} of "
                f"{counts.get('required', '?')} approvals, {counts.get('missing', '?')} more "
                f"needed")
    return f"{who} {verb} request #{body['id']}: the request is {state} ({body.get('outcome')})"


# -- approvals list / show ----------------------------------------------------------------


@approvals_app.command("list")
def list_command(
    state: Annotated[str, typer.Option(
        help="pending (default), approved, denied, expired, withdrawn, used or all.")
    ] = "pending",
    identity: Annotated[str | None, typer.Option(help="Only requests of this identity.")] = None,
    connection: Annotated[str | None, typer.Option(help="Only this connection.")] = None,
    kind: Annotated[str | None, typer.Option(help="operation or grant.")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    gateway: GatewayOpt = None,
    token_env: TokenEnvOpt = ENV_TOKEN,
    cacert: CacertOpt = None,
    local: LocalOpt = False,
    timeout: TimeoutOpt = 30,
) -> None:
    """Approval requests, newest first: id, state, requester, what, approvals, expiry."""
    from ..approvals import RequestKind, RequestState

    states = ("all", *(s.value for s in RequestState))
    if state not in states:
        die(f"--state: expected one of {', '.join(states)}, got {state!r}", EXIT_USAGE)
    if kind is not None and kind not in {k.value for k in RequestKind}:
        die(f"--kind: expected operation or grant, got {kind!r}", EXIT_USAGE)
    mode = _mode(config, gateway, token_env, cacert, local, timeout)
    if mode.remote:
        params = {"state": state, **({"identity": identity} if identity else {}),
                  **({"connection": connection} if connection else {}),
                  **({"kind": kind} if kind else {})}
        items = Remote(mode).ok("GET", "/v1/approvals", params=params)["approvals"]
    else:
        cfg = load(config)

        async def go(service: ApprovalService) -> list[dict[str, Any]]:
            found = await service.list(None if state == "all" else state, identity,
                                       connection, kind)
            return [await _as_dict(service, r) for r in found]

        items = _run_local(cfg, go)
    print_table(items)


@approvals_app.command("show")
def show_command(
    request_id: Annotated[int, typer.Argument(help="The request's number.", min=1)],
    config: ConfigOpt = DEFAULT_CONFIG,
    gateway: GatewayOpt = None,
    token_env: TokenEnvOpt = ENV_TOKEN,
    cacert: CacertOpt = None,
    local: LocalOpt = False,
    timeout: TimeoutOpt = 30,
) -> None:
    """One request: the statement (masked) or the grant, votes with times and comments,
    notifications and their outcome, the requester's pipeline claims, the link."""
    body = _fetch(request_id, _mode(config, gateway, token_env, cacert, local, timeout))
    print_request(body)


def _fetch(request_id: int, mode: Mode) -> dict[str, Any]:
    if mode.remote:
        return Remote(mode).ok("GET", f"/v1/approvals/{request_id}")
    cfg = load(mode.config_path)

    async def go(service: ApprovalService) -> dict[str, Any] | None:
        found = await service.get(request_id)
        return None if found is None else await _as_dict(service, found)

    body = _run_local(cfg, go)
    if body is None:
        refuse("not_found", f"no approval request {request_id} (see: pathwarden approvals list)")
    return body


# -- approve / deny -----------------------------------------------------------------------


AsOpt = Annotated[str | None, typer.Option(
    "--as", help="Local mode: the configured identity acting (trusted: whoever can read the "
                 "configuration and data directory can name any identity).")]


def _vote(request_id: int, approve: bool, comment: str, as_: str | None, mode: Mode) -> None:
    if mode.remote:
        if as_:
            die("--as is for local mode; with --gateway the token's identity votes", EXIT_USAGE)
        remote = Remote(mode)
        verb = "approve" if approve else "deny"
        body = remote.ok("POST", f"/v1/approvals/{request_id}/{verb}",
                         json={"comment": comment})
        who = str((body.get("votes") or [{}])[-1].get("approver", "you"))
    else:
        cfg = load(mode.config_path)
        voter = _local_identity(cfg, as_, "approve/deny")
        who = voter.name

        async def go(service: ApprovalService) -> dict[str, Any]:
            from ..api.approvals_routes import refine
            from ..approvals import ApprovalError

            try:
                decided = await service.vote(request_id, voter, approve, comment.strip())
            except ApprovalError as exc:
                raise await refine(service, request_id, exc) from None
            return await _as_dict(service, decided)

        body = _run_local(cfg, go, notify=True)
    out.print(escape(_vote_line(body, who, approve)))


CommentOpt = Annotated[str, typer.Option(
    "--comment", "-m", help="Why, kept with the vote in the audit trail.")]


def _vote_command(approve: bool, doc: str) -> Callable[..., None]:
    """The ``approve`` or ``deny`` command: the same options, one verdict."""

    def command(
        request_id: Annotated[int, typer.Argument(help="The request's number.", min=1)],
        comment: CommentOpt = "",
        as_: AsOpt = None,
        config: ConfigOpt = DEFAULT_CONFIG,
        gateway: GatewayOpt = None,
        token_env: TokenEnvOpt = ENV_TOKEN,
        cacert: CacertOpt = None,
        local: LocalOpt = False,
        timeout: TimeoutOpt = 30,
    ) -> None:
        _vote(request_id, approve, comment, as_,
              _mode(config, gateway, token_env, cacert, local, timeout))

    verb = "approve" if approve else "deny"
    command.__name__ = command.__qualname__ = f"{verb}_command"
    command.__doc__ = doc
    return command


approve_command = _vote_command(
    True,
    """Approve a request (a held statement or a grant). Exit 1 when refused: not an
    approver, your own request, already voted or decided, expired.""")

deny_command = _vote_command(False, """Deny a request: one deny ends it. Exit 1 when refused.""")


# -- request ------------------------------------------------------------------------------


def request_command(
    connection: Annotated[str, typer.Option("--connection", help="The connection.")],
    scope: Annotated[list[str], typer.Option(
        "--scope", help="Action classes or kinds: ddl, write, drop_table ... (comma-separated "
                        "or repeated).")],
    duration: Annotated[str, typer.Option("--for", help="How long, e.g. 30m (capped by "
                                                        "approvals max_grant).")],
    reason: Annotated[str, typer.Option("--reason", help="Why, for the approvers.")],
    table: Annotated[list[str] | None, typer.Option(
        "--table", help="Only tables matching this glob, e.g. public.orders* (repeatable).")
    ] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Wait until decided: exit 0 approved, 1 denied or expired; Ctrl-C "
                       "withdraws the request.")] = False,
    as_: Annotated[str | None, typer.Option(
        "--as", "--identity", help="Local mode: the configured identity asking (remote: the "
                                   "token's identity).")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
    gateway: GatewayOpt = None,
    token_env: TokenEnvOpt = ENV_TOKEN,
    cacert: CacertOpt = None,
    local: LocalOpt = False,
    timeout: TimeoutOpt = 30,
) -> None:
    """Ask ahead for time-boxed access (a grant); prints the request id on stdout.

    pathwarden request --connection app-db --scope ddl --table 'public.orders*' --for 30m
    --reason "release 4.2 migration" --wait
    """
    from ..api.approvals_routes import parse_scope

    try:
        wanted = parse_scope(scope, table or ())
    except ValueError as exc:
        die(f"--scope/--table: {exc}", EXIT_USAGE)
    try:
        length = parse_duration(duration)
    except ValueError as exc:
        die(f"--for: {exc}", EXIT_USAGE)
    if not reason.strip():
        die("--reason: say why the grant is needed", EXIT_USAGE)
    mode = _mode(config, gateway, token_env, cacert, local, timeout)
    if mode.remote:
        remote = Remote(mode)
        if as_:
            who = remote.ok("GET", "/v1/whoami").get("identity")
            if who != as_:
                die(f"--as {as_}: with --gateway the token's identity ({who}) asks; --as is "
                    f"for local mode", EXIT_USAGE)
        body = remote.ok("POST", "/v1/grants", json={
            "connection": connection, "scope": list(wanted.actions),
            "tables": list(wanted.resources), "duration": duration, "reason": reason})
        _requested(body, length)
        if wait:
            _wait_remote(remote, int(body["id"]))
        return
    cfg = load(config)
    requester = _local_identity(cfg, as_, "request")
    if connection not in cfg.connections:
        die(f"--connection {connection}: not a configured connection; configured: "
            f"{', '.join(sorted(cfg.connections)) or '(none)'}", EXIT_USAGE)
    allowed = cfg.identities[requester.name].connections
    if allowed is not None and connection not in allowed:
        die(f"{requester.name} may not use connection {connection} "
            f"(identities.{requester.name}.connections: {', '.join(allowed) or 'none'}); a "
            f"grant is asked for a connection the identity may already connect to",
            EXIT_USAGE)

    async def ask(service: ApprovalService) -> dict[str, Any]:
        created = await service.request_grant(requester, connection, wanted, length, reason)
        return await _as_dict(service, created)

    body = _run_local(cfg, ask, notify=True)
    _requested(body, length)
    if wait:
        _wait_local(cfg, int(body["id"]), requester)


def _requested(body: dict[str, Any], asked: timedelta) -> None:
    sys.stdout.write(f"{body['id']}\n")
    sys.stdout.flush()
    got = body.get("duration")
    cut = f" (cut from {format_duration(asked)} by approvals max_grant)" \
        if got and got != format_duration(asked) else ""
    scope = body.get("scope") or {}
    err.print(escape(f"requested grant #{body['id']}: {scope.get('describe')} on "
                     f"{body['connection']} for {body.get('duration')}{cut} as "
                     f"{body['requester']}"))


def _follow_line(body: dict[str, Any]) -> str:
    rid = body["id"]
    counts = body.get("approvals") or {}
    link = f" or open {body['link']}" if body.get("link") else ""
    return (f"waiting for approval #{rid} ({counts.get('missing', '?')} approval(s) needed "
            f"from {', '.join(body.get('approvers') or []) or 'nobody configured'}); follow "
            f"with: pathwarden approvals show {rid}{link}; approvers run: pathwarden approve "
            f"{rid}; Ctrl-C withdraws the request")


def _outcome(body: dict[str, Any]) -> NoReturn:
    state = body.get("state")
    rid = body.get("id")
    if state == "approved":
        grant = body.get("grant") or {}
        err.print(escape(
            f"approved: {body.get('outcome')}; grant #{grant.get('id', '?')} of "
            f"{grant.get('describe', '?')} on {body.get('connection')} from "
            f"{_when(grant.get('starts_at'))} until {_when(grant.get('ends_at'))}"))
        raise typer.Exit(0)
    die(f"request #{rid} is {state}: {body.get('outcome') or 'no decision recorded'}",
        EXIT_REFUSED)


def _wait_remote(remote: Remote, rid: int) -> NoReturn:
    try:
        body = remote.ok("GET", f"/v1/approvals/{rid}")
        err.print(escape(_follow_line(body)))
        while body.get("state") == "pending":
            # The gateway holds each answer until the request is decided or REMOTE_WAIT passes.
            body = remote.ok("GET", f"/v1/approvals/{rid}", params={"wait": REMOTE_WAIT},
                             timeout=remote.timeout + 60)
        _outcome(body)
    except KeyboardInterrupt:
        status, answer = remote.call("POST", f"/v1/approvals/{rid}/withdraw",
                                     json={"reason": "the requester stopped waiting"})
        _interrupted(rid, status == 200, answer)


def _wait_local(cfg: GatewayConfig, rid: int, requester: Any) -> NoReturn:
    from ..approvals import RequestState

    async def follow(service: ApprovalService) -> dict[str, Any]:
        found = await service.get(rid)
        assert found is not None
        err.print(escape(_follow_line(await _as_dict(service, found))))
        while found.state is RequestState.PENDING:
            left = (found.expires_at - datetime.now(UTC)).total_seconds()
            found = await service.wait(rid, max(1.0, left + 1.0))
        return await _as_dict(service, found)

    try:
        body = _run_local(cfg, follow, start=True)
    except KeyboardInterrupt:
        from ..approvals import ApprovalError

        async def withdraw(service: ApprovalService) -> dict[str, Any]:
            try:
                done = await service.withdraw(rid, requester, "the requester stopped waiting")
            except ApprovalError as exc:
                return {"message": exc.message}
            return await _as_dict(service, done)

        answer = _local(cfg, withdraw, notify=True)
        _interrupted(rid, "id" in answer, answer)
    _outcome(body)


def _interrupted(rid: int, withdrawn: bool, answer: dict[str, Any]) -> NoReturn:
    if withdrawn:
        err.print(f"interrupted: request #{rid} withdrawn")
    else:
        err.print(escape(f"interrupted: request #{rid} could not be withdrawn: "
                         f"{answer.get('message', '?')}"))
    raise typer.Exit(EXIT_INTERRUPTED)

