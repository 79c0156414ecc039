"""The SSH gateway end to end: real OpenSSH sshd as the target, real ssh/scp and asyncssh clients.

Every test goes through a gateway listening on a loopback port whose only
target is the test sshd (tests/sshd_harness.py); the gateway logs in there
with a key the clients never see and checks the sshd's pinned host key.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from gateway_harness import GatewayHarness, wait_until, write_config
from pathwarden.approvals import RequestState
from pathwarden.model import Identity
from pgserver import free_port
from sshd_harness import SshdServer

ALICE = Identity(name="alice", groups=("dba",))
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACDVgo7LqSwdyTIV9+Mvmr5hCTH3zCgbDEqsWOKqJgnQ6QAAAJiyN1fEsjdX\n"
    "xAAAAAtzc2gtZWQyNTUxOQAAACDVgo7LqSwdyTIV9+Mvmr5hCTH3zCgbDEqsWOKqJgnQ6Q\n"
    "AAAEBmLVAhz4bzmTEb3y0ZFhbAYvC9XH0ZGx8k4nyVb2XeZ9WCjsupLB3JMhX34y+avmEJ\n"
    "MffMKBsMSqxY4qomCdDpAAAAEXRlc3RAcGF0aHdhcmRlbi1jaQECAwQ=\n"
    "-----END OPENSSH PRIVATE KEY-----\n")
OTHER_HOST_KEY = ("ssh-ed25519 "
                  "AAAAC3NzaC1lZDI1NTE5AAAAIHqkDUYTSsEXsxzVGpx0Wp2/UYE7lK5Xx0yEH0MsHpU8")
KEY_BODY = "QyNTUxOQAAACDVgo7LqSwdyTIV9"


def _config(sshd: SshdServer, base: Path, **extra: Any) -> dict[str, Any]:
    files = sshd.scratch / "files"
    files.mkdir(exist_ok=True)
    box = {"protocol": "ssh", "host": sshd.host, "port": sshd.port, "user": sshd.user,
           "private_key": {"file": str(sshd.client_key)},
           "known_hosts": [sshd.host_key_public], "connect_timeout": "5s"}
    return {
        "data_dir": str(base / "data"),
        "listeners": [{"name": "ssh", "protocol": "ssh", "bind": f"127.0.0.1:{free_port()}"}],
        "connections": {
            "box": box,
            # The same host pinned to a key it does not have.
            "impostor": {**box, "known_hosts": [OTHER_HOST_KEY]},
            "down": {**box, "port": free_port()},
        },
        "identities": {"ci-deploy": {}, "ci-other": {}, "alice": {"groups": ["dba"]}},
        "policies": [{
            "name": "deploy", "identities": ["ci-deploy"],
            "connections": ["box", "impostor", "down"],
            "allow": [
                {"exec": {"programs": ["echo", "cat", "printf", "exit", "true", "false",
                                       "sleep", "sha256sum", "head", "id", "ls", "kill"]}},
                "shell",
                "sftp",
                {"file_transfer": {"paths": [f"{files}", f"{files}/*"]}},
                {"upload": {"paths": [f"{files}", f"{files}/*"]}},
                {"download": {"paths": [f"{files}/*"]}},
            ],
            "deny": [{"exec": {"programs": ["rm"]}}, {"exec": {"flags": ["write_redirect"]}}],
            "require_approval": [{"exec": {"programs": ["date"]}}],
        }],
        "approvals": {"rules": {"approvers": ["group:dba"], "wait_timeout": "20s"},
                      "poll_interval": "100ms"},
        "audit": {"flush_interval": "50ms"},
        "auth_limits": {"failures_per_source": 100000, "failures_per_identity": 100000},
        "api": {"enabled": False},
        **extra,
    }


@pytest.fixture(scope="module")
def gw(sshd: SshdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHarness]:
    base = tmp_path_factory.mktemp("sshgw")
    harness = GatewayHarness(write_config(base / "pathwarden.yaml", _config(sshd, base)))
    try:
        yield harness
    finally:
        harness.stop()


def _host_key_line(gw: GatewayHarness) -> str:
    pub = (Path(gw.config.data_dir) / "ssh_host_ed25519_key.pub").read_text().strip()
    return f"[127.0.0.1]:{gw.port} {pub}"


async def _connect(gw: GatewayHarness, user: str = "box", identity: str = "ci-deploy",
                   token: str | None = None) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1", gw.port, username=user,
        password=token if token is not None else gw.token(identity),
        known_hosts=asyncssh.import_known_hosts(_host_key_line(gw) + "\n"),
        client_keys=None, agent_path=None, config=None, preferred_auth="password")


def _run(gw: GatewayHarness, command: str, **kw: Any) -> asyncssh.SSHCompletedProcess:
    async def go() -> asyncssh.SSHCompletedProcess:
        async with await _connect(gw, **kw) as conn:
            return await conn.run(command, check=False, encoding="utf-8", timeout=30)
    return asyncio.run(go())


def _openssh(gw: GatewayHarness, tmp_path: Path, identity: str = "ci-deploy"
             ) -> tuple[list[str], dict[str, str]]:
    """OpenSSH client options and environment to reach the gateway with a token."""
    known = tmp_path / "gw_known_hosts"
    known.write_text(_host_key_line(gw) + "\n")
    askpass = tmp_path / "askpass.sh"
    askpass.write_text("#!/bin/sh\nprintf '%s\\n' \"$PW_TOKEN\"\n")
    askpass.chmod(0o700)
    opts = ["-F", "/dev/null", "-o", f"UserKnownHostsFile={known}",
            "-o", "StrictHostKeyChecking=yes", "-o", "PreferredAuthentications=password",
            "-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1"]
    env = {"PATH": os.environ["PATH"], "PW_TOKEN": gw.token(identity),
           "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}
    return opts, env


def _recording_events(gw: GatewayHarness, session_id: str) -> list[dict[str, Any]]:
    recorder = gw.gateway.recorder
    assert recorder is not None
    gw.call(recorder.wait_finished())
    found = list(Path(gw.config.data_dir).rglob(f"{session_id}.pwrec*"))
    assert found, f"no recording for session {session_id}"
    path = found[0]
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [json.loads(line) for line in raw.decode().splitlines()[1:]]


def _last_session(gw: GatewayHarness) -> str:
    def ended() -> str | None:
        rows = [s for s in gw.sessions() if s.protocol.value == "ssh" and s.ended_at]
        return max(rows, key=lambda s: s.started_at).id if rows else None
    return str(wait_until(ended, timeout=10, what="an ended ssh session"))


# -- commands ----------------------------------------------------------------------------


def test_allowed_command_relays_stdout_stderr_and_exit_status(gw: GatewayHarness) -> None:
    result = _run(gw, "echo out; echo err >&2; exit 3")
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert result.exit_status == 3


def test_denied_command_never_reaches_the_target(gw: GatewayHarness, sshd: SshdServer) -> None:
    victim = sshd.scratch / f"victim-{uuid.uuid4().hex[:6]}"
    victim.write_text("keep me")
    result = _run(gw, f"rm -f {victim}")
    assert result.exit_status == 126
    assert "pathwarden: denied" in result.stderr and "rm" in result.stderr
    assert victim.exists()


@pytest.mark.parametrize("template", [
    "echo hi; rm -f {f}",
    "echo hi && rm -f {f}",
    "false || rm -f {f}",
    "echo $(rm -f {f})",
    "echo `rm -f {f}`",
    "echo {f} | xargs rm -f",
    "sh -c 'rm -f {f}'",
    "'r'm -f {f}",
    "r\\m -f {f}",
    "echo hi\nrm -f {f}",
    "for x in {f}; do rm -f $x; done",
    "X=rm; $X -f {f}",
    "echo gone > {f}",
    "eval 'rm -f {f}'",
])
def test_shell_metacharacter_tricks_are_refused(gw: GatewayHarness, sshd: SshdServer,
                                                template: str) -> None:
    victim = sshd.scratch / f"victim-{uuid.uuid4().hex[:6]}"
    victim.write_text("keep me")
    result = _run(gw, template.format(f=victim))
    assert result.exit_status == 126, (result.stdout, result.stderr)
    assert "pathwarden: denied" in result.stderr
    assert victim.read_text() == "keep me"


def test_wrong_token_and_wrong_connection_are_refused(gw: GatewayHarness) -> None:
    with pytest.raises(asyncssh.PermissionDenied):
        _run(gw, "echo hi", token="not-a-token")
    with pytest.raises(asyncssh.PermissionDenied):
        _run(gw, "echo hi", user="nope")
    # identity+connection: the identity part must be the token's.
    with pytest.raises(asyncssh.PermissionDenied):
        _run(gw, "echo hi", user="ci-other+box", identity="ci-deploy",
             token=gw.token("ci-deploy"))
    assert _run(gw, "echo ok", user="ci-deploy+box").stdout == "ok\n"


def test_other_identity_has_no_policy(gw: GatewayHarness) -> None:
    result = _run(gw, "echo hi", identity="ci-other")
    assert result.exit_status == 126
    assert "no policy applies" in result.stderr


def test_unreachable_target_and_changed_host_key_refuse_the_channel(gw: GatewayHarness) -> None:
    with pytest.raises(asyncssh.ChannelOpenError) as exc:
        _run(gw, "echo hi", user="impostor")
    assert "not one of the pinned keys" in exc.value.reason
    with pytest.raises(asyncssh.ChannelOpenError) as exc:
        _run(gw, "echo hi", user="down")
    assert "cannot reach down" in exc.value.reason
    # The gateway keeps serving everyone else.
    assert _run(gw, "echo still").stdout == "still\n"


def test_forwarding_is_refused(gw: GatewayHarness, sshd: SshdServer) -> None:
    async def go() -> None:
        async with await _connect(gw) as conn:
            with pytest.raises(asyncssh.ChannelOpenError) as exc:
                await conn.open_connection(sshd.host, sshd.port)
            assert "port forwarding" in exc.value.reason and "denied" in exc.value.reason
            with pytest.raises(asyncssh.ChannelListenError):
                await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 22)
            # The connection still works after the refusals.
            result = await conn.run("echo after", check=False, encoding="utf-8")
            assert result.stdout == "after\n"
    asyncio.run(go())


def test_private_key_printed_by_cat_is_masked(gw: GatewayHarness, sshd: SshdServer) -> None:
    key_file = sshd.scratch / "files" / "id_test"
    key_file.write_text(PRIVATE_KEY)
    result = _run(gw, f"echo before; cat {key_file}; echo after")
    assert KEY_BODY not in result.stdout
    assert "before\n" in result.stdout and result.stdout.endswith("after\n")
    assert "MASKED" in result.stdout
    session_id = _last_session(gw)
    events = json.dumps(_recording_events(gw, session_id))
    assert KEY_BODY not in events
    stored = b"".join(p.read_bytes() for p in Path(gw.config.data_dir).rglob("*.db*"))
    assert KEY_BODY.encode() not in stored


def test_command_needing_approval_is_held_until_approved(gw: GatewayHarness) -> None:
    marker = uuid.uuid4().hex[:8]
    result: dict[str, Any] = {}

    def run() -> None:
        result["r"] = _run(gw, f"date +{marker}")

    import threading
    thread = threading.Thread(target=run)
    thread.start()

    def pending() -> Any:
        for request in gw.call(gw.gateway.approvals.list(state=RequestState.PENDING)):
            if request.operation is not None and marker in request.operation.text:
                return request
        return None

    request = wait_until(pending, timeout=10, what="the approval request")
    time.sleep(0.3)
    assert thread.is_alive(), "the command must wait for approval"
    gw.call(gw.gateway.approvals.vote(request.id, ALICE, True, "ok"))
    thread.join(20)
    done = result["r"]
    assert done.exit_status == 0 and done.stdout.strip() == marker
    assert f"waiting for approval #{request.id}" in done.stderr


# -- interactive shells --------------------------------------------------------------------


def test_interactive_shell_with_pty_is_relayed_and_recorded(gw: GatewayHarness) -> None:
    async def go() -> tuple[str, int | None]:
        async with await _connect(gw) as conn:
            proc = await conn.create_process(term_type="xterm", term_size=(100, 30),
                                             encoding="utf-8")
            proc.stdin.write("echo hel''lo-$((6*7))\n")
            seen = ""
            deadline = time.monotonic() + 10
            while "hello-42" not in seen and time.monotonic() < deadline:
                seen += await asyncio.wait_for(proc.stdout.read(1024), 10)
            proc.change_terminal_size(120, 40)
            proc.stdin.write("stty size\n")
            while "40 120" not in seen and time.monotonic() < deadline:
                seen += await asyncio.wait_for(proc.stdout.read(1024), 10)
            proc.stdin.write("exit 5\n")
            await asyncio.wait_for(proc.wait_closed(), 10)
            return seen, proc.exit_status
    seen, status = asyncio.run(go())
    assert "hello-42" in seen and "40 120" in seen
    assert status == 5
    events = _recording_events(gw, _last_session(gw))
    types = [e["type"] for e in events]
    assert "term_output" in types and "term_input" in types
    assert {"channel": 0, "cols": 120, "rows": 40} in [e["data"] for e in events
                                                        if e["type"] == "resize"]
    output = "".join(e["data"]["data"] for e in events if e["type"] == "term_output")
    assert "hello-42" in output
    exits = [e["data"] for e in events if e["type"] == "exit"]
    assert exits and exits[-1]["status"] == 5
    # Replayed as an asciicast the player plays: header, then timed output.
    import sys
    cast = subprocess.run(
        [sys.executable, "-m", "pathwarden.cli.main", "replay", _last_session(gw), "--cast",
         "--config", str(gw.config_path)], capture_output=True, text=True, timeout=60)
    assert cast.returncode == 0, cast.stderr
    lines = [json.loads(line) for line in cast.stdout.splitlines()]
    assert lines[0]["version"] == 2 and (lines[0]["width"], lines[0]["height"]) == (100, 30)
    assert any(e[1] == "r" and e[2] == "120x40" for e in lines[1:])
    assert "hello-42" in "".join(e[2] for e in lines[1:] if e[1] == "o")
    times = [e[0] for e in lines[1:]]
    assert times == sorted(times)


def test_shell_password_prompt_input_is_not_recorded(gw: GatewayHarness) -> None:
    async def go() -> None:
        async with await _connect(gw) as conn:
            proc = await conn.create_process(term_type="xterm", encoding="utf-8")
            proc.stdin.write("printf 'Password: '; read -r x; echo; echo got-${#x}\n")
            seen = ""
            # The terminal echoes the command line first; the prompt itself follows.
            while seen.count("Password:") < 2:
                seen += await asyncio.wait_for(proc.stdout.read(1024), 10)
            await asyncio.sleep(0.1)
            proc.stdin.write("hunter2-secret\n")
            while "got-14" not in seen:
                seen += await asyncio.wait_for(proc.stdout.read(1024), 10)
            proc.stdin.write("exit\n")
            await asyncio.wait_for(proc.wait_closed(), 10)
    asyncio.run(go())
    events = _recording_events(gw, _last_session(gw))
    typed = "".join(e["data"]["data"] for e in events if e["type"] == "term_input")
    assert "[MASKED:prompt]" in typed
    # The echoed input is in the output stream only if the terminal echoed it.
    assert "hunter2-secret" not in typed


# -- the real OpenSSH client and file transfer --------------------------------------------


def test_openssh_client_runs_commands_with_a_token(gw: GatewayHarness, tmp_path: Path) -> None:
    opts, env = _openssh(gw, tmp_path)
    ok = subprocess.run(["ssh", *opts, "-p", str(gw.port), "box@127.0.0.1", "echo hi; exit 7"],
                        env=env, capture_output=True, text=True, timeout=30)
    assert ok.stdout == "hi\n" and ok.returncode == 7, ok.stderr
    denied = subprocess.run(["ssh", *opts, "-p", str(gw.port), "box@127.0.0.1", "rm -rf /nope"],
                            env=env, capture_output=True, text=True, timeout=30)
    assert denied.returncode == 126 and "pathwarden: denied" in denied.stderr


@pytest.mark.parametrize("legacy", [False, True], ids=["sftp", "scp-O"])
def test_scp_upload_and_download_50mb(gw: GatewayHarness, sshd: SshdServer, tmp_path: Path,
                                      legacy: bool) -> None:
    opts, env = _openssh(gw, tmp_path)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(50 * 1024 * 1024))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    remote = sshd.scratch / "files" / f"up-{uuid.uuid4().hex[:6]}.bin"
    mode = ["-O"] if legacy else []
    up = subprocess.run(["scp", *mode, *opts, "-P", str(gw.port), str(source),
                         f"box@127.0.0.1:{remote}"], env=env, capture_output=True, text=True,
                        timeout=120)
    assert up.returncode == 0, up.stderr
    assert hashlib.sha256(remote.read_bytes()).hexdigest() == digest
    back = tmp_path / "back.bin"
    down = subprocess.run(["scp", *mode, *opts, "-P", str(gw.port),
                           f"box@127.0.0.1:{remote}", str(back)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
    files = [e["data"] for e in _recording_events(gw, _last_session(gw)) if e["type"] == "file"]
    assert any(f["path"].endswith(remote.name) and f["bytes"] == 50 * 1024 * 1024
               for f in files), files
    # Outside the allowed directory: refused, nothing written.
    outside = sshd.scratch / f"outside-{uuid.uuid4().hex[:6]}.bin"
    refused = subprocess.run(["scp", *mode, *opts, "-P", str(gw.port), str(source),
                              f"box@127.0.0.1:{outside}"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode != 0
    assert "denied" in refused.stderr
    assert not outside.exists()


def test_sftp_paths_are_decided_one_by_one(gw: GatewayHarness, sshd: SshdServer) -> None:
    files = sshd.scratch / "files"

    async def go() -> None:
        async with await _connect(gw) as conn, conn.start_sftp_client() as sftp:
            async with sftp.open(str(files / "hello.txt"), "w") as f:
                await f.write("hello")
            assert sorted(await sftp.listdir(str(files))).count("hello.txt") == 1
            with pytest.raises(asyncssh.SFTPError) as exc:
                await sftp.remove(str(sshd.scratch / "not-here"))
            assert exc.value.code == asyncssh.FX_PERMISSION_DENIED
            assert "pathwarden: denied" in exc.value.reason
            with pytest.raises(asyncssh.SFTPError):
                await sftp.rename(str(files / "hello.txt"), "/tmp/escaped.txt")
            async with sftp.open(str(files / "hello.txt")) as f:
                assert await f.read() == "hello"
    asyncio.run(go())
    assert (files / "hello.txt").read_text() == "hello"
    assert not Path("/tmp/escaped.txt").exists()


def test_revoked_token_ends_the_session(gw: GatewayHarness) -> None:
    async def go() -> str:
        token = gw.token("ci-deploy")
        async with await _connect(gw, token=token) as conn:
            proc = await conn.create_process("sleep 30", encoding="utf-8")
            await asyncio.sleep(0.3)
            session = next(s for s in gw.gateway.sessions
                           if getattr(s, "identity", None) is not None
                           and s.record.protocol.value == "ssh")
            record = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
                gw.gateway.store.revoke_token(session.identity.token_ref, "test"), gw.loop))
            gw.loop.call_soon_threadsafe(gw.gateway.end_revoked, record)
            await asyncio.wait_for(proc.wait_closed(), 10)
            return await proc.stderr.read()
    stderr = asyncio.run(go())
    assert "was revoked" in stderr


def test_certificate_login_with_openssh(gw: GatewayHarness, tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    listener = gw.gateway.listeners[0]
    issued = gw.call(gw.gateway.authenticator.issue_ssh_certificate(
        listener.ca, identity="ci-deploy",  # type: ignore[attr-defined]
        public_key=(tmp_path / "id_ed25519.pub").read_text(), ttl=None, connections=None))
    (tmp_path / "id_ed25519-cert.pub").write_text(issued.certificate + "\n")
    opts, env = _openssh(gw, tmp_path)
    opts = [o.replace("PreferredAuthentications=password", "PreferredAuthentications=publickey")
            .replace("PubkeyAuthentication=no", "PubkeyAuthentication=yes") for o in opts]
    base = ["ssh", *opts, "-i", str(key), "-o", "IdentitiesOnly=yes", "-p", str(gw.port)]
    ok = subprocess.run([*base, "box@127.0.0.1", "echo via-cert"], env=env,
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and ok.stdout == "via-cert\n", ok.stderr
    session = max((s for s in gw.sessions() if s.protocol.value == "ssh"),
                  key=lambda s: s.started_at)
    assert session.identity == "ci-deploy" and session.token_ref == issued.token_ref
    # Revoking the certificate's token refuses the next login, with the reason.
    gw.call(gw.gateway.store.revoke_token(issued.token_ref, "rotated"))
    refused = subprocess.run([*base, "box@127.0.0.1", "echo again"], env=env,
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 255
    assert "revoked" in refused.stderr


def test_stdin_eof_and_exit_signal_are_relayed(gw: GatewayHarness) -> None:
    async def go() -> None:
        async with await _connect(gw) as conn:
            # stdin reaches the command and its EOF ends it.
            proc = await conn.create_process("cat", encoding="utf-8")
            proc.stdin.write("line one\nline two")
            proc.stdin.write_eof()
            out = await asyncio.wait_for(proc.stdout.read(), 10)
            await asyncio.wait_for(proc.wait_closed(), 10)
            assert out == "line one\nline two" and proc.exit_status == 0
            # A command that dies by a signal: the client gets the signal, not a status.
            killed = await conn.run("kill -KILL 0", check=False)
            assert killed.exit_signal is not None and killed.exit_signal[0] == "KILL", killed
    asyncio.run(go())


def test_many_channels_on_one_connection(gw: GatewayHarness) -> None:
    async def go() -> list[str]:
        async with await _connect(gw) as conn:
            results = await asyncio.gather(*(
                conn.run(f"echo channel-{i}", check=False, encoding="utf-8") for i in range(8)))
            return [str(r.stdout) for r in results]
    assert asyncio.run(go()) == [f"channel-{i}\n" for i in range(8)]


def test_host_key_command_prints_the_line_clients_pin(gw: GatewayHarness) -> None:
    import sys
    out = subprocess.run(
        [sys.executable, "-m", "pathwarden.cli.main", "ssh", "host-key", "--config",
         str(gw.config_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert line.startswith(f"[127.0.0.1]:{gw.port} ssh-ed25519 ")
    assert line.split()[:3] == _host_key_line(gw).split()[:3]


def test_openssh_interactive_shell_with_forced_pty(gw: GatewayHarness, tmp_path: Path) -> None:
    opts, env = _openssh(gw, tmp_path)
    proc = subprocess.run(
        ["ssh", *opts, "-tt", "-p", str(gw.port), "box@127.0.0.1"],
        input="echo hi-$((40+2))\nexit 4\n", env=env, capture_output=True, text=True,
        timeout=30)
    assert "hi-42" in proc.stdout, proc.stderr
    assert proc.returncode == 4
