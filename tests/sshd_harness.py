"""A private, throw-away OpenSSH server (``sshd``) for tests and benchmarks.

Self-contained on purpose (standard library only) so that scripts outside the test
suite, e.g. benchmarks, can import it by path.

Usage::

    server = start_sshd()
    subprocess.run([*server.ssh_args(), "echo hello"])            # the real ssh
    subprocess.run([*server.scp_args(), "f", server.remote(server.scratch / "f")])
    await asyncssh.connect(**server.connect_kwargs())             # asyncssh
    server.commands()            # ["echo hello", "scp -t ..."]: what sessions ran
    server.log_text()            # sshd's own log (stderr, LogLevel VERBOSE)
    server.destroy()             # stop, end every session, remove private files

Theory of operation
-------------------
*Files.* Each server owns one private directory ``<tmp>/pathwarden-sshd-XXXX``
(mode 0700) holding ``sshd_config``, its ed25519 host key, a client key pair
(ed25519, no passphrase) whose public half is the only line of
``authorized_keys``, a ``known_hosts`` file pinning the host key, the pid file,
``sshd.log`` and ``scratch/``, a directory tests may use for files.

*Who logs in.* Only the user running the tests (``AllowUsers``), only with the
generated client key. Password authentication is off: sshd without PAM checks a
password against the system account (``/etc/shadow``), so a known password would
need a change to a system account, which this harness does not make. As root,
sshd separates privileges: it needs the ``sshd`` system user (the openssh-server
package creates it) and an empty chroot directory (``/run/sshd`` on Debian); when
sshd reports that directory missing, it is created (0755) and sshd started again.
Not as root, sshd runs unprivileged, needs neither and can log in only the user it
runs as, which is the login user here.

*Port and readiness.* A port is picked by binding port 0 and releasing it; if sshd
then fails to bind it (another process took it meanwhile), a new port is tried.
The server is ready when its log says it listens on that port and a connection
reads the ``SSH-2.0-OpenSSH`` banner; a start that fails or times out raises
:class:`SshdError` with sshd's log.

*What sessions ran.* sshd logs connections, authentications and session kinds at
``LogLevel VERBOSE`` but never a command's text. Unless ``record_commands=False``,
a ``ForceCommand`` wrapper therefore appends one line per session request to the
same log (read back with :meth:`SshdServer.requests` / :meth:`SshdServer.commands`)
and then runs the request as sshd would: a login shell, the command, or for the
``sftp`` subsystem the external ``sftp-server`` (a forced command replaces
``internal-sftp``). With a bash login shell the wrapper is sourced by the shell
sshd starts and runs the command in that same shell, so the command sees what it
would see without the wrapper (rc files read once, same ``$$``, ``$0``,
``SHLVL``, ``PATH``); with another login shell the command runs in a second
``$SHELL -c``. ``SSH_ORIGINAL_COMMAND`` is removed either way.

*Stopping.* The listening sshd does not end established sessions when it exits:
each connection's sshd is its own session leader and would outlive it. ``stop``
therefore freezes the whole process tree (SIGSTOP, top down, so nothing can fork
meanwhile), sends SIGTERM and SIGCONT to every member, waits a moment and SIGKILLs
what is left. Nothing started by the server survives ``stop``. A test process
killed outright leaves its server behind; the next :func:`start_sshd` stops
servers whose owning process is gone and removes their directories.

*Newer OpenSSH.* From 9.8 on, sshd penalises addresses that fail to log in
(``PerSourcePenalties``); tests fail logins from 127.0.0.1 on purpose, so it is
turned off when the binary knows the option.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgserver import _alive, free_port

__all__ = [
    "SSHD_PATH",
    "KeyPair",
    "SessionRequest",
    "SshdError",
    "SshdNotInstalled",
    "SshdServer",
    "free_port",
    "start_sshd",
]

#: The OpenSSH server binary (an absolute path: sshd re-executes itself by it).
SSHD_PATH = Path("/usr/sbin/sshd")

_INSTALL_HINT = (
    "run `bash scripts/provision.sh` (it installs openssh-server and openssh-client), "
    "or `sudo apt-get install openssh-server openssh-client`"
)

_OWNED_PREFIX = "pathwarden-sshd-"
_LOG_MARK = "pathwarden-sshd-session:"
_SFTP_SERVERS = (
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/libexec/sftp-server",
    "/usr/lib/ssh/sftp-server",
)
# Characters that sshd_config or the ForceCommand shell line would need quoted.
_UNSAFE_PATH = re.compile(r"[\s\"'\\%$`#;&|<>()*?\[\]{}!~]")
_BIND_FAILED = re.compile(r"Bind to port \d+ on \S+ failed|Cannot bind any address")
_PRIVSEP_DIR = re.compile(r"Missing privilege separation directory: (\S+)")
_REQUEST_LINE = re.compile(
    rf"^{re.escape(_LOG_MARK)} pid=(\d+) user=(\S+) (shell|subsystem=(\S+)|exec=(.*))$",
    re.MULTILINE,
)
_QUIET_LEVELS = frozenset({"QUIET", "FATAL", "ERROR"})


class SshdError(RuntimeError):
    """Starting, stopping or setting up the test sshd failed."""


class SshdNotInstalled(SshdError):
    """The OpenSSH server or ``ssh-keygen`` is not installed."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    """An ed25519 key pair: the private key file and the public ``type base64`` text."""

    private: Path
    public: str

    @classmethod
    def generate(cls, path: Path, comment: str) -> KeyPair:
        """``ssh-keygen`` a new key (no passphrase) at ``path`` (and ``path.pub``)."""
        _keygen(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
        return cls.load(path)

    @classmethod
    def load(cls, path: Path) -> KeyPair:
        """The pair of an existing unencrypted private key (public half derived)."""
        out = _keygen(["-y", "-f", str(path)])
        fields = out.split()
        if len(fields) < 2:
            raise SshdError(f"ssh-keygen -y -f {path} printed no public key: {out!r}")
        return cls(private=path, public=f"{fields[0]} {fields[1]}")


@dataclass(frozen=True, slots=True)
class SessionRequest:
    """One session request as the server received it (see ``record_commands``).

    ``kind`` is ``"exec"`` (``command`` is the command text), ``"shell"``
    (``command`` is None) or ``"subsystem"`` (``command`` is its name, e.g. sftp).
    ``pid`` is the process that ran it; ``user`` the account it ran as.
    """

    kind: str
    command: str | None
    user: str
    pid: int


def _keygen(args: list[str]) -> str:
    exe = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
    if not os.access(exe, os.X_OK):
        raise SshdNotInstalled(f"ssh-keygen not found (needed for test keys); {_INSTALL_HINT}")
    proc = subprocess.run(
        [exe, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )
    if proc.returncode != 0:
        raise SshdError(
            f"ssh-keygen {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr.strip()}"
        )
    return proc.stdout


@functools.lru_cache(maxsize=8)
def _openssh_version(sshd: str) -> tuple[int, int]:
    """(major, minor) of the sshd binary, (0, 0) if it does not say."""
    try:
        proc = subprocess.run(
            [sshd, "-V"], capture_output=True, text=True, timeout=5,
            stdin=subprocess.DEVNULL, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return (0, 0)
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", proc.stdout + proc.stderr)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _find_sftp_server() -> str:
    for path in _SFTP_SERVERS:
        if os.access(path, os.X_OK):
            return path
    raise SshdNotInstalled(
        f"no sftp-server found (looked in {', '.join(_SFTP_SERVERS)}); it serves the sftp "
        f"subsystem when commands are recorded; {_INSTALL_HINT}, "
        "or start the server with record_commands=False"
    )


def _unescape(text: str) -> str:
    table = {"n": "\n", "r": "\r", "\\": "\\"}
    return re.sub(r"\\([nr\\])", lambda m: table[m[1]], text)


# --------------------------------------------------------------------- processes
def _proc_stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) of a process from /proc, None if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2 :].split()
    return int(rest[1]), rest[0].decode(), int(rest[19])


def _processes() -> dict[int, tuple[int, str, int]]:
    found: dict[int, tuple[int, str, int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                stat = _proc_stat(int(entry))
                if stat is not None:
                    found[int(entry)] = stat
    return found


def _running(pid: int, started: int) -> bool:
    """Whether ``pid`` is still the process that started at ``started`` and not dead."""
    stat = _proc_stat(pid)
    return stat is not None and stat[2] == started and stat[1] not in ("Z", "X")


def _freeze_tree(root: int) -> dict[int, int]:
    """SIGSTOP ``root`` and every descendant; return {pid: start time} of them all.

    Members are stopped before their children are looked up, and the lookup repeats
    until it finds nobody new, so no member can fork a process that is missed.
    """
    frozen: dict[int, int] = {}
    while True:
        procs = _processes()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        members, stack = [], [root] if root in procs else []
        while stack:
            pid = stack.pop()
            members.append(pid)
            stack.extend(children.get(pid, ()))
        new = [pid for pid in members if pid not in frozen]
        if not new:
            return frozen
        for pid in new:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGSTOP)
            frozen[pid] = procs[pid][2]
        deadline = time.monotonic() + 1.0
        for pid in new:  # a stop takes effect asynchronously; a running one could fork
            while time.monotonic() < deadline:
                stat = _proc_stat(pid)
                if stat is None or stat[1] in ("T", "t", "Z", "X"):
                    break
                time.sleep(0.002)


def _kill_tree(root: int, grace: float = 1.0, reap: subprocess.Popen[bytes] | None = None) -> None:
    """End ``root`` and all its descendants: SIGTERM, then SIGKILL after ``grace``."""
    members = _freeze_tree(root)
    for pid, started in members.items():
        if _running(pid, started):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
                os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if reap is not None:
            reap.poll()
        if not any(_running(pid, started) for pid, started in members.items()):
            break
        time.sleep(0.01)
    for pid, started in members.items():
        if _running(pid, started):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    if reap is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            reap.wait(timeout=10)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(
        _running(pid, started) for pid, started in members.items()
    ):
        time.sleep(0.01)


def _reap_stale_servers() -> None:
    """Stop servers whose test process died without stopping them; remove their dirs.

    Only directories this module created (``<tmp>/pathwarden-sshd-*`` with an
    ``owner.pid`` naming a process that no longer exists) are touched; the sshd is
    the one in ``sshd.pid`` whose command line names that directory's config.
    """
    for owner_file in Path(tempfile.gettempdir()).glob(f"{_OWNED_PREFIX}*/owner.pid"):
        try:
            owner = int(owner_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if _alive(owner):
            continue
        directory = owner_file.parent
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((directory / "sshd.pid").read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if str(directory / "sshd_config").encode() in cmdline:
                _kill_tree(pid)
        shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------- the server
# Written in bash syntax. With a bash login shell it is *sourced* by the shell sshd
# starts for the forced command (``. wrapper``), so a command runs in that very
# shell, as it would without the wrapper (rc files read once, same $$, $0, SHLVL).
# With another login shell it runs as a bash script (``wrapper --exec``) and the
# command gets a fresh ``$SHELL -c``. @LOG@, @MARK@, @SFTP@ are filled in.
_SESSION_WRAPPER = """\
#!/bin/bash
# sshd's ForceCommand (written by tests/sshd_harness.py): append one line naming
# this session request to the server log, then run the request as sshd would.
__pw_log=@LOG@
if [[ -z ${SSH_ORIGINAL_COMMAND+set} ]]; then
    printf '%s pid=%d user=%s shell\\n' @MARK@ "$$" "$USER" >>"$__pw_log"
    exec -l "$SHELL"
fi
if [[ $SSH_ORIGINAL_COMMAND == internal-sftp ]]; then
    printf '%s pid=%d user=%s subsystem=sftp\\n' @MARK@ "$$" "$USER" >>"$__pw_log"
    unset SSH_ORIGINAL_COMMAND
    exec @SFTP@
fi
__pw_text=${SSH_ORIGINAL_COMMAND//\\\\/\\\\\\\\}
__pw_text=${__pw_text//$'\\n'/\\\\n}
__pw_text=${__pw_text//$'\\r'/\\\\r}
printf '%s pid=%d user=%s exec=%s\\n' @MARK@ "$$" "$USER" "$__pw_text" >>"$__pw_log"
if [[ ${1-} == --exec ]]; then
    __pw_cmd=$SSH_ORIGINAL_COMMAND
    unset SSH_ORIGINAL_COMMAND
    exec "$SHELL" -c "$__pw_cmd"
fi
set -- "$SSH_ORIGINAL_COMMAND"
unset SSH_ORIGINAL_COMMAND __pw_log __pw_text
eval "shift; $1"
"""


class SshdServer:
    """A private OpenSSH server on 127.0.0.1 for the current user (see the module doc).

    Construct, then :meth:`start` (or use :func:`start_sshd`); :meth:`stop` ends the
    server and every session; :meth:`destroy` also removes its directory. ``options``
    replace or add ``sshd_config`` keywords (a value of None removes one);
    ``extra_config`` is appended verbatim (e.g. ``Match`` blocks). ``host_key`` and
    ``client_key`` reuse existing private keys (copied in) instead of new ones.
    """

    def __init__(
        self,
        *,
        base_dir: Path | None = None,
        host_key: Path | None = None,
        client_key: Path | None = None,
        options: Mapping[str, str | None] | None = None,
        extra_config: str = "",
        record_commands: bool = True,
        sshd_path: Path = SSHD_PATH,
        start_timeout: float = 10.0,
    ) -> None:
        account = pwd.getpwuid(os.geteuid())
        self._user = account.pw_name
        self._home = Path(account.pw_dir)
        self._shell = account.pw_shell or "/bin/sh"
        self._base_dir = base_dir
        self._host_key_source = host_key
        self._client_key_source = client_key
        self._options = dict(options or {})
        self._extra_config = extra_config
        self._record_commands = record_commands
        self._sshd_path = Path(sshd_path)
        self._start_timeout = start_timeout
        self._dir: Path | None = None
        self._host_key: KeyPair | None = None
        self._client_key: KeyPair | None = None
        self._port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._final_log: str | None = None

    # ------------------------------------------------------------------ identity
    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        if not self._port:
            raise SshdError("the sshd has not been started yet: call start() first")
        return self._port

    @property
    def user(self) -> str:
        """The only account that can log in: the one running the tests."""
        return self._user

    @property
    def home(self) -> Path:
        """The login user's home directory (from the password database, as sshd uses)."""
        return self._home

    @property
    def dir(self) -> Path:
        """The server's private directory (config, keys, pid file, log, scratch)."""
        if self._dir is None:
            raise SshdError("the sshd has not been started yet: call start() first")
        return self._dir

    @property
    def scratch(self) -> Path:
        """A directory for test files, readable and writable by the login user."""
        return self.dir / "scratch"

    @property
    def config_path(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def log_path(self) -> Path:
        return self.dir / "sshd.log"

    @property
    def client_key(self) -> Path:
        """Private key file (ed25519, no passphrase) that ``authorized_keys`` accepts."""
        return self._keys()[1].private

    @property
    def client_public_key(self) -> str:
        """``ssh-ed25519 AAAA...`` of :attr:`client_key`."""
        return self._keys()[1].public

    @property
    def host_key(self) -> Path:
        """The server's private host key file (pass it to another server to share it)."""
        return self._keys()[0].private

    @property
    def host_key_public(self) -> str:
        """``ssh-ed25519 AAAA...``: the host key the server presents."""
        return self._keys()[0].public

    @property
    def known_hosts(self) -> Path:
        """A known_hosts file holding only :meth:`known_hosts_line`."""
        return self.dir / "known_hosts"

    @property
    def pid(self) -> int | None:
        """The listening sshd's pid while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def known_hosts_line(self) -> str:
        """``[127.0.0.1]:PORT ssh-ed25519 AAAA...``."""
        return f"[{self.host}]:{self.port} {self.host_key_public}"

    def _keys(self) -> tuple[KeyPair, KeyPair]:
        if self._host_key is None or self._client_key is None:
            raise SshdError("the sshd has not been started yet: call start() first")
        return self._host_key, self._client_key

    # ------------------------------------------------------------------ clients
    def _client_options(self) -> list[str]:
        return [
            "-F", "/dev/null",
            "-i", str(self.client_key),
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10",
        ]  # fmt: skip

    def ssh_args(self, *options: str) -> list[str]:
        """argv of the real ``ssh`` to this server; append the remote command.

        ``options`` go before the destination, e.g. ``ssh_args("-tt")``.
        """
        return ["ssh", *self._client_options(), "-p", str(self.port), *options,
                f"{self.user}@{self.host}"]

    def scp_args(self, *options: str) -> list[str]:
        """argv prefix of the real ``scp``; append sources and target (see :meth:`remote`)."""
        return ["scp", *self._client_options(), "-P", str(self.port), *options]

    def sftp_args(self, *options: str) -> list[str]:
        """argv of the real ``sftp`` to this server, e.g. ``sftp_args("-b", batchfile)``."""
        return ["sftp", *self._client_options(), "-P", str(self.port), *options,
                f"{self.user}@{self.host}"]

    def remote(self, path: Path | str) -> str:
        """``user@127.0.0.1:path``, an scp source or target on this server."""
        return f"{self.user}@{self.host}:{path}"

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``asyncssh.connect`` to this server.

        The client key only, the host key pinned by :attr:`known_hosts`, no ssh config
        file and no agent.
        """
        return {
            "host": self.host,
            "port": self.port,
            "username": self.user,
            "client_keys": [str(self.client_key)],
            "known_hosts": str(self.known_hosts),
            "config": None,
            "agent_path": None,
        }

    # ------------------------------------------------------------------ logs
    def log_text(self) -> str:
        """Everything sshd (and the session wrapper) logged so far, also after destroy."""
        if self._final_log is not None:
            return self._final_log
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, SshdError):
            return ""

    def requests(self) -> list[SessionRequest]:
        """Session requests so far, oldest first (empty with ``record_commands=False``)."""
        found = []
        for m in _REQUEST_LINE.finditer(self.log_text()):
            pid, user, what, subsystem, command = m.groups()
            if what == "shell":
                found.append(SessionRequest("shell", None, user, int(pid)))
            elif subsystem is not None:
                found.append(SessionRequest("subsystem", subsystem, user, int(pid)))
            else:
                found.append(SessionRequest("exec", _unescape(command), user, int(pid)))
        return found

    def commands(self) -> list[str]:
        """The text of each command run so far (exec requests), oldest first."""
        return [r.command for r in self.requests() if r.kind == "exec" and r.command is not None]

    def wait_for_log(self, pattern: str, timeout: float = 5.0) -> re.Match[str]:
        """Wait until the log matches the regular expression ``pattern``; return the match."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log_text())
            if match is not None:
                return match
            if time.monotonic() > deadline:
                raise SshdError(
                    f"sshd log did not match {pattern!r} within {timeout}s\n"
                    f"--- {self._log_name()} ---\n{self.log_text()}"
                )
            time.sleep(0.02)

    def _log_name(self) -> str:
        return str(self._dir / "sshd.log") if self._dir is not None else "sshd.log"

    # ------------------------------------------------------------------ lifecycle
    def start(self, *, attempts: int = 5) -> SshdServer:
        """Start sshd and wait until it serves; a second start reuses the port.

        Raises :class:`SshdNotInstalled` if the server or ssh-keygen is missing and
        :class:`SshdError` (with sshd's log) if it does not come up.
        """
        if self.pid is not None:
            return self
        if not os.access(self._sshd_path, os.X_OK):
            raise SshdNotInstalled(
                f"the OpenSSH server {self._sshd_path} is missing; {_INSTALL_HINT}"
            )
        if self._dir is None:
            self._prepare()
        fixed_port = self._port or None
        last: SshdError | None = None
        for _ in range(attempts if fixed_port is None else 1):
            self._port = fixed_port or free_port(self.host)
            try:
                self._launch()
                return self
            except _PortTaken as exc:
                last = SshdError(str(exc))
        assert last is not None
        raise last

    def stop(self) -> None:
        """Stop sshd and end every session it started. Files (and the log) stay."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            _kill_tree(proc.pid, reap=proc)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def destroy(self) -> None:
        """Stop, keep the log text in memory (:meth:`log_text`), remove the directory."""
        self.stop()
        if self._dir is not None and self._final_log is None:
            self._final_log = self.log_text()
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> SshdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # ------------------------------------------------------------------ internals
    def _prepare(self) -> None:
        if self._base_dir is None:
            _reap_stale_servers()
        parent = Path(self._base_dir or tempfile.gettempdir()).resolve()
        parent.mkdir(parents=True, exist_ok=True)
        directory = Path(tempfile.mkdtemp(prefix=_OWNED_PREFIX, dir=parent))
        self._dir = directory
        try:
            if _UNSAFE_PATH.search(str(directory)):
                raise SshdError(
                    f"{directory} contains characters sshd_config would need quoted; "
                    "use a base_dir (or TMPDIR) made of letters, digits, '/', '.', '-', '_'"
                )
            (directory / "owner.pid").write_text(f"{os.getpid()}\n")
            (directory / "scratch").mkdir(mode=0o700)
            self._host_key = self._key(directory / "ssh_host_ed25519_key",
                                       self._host_key_source, "pathwarden-test-host")
            self._client_key = self._key(directory / "client_ed25519_key",
                                         self._client_key_source, "pathwarden-test-client")
            (directory / "authorized_keys").write_text(f"{self._client_key.public}\n")
            if self._record_commands:
                wrapper = directory / "session-wrapper"
                wrapper.write_text(
                    _SESSION_WRAPPER.replace("@LOG@", shlex.quote(str(self.log_path)))
                    .replace("@MARK@", shlex.quote(_LOG_MARK))
                    .replace("@SFTP@", shlex.quote(_find_sftp_server()))
                )
                wrapper.chmod(0o700)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            self._dir = None
            raise

    @staticmethod
    def _key(path: Path, source: Path | None, comment: str) -> KeyPair:
        if source is None:
            return KeyPair.generate(path, comment)
        shutil.copyfile(source, path)
        path.chmod(0o600)
        return KeyPair.load(path)

    def _config_text(self) -> str:
        d = self.dir
        settings: dict[str, str | None] = {
            "ListenAddress": f"{self.host}:{self._port}",
            "HostKey": str(d / "ssh_host_ed25519_key"),
            "PidFile": str(d / "sshd.pid"),
            "AuthorizedKeysFile": str(d / "authorized_keys"),
            "AllowUsers": self.user,
            "StrictModes": "no",
            "UsePAM": "no",
            "PubkeyAuthentication": "yes",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "HostbasedAuthentication": "no",
            "PermitRootLogin": "prohibit-password",
            "Subsystem": "sftp internal-sftp",
            "ForceCommand": self._force_command() if self._record_commands else None,
            "AllowTcpForwarding": "yes",
            "AllowAgentForwarding": "yes",
            "X11Forwarding": "no",
            "MaxSessions": "64",
            "MaxStartups": "100",
            "ClientAliveInterval": "0",
            "LogLevel": "VERBOSE",
            "PermitUserEnvironment": "no",
            "AcceptEnv": "LANG LC_* PW_TEST_*",
            "PrintMotd": "no",
            "PrintLastLog": "no",
            "PermitUserRC": "no",
            "UseDNS": "no",
        }
        if _openssh_version(str(self._sshd_path)) >= (9, 8):
            settings["PerSourcePenalties"] = "no"
        settings.update(self._options)
        lines = ["# written by tests/sshd_harness.py"]
        lines += [f"{key} {value}" for key, value in settings.items() if value is not None]
        if self._extra_config:
            lines.append(self._extra_config.rstrip("\n"))
        return "\n".join(lines) + "\n"

    def _force_command(self) -> str:
        wrapper = shlex.quote(str(self.dir / "session-wrapper"))
        if Path(self._shell).name == "bash":
            return f". {wrapper}"
        return f"{wrapper} --exec"

    def _log_level(self) -> str:
        for key, value in self._options.items():
            if key.lower() == "loglevel" and value is not None:
                return value.upper()
        return "VERBOSE"

    def _launch(self) -> None:
        """One start on ``self._port``; raises _PortTaken if that port was taken."""
        self.config_path.write_text(self._config_text())
        self.known_hosts.write_text(self.known_hosts_line() + "\n")
        made_privsep_dir = False
        while True:
            with open(self.log_path, "ab") as log:  # O_APPEND: the wrapper appends too
                log.truncate(0)
                proc = subprocess.Popen(
                    [str(self._sshd_path), "-D", "-e", "-f", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd="/",
                    start_new_session=True,
                )
            self._proc = proc
            try:
                self._wait_ready(proc)
                return
            except _PrivsepDirMissing as exc:
                if made_privsep_dir:
                    raise SshdError(str(exc)) from None
                _make_privsep_dir(exc.path, self.log_text())
                made_privsep_dir = True
            except BaseException:
                self.stop()
                raise

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self._start_timeout
        listening = f"Server listening on {self.host} port {self._port}."
        need_line = self._log_level() not in _QUIET_LEVELS
        while True:
            status = proc.poll()
            if status is not None:
                self._proc = None
                log = self.log_text()
                if _BIND_FAILED.search(log):
                    raise _PortTaken(f"port {self._port} was taken before sshd bound it:\n{log}")
                missing = _PRIVSEP_DIR.search(log)
                if missing:
                    raise _PrivsepDirMissing(missing[1], log)
                raise SshdError(
                    f"{self._sshd_path} exited with status {status} before serving on "
                    f"{self.host}:{self._port}\n--- {self.log_path} ---\n{log}"
                )
            if time.monotonic() > deadline:
                raise SshdError(
                    f"{self._sshd_path} did not answer with an SSH-2.0-OpenSSH banner on "
                    f"{self.host}:{self._port} within {self._start_timeout}s\n"
                    f"--- {self.log_path} ---\n{self.log_text()}"
                )
            if not need_line or listening in self.log_text():
                banner = _read_banner(self.host, self._port)
                if banner.startswith(b"SSH-2.0-OpenSSH"):
                    return
            time.sleep(0.01)


class _PortTaken(SshdError):
    pass


class _PrivsepDirMissing(SshdError):
    def __init__(self, path: str, log: str) -> None:
        super().__init__(f"sshd needs its privilege separation directory {path}\n{log}")
        self.path = path


def _make_privsep_dir(path: str, log: str) -> None:
    if os.geteuid() != 0:
        raise SshdError(
            f"sshd reports its privilege separation directory {path} missing; that only "
            f"happens when it runs as root, but we are uid {os.geteuid()}\n{log}"
        )
    try:
        os.makedirs(path, mode=0o755, exist_ok=True)
        os.chmod(path, 0o755)
    except OSError as exc:
        raise SshdError(
            f"sshd needs its privilege separation directory {path} and it could not be "
            f"created ({exc}); create it with `sudo mkdir -p -m 0755 {path}`"
        ) from None


def _read_banner(host: str, port: int) -> bytes:
    """The first line the server sends, or b"" if it cannot be read yet."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            data = b""
            while b"\n" not in data and len(data) < 256:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
            return data
    except OSError:
        return b""


def start_sshd(**kwargs: Any) -> SshdServer:
    """Create and start an :class:`SshdServer` (keyword arguments as its constructor)."""
    server = SshdServer(**kwargs)
    try:
        return server.start()
    except BaseException:
        server.destroy()
        raise
