"""One SSH session channel, relayed between the client and the target.

Theory of operation
-------------------

A client channel asks for a shell, a command (``exec``) or a subsystem
(only ``sftp``). The request is an :class:`~pathwarden.model.Operation`
decided by the gateway's pipeline like a SQL statement:

* ``exec``: the command line is classified as a shell program
  (:mod:`pathwarden.policy.shell`), one action per simple command. An
  empty command starts the login shell, so it is decided as a shell. A
  legacy ``scp -t``/``scp -f`` command is a file transfer (``upload`` /
  ``download`` of its paths).
* ``shell``: class ``shell`` (flag ``pty`` with a terminal).
* ``sftp``: class ``file_transfer`` kind ``sftp``; then every SFTP request
  that names a path is decided on its own (``read_file``, ``write_file``,
  ``remove`` ...; :mod:`pathwarden.protocols.ssh.sftp`) and a denied one is
  answered with SSH_FX_PERMISSION_DENIED and the reason, without reaching the
  target.

A request that needs approval is held: the client gets the gateway's notice on
stderr, its input waits, and the channel opens on the target only when
approvers allow it. A denied request gets ``pathwarden: denied: <reason>`` on
stderr and exit status 126 (a pipeline log explains itself). The operation
and its decision are written to the recording before anything reaches the
target (strict recording refuses what cannot be recorded).

Output (stdout and stderr of commands and shells) passes through a
:class:`~pathwarden.masking.stream.StreamMasker` per stream before it reaches
the client or the recording; file transfer payloads (SFTP, scp) are relayed
byte for byte and recorded as file names and sizes. Terminal output is
released at most ``ssh.terminal_flush_delay`` after it stops arriving, other
output at line ends (or ``ssh.output_flush_delay``), a private-key block only
whole. Keystrokes are recorded masked; what is typed after a password
prompt is recorded as ``[MASKED:prompt]``.

EOF, exit status and exit signals, window changes, breaks and signals are
relayed as they come; flow control follows both SSH windows (a slow reader
pauses the other side).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import fnmatch
import logging
import re
import time
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncssh

from ..masking.stream import StreamMasker
from ..model import Action, Decision, Operation, Verdict
from ..policy.shell import classify_command
from ..protocols.ssh import scp as scp_proto
from ..protocols.ssh import sftp as sftp_proto

if TYPE_CHECKING:
    from .server import SshSession

log = logging.getLogger(__name__)

__all__ = ["DENIED_EXIT_STATUS", "ChannelRelay"]

#: Exit status of a request the gateway refused (like a shell's "cannot execute").
DENIED_EXIT_STATUS = 126
#: Exit status when the target could not be reached or the channel failed.
FAILED_EXIT_STATUS = 255
_STDERR = asyncssh.EXTENDED_DATA_STDERR
_MAX_BACKLOG = 1 << 20
_PROMPT = re.compile(r"(?i)(pass(word|phrase)?|passcode|pin|token|secret|otp|verification "
                     r"code)[^\n]{0,40}[:?]\s*$")
_TAIL = 200
# A typed line recorded before its Enter when it gets this long.
_MAX_INPUT_LINE = 4096
# A trailing run of token characters this long is held back from an early release.
_HOLD_RUN = 12
# The request id of the gateway's own SFTP realpath(".") (clients count up from 0).
_HOME_REQUEST = 0xFFFFFFFF
_HOME_TIMEOUT = 10.0
# File requests recorded as operations (stat-like lookups are recorded only when refused).
_QUIET_KINDS = frozenset({"stat"})


class _Utf8:
    """Incremental UTF-8 decoding for the recording (invalid bytes replaced)."""

    __slots__ = ("_dec",)

    def __init__(self) -> None:
        self._dec = codecs.getincrementaldecoder("utf-8")("replace")

    def __call__(self, data: bytes, final: bool = False) -> str:
        return self._dec.decode(data, final)


class ChannelRelay(asyncssh.SSHServerSession):  # type: ignore[type-arg]
    """The client side of one session channel."""

    def __init__(self, session: SshSession) -> None:
        self.session = session
        self.id = session.next_channel_id()
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None
        self.term: tuple[str, tuple[int, int, int, int], dict[int, int]] | None = None
        self.request = "shell"
        self.command: str | None = None
        self.subsystem: str | None = None
        self.mode = "pending"  # pending, exec, terminal, sftp, scp, closed
        self.up: asyncssh.SSHClientChannel[bytes] | None = None
        self._backlog: list[tuple[bytes, int | None]] = []
        self._backlog_bytes = 0
        self._eof_pending = False
        self._held: asyncio.Task[None] | None = None
        self._maskers: dict[int | None, StreamMasker] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_delay = 0.0
        self._decoders: dict[str, _Utf8] = {}
        self._input_decoder = _Utf8()
        self._tail = ""
        self._secret_input = False
        self.exit_status: int | None = None
        self.exit_signal: tuple[str, bool, str] | None = None
        self._op: Operation | None = None
        self._decision: Decision | None = None
        self._started_at = datetime.now(UTC)
        self._t0 = time.monotonic()
        self._finished = False
        self._sftp_in: sftp_proto.SftpFramer | None = None
        self._sftp_out: sftp_proto.SftpFramer | None = None
        self._tracker: sftp_proto.SftpTracker | None = None
        self._scp: scp_proto.ScpStream | None = None
        self._scp_direction = ""
        self._scp_broken = False
        self._masked: dict[str, int] = {}
        self._home: asyncio.Future[None] | None = None
        self._requested = False
        self._pauses: set[str] = set()
        self._input_line = ""
        self._record_maskers: dict[int | None, StreamMasker] = {}

    # -- client channel callbacks ----------------------------------------------------------

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan
        self.session.channels.add(self)

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int],
                      term_modes: Mapping[int, int]) -> bool:
        if self._requested:
            # Policy decided the request without a terminal: it gets none.
            return False
        self.term = (term_type, term_size, dict(term_modes))
        return True

    def shell_requested(self) -> bool:
        self._requested = True
        self.request = "shell"
        return True

    def exec_requested(self, command: str) -> bool:
        self._requested = True
        self.request = "exec"
        self.command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        self._requested = True
        self.request = "subsystem"
        self.subsystem = subsystem
        if subsystem != "sftp":
            self.session.event("channel", {
                "channel": self.id, "request": "subsystem", "subsystem": subsystem[:100],
                "pty": None, "refused": "only the sftp subsystem is relayed"})
            return False
        return True

    def session_started(self) -> None:
        self._held = asyncio.get_running_loop().create_task(self._open())

    def data_received(self, data: bytes, datatype: int | None) -> None:
        if self.mode == "closed":
            return
        if self.up is None or self._held is not None or self._backlog:
            self._backlog.append((data, datatype))
            self._backlog_bytes += len(data)
            if self._backlog_bytes > _MAX_BACKLOG:
                self.pause_client("backlog")
            return
        self._from_client(data, datatype)

    def eof_received(self) -> bool:
        if self.up is None or self._held is not None or self._backlog:
            self._eof_pending = True
        else:
            self.up.write_eof()
        return True

    def break_received(self, msec: int) -> bool:
        if self.up is not None:
            self.up.send_break(msec)
            return True
        return False

    def signal_received(self, signal: str) -> None:
        if self.up is not None:
            self.up.send_signal(signal)
        self.session.event("signal", {"channel": self.id, "signal": signal[:32]})

    def terminal_size_changed(self, width: int, height: int, pixwidth: int,
                              pixheight: int) -> None:
        if self.up is not None:
            self.up.change_terminal_size(width, height, pixwidth, pixheight)
        self.session.event("resize", {"channel": self.id, "cols": width, "rows": height},
                           essential=False)

    def pause_writing(self) -> None:
        # The client reads slower than it is sent to: stop reading the target, and
        # the client too (the gateway answers refused SFTP requests itself).
        if self.up is not None:
            self.up.pause_reading()
        self.pause_client("client-full")

    def resume_writing(self) -> None:
        if self.up is not None:
            self.up.resume_reading()
        self.resume_client("client-full")

    def pause_client(self, why: str) -> None:
        self._pauses.add(why)
        if self.chan is not None:
            self.chan.pause_reading()

    def resume_client(self, why: str) -> None:
        self._pauses.discard(why)
        if (not self._pauses and self.chan is not None and self.mode != "closed"
                and not self._backlog and self._held is None):
            self.chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.channels.discard(self)
        if self._held is not None and not self._held.done():
            self._held.cancel()
        if self.up is not None:
            self.up.close()
        self._finish("client closed the channel" if self.exit_status is None
                     and self.exit_signal is None and self.mode != "closed" else None)
        self.mode = "closed"
        if self._flush_timer is not None:
            self._flush_timer.cancel()

    # -- messages to the client ------------------------------------------------------------

    def notice(self, message: str) -> None:
        """A line from the gateway on the client's stderr."""
        chan = self.chan
        if chan is None or self.mode == "closed" or chan.is_closing():
            return
        eol = "\r\n" if self.term is not None else "\n"
        with contextlib.suppress(OSError, asyncssh.Error):
            chan.write((message.rstrip() + eol).encode(), _STDERR)

    def close_for_session(self, reason: str) -> None:
        """The session ends (token revoked, gateway stopping): close this channel."""
        self._flush_all()
        if self._tracker is not None:
            for ev in self._tracker.finish():
                self._file_event(ev)
            self._tracker = None
        self._finish(reason)
        if self.up is not None:
            self.up.close()
        if self.chan is not None and self.mode != "closed":
            try:
                self.chan.exit(FAILED_EXIT_STATUS)
            except (OSError, asyncssh.Error):
                self.chan.close()
        self.mode = "closed"

    def _refuse(self, message: str, status: int = DENIED_EXIT_STATUS) -> None:
        self.notice(message)
        self.mode = "closed"
        if self.chan is not None:
            try:
                self.chan.exit(status)
            except (OSError, asyncssh.Error):
                self.chan.close()

    # -- opening the channel on the target ------------------------------------------------

    def _operation(self) -> Operation:
        session = self.session
        command = self.command
        if self.request == "subsystem":
            return session.operation("sftp", "sftp", (Action("file_transfer", "sftp",
                                                             text="sftp"),))
        if self.request == "exec" and command is not None and command.strip():
            scp = _scp_request(command)
            if scp is not None:
                direction, paths, scp_flags = scp
                return session.operation("scp", command, (Action(
                    "file_transfer", direction, {"paths": paths}, frozenset(scp_flags),
                    text=command),))
            return session.operation("exec", command)
        # A shell, or an empty command (which runs the login shell).
        flags = frozenset({"pty"}) if self.term is not None else frozenset()
        return session.operation("shell", command or "shell",
                                 (Action("shell", "shell", flags=flags, text="shell"),))

    async def _open(self) -> None:
        session = self.session
        try:
            op = self._operation()
            session.waiting_channel = self
            try:
                op, decision = await session.decide(op)
            finally:
                if session.waiting_channel is self:
                    session.waiting_channel = None
            self._op = op
            refused = session.write_ahead(op, decision)
            if refused is not None and decision.allowed:
                decision = Decision(Verdict.DENY, refused, decision.policy, decision.rule)
            self._decision = decision
            pty = None
            if self.term is not None:
                pty = {"term": self.term[0], "cols": self.term[1][0], "rows": self.term[1][1]}
            channel_event: dict[str, Any] = {"channel": self.id, "request": self.request,
                                             "pty": pty, "op_seq": op.seq}
            if self.request == "exec":
                channel_event["command"] = session.mask_text(self.command or "")
            elif self.subsystem is not None:
                channel_event["subsystem"] = self.subsystem
            if not decision.allowed:
                channel_event["refused"] = decision.reason
                session.event("channel", channel_event)
                session.audit(op, decision, self._started_at)
                self._finished = True
                log.info("session %s channel %d: %s denied: %s", session.record.id, self.id,
                         op.kind, decision.reason)
                self._refuse(f"pathwarden: denied: {decision.reason}")
                return
            session.event("channel", channel_event)
            await self._start_upstream(op)
        except asyncssh.ChannelOpenError as exc:
            self._fail(f"pathwarden: {exc.reason}" if not str(exc.reason).startswith(
                "pathwarden") else exc.reason)
        except (OSError, asyncssh.Error) as exc:
            self._fail(f"pathwarden: the target refused the channel: {exc}")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session %s channel %d failed", session.record.id, self.id)
            self._fail("pathwarden: internal error; the channel was closed (see the gateway log)")
        finally:
            self._held = None
        self._drain_backlog()

    def _fail(self, message: str) -> None:
        if self._op is not None and self._decision is not None and not self._finished:
            self._finished = True
            self.session.audit(self._op, self._decision, self._started_at, error=message)
        self._refuse(message, FAILED_EXIT_STATUS)

    async def _start_upstream(self, op: Operation) -> None:
        session = self.session
        upstream = await session.upstream_ready()
        env = _accepted_env(self.chan.get_environment() if self.chan is not None else {},
                            session.gateway.config.ssh.accept_env)
        kwargs: dict[str, Any] = {"encoding": None, "env": env}
        if self.term is not None:
            kwargs.update(term_type=self.term[0], term_size=self.term[1],
                          term_modes=self.term[2])
        if op.kind == "sftp":
            kwargs["subsystem"] = "sftp"
            self.mode = "sftp"
            self._sftp_in = sftp_proto.SftpFramer()
            self._sftp_out = sftp_proto.SftpFramer()
            self._tracker = sftp_proto.SftpTracker()
        else:
            kwargs["command"] = None if op.kind == "shell" and not self.command else self.command
            if op.kind == "scp":
                self.mode = "scp"
                self._scp_direction = op.actions[0].kind
                paths = op.actions[0].names("paths")
                base = paths[0] if self._scp_direction == "upload" and paths else ""
                self._scp = scp_proto.ScpStream(self._scp_direction, base)
            else:
                self.mode = "terminal" if self.term is not None else "exec"
                engine = session.engine
                if engine is not None:
                    self._maskers = {None: StreamMasker(engine), _STDERR: StreamMasker(engine)}
                    self._record_maskers = {None: StreamMasker(engine),
                                            _STDERR: StreamMasker(engine)}
                settings = session.gateway.config.ssh
                self._flush_delay = (settings.terminal_flush_delay if self.term is not None
                                     else settings.output_flush_delay).total_seconds()
        chan, _ = await upstream.create_session(lambda: _UpstreamSide(self), **kwargs)
        if self.mode == "closed":
            chan.close()
            return
        self.up = chan
        log.info("session %s channel %d: %s %s", session.record.id, self.id, op.kind,
                 session.mask_text(op.text)[:200])

    def _drain_backlog(self) -> None:
        while self._backlog and self.up is not None and self._held is None:
            data, datatype = self._backlog.pop(0)
            self._backlog_bytes -= len(data)
            self._from_client(data, datatype)
        if self.up is None and self.mode == "closed":
            self._backlog.clear()
            self._backlog_bytes = 0
        if not self._backlog:
            if self._eof_pending and self.up is not None:
                self._eof_pending = False
                self.up.write_eof()
            self.resume_client("backlog")

    # -- client -> target ------------------------------------------------------------------

    def _from_client(self, data: bytes, datatype: int | None) -> None:
        up = self.up
        assert up is not None
        self.session.record.bytes_from_client += len(data)
        mode = self.mode
        if mode == "sftp":
            self._sftp_from_client(data)
            return
        if mode == "scp" and self._scp_direction == "upload":
            self._scp_feed(data)
        elif mode == "terminal":
            self._record_input(data)
        up.write(data, datatype)

    def _record_input(self, data: bytes) -> None:
        """Keystrokes are recorded a line at a time, masked as a line (a token typed
        key by key is masked like a pasted one); after a password prompt the line
        is recorded as ``[MASKED:prompt]``."""
        text = self._input_decoder(data)
        if not text:
            return
        if not self._input_line and not self._secret_input and _PROMPT.search(self._tail):
            self._secret_input = True
        line = self._input_line + text
        while True:
            ends = [i for i in (line.find("\r"), line.find("\n")) if i >= 0]
            if not ends:
                break
            end = min(ends) + 1
            self._record_line(line[:end])
            line = line[end:]
        if len(line) > _MAX_INPUT_LINE:
            self._record_line(line)
            line = ""
        self._input_line = line

    def _record_line(self, line: str) -> None:
        if self._secret_input:
            self._secret_input = False
            end = line[-1] if line[-1:] in ("\r", "\n") else ""
            data = "[MASKED:prompt]" + end
        else:
            data = self.session.mask_text(line)
        self._tail = ""
        self.session.event("term_input", {"channel": self.id, "data": data}, essential=False)

    # -- SFTP --------------------------------------------------------------------------------

    def _sftp_from_client(self, data: bytes) -> None:
        assert self._sftp_in is not None
        try:
            packets = self._sftp_in.feed(data)
        except sftp_proto.SftpProtocolError as exc:
            self._protocol_error(f"malformed SFTP request: {exc}")
            return
        for index, packet in enumerate(packets):
            if not self._sftp_request(packet):
                # Held for approval: the rest waits, in order.
                rest = b"".join(p.raw for p in packets[index + 1:])
                if rest:
                    self._backlog.insert(0, (rest, None))
                    self._backlog_bytes += len(rest)
                return

    def _sftp_request(self, packet: sftp_proto.Packet) -> bool:
        """Forward or refuse one request; False when it is held (approval, home directory)."""
        assert self.up is not None
        assert self._tracker is not None
        tracker = self._tracker
        try:
            request = sftp_proto.decode_request(packet)
        except sftp_proto.SftpProtocolError as exc:
            self._protocol_error(f"malformed SFTP request: {exc}")
            return True
        if request.op == "init":
            # Ask the target for the home directory right after the handshake, and
            # decide no path before the answer (relative paths, outside_home).
            if self._home is None:
                self._home = asyncio.get_running_loop().create_future()
            tracker.on_request(request)
            self.up.write(packet.raw)
            return True
        if request.request_id == _HOME_REQUEST:
            self._sftp_refuse(request, sftp_proto.SSH_FX_FAILURE,
                              "pathwarden: request id 0xffffffff is reserved by the gateway")
            return True
        if request.paths and self._home is not None and not self._home.done():
            return self._hold(packet, self._home)
        if request.op == "fsetstat":
            # OpenSSH's server changes modes and times through read-only handles too.
            info = tracker.handle_info(request.handle or b"")
            if info is None or info.kind != "write_file":
                self._sftp_refuse(request, sftp_proto.SSH_FX_PERMISSION_DENIED,
                                  "pathwarden: denied: changing attributes needs a handle "
                                  "opened for writing")
                return True
        view = sftp_proto.request_action(request, tracker.resolve)
        if view is None:
            tracker.on_request(request)
            self.up.write(packet.raw)
            return True
        kind, paths = view
        if kind == "unknown":
            self._sftp_refuse(request, sftp_proto.SSH_FX_OP_UNSUPPORTED,
                              f"pathwarden: {request.op} is not supported by the gateway")
            return True
        session = self.session
        text = f"{kind} {' '.join(paths)}".strip()
        home = tracker.home
        # Unknown home: every path counts as outside it (fail closed).
        flags = frozenset({"outside_home"}) if paths and (home is None or any(
            not (p == home or p.startswith(home.rstrip("/") + "/")) for p in paths)
        ) else frozenset()
        action = Action("file_transfer", kind, {"paths": paths} if paths else {}, flags,
                        text=text)
        op = session.operation("sftp", text, (action,))
        started = datetime.now(UTC)
        op, result = session.gateway.pipeline.decide(op)
        if isinstance(result, Decision):
            self._sftp_apply(packet, request, op, session.masked(result), started)
            return True
        return self._hold(packet, result, (request, op, started))

    def _hold(self, packet: sftp_proto.Packet, waiting: Awaitable[Any],
              decided: tuple[sftp_proto.SftpRequest, Operation, datetime] | None = None
              ) -> bool:
        """Hold ``packet`` (and what follows) until ``waiting`` resolves."""
        session = self.session

        async def hold() -> None:
            if decided is not None:
                session.waiting_channel = self
            try:
                outcome = await waiting
            except Exception:
                outcome = None
            finally:
                if session.waiting_channel is self:
                    session.waiting_channel = None
            self._held = None
            if self.mode == "sftp":
                if decided is None:
                    self._sftp_request(packet)
                else:
                    request, op, started = decided
                    decision = session.masked(outcome) if isinstance(outcome, Decision) \
                        else Decision(Verdict.DENY, "approval wait failed; denied (fail closed)")
                    self._sftp_apply(packet, request, op, decision, started)
            self._drain_backlog()

        self._held = asyncio.get_running_loop().create_task(hold())
        return False

    def _sftp_refuse(self, request: sftp_proto.SftpRequest, code: int, message: str) -> None:
        if self.chan is not None and request.request_id is not None:
            self.chan.write(sftp_proto.status_reply(request.request_id, code, message))
        self.session.event("file", {"channel": self.id, "op": request.op,
                                    "path": request.paths[0] if request.paths else "",
                                    "paths": list(request.paths), "bytes": 0, "ok": False,
                                    "verdict": "deny", "error": message[:200]})

    def _sftp_apply(self, packet: sftp_proto.Packet, request: sftp_proto.SftpRequest,
                    op: Operation, decision: Decision, started: datetime) -> None:
        assert self.up is not None
        assert self._tracker is not None
        session = self.session
        quiet = op.actions[0].kind in _QUIET_KINDS
        if not quiet or not decision.allowed:
            # Written before the request reaches the target (refusals too).
            refused = session.write_ahead(op, decision)
            if refused is not None and decision.allowed:
                decision = Decision(Verdict.DENY, refused, decision.policy, decision.rule)
        if decision.allowed:
            if not quiet:
                session.audit(op, decision, started)
            self._tracker.on_request(request)
            self.up.write(packet.raw)
            return
        session.audit(op, decision, started)
        action = op.actions[0]
        session.event("file", {"channel": self.id, "op": action.kind,
                               "path": action.names("paths")[0] if action.names("paths") else "",
                               "paths": list(action.names("paths")), "bytes": 0, "ok": False,
                               "verdict": decision.verdict.value})
        log.info("session %s channel %d: sftp %s denied: %s", session.record.id, self.id,
                 op.text, decision.reason)
        if self.chan is not None and request.request_id is not None:
            self.chan.write(sftp_proto.status_reply(
                request.request_id, sftp_proto.SSH_FX_PERMISSION_DENIED,
                f"pathwarden: denied: {decision.reason}"))

    def _sftp_from_target(self, data: bytes) -> None:
        assert self._sftp_out is not None
        assert self._tracker is not None
        chan = self.chan
        assert chan is not None
        try:
            packets = self._sftp_out.feed(data)
        except sftp_proto.SftpProtocolError as exc:
            self._protocol_error(f"malformed SFTP reply from the target: {exc}")
            return
        out = []
        for packet in packets:
            try:
                reply = sftp_proto.decode_reply(packet)
            except sftp_proto.SftpProtocolError as exc:
                self._protocol_error(f"malformed SFTP reply from the target: {exc}")
                return
            for ev in self._tracker.on_reply(reply):
                self._file_event(ev)
            if packet.request_id == _HOME_REQUEST:
                if self._home is not None:
                    _settle(self._home)
                continue  # the gateway's own question
            out.append(packet.raw)
            if packet.type == sftp_proto.SSH_FXP_VERSION and self.up is not None:
                self._ask_home()
        if out:
            chan.write(b"".join(out))

    def _ask_home(self) -> None:
        """Learn the SFTP home directory, so relative paths are decided as absolute ones."""
        assert self.up is not None
        assert self._tracker is not None
        raw = sftp_proto.realpath_request(_HOME_REQUEST)
        self._tracker.on_request(sftp_proto.decode_request(
            sftp_proto.SftpFramer().feed(raw)[0]))
        loop = asyncio.get_running_loop()
        home = self._home
        if home is None:
            home = self._home = loop.create_future()
        self.up.write(raw)
        # A target that never answers must not hold the channel forever: paths
        # are then decided as outside the (unknown) home.
        loop.call_later(_HOME_TIMEOUT, _settle, home)

    def _file_event(self, ev: sftp_proto.FileEvent) -> None:
        data: dict[str, Any] = {
            "channel": self.id, "op": ev.op, "path": ev.path,
            "paths": [ev.path, ev.target] if ev.target else [ev.path],
            "bytes": ev.bytes_read + ev.bytes_written, "bytes_read": ev.bytes_read,
            "bytes_written": ev.bytes_written, "ok": ev.ok, "verdict": "allow"}
        if ev.op == "list_dir":
            data["entries"] = ev.entries
        if not ev.ok and ev.message:
            data["error"] = ev.message[:200]
        if not ev.complete:
            data["complete"] = False
        self.session.event("file", data)

    def _scp_feed(self, data: bytes) -> None:
        if self._scp is None or self._scp_broken:
            return
        try:
            for ev in self._scp.feed(data):
                if ev.kind == "file":
                    self.session.event("file", {
                        "channel": self.id, "op": self._scp_direction, "path": ev.path,
                        "paths": [ev.path], "bytes": ev.size, "ok": True, "verdict": "allow"})
        except scp_proto.ScpProtocolError as exc:
            # The target's scp judges its own protocol; the recording says what was lost.
            self._scp_broken = True
            self.session.event("file", {"channel": self.id, "op": self._scp_direction,
                                        "path": "", "paths": [], "bytes": 0, "ok": False,
                                        "verdict": "allow", "error": str(exc)[:200]})

    def _protocol_error(self, message: str) -> None:
        log.warning("session %s channel %d: %s", self.session.record.id, self.id, message)
        self.session.event("error", {"channel": self.id, "message": message})
        self._fail(f"pathwarden: {message}; the channel was closed (fail closed)")
        if self.up is not None:
            self.up.close()

    # -- target -> client ------------------------------------------------------------------

    def from_target(self, data: bytes, datatype: int | None) -> None:
        chan = self.chan
        if chan is None or self.mode == "closed":
            return
        self.session.record.bytes_to_client += len(data)
        mode = self.mode
        if mode == "sftp":
            if datatype is not None:  # the SFTP server's own stderr
                chan.write(data, datatype)
                return
            self._sftp_from_target(data)
            return
        if mode == "scp":
            chan.write(data, datatype)
            if self._scp_direction == "download" and datatype is None:
                self._scp_feed(data)
            return
        masker = self._maskers.get(datatype)
        if masker is None:
            self._emit(data, datatype)
            self._record_output(data, datatype)
            return
        # The recording gets whole lines masked as lines (no early release), so a
        # secret the program wrote in pieces is recorded masked whatever the timing.
        self._record_output(self._record_maskers[datatype].feed(data), datatype)
        out = masker.feed(data)
        if out:
            self._emit(out, datatype)
        if masker.held:
            if mode == "terminal" and _harmless(masker.pending):
                # Keystroke echo and prompts: nothing in them can be part of a secret.
                out = masker.release_partial()
                if out:
                    self._emit(out, datatype)
            elif self._flush_timer is None:
                self._flush_timer = asyncio.get_running_loop().call_later(
                    self._flush_delay, self._flush_partial, True)

    def _flush_partial(self, first: bool) -> None:
        """Output stopped arriving: release what is held, except a token-like tail.

        Without a terminal that tail waits for its line end (or the end of the
        output); on a terminal it is released ``ssh.output_flush_delay`` later,
        so a long word being typed still echoes.
        """
        self._flush_timer = None
        held = False
        for datatype, masker in self._maskers.items():
            out = masker.release_partial(_HOLD_RUN if first else 0)
            if out:
                self._emit(out, datatype)
            held = held or bool(masker.held)
        if held and first and self.mode == "terminal":
            delay = self.session.gateway.config.ssh.output_flush_delay.total_seconds()
            self._flush_timer = asyncio.get_running_loop().call_later(
                delay, self._flush_partial, False)

    def _emit(self, out: bytes, datatype: int | None) -> None:
        assert self.chan is not None
        self.chan.write(out, datatype)
        if self.mode == "terminal":
            self._tail = (self._tail + out[-_TAIL:].decode("utf-8", "replace"))[-_TAIL:]

    def _record_output(self, out: bytes, datatype: int | None) -> None:
        if not out:
            return
        stream = "stderr" if datatype == _STDERR else "stdout"
        decoder = self._decoders.get(stream)
        if decoder is None:
            decoder = self._decoders[stream] = _Utf8()
        text = decoder(out)
        if text:
            self.session.event("term_output", {"channel": self.id, "data": text,
                                               "stream": stream}, essential=False)

    def _flush_all(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        for datatype, masker in self._maskers.items():
            out = masker.flush()
            if out:
                self._emit(out, datatype)
            self._record_output(self._record_maskers[datatype].flush(), datatype)
            for name, n in self._record_maskers[datatype].counts.items():
                key = f"{'stderr' if datatype == _STDERR else 'stdout'}:{name}"
                self._masked[key] = n
        if self._input_line:
            self._record_line(self._input_line)
            self._input_line = ""

    def target_eof(self) -> None:
        self._flush_all()
        if self.chan is not None and self.mode != "closed":
            self.chan.write_eof()

    def target_closed(self, exc: Exception | None) -> None:
        self._flush_all()
        if self._tracker is not None:
            for ev in self._tracker.finish():
                self._file_event(ev)
            self._tracker = None
        chan = self.chan
        if chan is None or self.mode == "closed":
            self._finish(None)
            return
        error = None
        if exc is not None and self.exit_status is None and self.exit_signal is None:
            error = f"the connection to {self.session.connection.name} was lost: {exc}"
            self.notice(f"pathwarden: {error}")
        self._finish(error)
        self.mode = "closed"
        try:
            if self.exit_signal is not None:
                name, core, message = self.exit_signal
                chan.exit_with_signal(name, core, message)
            elif self.exit_status is not None:
                chan.exit(self.exit_status)
            elif error is not None:
                chan.exit(FAILED_EXIT_STATUS)
            else:
                chan.close()
        except (OSError, asyncssh.Error):
            chan.close()

    def _finish(self, error: str | None) -> None:
        """Record and audit how the channel ended (once)."""
        if self._finished or self._op is None or self._decision is None:
            return
        self._finished = True
        session = self.session
        signal = self.exit_signal[0] if self.exit_signal is not None else None
        session.event("exit", {
            "channel": self.id, "status": self.exit_status, "signal": signal,
            "core_dumped": bool(self.exit_signal and self.exit_signal[1]),
            "message": (self.exit_signal[2] if self.exit_signal else "") or (error or "")})
        if signal is not None:
            tag = f"signal {signal}"
        elif self.exit_status is not None:
            tag = f"exit {self.exit_status}"
        else:
            tag = None
        if self._op.kind != "sftp" or error is not None:
            session.audit(self._op, self._decision, self._started_at,
                          duration_ms=(time.monotonic() - self._t0) * 1000, tag=tag,
                          error=error, masked=self._masked or None)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _UpstreamSide(asyncssh.SSHClientSession):  # type: ignore[type-arg]
    """The target side of one channel: hands everything to its :class:`ChannelRelay`."""

    def __init__(self, relay: ChannelRelay) -> None:
        self.relay = relay

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self.relay.from_target(data, datatype)

    def eof_received(self) -> bool:
        self.relay.target_eof()
        return True

    def exit_status_received(self, status: int) -> None:
        self.relay.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str,
                             lang: str) -> None:
        self.relay.exit_signal = (signal, core_dumped, msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.target_closed(exc)

    def pause_writing(self) -> None:
        self.relay.pause_client("target-full")

    def resume_writing(self) -> None:
        self.relay.resume_client("target-full")


# A partial line released at once on a terminal: short, and no run of characters a
# token, key or password could be made of.
_TOKENISH = re.compile(rb"[A-Za-z0-9+/=_.~:@-]{12}")
_HARMLESS_MAX = 64


def _harmless(partial: bytes) -> bool:
    return len(partial) <= _HARMLESS_MAX and _TOKENISH.search(partial) is None


# What an accepted environment value may look like: a locale name or a plain word.
# Anything else is dropped: bash evaluates some values as code (arithmetic on a
# variable, subscripts), and a locale with another multibyte encoding would make
# the host's shell read backslashes differently from the classifier.
_SAFE_ENV_VALUE = re.compile(r"[A-Za-z0-9_.,:/+-]{0,256}")
_SAFE_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_LOCALE_NAME = re.compile(r"LANG|LANGUAGE|LC_[A-Z_]+")
_LOCALE_VALUE = re.compile(
    r"(?:C|POSIX|C\.UTF-8|C\.utf8|[A-Za-z]{2,3}(?:_[A-Z]{2})?(?:\.(?:UTF-8|utf8))?(?:@[a-z]+)?)")


def _accepted_env(env: Any, patterns: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in dict(env).items():
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        if not _SAFE_ENV_NAME.fullmatch(name) or not any(
                fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        pattern = _LOCALE_VALUE if _LOCALE_NAME.fullmatch(name) else _SAFE_ENV_VALUE
        if pattern.fullmatch(text):
            out[name] = text
    return out


def _scp_request(command: str) -> tuple[str, tuple[str, ...], set[str]] | None:
    """(upload|download, paths, flags) when ``command`` is a plain legacy scp server run."""
    actions = classify_command(command)
    if len(actions) != 1:
        return None
    (action,) = actions
    if action.kind != "command" or action.flags or action.names("programs") != ("scp",):
        return None
    try:
        parsed = scp_proto.parse_scp_command_line(command)
    except Exception:  # an scp line its parser cannot read: an ordinary command then
        return None
    if parsed is None:
        return None
    flags = {"recursive"} if parsed.recursive else set()
    return parsed.direction, tuple(parsed.targets), flags
