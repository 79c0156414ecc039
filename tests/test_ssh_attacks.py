"""Attacks on the SSH gateway, each kept as a regression test.

Every test drives a real gateway in front of the test OpenSSH server
(tests/sshd_harness.py) with the clients an attacker would use: asyncssh with
hand-written protocol messages where the exact order or timing matters. Each
asserts the safe behaviour, so reintroducing the weakness makes it fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from asyncssh.packet import String, UInt32

from gateway_harness import GatewayHarness, wait_until, write_config
from pathwarden.approvals import RequestState
from pathwarden.model import Verdict
from sshd_harness import SshdServer
from test_ssh_gateway import ALICE, _config, _connect, _last_session, _recording_events

GHP = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"


def _start(sshd: SshdServer, base: Path,
           policy: Callable[[dict[str, Any]], None] | None = None) -> GatewayHarness:
    """A gateway on ``_config`` (the deploy policy of test_ssh_gateway), ``policy`` applied."""
    config = _config(sshd, base)
    if policy is not None:
        policy(config["policies"][0])
    return GatewayHarness(write_config(base / "pathwarden.yaml", config))


@pytest.fixture(scope="module")
def gw(sshd: SshdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHarness]:
    """The deploy policy: echo, cat, printf ... allowed; rm and write redirections denied."""
    harness = _start(sshd, tmp_path_factory.mktemp("sshattacks"))
    try:
        yield harness
    finally:
        harness.stop()


def _run(gw: GatewayHarness, command: str, env: dict[str, str] | None = None
         ) -> asyncssh.SSHCompletedProcess:
    async def go() -> asyncssh.SSHCompletedProcess:
        async with await _connect(gw) as conn:
            return await conn.run(command, check=False, encoding="utf-8", timeout=30,
                                  env=env or {})
    return asyncio.run(go())


def _victim(sshd: SshdServer) -> Path:
    victim = sshd.scratch / f"victim-{uuid.uuid4().hex[:8]}"
    victim.write_text("keep me")
    return victim


# -- raw SFTP (version 3) ------------------------------------------------------------------

_FXP_INIT, _FXP_OPEN, _FXP_READ, _FXP_REMOVE, _FXP_STAT = 1, 3, 5, 13, 17
_FXP_VERSION, _FXP_STATUS, _FXP_HANDLE, _FXP_DATA, _FXP_ATTRS = 2, 101, 102, 103, 105
_FX_PERMISSION_DENIED = 3


def _sftp_packet(kind: int, body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, kind) + body


def _sftp_string(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack(">I", len(raw)) + raw


def _sftp_init() -> bytes:
    return _sftp_packet(_FXP_INIT, struct.pack(">I", 3))


def _sftp_path_request(kind: int, request_id: int, path: str) -> bytes:
    return _sftp_packet(kind, struct.pack(">I", request_id) + _sftp_string(path))


def _sftp_open_read(request_id: int, path: str) -> bytes:
    return _sftp_packet(_FXP_OPEN, struct.pack(">I", request_id) + _sftp_string(path)
                        + struct.pack(">II", 1, 0))


def _sftp_read(request_id: int, handle: bytes) -> bytes:
    return _sftp_packet(_FXP_READ, struct.pack(">I", request_id) + _sftp_string(handle)
                        + struct.pack(">QI", 0, 4096))


class _SftpReplies:
    """Reads SFTP replies off a process's stdout: (type, request id, rest of the body)."""

    def __init__(self, stdout: asyncssh.SSHReader[bytes]) -> None:
        self.stdout = stdout
        self.buf = b""

    async def next(self) -> tuple[int, int | None, bytes]:
        while True:
            if len(self.buf) >= 4:
                (size,) = struct.unpack_from(">I", self.buf)
                if len(self.buf) >= 4 + size:
                    body, self.buf = self.buf[4:4 + size], self.buf[4 + size:]
                    if body[0] == _FXP_VERSION:
                        return body[0], None, body[1:]
                    return body[0], struct.unpack_from(">I", body, 1)[0], body[5:]
            chunk = await asyncio.wait_for(self.stdout.read(65536), 10)
            if not chunk:
                raise EOFError("the SFTP channel closed")
            self.buf += chunk


# -- command lines -------------------------------------------------------------------------


def test_printf_v_subscript_cannot_run_code(gw: GatewayHarness, sshd: SshdServer) -> None:
    """Code smuggled into an array subscript of a name given to ``printf -v``.

    bash evaluates a subscript in a variable name as arithmetic, and arithmetic
    evaluates the value of the variable it names, ``$(...)`` included; printf
    builds that value without a ``$`` in the command line (``\\x24``). With only
    printf allowed and rm denied, the line must be refused and rm must not run.
    """
    victim = _victim(sshd)
    result = _run(gw, f"printf -v X 'x[\\x24(rm -f {victim})]'; printf -v 'a[X]' z")
    assert victim.exists(), "rm ran on the host through printf -v"
    assert result.exit_status == 126, (result.stdout, result.stderr)
    assert "pathwarden: denied" in result.stderr
    # Plain printf -v without subscripts is still an ordinary printf.
    assert _run(gw, "printf -v X %s hi; printf 'ok\\n'").stdout == "ok\n"


def _allow_dynamic_echo(policy: dict[str, Any]) -> None:
    # The documented way to allow expansions for harmless programs.
    policy["allow"].append({"exec": {"programs": ["echo", "printf"], "flags": ["dynamic"]}})


@pytest.fixture(scope="module")
def gw_dynamic(sshd: SshdServer, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[GatewayHarness]:
    """The deploy policy, plus echo and printf with expansions (flag ``dynamic``)."""
    harness = _start(sshd, tmp_path_factory.mktemp("sshattacks-dyn"), _allow_dynamic_echo)
    try:
        yield harness
    finally:
        harness.stop()


def test_environment_values_sent_by_the_client_are_not_run_as_code(
        gw_dynamic: GatewayHarness, sshd: SshdServer) -> None:
    """Code in the value of an ``LC_*`` variable sent with an SSH env request.

    The gateway passes locale variables on and the host's sshd accepts them;
    bash then evaluates the value as code in arithmetic, subscripts, indirection
    and prompt expansion, all of which look like a harmless echo/printf. With
    echo and printf allowed with expansions, none of these may delete the file.
    """
    victim = _victim(sshd)
    payload = {"LC_X": f"x[$(rm -f {victim})]", "LC_Y": f"$(rm -f {victim})"}
    commands = ["printf -v 'a[LC_X]' z", "echo $((LC_X))", "echo ${a[LC_X]}",
                "echo ${HOME:LC_X}", "echo ${!LC_X}", "echo ${LC_Y@P}",
                "printf '%s\\n' $((LC_X + 1))"]

    async def go() -> dict[str, asyncssh.SSHCompletedProcess]:
        async with await _connect(gw_dynamic) as conn:
            out = {}
            for command in commands:
                out[command] = await conn.run(command, check=False, encoding="utf-8",
                                              timeout=30, env=payload)
            # What reaches the host: the code-bearing values are dropped, a locale passes.
            out["env"] = await conn.run(
                'echo "[$LC_X][$LC_Y][$LC_MESSAGES]"', check=False, encoding="utf-8",
                timeout=30, env={**payload, "LC_MESSAGES": "C.UTF-8"})
            return out
    results = asyncio.run(go())
    assert victim.exists(), "an env value ran code on the host"
    for command in commands:
        assert results[command].exit_status == 126, (command, results[command].stderr)
    assert results["env"].stdout == "[][][C.UTF-8]\n", results["env"].stdout


# -- SFTP ----------------------------------------------------------------------------------


def _home_only(policy: dict[str, Any]) -> None:
    policy["allow"] = ["sftp", {"file_transfer": {"kinds": ["read_file", "write_file", "stat",
                                                            "list_dir"]}}]
    policy["deny"] = [{"file_transfer": {"flags": ["outside_home"]}}]


@pytest.fixture(scope="module")
def gw_home(sshd: SshdServer, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[GatewayHarness]:
    """SFTP reads and writes allowed, but nothing outside the account's home directory."""
    harness = _start(sshd, tmp_path_factory.mktemp("sshattacks-home"), _home_only)
    try:
        yield harness
    finally:
        harness.stop()


def test_sftp_request_pipelined_with_init_is_decided_against_the_home(
        gw_home: GatewayHarness, sshd: SshdServer) -> None:
    """Reading a file outside the home directory by sending OPEN together with INIT.

    The gateway learns the home directory from the target after the handshake;
    a request sent before that must still count as outside it (or wait), never
    be decided as if no home restriction applied.
    """
    secret = sshd.scratch / f"secret-{uuid.uuid4().hex[:8]}"
    secret.write_text("TOPSECRET")

    async def go() -> dict[str, Any]:
        async with await _connect(gw_home) as conn:
            proc = await conn.create_process(subsystem="sftp", encoding=None)
            replies = _SftpReplies(proc.stdout)
            proc.stdin.write(_sftp_init() + _sftp_open_read(1, str(secret))
                             + _sftp_path_request(_FXP_STAT, 2, str(sshd.home))
                             + _sftp_path_request(_FXP_STAT, 3, "."))
            version = await replies.next()
            got = {rid: (kind, body) for kind, rid, body in
                   [await replies.next() for _ in range(3)]}
            data = b""
            if got[1][0] == _FXP_HANDLE:
                (size,) = struct.unpack_from(">I", got[1][1])
                proc.stdin.write(_sftp_read(4, got[1][1][4:4 + size]))
                data = (await replies.next())[2]
            return {"version": version[0], "got": got, "data": data}
    out = asyncio.run(go())
    assert out["version"] == _FXP_VERSION
    kind, body = out["got"][1]
    assert b"TOPSECRET" not in out["data"], "a file outside the home directory was read"
    assert kind == _FXP_STATUS and struct.unpack_from(">I", body)[0] == _FX_PERMISSION_DENIED
    assert b"pathwarden: denied" in body
    # Requests inside the home, absolute or relative, are still served.
    assert out["got"][2][0] == _FXP_ATTRS and out["got"][3][0] == _FXP_ATTRS, out["got"]


@pytest.fixture
def gw_flood(sshd: SshdServer, tmp_path: Path) -> Iterator[GatewayHarness]:
    """A gateway of its own: the test floods it."""
    harness = _start(sshd, tmp_path)
    try:
        yield harness
    finally:
        harness.stop()


def test_client_not_reading_sftp_refusals_cannot_make_the_gateway_buffer(
        gw_flood: GatewayHarness) -> None:
    """Memory exhaustion through refused SFTP requests from a client that never reads.

    The gateway answers a refused request itself, with a reply several times
    the request's size. A client that pipelines refused requests as fast as it
    can and never reads a reply must stop being read (its SSH window stays
    closed): the replies the gateway holds for it, and what it takes from it,
    stay bounded, and other clients are still served.
    """
    batch = _sftp_path_request(_FXP_REMOVE, 7, "/etc/denied-" + "x" * 8) * 2000  # ~75 kB
    mb = 1024 * 1024
    stats: dict[str, float] = {"held": 0}
    stop = threading.Event()

    async def write_buffers() -> int:
        return sum(relay.chan.get_write_buffer_size()
                   for session in list(gw_flood.gateway.sessions)
                   for relay in list(getattr(session, "channels", ()))
                   if relay.chan is not None)

    def sample() -> None:  # in a thread of its own, so the client is not slowed down
        while not stop.wait(0.05):
            held = gw_flood.call(write_buffers(), timeout=20)
            stats["held"] = max(stats["held"], held)

    async def other_client() -> float:
        started = time.monotonic()
        async with await _connect(gw_flood) as conn:
            done = await conn.run("echo alive", check=False, encoding="utf-8", timeout=20)
        assert done.stdout == "alive\n"
        return time.monotonic() - started

    async def go() -> None:
        conn = await _connect(gw_flood)
        try:
            chan, _ = await conn.create_session(asyncssh.SSHClientSession, subsystem="sftp",
                                                encoding=None)
            chan.write(_sftp_init())
            await asyncio.sleep(0.3)
            chan.pause_reading()  # never read a reply again
            sent = 0
            other = None
            started = time.monotonic()
            while time.monotonic() - started < 3:
                if chan.get_write_buffer_size() < 2 * len(batch):
                    chan.write(batch)
                    sent += len(batch)
                if other is None and time.monotonic() - started > 1.5:
                    other = asyncio.create_task(other_client())
                await asyncio.sleep(0.005)
            stats["other"] = await other if other is not None else -1
            stats["sent"] = sent
            stats["taken"] = sent - chan.get_write_buffer_size()
        finally:
            conn.abort()

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        asyncio.run(go())
    finally:
        stop.set()
        sampler.join(30)
    print({k: round(v / mb, 2) if k != "other" else v for k, v in stats.items()})
    assert stats["held"] < mb, f"the gateway held {stats['held'] / mb:.1f} MB of replies"
    # The client's SSH window is 2 MB: it gets no further once the gateway stops reading.
    assert stats["taken"] < 2.5 * mb, f"the gateway read {stats['taken'] / mb:.1f} MB"
    assert stats["sent"] > stats["taken"], "the client was never held back"
    assert 0 <= stats["other"] < 5, f"another client waited {stats['other']:.1f} s"


# -- secrets -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [f"echo {GHP}", f"rm -f /nonexistent/{GHP}"],
                         ids=["allowed", "denied"])
def test_secret_in_a_command_line_is_masked_in_the_decision_reason(
        gw: GatewayHarness, command: str, caplog: pytest.LogCaptureFixture) -> None:
    """A token on a command line leaking through the reason of the policy decision.

    The reason quotes the command line; it is stored in the audit trail, the
    recording (decision and refused channel events) and the gateway log, and
    must be masked there like the command text itself.
    """
    caplog.set_level(logging.INFO, logger="pathwarden")
    _run(gw, command)
    session_id = _last_session(gw)
    statements = gw.statements(session_id)
    events = _recording_events(gw, session_id)
    assert statements and all(GHP not in s.text and GHP not in s.reason for s in statements), \
        [(s.text, s.reason) for s in statements]
    assert any("[MASKED:github-token]" in s.reason for s in statements), statements
    leaks = [e for e in events if e["type"] != "term_output" and GHP in json.dumps(e)]
    assert not leaks, f"the recording holds the token: {leaks}"
    assert GHP not in caplog.text, "the gateway log holds the token"


def test_secret_printed_in_two_parts_is_masked(gw: GatewayHarness) -> None:
    """A token printed in two writes with a pause longer than the output flush delay.

    Output stops arriving mid-line, so the gateway releases what it holds; the
    first half of the token must not be released (and so escape masking), for
    the client or for the recording.
    """
    head, tail = GHP[:20], GHP[20:]
    result = _run(gw, f"printf 'before %s' {head}; sleep 0.5; printf '%s after\\n' {tail}")
    assert GHP not in result.stdout and head not in result.stdout, result.stdout
    assert result.stdout == "before [MASKED:github-token] after\n", result.stdout
    output = "".join(e["data"]["data"] for e in _recording_events(gw, _last_session(gw))
                     if e["type"] == "term_output")
    assert GHP not in output and head not in output, output


def test_secret_typed_key_by_key_on_a_terminal_is_recorded_masked(gw: GatewayHarness) -> None:
    """A token typed one key at a time in an interactive shell.

    Each keystroke alone looks harmless; the recording must still not hold the
    token, neither in the typed input nor in the terminal's echo.
    """
    async def go() -> str:
        async with await _connect(gw) as conn:
            proc = await conn.create_process(term_type="xterm", encoding="utf-8")
            await asyncio.sleep(0.3)
            for key in f"true {GHP}":
                proc.stdin.write(key)
                await asyncio.sleep(0.02)
            proc.stdin.write("\necho typed-done\n")
            seen = ""
            while "typed-done\r\n" not in seen.replace("echo typed-done", ""):
                seen += await asyncio.wait_for(proc.stdout.read(1024), 10)
            proc.stdin.write("exit\n")
            await asyncio.wait_for(proc.wait_closed(), 10)
            return seen
    asyncio.run(go())
    events = _recording_events(gw, _last_session(gw))
    typed = "".join(e["data"]["data"] for e in events if e["type"] == "term_input")
    shown = "".join(e["data"]["data"] for e in events if e["type"] == "term_output")
    assert GHP not in typed, f"typed input recorded in clear: {typed!r}"
    assert GHP not in shown, f"echo recorded in clear: {shown!r}"
    assert "[MASKED:github-token]" in typed


# -- terminals -----------------------------------------------------------------------------


def _no_terminals_and_approval(policy: dict[str, Any]) -> None:
    policy["allow"] = ["shell"]
    policy["deny"] = [{"shell": {"flags": ["pty"]}}]  # no interactive terminals
    policy["require_approval"] = ["shell"]  # and a human looks at every shell


@pytest.fixture(scope="module")
def gw_no_pty(sshd: SshdServer, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[GatewayHarness]:
    """Shells need approval, and shells on a terminal are denied."""
    harness = _start(sshd, tmp_path_factory.mktemp("sshattacks-pty"),
                     _no_terminals_and_approval)
    try:
        yield harness
    finally:
        harness.stop()


def test_terminal_requested_while_held_for_approval_is_refused(
        gw_no_pty: GatewayHarness) -> None:
    """Getting a terminal the policy denies by requesting it after the shell request.

    The shell is decided (and approved) as one without a terminal; a pty-req
    the client sends while it waits for approval must be refused, and the
    approved shell must run without a terminal.
    """
    state: dict[str, Any] = {}
    approved = threading.Event()

    class Client(asyncssh.SSHClientSession[bytes]):
        def __init__(self) -> None:
            self.buf = b""
            self.done = asyncio.Event()

        def data_received(self, data: bytes, datatype: int | None) -> None:
            self.buf += data
            if b"shell-done" in self.buf:
                self.done.set()

    async def go() -> bytes:
        async with await _connect(gw_no_pty) as conn:
            chan, client = await conn.create_session(Client, encoding=None)  # shell, no pty
            await asyncio.sleep(0.3)
            state["pty_granted"] = await chan._make_request(
                b"pty-req", String("xterm"), UInt32(80), UInt32(24), UInt32(0), UInt32(0),
                String(b"\0"))
            state["asked"] = True
            await asyncio.to_thread(approved.wait, 20)
            chan.write(b"tty; echo shell-done\n")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.done.wait(), 10)
            chan.close()
            return client.buf

    result: dict[str, bytes] = {}
    thread = threading.Thread(target=lambda: result.setdefault("out", asyncio.run(go())))
    thread.start()
    try:
        def pending() -> Any:
            requests = gw_no_pty.call(gw_no_pty.gateway.approvals.list(
                state=RequestState.PENDING))
            return requests[0] if requests else None
        request = wait_until(pending, timeout=10, what="the approval request")
        wait_until(lambda: state.get("asked"), timeout=10, what="the pty request")
        gw_no_pty.call(gw_no_pty.gateway.approvals.vote(request.id, ALICE, True,
                                                        "a non-interactive shell"))
    finally:
        approved.set()
        thread.join(20)
    out = result["out"]
    assert state["pty_granted"] is False, "a terminal was granted after the decision"
    assert b"shell-done" in out and b"/dev/pts/" not in out, out
    assert b"not a tty" in out


# -- forwarding ----------------------------------------------------------------------------


def _loopback_denied(policy: dict[str, Any]) -> None:
    policy["allow"].append({"forwarding": {"kinds": ["local_port"]}})
    # Nothing on the host's own loopback (its sshd, databases bound to 127.0.0.1).
    policy["deny"].append({"forwarding": {"targets": ["127.0.0.1:*", "localhost:*"]}})


@pytest.fixture(scope="module")
def gw_forward(sshd: SshdServer, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[GatewayHarness]:
    """Local port forwarding allowed, except to the host's 127.0.0.1 / localhost."""
    harness = _start(sshd, tmp_path_factory.mktemp("sshattacks-fwd"), _loopback_denied)
    try:
        yield harness
    finally:
        harness.stop()


@pytest.mark.parametrize("spellings", [
    pytest.param(["127.0.0.1", "localhost", "2130706433", "127.1", "0x7f.1", "0177.0.0.1",
                  "LOCALHOST", "localhost.", "127.0.0.1."], id="ipv4-and-names"),
    pytest.param(["::ffff:127.0.0.1", "::ffff:7f00:1", "0:0:0:0:0:ffff:127.0.0.1"],
                 id="ipv4-mapped-ipv6"),
])
def test_denied_forwarding_target_is_denied_in_every_spelling(
        gw_forward: GatewayHarness, sshd: SshdServer, spellings: list[str]) -> None:
    """Reaching a denied forwarding target through another spelling of its address.

    ``2130706433``, ``127.1``, ``0x7f.1``, ``LOCALHOST``, ``localhost.`` and
    ``::ffff:127.0.0.1`` all reach 127.0.0.1 on the host; a deny rule for
    ``127.0.0.1:*`` and ``localhost:*`` must refuse every one of them by policy.
    """
    async def go() -> tuple[dict[str, Any], bytes]:
        async def pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"PONG\n")
            await writer.drain()
            writer.close()
        # A service on another loopback address: forwarding itself works.
        server = await asyncio.start_server(pong, "127.0.0.2", 0)
        port = server.sockets[0].getsockname()[1]
        outcome: dict[str, Any] = {}
        async with server, await _connect(gw_forward) as conn:
            await conn.run("true", check=False)  # the gateway has dialled the host
            reader, writer = await conn.open_connection("127.0.0.2", port)
            allowed = await asyncio.wait_for(reader.read(100), 5)
            writer.close()
            for host in spellings:
                try:
                    reader, writer = await conn.open_connection(host, sshd.port)
                except asyncssh.ChannelOpenError as exc:
                    outcome[host] = exc.reason
                else:
                    outcome[host] = await asyncio.wait_for(reader.read(100), 5)
                    writer.close()
        return outcome, allowed
    outcome, allowed = asyncio.run(go())
    assert allowed == b"PONG\n"
    reached = {h: o for h, o in outcome.items() if not isinstance(o, str)}
    assert not reached, f"the denied target was reached: {reached}"
    assert all("denied" in reason for reason in outcome.values()), outcome


# -- legacy scp ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["scp -t -S /tmp/evil /tmp", "scp ~/x /tmp/y"])
def test_unreadable_scp_command_is_refused_by_policy_and_audited(
        gw: GatewayHarness, command: str) -> None:
    """An exec line that looks like scp but that the scp reader cannot follow.

    ``-S`` names a program for scp to run, ``~`` is for the host's shell; the
    line must be decided as an ordinary command (here: scp is not allowed),
    refused with the policy's reason and recorded in the audit trail, not fail
    as an internal error nobody sees.
    """
    result = _run(gw, command)
    assert result.exit_status == 126, result.stderr
    assert "internal error" not in result.stderr
    assert "pathwarden: denied" in result.stderr
    statements = gw.statements(_last_session(gw))
    assert [s.verdict for s in statements] == [Verdict.DENY], statements
    assert statements[0].text == command
