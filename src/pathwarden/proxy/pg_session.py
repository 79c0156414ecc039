"""The relay of one established PostgreSQL session.

Theory of operation: the client leg's bytes go through a
:class:`ServerConnection` (so only messages that parsed are ever forwarded);
each statement-bearing message (Query, Parse, FunctionCall) becomes an
:class:`Operation` and is decided by the :class:`Pipeline`. Allowed messages
are forwarded as the exact bytes the client sent. A denied one is replaced by
a message the server is certain to reject without side effects (a syntax
error, or a call of function OID 0), so the server fails it and enters the
same state the client expects after an error (transaction aborted, extended
protocol skipping to Sync); the server's error for it is then rewritten into
pathwarden's SQLSTATE 42501 message. A decision that is not immediately
available (an approval) holds the session: reading from the client stops,
later messages wait in the frame buffer in order, and everything resumes when
the decision arrives.

Server bytes go through a :class:`ClientConnection` and a
:class:`ResponseTracker`, which attributes rows, command tags and errors to
the statements in flight; completed statements become audit records.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from ..model import (
    ConnectionRef,
    Decision,
    Identity,
    Operation,
    Protocol,
    SessionRecord,
    StatementRecord,
    Verdict,
)
from ..policy.sql import SqlContext
from ..policy.sql_params import param_columns
from ..protocols.postgres import messages as m
from ..protocols.postgres.connection import NEED_DATA, ClientConnection, ServerConnection
from ..protocols.postgres.errors import ProtocolError
from ..protocols.postgres.tracker import ResponseTracker, Tracked, Unit
from ..protocols.postgres.values import BYTEA, JSONB, render_binary
from .pg_masking import TEXT_LIKE_BINARY, UNKNOWN_BINARY, MaskFailure, PgMasker, plan_for
from .pg_sql_state import LEXING_PARAMETERS, SqlState
from .pg_upstream import UpstreamTarget, send_cancel
from .pipeline import Pipeline
from .recorder import SessionRecording
from .stream import Leg

log = logging.getLogger(__name__)

INSUFFICIENT_PRIVILEGE = "42501"
# A statement the server rejects in its parser, before touching anything.
_DENIED_SQL = "pathwarden_denied"
# A portal name no client uses: executing it fails without side effects.
_DENIED_PORTAL = "pathwarden denied portal"
_HOLD_BUFFER = 1024 * 1024  # client bytes kept while a statement is held
_MAX_AUDIT_PARAM = 1024
_MAX_AUDIT_TEXT = 64 * 1024
_DATA_ROW = ord(m.DataRow.TYPE)
_ERROR = ord(m.ErrorResponse.TYPE)
_PARAMETER_STATUS = ord(m.ParameterStatus.TYPE)
_PARAMETER_DESCRIPTION = ord(m.ParameterDescription.TYPE)
_READY = ord(m.ReadyForQuery.TYPE)
_NOTICE = ord(m.NoticeResponse.TYPE)
_NOTIFICATION = ord(m.NotificationResponse.TYPE)
_NO_DATA = ord(m.NoData.TYPE)
_ROW_DESCRIPTION = ord(m.RowDescription.TYPE)
_COPY_OUT = ord(m.CopyOutResponse.TYPE)
_COPY_DATA = ord(m.CopyData.TYPE)
_COPY_DONE = ord(m.CopyDone.TYPE)
_AUDIT_CACHE = 1024  # masked statement texts kept for the audit trail
# Tasks that outlive their session (a cancel sent after the client left).
_BACKGROUND: set[asyncio.Task[None]] = set()
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


@dataclass(slots=True, eq=False)
class _Prepared:
    text: str
    op: Operation
    decision: Decision
    param_types: tuple[int, ...] = ()
    # The search_path it was classified under: the server re-analyses a prepared
    # statement when search_path changes, so the gateway re-decides it then.
    search_path: tuple[str, ...] | None = None
    # Its result columns, from the server's answer to a Describe of it (masking).
    description: m.RowDescription | None = None
    describing: bool = False  # a Describe of it is on its way to the server
    # Set once the one execution a one-time approval allowed has been used.
    spent: Decision | None = None


@dataclass(slots=True, eq=False)
class _Portal:
    statement: str
    prepared: _Prepared | None  # what the server bound, captured at Bind
    params: tuple[str | None, ...]
    # The server plans a portal at Bind: the context it was bound under.
    ctx: SqlContext | None = None
    result_formats: tuple[int, ...] = ()
    # Its result columns, from the server's answer to a Describe of it (masking).
    description: m.RowDescription | None = None
    describing: bool = False  # a Describe of it is on its way to the server


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# The audit's cut moves up to this far past its limit, to the end of the word it
# falls in, so that a secret is never split by the cut (and then missed by masking).
_MASK_MARGIN = 4096
_WORD_END = re.compile(r"[\s'\",;()]")


def _cut_point(text: str, limit: int) -> int:
    """Where to cut ``text`` near ``limit``: after the word the limit falls in."""
    if len(text) <= limit:
        return len(text)
    end = _WORD_END.search(text, limit, limit + _MASK_MARGIN)
    return end.start() if end is not None else limit + _MASK_MARGIN


class PgSession:
    """Relays one authenticated client to its upstream server."""

    def __init__(
        self,
        *,
        record: SessionRecord,
        identity: Identity,
        connection: ConnectionRef,
        client: Leg,
        front: ServerConnection,
        upstream: Leg,
        back: ClientConnection,
        target: UpstreamTarget,
        upstream_key: m.BackendKeyData | None,
        pipeline: Pipeline,
        on_end: Callable[[PgSession], None],
        masker: PgMasker | None = None,
        recording: SessionRecording | None = None,
    ) -> None:
        self.record = record
        self.identity = identity
        self.connection = connection
        self.client = client
        self.front = front
        self.upstream = upstream
        self.back = back
        self.target = target
        self.upstream_key = upstream_key
        self.pipeline = pipeline
        self.audit = pipeline.audit
        self._on_end = on_end
        # None: masking is off for this session (masking.enabled: false).
        self.masker = masker
        # None: recording is off (recording.enabled: false).
        self.recording = recording
        # The approval request a held statement waits for (a cancel withdraws it).
        self.pending_approval: int | None = None
        self._masked_texts: dict[str, str] = {}
        self._sensitive_texts: dict[str, bool] = {}
        self.tracker = ResponseTracker()
        self._seq = 0
        self._statements: dict[str, _Prepared] = {}
        self._portals: dict[str, _Portal] = {}
        self._holding = False
        self._client_write_paused = False
        self._ended = False
        self._hold_task: asyncio.Task[None] | None = None
        self.server_parameters: dict[str, str] = {}
        # How the server reads SQL in this session (search_path, PREPAREd names,
        # lexing settings): what the classifier needs to read it the same way.
        self.sql = SqlState(self.server_parameters, target.user)
        self._tx_status = "I"
        self._pending_binds: dict[str, _Portal] = {}
        self.closed = asyncio.get_running_loop().create_future()

    # -- wiring ---------------------------------------------------------------

    def start(self, client_leftover: bytes, upstream_leftover: bytes) -> None:
        """Switch both legs to the relay callbacks."""
        self.client.on_data = self.on_client_data
        self.client.on_lost = self._client_lost
        self.client.on_pause = self._client_write_full
        self.client.on_resume = self._client_write_ok
        self.upstream.on_data = self.on_server_data
        self.upstream.on_lost = self._upstream_lost
        self.upstream.on_pause = self._upstream_write_full
        self.upstream.on_resume = self._upstream_write_ok
        if self.client.is_closed:
            self._client_lost(None)
            return
        if self.upstream.is_closed:
            self._upstream_lost(None)
            return
        if client_leftover or self.front.buffered:
            self.on_client_data(client_leftover)
        if upstream_leftover:
            self.on_server_data(upstream_leftover)
        elif self.back.buffered:
            self.on_server_data(b"")

    # -- flow control -----------------------------------------------------------

    def _client_write_full(self) -> None:
        t = self.upstream.transport
        if t is not None:
            t.pause_reading()

    def _client_write_ok(self) -> None:
        t = self.upstream.transport
        if t is not None and not t.is_closing():
            t.resume_reading()

    def _upstream_write_full(self) -> None:
        self._client_write_paused = True
        self._update_client_reading()

    def _upstream_write_ok(self) -> None:
        self._client_write_paused = False
        self._update_client_reading()

    def _update_client_reading(self) -> None:
        t = self.client.transport
        if t is None or t.is_closing():
            return
        # While a statement is held, keep reading (into the frame buffer, in order)
        # so that a client going away is noticed; stop only past a bound.
        if self._client_write_paused or (self._holding and self.front.buffered > _HOLD_BUFFER):
            t.pause_reading()
        else:
            t.resume_reading()

    # -- client -> server -------------------------------------------------------

    def on_client_data(self, data: bytes) -> None:
        self.record.bytes_from_client += len(data)
        self.front.receive_data(data)
        if not self._holding:
            self._drain_client()
        elif self.front.buffered > _HOLD_BUFFER:
            self._update_client_reading()

    def _drain_client(self) -> None:
        out: list[bytes] = []
        front = self.front
        try:
            while not self._holding:
                ev = front.next_event()
                if ev is NEED_DATA:
                    break
                self._handle_client(ev, out)  # type: ignore[arg-type]
        except ProtocolError as exc:
            if out:
                self.upstream.write(b"".join(out))
            self._client_protocol_error(exc)
            return
        if out:
            self.upstream.write(b"".join(out))

    def _handle_client(self, ev: m.Message, out: list[bytes]) -> None:
        cls = type(ev)
        if cls is m.Query:
            self._statement(ev, "query", ev.text, out)  # type: ignore[attr-defined]
        elif cls is m.Parse:
            self._statement(ev, "parse", ev.query, out)  # type: ignore[attr-defined]
        elif cls is m.Bind:
            self._bind(ev, out)  # type: ignore[arg-type]
        elif cls is m.Execute:
            self._execute(ev, out)  # type: ignore[arg-type]
        elif cls is m.Sync:
            out.append(ev.raw)
            self.tracker.expect(Unit.SYNC)
        elif cls is m.Describe:
            out.append(ev.raw)
            assert isinstance(ev, m.Describe)
            # What the answer describes is what the name means *now*, in message
            # order (a later pipelined Parse or Bind may reuse the name): capture it.
            # A statement's ParameterDescription tells the types of its binary
            # parameters (asyncpg Parses without types), kept for the audit; the
            # RowDescription names the result columns, for masking.
            target: _Prepared | _Portal | None
            if ev.kind == "S":
                target = self._statements.get(ev.name)
            else:
                target = self._pending_binds.get(ev.name) or self._portals.get(ev.name)
            if target is not None:
                target.describing = True
            self.tracker.expect(Unit.DESCRIBE, Tracked(
                0, "describe" if ev.kind == "S" else "describe_portal", ev.name,
                extra={"target": target}))
        elif cls is m.Close:
            self._close(ev, out)  # type: ignore[arg-type]
        elif cls is m.FunctionCall:
            oid = ev.function_oid  # type: ignore[attr-defined]
            self._statement(ev, "function_call", f"<function call oid {oid}>", out)
        elif cls is m.Terminate:
            out.append(ev.raw)
            self.upstream.write(b"".join(out))
            out.clear()
            self.end("client terminated")
        else:  # CopyData, CopyDone, CopyFail, Flush: no response of their own
            out.append(ev.raw)

    def _statement(self, ev: m.Message, kind: str, text: str, out: list[bytes]) -> None:
        self._seq += 1
        op = Operation(
            session_id=self.record.id, seq=self._seq, identity=self.identity,
            connection=self.connection, protocol=Protocol.POSTGRES, kind=kind, text=text,
        )
        op, result = self.pipeline.decide(op, self._context())
        if isinstance(result, Decision):
            self._apply(ev, op, result, out)
            return
        # Hold: flush what precedes, stop reading, resume when decided.
        if out:
            self.upstream.write(b"".join(out))
            out.clear()
        self._holding = True
        self._update_client_reading()
        self._hold_task = asyncio.get_running_loop().create_task(self._await(ev, op, result))

    async def _await(self, ev: m.Message, op: Operation, pending: Awaitable[Decision]) -> None:
        try:
            decision = await pending
        except asyncio.CancelledError:
            return
        if self._ended:
            return
        out: list[bytes] = []
        self._apply(ev, op, decision, out)
        if out:
            self.upstream.write(b"".join(out))
        self._holding = False
        self._hold_task = None
        self._update_client_reading()
        self._drain_client()

    def _context(self) -> SqlContext | None:
        return self.sql.for_statement(self.pipeline.classifier, bool(len(self.tracker)))

    def _ran(self, op: Operation, text: str, tracked: Tracked | None) -> None:
        """An allowed statement goes to the server: advance the session's SQL context."""
        before = self.sql.ran(op, text)
        if before is not None and tracked is not None and tracked.extra is None:
            tracked.extra = {"ctx_before": before}

    def _apply(self, ev: m.Message, op: Operation, decision: Decision, out: list[bytes]) -> None:
        cls = type(ev)
        if cls is not m.Parse or decision.verdict is not Verdict.ALLOW:
            # What runs now (a Parse runs at its Execute) is recorded before it is sent.
            decision = self._write_ahead(op, decision, op.text, ())
        tracked = Tracked(op.seq, op.kind, op.text,
                          context=(time.monotonic(), datetime.now(UTC), op, decision))
        allowed = decision.verdict is Verdict.ALLOW
        if not allowed:
            tracked.denial = self._denial(op, decision)
        if cls is m.Query:
            out.append(ev.raw if allowed else m.Query(text=_DENIED_SQL).encode())
            if allowed:
                self._ran(op, op.text, tracked)
            self.tracker.expect(Unit.QUERY, tracked)
        elif cls is m.Parse:
            assert isinstance(ev, m.Parse)
            ctx_now = self._context()
            installed = _Prepared(ev.query, op, decision, ev.param_types,
                                  ctx_now.search_path if ctx_now else None)
            tracked.extra = {"name": ev.name, "previous": self._statements.get(ev.name),
                             "installed": installed}
            self._statements[ev.name] = installed
            out.append(ev.raw if allowed else m.Parse(name=ev.name, query=_DENIED_SQL).encode())
            self.tracker.expect(Unit.PARSE, tracked)
        else:  # FunctionCall
            out.append(ev.raw if allowed else m.FunctionCall(function_oid=0).encode())
            self.tracker.expect(Unit.FUNCTION, tracked)

    def _write_ahead(self, op: Operation, decision: Decision, text: str,
                     params: tuple[str | None, ...]) -> Decision:
        """Record the operation and its decision; refuse it if that fails (strict mode)."""
        recording = self.recording
        if recording is None:
            return decision
        refusal = recording.operation(op, decision, self._audit_text(text), params)
        if refusal is None or decision.verdict is not Verdict.ALLOW:
            return decision
        return Decision(Verdict.DENY, refusal, policy=decision.policy)

    def _denial(self, op: Operation, decision: Decision) -> m.ErrorResponse:
        what = {"query": "statement", "parse": "statement",
                "function_call": "function call"}.get(op.kind, op.kind)
        rule = f", rule {decision.rule}" if decision.rule else ""
        by = f" (policy {decision.policy}{rule})" if decision.policy else ""
        audit = f"session {self.record.id}, seq {op.seq}"
        if decision.verdict is Verdict.APPROVE:
            # Only where waiting is impossible (a prepared statement re-checked at
            # Execute); elsewhere the approval gate holds the statement instead.
            message = (f"pathwarden: {what} requires approval for identity "
                       f"{self.identity.name} on connection {self.connection.name}{by}: "
                       f"{decision.reason}")
            hint = ("the statement was not executed; prepare it again, or ask ahead with: "
                    f"pathwarden request --connection {self.connection.name} ({audit})")
        else:
            message = (f"pathwarden: {what} denied for identity {self.identity.name} on "
                       f"connection {self.connection.name}{by}: {decision.reason}")
            hint = f"the statement was not executed; the denial is in the audit trail ({audit})"
        return m.ErrorResponse.build(INSUFFICIENT_PRIVILEGE, message,
                                     detail=f"statement: {self._audit_text(op.text, 500)}",
                                     hint=hint)

    def _render_param(self, value: bytes | None, fmt: int, type_oid: int,
                      column: str | None) -> str | None:
        """A bind parameter as the audit trail shows it: masked, then cut."""
        if value is None:
            return None
        window = value[:_MAX_AUDIT_PARAM + _MASK_MARGIN]
        cut = False
        masker = self.masker
        if fmt == 0 or (type_oid in TEXT_LIKE_BINARY and type_oid != BYTEA):
            if fmt != 0 and type_oid == JSONB and window[:1] == b"\x01":
                window = window[1:]
            text = window.decode("utf-8", "replace")
            point = _cut_point(text, _MAX_AUDIT_PARAM)
            cut = point < len(text) or len(value) > len(window)
            text = text[:point]
        else:
            text = render_binary(type_oid, window)
            if masker is not None and text.startswith("\\x"):
                # Shown as hex, which no detector reads: look at the bytes themselves.
                found = masker.engine.mask(window)
                if found.changed:
                    return "[MASKED:" + ",".join(sorted(found.counts)) + "]"
            if len(text) > _MAX_AUDIT_PARAM:
                text, cut = text[:_MAX_AUDIT_PARAM], True
        if masker is not None:
            if column is not None and masker.engine.is_sensitive_key(column):
                text = masker.engine.mask_value(text.encode(), column).data.decode(
                    "utf-8", "replace")
            else:
                text = masker.engine.mask_text(text)[0]
        return f"{text}... ({len(value)} bytes)" if cut else text

    def _bind(self, ev: m.Bind, out: list[bytes]) -> None:
        prepared = self._statements.get(ev.statement)
        types = prepared.param_types if prepared is not None else ()
        columns = param_columns(prepared.text) if prepared is not None else {}
        params = tuple(
            self._render_param(v, ev.param_format(i), types[i] if i < len(types) else 0,
                               columns.get(i + 1))
            for i, v in enumerate(ev.params)
        )
        portal = _Portal(ev.statement, prepared, params, self._context(),
                         ev.result_formats)
        # Bound when the server confirms it: a failed Bind leaves the old portal.
        self._pending_binds[ev.portal] = portal
        out.append(ev.raw)
        self.tracker.expect(Unit.BIND, Tracked(0, "bind", ev.portal, extra={"portal": portal}))

    def _execute(self, ev: m.Execute, out: list[bytes]) -> None:
        # A pipelined Bind not yet confirmed is what this Execute will run if it succeeds
        # (if it fails, the server skips this Execute).
        portal = self._pending_binds.get(ev.portal) or self._portals.get(ev.portal)
        prepared = portal.prepared if portal is not None else None
        if prepared is not None and not prepared.decision.allowed:
            # A denied statement. Within its Sync the server skips this Execute (the
            # Parse failed), but after a Sync a portal of that name may hold an
            # *older* statement the server kept: never let the client's Execute
            # through, send one that is certain to fail.
            out.append(m.Execute(portal=_DENIED_PORTAL).encode())
            self.tracker.expect(Unit.EXECUTE)
            return
        self._seq += 1
        params = portal.params if portal is not None else ()
        if prepared is None:
            self._execute_unknown(ev, portal, params, out)
            return
        op, decision = prepared.op, prepared.decision
        ctx = portal.ctx if portal is not None else None
        if ctx is not None and prepared.search_path not in (None, ctx.search_path):
            # The server planned it at Bind under another search_path: decide again.
            op, decision = self._redecide(op, ctx, decision.policy)
        decision = self._spend(prepared, decision)
        decision = self._write_ahead(replace(op, seq=self._seq, kind="execute"), decision,
                                     prepared.text, params)
        tracked = Tracked(self._seq, "execute", prepared.text, params,
                          context=(time.monotonic(), datetime.now(UTC), op, decision),
                          columns=portal)
        if decision.verdict is Verdict.ALLOW:
            self._describe_for_masking(ev, portal, tracked, out)
            out.append(ev.raw)
            self._ran(op, prepared.text, tracked)
        else:
            # No such portal: the server fails it, and the error becomes the denial.
            tracked.denial = self._denial(op, decision)
            out.append(m.Execute(portal=_DENIED_PORTAL).encode())
        self.tracker.expect(Unit.EXECUTE, tracked)

    @staticmethod
    def _spend(prepared: _Prepared, decision: Decision) -> Decision:
        """An approval allows one execution of a prepared statement; a grant, until it ends."""
        if prepared.spent is not None:
            return prepared.spent
        if decision.verdict is not Verdict.ALLOW:
            return decision
        if decision.until is not None and datetime.now(UTC) >= decision.until:
            return Decision(Verdict.DENY, f"{decision.reason}; that grant ended at "
                            f"{decision.until:%Y-%m-%d %H:%M:%SZ}: prepare the statement again",
                            policy=decision.policy, rule=decision.rule)
        if decision.once:
            # Later executions of this prepared statement are not covered.
            prepared.spent = Decision(
                Verdict.DENY, f"{decision.reason}, and that approval was for one execution; "
                "prepare the statement again to ask for another", policy=decision.policy,
                rule=decision.rule)
        return decision

    def _execute_unknown(self, ev: m.Execute, portal: _Portal | None,
                         params: tuple[str | None, ...], out: list[bytes]) -> None:
        """An Execute of something the gateway did not Parse: record it all the same.

        Only statements the gateway allowed can exist on the server (its own
        Parse, or SQL-level PREPARE, which is decided like the statement it
        prepares); anything else makes the server fail the Execute.
        """
        name = portal.statement if portal is not None else None
        ctx = self.sql.ctx
        stored = ctx.prepared.get(name) if ctx is not None and name else None
        if stored and stored[0].text and portal is not None and portal.ctx is not None:
            # A statement made by SQL PREPARE, run through the protocol: decide it
            # like an EXECUTE of it, under the context it was bound in.
            text = stored[0].text
            op = Operation(session_id=self.record.id, seq=self._seq, identity=self.identity,
                           connection=self.connection, protocol=Protocol.POSTGRES,
                           kind="execute", text=f"EXECUTE {_quote_ident(name or '')}")
            op, decision = self._redecide(op, portal.ctx, None)
            decision = self._write_ahead(op, decision, text, params)
            tracked = Tracked(self._seq, "execute", text, params,
                              context=(time.monotonic(), datetime.now(UTC), op, decision),
                              columns=portal)
            if decision.verdict is Verdict.ALLOW:
                self._describe_for_masking(ev, portal, tracked, out)
                out.append(ev.raw)
            else:
                tracked.denial = self._denial(op, decision)
                out.append(m.Execute(portal=_DENIED_PORTAL).encode())
            self.tracker.expect(Unit.EXECUTE, tracked)
            return
        if stored:
            text = f"<statement {name} prepared with SQL PREPARE>"
            reason = "prepared with SQL PREPARE, which was decided like this statement"
        else:
            text = (f"<unknown statement {name!r}>" if portal is not None
                    else f"<unknown portal {ev.portal!r}>")
            reason = "not prepared through the gateway; the server rejects it"
        op = Operation(session_id=self.record.id, seq=self._seq, identity=self.identity,
                       connection=self.connection, protocol=Protocol.POSTGRES, kind="execute",
                       text=text, actions=stored or ())
        decision = self._write_ahead(op, Decision(Verdict.ALLOW, reason), text, params)
        if decision.verdict is not Verdict.ALLOW:
            tracked = Tracked(self._seq, "execute", text, params,
                              context=(time.monotonic(), datetime.now(UTC), op, decision))
            tracked.denial = self._denial(op, decision)
            out.append(m.Execute(portal=_DENIED_PORTAL).encode())
            self.tracker.expect(Unit.EXECUTE, tracked)
            return
        tracked = Tracked(self._seq, "execute", text, params,
                          context=(time.monotonic(), datetime.now(UTC), op, decision),
                          columns=portal)
        self._describe_for_masking(ev, portal, tracked, out)
        out.append(ev.raw)
        self.tracker.expect(Unit.EXECUTE, tracked)

    def _describe_for_masking(self, ev: m.Execute, portal: _Portal | None, tracked: Tracked,
                              out: list[bytes]) -> None:
        """Make sure the columns of what ``ev`` runs are known before its rows arrive.

        Column rules and binary formats need the result's RowDescription. When
        no Describe of the portal or its statement was sent (a driver that
        cached the description, a SQL cursor run with Execute), the gateway
        sends its own Describe of the portal ahead of the Execute and keeps
        the answer from the client.
        """
        if self.masker is None:
            return
        if portal is not None and (portal.description is not None or portal.describing):
            return
        prepared = portal.prepared if portal is not None else None
        if prepared is not None and (prepared.description is not None or prepared.describing):
            return
        target = portal if portal is not None else _Portal("", None, ())
        target.describing = True
        tracked.columns = target
        out.append(m.Describe(kind="P", name=ev.portal).encode())
        self.tracker.expect(Unit.DESCRIBE, Tracked(0, "describe_injected", ev.portal,
                                                   extra={"target": target}))

    def _redecide(self, op: Operation, ctx: SqlContext,
                  policy: str | None) -> tuple[Operation, Decision]:
        """Decide ``op`` again under ``ctx``; no waiting is possible at this point."""
        op, result = self.pipeline.decide(replace(op, seq=self._seq), ctx)
        if isinstance(result, Decision):
            return op, result
        close = getattr(result, "close", None)
        if close is not None:
            close()  # never awaited: don't leave a coroutine (or a request) pending
        return op, Decision(Verdict.DENY, "re-checking a prepared statement under a new "
                            "search_path cannot wait for a decision; prepare it again",
                            policy=policy)

    def _close(self, ev: m.Close, out: list[bytes]) -> None:
        # Applied when the server confirms it: a Close skipped after an error closes nothing.
        target = (self._statements if ev.kind == "S" else self._portals).get(ev.name)
        tracked = Tracked(0, "close", ev.name, extra={"kind": ev.kind, "target": target})
        out.append(ev.raw)
        self.tracker.expect(Unit.CLOSE, tracked)

    # -- server -> client ---------------------------------------------------------

    def on_server_data(self, data: bytes) -> None:
        back = self.back
        if data:
            back.receive_data(data)
        try:
            chunk, starts = back.read_frames()
            if not starts:
                return
            out = self._relay_frames(chunk, starts)
        except MaskFailure as exc:
            log.error("session %s: response not masked, session ended: %s", self.record.id, exc)
            self._fatal("XX000", f"pathwarden: a response on connection {self.connection.name} "
                        f"could not be masked safely, so it was withheld and the session "
                        f"ended: {exc}")
            self.end("masking failed (fail closed)")
            return
        except ProtocolError as exc:
            log.error("session %s: invalid data from upstream %s: %s", self.record.id,
                      self.target.address, exc.message)
            self._fatal(exc.sqlstate, f"pathwarden: invalid response from connection "
                        f"{self.connection.name}: {exc.message}")
            self.end(f"upstream protocol error: {exc.message}")
            return
        if self.sql.unsettled and not len(self.tracker):
            self.sql.settle()
        self.record.bytes_to_client += len(out)
        self.client.write(out)

    def _relay_frames(self, chunk: bytes, starts: list[int]) -> bytes:
        """Track every frame; return the bytes for the client (``chunk`` unless rewritten)."""
        tracker = self.tracker
        view = memoryview(chunk)
        last = len(starts) - 1
        edits: list[tuple[int, int, bytes]] | None = None
        masker = self.masker
        recording = self.recording
        if masker is not None:
            masker.begin_chunk(chunk)
        for i, s in enumerate(starts):
            t = chunk[s]
            if t == _READY:
                self._tx_status = chr(chunk[s + 5])
            elif t == _DATA_ROW:
                head = tracker.head()
                if head is not None:
                    head.pending_rows += 1
                sampling = recording is not None and head is not None and (
                    head.sample is None or len(head.sample) < recording.sample_rows)
                if masker is None and not sampling:
                    continue
                e = starts[i + 1] if i < last else len(chunk)
                row = None
                if masker is not None:
                    row = self._mask_row(masker, head, view[s + 5 : e], masker.hit(s, e))
                    if row is not None:
                        edits = edits or []
                        edits.append((s, e, row))
                if sampling:
                    assert head is not None
                    self._sample(head, row[5:] if row is not None else view[s + 5 : e])
                continue
            e = starts[i + 1] if i < last else len(chunk)
            body = view[s + 5 : e]
            if masker is not None and t != _READY:
                replacement = self._mask_frame(masker, t, body, tracker.head(),
                                               masker.hit(s, e))
                if replacement is not None:
                    edits = edits or []
                    edits.append((s, e, replacement))
            if t == _ERROR:
                head = tracker.head()
                if head is not None and head.denial is not None:
                    edits = edits or []
                    if edits and edits[-1][0] == s:
                        edits.pop()
                    edits.append((s, e, head.denial.encode()))
            elif t == _PARAMETER_STATUS:
                ps = m.ParameterStatus.decode(bytes(view[s + 5 : e]))
                self.server_parameters[ps.name] = ps.value
                if ps.name in LEXING_PARAMETERS:
                    self.sql.lexing_reported(ps.name, ps.value)
            elif t == _PARAMETER_DESCRIPTION:
                head = tracker.head()
                if head is not None and head.kind == "describe" and head.extra is not None:
                    prepared = head.extra["target"]
                    if prepared is not None:
                        desc = m.ParameterDescription.decode(bytes(view[s + 5 : e]))
                        prepared.param_types = desc.type_oids
            done = tracker.on_frame(t, body)
            for tracked in done:
                self._completed(tracked)
        if edits is None:
            return chunk
        parts: list[bytes] = []
        pos = 0
        for s, e, replacement in edits:
            parts.append(chunk[pos:s])
            parts.append(replacement)
            pos = e
        parts.append(chunk[pos:])
        return b"".join(parts)

    # -- masking ------------------------------------------------------------------

    def _mask_row(self, masker: PgMasker, head: Tracked | None, payload: memoryview,
                  hit: bool) -> bytes | None:
        columns = head.columns if head is not None else None
        if type(columns) is _Portal:
            assert head is not None
            columns = head.columns = self._plan_of(masker, columns)
        plan, forced = columns if columns is not None else (None, False)
        if not hit and not forced:
            return None
        counts: dict[str, int] = {}
        row = masker.data_row(payload, plan, hit, counts)
        if counts and head is not None:
            self._count(head, counts)
        return row

    @staticmethod
    def _plan_of(masker: PgMasker, portal: _Portal) -> tuple[Any, bool] | None:
        if portal.description is not None:
            plan = plan_for(masker.engine, portal.description)
        elif portal.prepared is not None and portal.prepared.description is not None:
            plan = plan_for(masker.engine, portal.prepared.description, portal.result_formats)
        elif any(portal.result_formats):
            # Columns unknown and some may be binary: a secret in one cannot be
            # rewritten safely, so it ends the session (fail closed).
            return UNKNOWN_BINARY, False
        else:
            return None
        return plan, any(col.sensitive for col in plan)

    def _mask_frame(self, masker: PgMasker, t: int, body: memoryview,
                    head: Tracked | None, hit: bool) -> bytes | None:
        """The masked form of a non-DataRow frame (b"" drops it), or None to forward it."""
        counts: dict[str, int] = {}
        out: bytes | None = None
        if t == _ROW_DESCRIPTION:
            if head is not None:
                out = self._row_description(masker, head, m.RowDescription.decode(bytes(body)),
                                            hit, counts)
        elif t == _NO_DATA:
            if head is not None and head.kind == "describe_injected":
                out = b""  # the answer to the gateway's own Describe
        elif t == _COPY_DATA and masker.copying:
            out = masker.copy_data(body)
        elif t == _COPY_OUT:
            masker.copy_out(body)
        elif t in (_NOTICE, _ERROR):
            # An error ends a COPY: what the stream still holds goes out before it.
            prefix = masker.copy_end(counts) if t == _ERROR and masker.copying else b""
            out = masker.fields_message(bytes((t,)), body, counts,
                                        self._touches_sensitive(masker, head))
            if prefix:
                if out is None:
                    out = bytes((t,)) + (len(body) + 4).to_bytes(4, "big") + bytes(body)
                out = prefix + out
        elif t == _COPY_DONE and masker.copying:
            out = masker.copy_end(counts) + b"c\x00\x00\x00\x04"
        elif hit and t in (_NOTIFICATION, _PARAMETER_STATUS):
            # set_config() and NOTIFY echo values back: a way around row masking.
            out = masker.text_fields(bytes((t,)), body, counts)
        if counts and head is not None:
            self._count(head, counts)
        return out

    def _row_description(self, masker: PgMasker, head: Tracked, desc: m.RowDescription,
                         hit: bool, counts: dict[str, int]) -> bytes | None:
        if head.kind in ("describe", "describe_portal", "describe_injected"):
            target = head.extra.get("target") if head.extra is not None else None
            if isinstance(target, _Portal | _Prepared):
                target.description = desc
                target.describing = False
                if isinstance(target, _Portal) and target.prepared is not None:
                    # Later Binds of the statement re-apply their own result formats.
                    target.prepared.description = desc
            if head.kind == "describe_injected":
                return b""
        else:
            plan = plan_for(masker.engine, desc)
            head.columns = (plan, any(col.sensitive for col in plan))
        return masker.row_description(desc, counts) if hit else None

    def _touches_sensitive(self, masker: PgMasker, head: Tracked | None) -> bool:
        """Whether the statement being answered names a column masked whole."""
        if head is None:
            return False
        columns = head.columns
        if type(columns) is tuple and columns[1]:
            return True
        text = head.text
        known = self._sensitive_texts.get(text)
        if known is None:
            known = any(masker.engine.is_sensitive_key(word)
                        for word in set(_IDENTIFIER.findall(text[:_MAX_AUDIT_TEXT])))
            if len(self._sensitive_texts) >= _AUDIT_CACHE:
                self._sensitive_texts.clear()
            self._sensitive_texts[text] = known
        return known

    @staticmethod
    def _count(head: Tracked, counts: dict[str, int]) -> None:
        masked = head.masked
        if masked is None:
            head.masked = counts
            return
        for key, n in counts.items():
            masked[key] = masked.get(key, 0) + n

    def _audit_text(self, text: str, limit: int = _MAX_AUDIT_TEXT) -> str:
        """``text`` cut near ``limit`` (never inside a word), then masked."""
        point = _cut_point(text, limit)
        if point < len(text):
            text = text[:point]
            suffix = "..."
        else:
            suffix = ""
        masker = self.masker
        if masker is None:
            return text + suffix
        cached = self._masked_texts.get(text)
        if cached is None:
            cached, _ = masker.engine.mask_text(text)
            if len(text) <= 4096:  # statements repeat; huge texts are not worth keeping
                if len(self._masked_texts) >= _AUDIT_CACHE:
                    self._masked_texts.clear()
                self._masked_texts[text] = cached
        return cached + suffix

    def _sample(self, head: Tracked, payload: bytes | memoryview) -> None:
        """Keep one (masked) row of the result for the recording, within its byte budget."""
        assert self.recording is not None
        if head.sample is None:
            head.sample = []
        budget = self.recording.sample_bytes - sum(
            len(v or "") for r in head.sample for v in r)
        values: list[str | None] = []
        for value in m.DataRow.decode(bytes(payload)).values():
            if value is None:
                values.append(None)
                continue
            text = value[: max(budget, 0)].decode("utf-8", "replace")
            if len(value) > budget:
                text += f"... ({len(value)} bytes)"
            budget -= len(value)
            values.append(text)
        head.sample.append(values)

    def _send_client(self, out: list[bytes]) -> None:
        if out:
            data = b"".join(out)
            self.record.bytes_to_client += len(data)
            self.client.write(data)

    def _completed(self, t: Tracked) -> None:
        if t.kind in ("describe", "describe_portal", "describe_injected"):
            return
        if t.kind == "bind":
            assert t.extra is not None
            portal = t.extra["portal"]
            if self._pending_binds.get(t.text) is portal:
                del self._pending_binds[t.text]
            if t.error is None and not t.skipped:
                self._portals[t.text] = portal
            return
        if t.kind == "close":
            if t.error is None and not t.skipped and t.extra is not None:
                names: dict[str, Any] = (self._statements if t.extra["kind"] == "S"
                                         else self._portals)
                if names.get(t.text) is t.extra["target"]:
                    names.pop(t.text, None)
            return
        start, started_at, op, decision = t.context
        if t.kind == "parse" and t.extra is not None:
            name = t.extra["name"]
            if t.denial is None and t.error is None and not t.skipped:
                return  # a successful Parse is recorded when it is executed
            # The server does not have this statement: restore what it does have,
            # unless a later pipelined Parse has replaced it since.
            if self._statements.get(name) is t.extra["installed"]:
                prev = t.extra["previous"]
                if name == "" or prev is None:
                    self._statements.pop(name, None)
                else:
                    self._statements[name] = prev
        if t.extra is not None and "ctx_before" in t.extra:
            self.sql.completed(t.extra["ctx_before"], op, tag=t.tag, failed=t.error is not None,
                               skipped=t.skipped, idle=self._tx_status == "I")
        if t.denial is not None:
            error: str | None = t.denial.message
            verdict = decision.verdict
        else:
            error = t.error
            if t.skipped and error is None:
                error = "not executed: an earlier message in the pipeline failed"
            verdict = decision.verdict
        text = self._audit_text(t.text, _MAX_AUDIT_TEXT)
        duration_ms = round((time.monotonic() - start) * 1000, 3)
        self.audit.statement(StatementRecord(
            session_id=self.record.id, seq=t.seq, kind=t.kind, text=text,
            params=t.params,
            verdict=verdict, reason=decision.reason, started_at=started_at,
            duration_ms=duration_ms,
            command_tag=t.tag, rows=None if t.denial is not None else t.rows,
            error=self._audit_text(error) if error is not None else None,
            policy=decision.policy, action=op.action, masked=t.masked,
        ))
        if self.recording is not None:
            self._record_result(t, verdict, error, duration_ms)

    def _record_result(self, t: Tracked, verdict: Verdict, error: str | None,
                       duration_ms: float) -> None:
        assert self.recording is not None
        data: dict[str, Any] = {
            "op_seq": t.seq, "verdict": verdict.value, "tag": t.tag,
            "rows": None if t.denial is not None else t.rows, "duration_ms": duration_ms,
        }
        if error is not None:
            data["error"] = self._audit_text(error)
        if t.masked:
            data["masked"] = dict(t.masked)
        sample = None
        if t.sample:
            columns = t.columns[0] if type(t.columns) is tuple and t.columns[0] else None
            sample = {"columns": [c.name for c in columns] if columns else None,
                      "rows": t.sample}
        self.recording.result(data, sample)

    # -- ending -----------------------------------------------------------------------

    def _fatal(self, code: str, message: str) -> None:
        err = m.ErrorResponse.build(code, message, severity="FATAL")
        self.client.write(err.encode())

    def _client_protocol_error(self, exc: ProtocolError) -> None:
        log.warning("session %s: protocol error from client %s: %s", self.record.id,
                    self.record.client_addr, exc.message)
        self._fatal(exc.sqlstate, f"pathwarden: {exc.message}")
        self.end(f"client protocol error: {exc.message}")

    def _client_lost(self, exc: BaseException | None) -> None:
        if not self._ended:
            reason = "client disconnected" if exc is None else f"client connection lost: {exc}"
            if len(self.tracker) and self.upstream_key is not None:
                # The server would run a long statement to its end for nobody (and
                # hold its locks meanwhile): cancel it.
                task = asyncio.get_running_loop().create_task(self._cancel_quietly())
                _BACKGROUND.add(task)
                task.add_done_callback(_BACKGROUND.discard)
            self.end(reason)

    async def _cancel_quietly(self) -> None:
        try:
            await self.cancel()
        except Exception as exc:  # best effort: the session is gone either way
            log.info("session %s: cancel after the client left failed: %s", self.record.id, exc)

    def _upstream_lost(self, exc: BaseException | None) -> None:
        if not self._ended:
            self._fatal("57P01" if exc is None else "08006",
                        f"pathwarden: connection {self.connection.name} to the server was lost"
                        " (the server closed it or terminated the session)")
            self.end("upstream disconnected" if exc is None else f"upstream lost: {exc}")

    def end(self, reason: str) -> None:
        """Close both legs and write the session's final record (idempotent)."""
        if self._ended:
            return
        self._ended = True
        if self._hold_task is not None:
            self._hold_task.cancel()
        # Statements still in flight end with the session.
        pending = self.tracker
        while len(pending):
            for t in pending.on_backend(m.ReadyForQuery(status="I")):
                if t.error is None:
                    t.error = f"session ended before the statement completed ({reason})"
                self._completed(t)
        self.client.on_data = None
        self.upstream.on_data = None
        self.upstream.close()
        self.client.close()
        self.record.ended_at = datetime.now(UTC)
        self.record.end_reason = reason
        self.audit.session_ended(self.record)
        if self.recording is not None:
            self.recording.close(self.record)
        log.info("session %s ended: identity=%s connection=%s reason=%s", self.record.id,
                 self.identity.name, self.connection.name, reason)
        if not self.closed.done():
            self.closed.set_result(None)
        self._on_end(self)

    def terminate(self, message: str, reason: str) -> None:
        """End the session for a reason the client must read (a FATAL error first)."""
        if not self._ended:
            self._fatal("28000", message)
            self.end(reason)

    def shutdown(self, message: str) -> None:
        """End the session because the gateway is stopping."""
        if not self._ended:
            self._fatal("57P01", message)
            self.end("gateway shutdown")

    def approval_waiting(self, request_id: int, notice: str) -> None:
        """A held statement waits for approval: say so to the client (a NOTICE)."""
        self.pending_approval = request_id
        if self._ended:
            return
        self.client.write(m.NoticeResponse.build("00000", notice, severity="NOTICE").encode())
        if self.recording is not None:
            self.recording.event("approval", {"op_seq": self._seq, "request_id": request_id,
                                              "state": "pending"})

    async def cancel(self) -> None:
        """Forward a client's CancelRequest to the upstream server."""
        if self.upstream_key is None:
            return
        await send_cancel(self.target, self.upstream_key)
