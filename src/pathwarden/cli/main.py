"""The ``pathwarden`` command.

Every sub-command takes ``--config`` (or ``PATHWARDEN_CONFIG``; default
``./pathwarden.yaml``). Output meant for pipelines goes to stdout (a token, a
table); progress and errors go to stderr with a non-zero exit status.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from .. import __version__
from ..config import ConfigError, format_duration, parse_duration
from ..store import Store, StoreError
from .approvals_cmd import approvals_app, approve_command, deny_command, request_command
from .audit_cmd import audit_app, replay_command
from .common import DEFAULT_CONFIG, ConfigOpt, err, fail, load, moment, with_store
from .connect_cmd import connect_command
from .mask_cmd import mask_command
from .pipeline_cmd import exec_command, login_command
from .policy_cmd import policy_app
from .ssh_cmd import ssh_app

T = TypeVar("T")

app = typer.Typer(
    name="pathwarden", no_args_is_help=True, add_completion=False,
    help="An access gateway in the data path: short-lived identities, per-statement "
         "policy and an audit trail for CI/CD pipelines.",
)
token_app = typer.Typer(no_args_is_help=True, help="Issue, list and revoke gateway tokens.")
sessions_app = typer.Typer(no_args_is_help=True, help="Inspect recorded sessions.")
config_app = typer.Typer(no_args_is_help=True, help="Validate configuration files.")
app.add_typer(token_app, name="token")
app.add_typer(sessions_app, name="sessions")
app.add_typer(config_app, name="config")
app.add_typer(policy_app, name="policy")
app.add_typer(audit_app, name="audit")
app.command("replay")(replay_command)
app.command("mask")(mask_command)
app.command("login")(login_command)
app.command("exec")(exec_command)
app.command("connect")(connect_command)
app.add_typer(approvals_app, name="approvals")
app.command("approve")(approve_command)
app.command("deny")(deny_command)
app.command("request")(request_command)
app.add_typer(ssh_app, name="ssh")

# Pipelines read this output from logs: don't squeeze tables into 80 columns there.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)



_fail = fail
_load = load




def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    if version:
        out.print(f"pathwarden {__version__}")
        raise typer.Exit()


@app.command()
def serve(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Run the gateway until SIGINT/SIGTERM."""
    from ..masking.settings import MaskingError
    from ..proxy.gateway import serve as run_gateway

    cfg = _load(config)
    _setup_logging(cfg.log_level)
    try:
        run_gateway(cfg, config)
    except (StoreError, ConfigError) as exc:
        raise _fail(str(exc)) from None
    except MaskingError as exc:
        raise _fail(f"{config}: {exc}") from None
    except OSError as exc:
        raise _fail(f"cannot start the gateway: {exc}") from None


@config_app.command("check")
def config_check(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Validate a configuration file and summarise it."""
    cfg = _load(config)
    out.print(f"{config}: OK: {len(cfg.listeners)} listener(s), "
              f"{len(cfg.connections)} connection(s), {len(cfg.identities)} identities")


# -- tokens --------------------------------------------------------------------


@token_app.command("issue")
def token_issue(
    identity: Annotated[str, typer.Argument(help="Identity (service account) to issue for.")],
    ttl: Annotated[str | None, typer.Option(help="Lifetime, e.g. 15m, 1h (capped).")] = None,
    connection: Annotated[list[str] | None, typer.Option(
        "--connection", help="Scope the token to this connection (repeatable).")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Mint a short-lived token; prints the token alone on stdout."""
    from ..identity import Authenticator, AuthError, IssueError, TokenAuthority

    cfg = _load(config)
    try:
        lifetime = parse_duration(ttl) if ttl else None
    except ValueError as exc:
        raise _fail(f"--ttl: {exc}", 2) from None
    Path(cfg.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    authority = TokenAuthority.load_or_create(Path(cfg.data_dir))

    async def go(store: Store) -> object:
        auth = Authenticator(cfg, authority, store)
        return await auth.issue_token(identity, lifetime, tuple(connection) if connection else None)

    try:
        issued = with_store(cfg, go)
    except (AuthError, IssueError) as exc:
        raise _fail(str(exc)) from None
    from ..identity import IssuedToken

    assert isinstance(issued, IssuedToken)
    scope = ", ".join(issued.connections) if issued.connections else "any allowed connection"
    err.print(f"token {issued.token_ref} for {issued.identity}, expires "
              f"{issued.expires_at:%Y-%m-%d %H:%M:%S}Z, scope: {scope}")
    # The token alone on stdout, so `TOKEN=$(pathwarden token issue ...)` works.
    sys.stdout.write(issued.token + "\n")


@token_app.command("list")
def token_list(
    identity: Annotated[str | None, typer.Option(help="Only this identity.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Include expired tokens.")] = False,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """List issued tokens (metadata only; tokens themselves are never stored)."""
    cfg = _load(config)
    tokens = with_store(cfg, lambda s: s.list_tokens(identity, include_expired=all_))
    now = datetime.now(UTC)
    table = Table("ref", "identity", "issued", "expires", "scope", "state")
    for t in tokens:
        state = ("revoked" if t.revoked else "expired" if t.expired(now) else
                 f"valid {format_duration(t.expires_at - now)}")
        table.add_row(t.token_ref, t.identity, f"{t.issued_at:%Y-%m-%d %H:%M}",
                      f"{t.expires_at:%Y-%m-%d %H:%M}",
                      ", ".join(t.connections) if t.connections else "*", state)
    out.print(table)


@token_app.command("revoke")
def token_revoke(
    ref: Annotated[str, typer.Argument(help="Token ref (or a unique prefix of 6+ chars).")],
    reason: Annotated[str | None, typer.Option(help="Why, for the audit trail.")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Revoke a token: new connections with it are refused at once."""
    cfg = _load(config)
    rec = with_store(cfg, lambda s: s.revoke_token(ref, reason))
    assert rec.revoked_at is not None
    out.print(f"revoked token {rec.token_ref} of {rec.identity} "
              f"(at {rec.revoked_at:%Y-%m-%d %H:%M:%S}Z)")


# -- sessions ------------------------------------------------------------------


@sessions_app.command("list")
def sessions_list(
    identity: Annotated[str | None, typer.Option(help="Only this identity.")] = None,
    connection: Annotated[str | None, typer.Option(help="Only this connection.")] = None,
    since: Annotated[str | None, typer.Option(help="Only newer: 1h, 2d or an ISO date.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 50,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Who connected, when, to what, and how it ended."""
    cfg = _load(config)

    async def go(store: Store) -> tuple[list[object], dict[str, int]]:
        rows = await store.list_sessions(identity=identity, connection=connection,
                                         since=moment(since, "--since"), limit=limit)
        counts = await store.statement_counts([r.id for r in rows])
        return list(rows), counts

    rows, counts = with_store(cfg, go)
    table = Table("session", "identity", "connection", "client", "started", "duration",
                  "stmts", "in/out bytes", "end")
    from ..model import SessionRecord

    for r in rows:
        assert isinstance(r, SessionRecord)
        dur = format_duration(r.ended_at - r.started_at) if r.ended_at else "active"
        table.add_row(r.id, r.identity, r.connection, r.client_addr,
                      f"{r.started_at:%Y-%m-%d %H:%M:%S}", dur, str(counts.get(r.id, 0)),
                      f"{r.bytes_from_client}/{r.bytes_to_client}", r.end_reason or "")
    out.print(table)


@sessions_app.command("show")
def sessions_show(
    session_id: Annotated[str, typer.Argument(help="Session id (or a unique prefix).")],
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Each statement of a session: decision, outcome, rows, duration."""
    cfg = _load(config)

    async def go(store: Store) -> tuple[object, list[object]]:
        rec = await store.get_session(session_id)
        if rec is None:
            return None, []
        return rec, list(await store.list_statements(rec.id))

    rec, statements = with_store(cfg, go)
    if rec is None:
        raise _fail(f"no session {session_id!r}; list them with: pathwarden sessions list")
    from ..model import SessionRecord, StatementRecord

    assert isinstance(rec, SessionRecord)
    ended = f"{rec.ended_at:%Y-%m-%d %H:%M:%S}" if rec.ended_at else "(active)"
    out.print(f"session {rec.id}  identity {rec.identity}  connection {rec.connection}  "
              f"client {rec.client_addr}")
    out.print(f"  started {rec.started_at:%Y-%m-%d %H:%M:%S}  ended {ended}  "
              f"end reason: {rec.end_reason or '-'}  token {rec.token_ref or '-'}")
    if rec.claims:
        out.print("  claims: " + ", ".join(f"{k}={v}" for k, v in rec.claims.items()))
    table = Table("seq", "kind", "statement", "decision", "result", "rows", "ms")
    for st in statements:
        assert isinstance(st, StatementRecord)
        text = st.text if len(st.text) <= 200 else st.text[:200] + "..."
        if st.params:
            text += "\n  params: " + ", ".join("NULL" if p is None else p for p in st.params)
        result = f"ERROR: {st.error}" if st.error else (st.command_tag or "")
        if st.masked:
            result += "\n  masked: " + ", ".join(f"{k} x{n}" for k, n in sorted(
                st.masked.items()))
        table.add_row(str(st.seq), st.kind, text, st.verdict.value, result,
                      "" if st.rows is None else str(st.rows),
                      "" if st.duration_ms is None else f"{st.duration_ms:.2f}")
    out.print(table)


@app.command()
def demo(
    keep_running: Annotated[bool, typer.Option(
        "--keep-running", help="Leave the gateway up after the demo query.")] = False,
    workdir: Annotated[Path, typer.Option(help="Where the demo keeps its data.")] = Path(
        "demo-data"),
) -> None:
    """Run the whole path on embedded defaults: a PostgreSQL server, the gateway, a
    token, a query through the gateway, and the recorded session."""
    from .demo import run_demo

    try:
        code = run_demo(workdir.resolve(), keep_running=keep_running)
    except RuntimeError as exc:
        raise _fail(str(exc)) from None
    raise typer.Exit(code)


def main() -> None:
    """Entry point of the ``pathwarden`` console script."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
