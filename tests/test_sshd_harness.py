"""Tests of the OpenSSH test-server harness itself (tests/sshd_harness.py).

Real clients throughout: OpenSSH ``ssh``/``scp``/``ssh-keyscan`` and asyncssh.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest

import sshd_harness
from sshd_harness import KeyPair, SshdError, SshdNotInstalled, SshdServer, start_sshd

Factory = Callable[..., SshdServer]


def _run(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout,
        check=False,
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _processes_naming(text: str) -> list[str]:
    """``pgrep -f`` style: command lines of live processes that contain ``text``."""
    proc = _run(["pgrep", "-a", "-f", text])
    return [line for line in proc.stdout.splitlines() if "pgrep" not in line]


def _gone(pid: int) -> bool:
    """The process is gone or a zombie waiting to be reaped by init."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


# ----------------------------------------------------------------------- OpenSSH clients
def test_ssh_runs_a_command(sshd: SshdServer) -> None:
    proc = _run([*sshd.ssh_args(), "echo hello"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello\n"
    assert "echo hello" in sshd.commands()


def test_session_runs_as_the_user_in_the_home_directory(sshd: SshdServer) -> None:
    proc = _run([*sshd.ssh_args(), "id -un; pwd; echo ${SSH_ORIGINAL_COMMAND-unset}"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [sshd.user, str(sshd.home), "unset"]
    assert sshd.user == pwd.getpwuid(os.geteuid()).pw_name


def test_exit_status_and_stderr_pass_through(sshd: SshdServer) -> None:
    proc = _run([*sshd.ssh_args(), "echo oops >&2; exit 7"])
    assert proc.returncode == 7
    assert proc.stderr == "oops\n"


@pytest.mark.parametrize("mode", ["-s", "-O"], ids=["sftp", "legacy-scp"])
def test_scp_round_trip_5mb(sshd: SshdServer, tmp_path: Path, mode: str) -> None:
    name = f"blob-{mode.strip('-')}-{os.getpid()}.bin"
    local = tmp_path / name
    local.write_bytes(os.urandom(5 * 1024 * 1024))
    remote = sshd.scratch / name
    back = tmp_path / "back.bin"
    seen = len(sshd.requests())

    up = _run([*sshd.scp_args(mode), str(local), sshd.remote(remote)])
    assert up.returncode == 0, up.stderr
    down = _run([*sshd.scp_args(mode), sshd.remote(remote), str(back)])
    assert down.returncode == 0, down.stderr

    assert _sha256(remote) == _sha256(local)
    assert _sha256(back) == _sha256(local)
    new = sshd.requests()[seen:]
    ours = [r.command for r in new if r.command is not None and name in r.command]
    if mode == "-O":  # the legacy protocol runs scp on the server, once per direction
        assert [command.split()[:2] for command in ours] == [["scp", "-t"], ["scp", "-f"]]
    else:  # SFTP: two sftp subsystem sessions and no remote scp command
        assert ours == []
        assert sum(r.kind == "subsystem" and r.command == "sftp" for r in new) >= 2


def test_host_key_matches_what_the_server_presents(sshd: SshdServer) -> None:
    assert re.fullmatch(r"ssh-ed25519 AAAA[0-9A-Za-z+/=]+", sshd.host_key_public)
    assert re.fullmatch(r"ssh-ed25519 AAAA[0-9A-Za-z+/=]+", sshd.client_public_key)
    assert sshd.known_hosts_line() == f"[127.0.0.1]:{sshd.port} {sshd.host_key_public}"
    assert sshd.known_hosts.read_text() == sshd.known_hosts_line() + "\n"
    scan = _run(["ssh-keyscan", "-p", str(sshd.port), "-t", "ed25519", "127.0.0.1"])
    assert scan.stdout.split() == sshd.known_hosts_line().split(), scan.stderr


def test_only_the_client_key_and_the_user_get_in(sshd: SshdServer, tmp_path: Path) -> None:
    other = KeyPair.generate(tmp_path / "other_key", "not-authorized")
    args = sshd.ssh_args()
    args[args.index("-i") + 1] = str(other.private)
    wrong_key = _run([*args, "echo in"])
    assert wrong_key.returncode == 255
    assert "Permission denied (publickey)" in wrong_key.stderr

    stranger = next(
        (p.pw_name for p in pwd.getpwall()
         if p.pw_name != sshd.user and p.pw_uid != 0 and os.access(p.pw_shell, os.X_OK)),
        None,
    )
    if stranger is not None:  # the right key, but an account other than the test user
        args = sshd.ssh_args()
        args[-1] = f"{stranger}@127.0.0.1"
        wrong_user = _run([*args, "echo in"])
        assert wrong_user.returncode == 255
        assert "Permission denied" in wrong_user.stderr
        sshd.wait_for_log(rf"User {re.escape(stranger)} from 127\.0\.0\.1 not allowed")
    assert "echo in" not in sshd.commands()


# ----------------------------------------------------------------------- asyncssh
def test_asyncssh_sees_the_exit_status(sshd: SshdServer) -> None:
    async def main() -> asyncssh.SSHCompletedProcess:
        async with asyncssh.connect(**sshd.connect_kwargs()) as conn:
            return await conn.run("echo out; exit 3")

    result = asyncio.run(main())
    assert result.exit_status == 3
    assert result.stdout == "out\n"


def test_asyncssh_pty_shell(sshd: SshdServer) -> None:
    seen = len(sshd.requests())

    async def main() -> tuple[str, int | None]:
        async with asyncssh.connect(**sshd.connect_kwargs()) as conn:
            process = await conn.create_process(term_type="xterm")
            process.stdin.write("echo hi\n")
            process.stdin.write("exit\n")
            output = await asyncio.wait_for(process.stdout.read(), 20)
            await process.wait()
            return str(output), process.exit_status

    output, status = asyncio.run(main())
    # The terminal echoes the typed "echo hi" too: only a line of its own is the output.
    assert "hi" in [line.strip() for line in output.splitlines()], output
    assert status == 0
    assert [r.kind for r in sshd.requests()[seen:]] == ["shell"]


def test_accepted_environment(sshd: SshdServer) -> None:
    async def main() -> str:
        async with asyncssh.connect(**sshd.connect_kwargs()) as conn:
            result = await conn.run(
                "echo \"$PW_TEST_COLOUR|${OTHER_VAR-unset}\"",
                env={"PW_TEST_COLOUR": "blue", "OTHER_VAR": "x"},
            )
            return str(result.stdout)

    assert asyncio.run(main()) == "blue|unset\n"


def test_tcp_forwarding_is_allowed(sshd: SshdServer) -> None:
    async def main() -> bytes:
        async with asyncssh.connect(**sshd.connect_kwargs()) as conn:
            reader, writer = await conn.open_connection("127.0.0.1", sshd.port, encoding=None)
            line = await asyncio.wait_for(reader.readline(), 10)
            writer.close()
            return bytes(line)

    assert asyncio.run(main()).startswith(b"SSH-2.0-OpenSSH")


def test_command_text_is_recorded_exactly(sshd: SshdServer) -> None:
    command = "printf '%s\\n' 'a\\b'\necho two\r"

    async def main() -> str:
        async with asyncssh.connect(**sshd.connect_kwargs()) as conn:
            return str((await conn.run(command, check=True)).stdout)

    assert asyncio.run(main()) == "a\\b\ntwo\r\n"
    assert sshd.commands()[-1] == command


def test_changed_host_key_is_refused(sshd: SshdServer, sshd_factory: Factory) -> None:
    other = sshd_factory()
    assert other.host_key_public != sshd.host_key_public
    pinned_old = asyncssh.import_known_hosts(f"[127.0.0.1]:{other.port} {sshd.host_key_public}\n")

    async def connect(known_hosts: Any) -> int | None:
        options = {**other.connect_kwargs(), "known_hosts": known_hosts}
        async with asyncssh.connect(**options) as conn:
            return (await conn.run("exit 0")).exit_status

    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        asyncio.run(connect(pinned_old))
    assert asyncio.run(connect(str(other.known_hosts))) == 0  # its own key is fine

    stale = other.dir / "stale_known_hosts"
    stale.write_text(f"[127.0.0.1]:{other.port} {sshd.host_key_public}\n")
    args = other.ssh_args()
    args[args.index(f"UserKnownHostsFile={other.known_hosts}")] = f"UserKnownHostsFile={stale}"
    proc = _run([*args, "echo in"])
    assert proc.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in proc.stderr
    assert other.commands() == ["exit 0"]


def test_factory_can_reuse_a_host_key(sshd: SshdServer, sshd_factory: Factory) -> None:
    twin = sshd_factory(host_key=sshd.host_key)
    assert twin.port != sshd.port
    assert twin.host_key_public == sshd.host_key_public
    assert twin.client_public_key != sshd.client_public_key
    proc = _run([*twin.ssh_args(), "echo twin"])
    assert proc.stdout == "twin\n", proc.stderr


# ----------------------------------------------------------------------- configurations
def test_plain_configuration_without_command_recording(
    sshd_factory: Factory, tmp_path: Path
) -> None:
    plain = sshd_factory(record_commands=False)
    config = plain.config_path.read_text()
    assert "ForceCommand" not in config
    for line in ("Subsystem sftp internal-sftp", "PasswordAuthentication no", "UsePAM no",
                 "StrictModes no", "PermitRootLogin prohibit-password", "MaxSessions 64",
                 "MaxStartups 100", "LogLevel VERBOSE", f"AllowUsers {plain.user}"):
        assert line in config.splitlines()
    proc = _run([*plain.ssh_args(), "echo plain"])
    assert proc.stdout == "plain\n", proc.stderr
    local = tmp_path / "f"
    local.write_text("x")
    up = _run([*plain.scp_args(), str(local), plain.remote(plain.scratch / "f")])
    assert up.returncode == 0, up.stderr
    assert (plain.scratch / "f").read_text() == "x"
    plain.wait_for_log(r"Starting session: subsystem 'sftp'")
    assert plain.requests() == []


def test_recording_does_not_change_what_a_command_sees(
    sshd: SshdServer, sshd_factory: Factory
) -> None:
    plain = sshd_factory(record_commands=False)
    probe = 'echo "$SHLVL|$0|$#|$PATH|$LANG|${SSH_ORIGINAL_COMMAND-unset}"; umask'
    recorded = _run([*sshd.ssh_args(), probe])
    direct = _run([*plain.ssh_args(), probe])
    assert recorded.returncode == direct.returncode == 0, recorded.stderr + direct.stderr
    assert recorded.stdout == direct.stdout


def test_wrapper_as_a_script_for_other_login_shells(sshd: SshdServer) -> None:
    """With a non-bash login shell sshd runs the wrapper with --exec: a new $SHELL -c."""
    env = {"PATH": "/usr/bin:/bin", "SHELL": "/bin/sh", "USER": sshd.user,
           "SSH_ORIGINAL_COMMAND": "echo \"${SSH_ORIGINAL_COMMAND-unset}\"; exit 4"}
    proc = subprocess.run([str(sshd.dir / "session-wrapper"), "--exec"], env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    assert (proc.returncode, proc.stdout) == (4, "unset\n"), proc.stderr
    assert sshd.commands()[-1] == env["SSH_ORIGINAL_COMMAND"]


def test_options_replace_defaults(sshd_factory: Factory) -> None:
    server = sshd_factory(options={"MaxSessions": "1", "AcceptEnv": None})
    lines = server.config_path.read_text().splitlines()
    assert "MaxSessions 1" in lines
    assert "MaxSessions 64" not in lines
    assert not any(line.startswith("AcceptEnv") for line in lines)


def test_bad_configuration_reports_sshd_stderr() -> None:
    with pytest.raises(SshdError, match="Bad configuration option: NoSuchOption"):
        start_sshd(options={"NoSuchOption": "yes"})


def test_start_timeout_reports_stderr_and_leaves_nothing(tmp_path: Path) -> None:
    fake = tmp_path / "fake-sshd"
    fake.write_text(
        "#!/bin/sh\n"
        '[ "$1" = -V ] && { echo "OpenSSH_9.2p1, OpenSSL 3.0" >&2; exit 0; }\n'
        "echo 'fake sshd is thinking' >&2\n"
        "exec sleep 30\n"
    )
    fake.chmod(0o755)
    started = time.monotonic()
    with pytest.raises(SshdError, match=r"(?s)did not answer.*fake sshd is thinking"):
        start_sshd(sshd_path=fake, start_timeout=0.5)
    assert time.monotonic() - started < 5
    assert _processes_naming(str(fake)) == []


def test_missing_sshd_fails_with_the_provisioning_hint(tmp_path: Path) -> None:
    with pytest.raises(SshdNotInstalled, match=r"bash scripts/provision\.sh"):
        start_sshd(sshd_path=tmp_path / "no-such-sshd")


def test_port_taken_meanwhile_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        ports = iter([taken])
        real = sshd_harness.free_port
        monkeypatch.setattr(sshd_harness, "free_port", lambda host="127.0.0.1": next(ports, None)
                            or real(host))
        server = start_sshd()
        try:
            assert server.port != taken
            proc = _run([*server.ssh_args(), "echo moved"])
            assert proc.stdout == "moved\n", proc.stderr
        finally:
            server.destroy()


# ----------------------------------------------------------------------- lifecycle
def test_stop_ends_sessions_and_leaves_no_process(tmp_path: Path) -> None:
    server = start_sshd()
    directory = server.dir
    listener = server.pid
    assert listener is not None
    assert _processes_naming(str(directory)) != []
    client = subprocess.Popen(
        [*server.ssh_args(), "echo $$; exec sleep 60"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
    )
    try:
        assert client.stdout is not None
        session_pid = int(client.stdout.readline())
        assert not _gone(session_pid)
        assert server.requests()[-1].pid == session_pid  # the shell sshd started ran it
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 3
        assert server.pid is None
        assert _gone(listener)
        assert _gone(session_pid)
        assert client.wait(timeout=10) == 255  # the connection was closed by the server
        assert _processes_naming(str(directory)) == []
        assert "Received signal 15; terminating." in server.log_text()

        server.destroy()
        assert not directory.exists()
        assert server.commands() == ["echo $$; exec sleep 60"]  # the log outlives the directory
    finally:
        client.kill()
        client.wait()
        server.destroy()


def test_restart_keeps_port_and_keys(sshd_factory: Factory) -> None:
    server = sshd_factory()
    port, key = server.port, server.host_key_public
    server.stop()
    assert _run([*server.ssh_args(), "true"]).returncode == 255
    server.start()
    assert (server.port, server.host_key_public) == (port, key)
    assert _run([*server.ssh_args(), "echo again"]).stdout == "again\n"


def _unprivileged_account() -> pwd.struct_passwd | None:
    for name in ("postgres", "nobody"):
        with_shell = [p for p in pwd.getpwall() if p.pw_name == name]
        if with_shell and with_shell[0].pw_shell.endswith(("/bash", "/sh", "/dash", "/zsh")):
            return with_shell[0]
    return None


def test_runs_unprivileged_for_a_non_root_user() -> None:
    """On a developer machine sshd runs as the (non-root) user; check that path as root."""
    if os.geteuid() != 0:
        pytest.skip("already not root: every other test here covers the unprivileged server")
    account = _unprivileged_account()
    if account is None:
        pytest.skip("no unprivileged account with a login shell (postgres) to run sshd as")
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    code = Path(tempfile.mkdtemp(prefix="pathwarden-sshd-probe-"))  # pytest's dirs are 0700
    try:
        shutil.copy(Path(sshd_harness.__file__), code / "sshd_harness.py")
        shutil.copy(Path(sshd_harness.__file__).with_name("pgserver.py"), code / "pgserver.py")
        (code / "probe.py").write_text(
            "import os, subprocess, sys\n"
            "sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))\n"
            "from sshd_harness import start_sshd\n"
            "with start_sshd() as s:\n"
            "    r = subprocess.run([*s.ssh_args(), 'id -un'], capture_output=True, text=True,\n"
            "                       stdin=subprocess.DEVNULL)\n"
            "    print(os.geteuid(), s.user, r.returncode, r.stdout.strip(), r.stderr.strip())\n"
        )
        for path in (code, code / "sshd_harness.py", code / "probe.py"):
            path.chmod(0o755)
        proc = subprocess.run(
            [python, str(code / "probe.py")],
            user=account.pw_uid, group=account.pw_gid, extra_groups=[],
            env={"PATH": "/usr/bin:/bin", "HOME": account.pw_dir, "LC_ALL": "C"},
            cwd="/", capture_output=True, text=True, timeout=60, check=False,
        )
    finally:
        shutil.rmtree(code, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr
    uid, user, status, who, err = [*proc.stdout.split(maxsplit=4), ""][:5]
    assert (int(uid), user, status, who) == (
        account.pw_uid, account.pw_name, "0", account.pw_name
    ), err
