"""The approval service: held operations wait here for people to decide.

Theory of operation: when policy answers APPROVE for an operation, the
session asks :meth:`ApprovalService.check` whether an approval already lets it
through (an approved one-time approval for exactly this statement, consumed
atomically, or an active grant covering it). If not, :meth:`request_for` finds
or creates the pending request and :meth:`wait` holds until it leaves
``pending`` or the wait times out; :meth:`resolve` does all of that and turns
the outcome into a Decision for the session.

Waking: a waiter parks on an :class:`asyncio.Event` per request id. A change
made through this service sets it at once. Changes made by another replica
reach it through PostgreSQL ``LISTEN pathwarden_approvals`` on a dedicated
autocommit psycopg connection (the store sends the NOTIFY inside the
changing transaction); without it (SQLite, or the listener is down) waiters
re-read the store every ``poll_interval``. Waiters also re-read at the
request's expiry, and every few seconds even while listening, so a lost
notification delays a waiter but never strands it.

Notifiers (Slack, email, webhooks) are called with ``(request, "created")``
and ``(request, "decided")`` in tasks of their own: a slow or failing notifier
never holds up or fails a request.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from pathwarden.approvals.model import (
    ApprovalChange,
    ApprovalRequest,
    Grant,
    GrantScope,
    OperationDetails,
    RequestKind,
    RequestState,
    statement_hash,
)
from pathwarden.approvals.rules import (
    ApprovalError,
    decide_vote,
    expire,
    grant_duration,
    missing_approvals,
    withdraw,
)
from pathwarden.config.approvals import ApprovalRules, ApprovalsConfig
from pathwarden.config.durations import format_duration
from pathwarden.model import ConnectionRef, Decision, Identity, Operation, Verdict
from pathwarden.store.base import NotFound, Store, StoreError

__all__ = ["ApprovalService", "Clock", "Notify"]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
#: ``notify(request, event)`` with event ``"created"`` or ``"decided"``.
Notify = Callable[[ApprovalRequest, str], Awaitable[None]]

# While LISTEN works, waiters still re-read this often (a lost notification).
_LISTENING_POLL_S = 5.0
_NOTIFY_TIMEOUT_S = 60.0
_LISTEN_BACKOFF_S = (0.5, 10.0)
_LISTEN_READY_S = 5.0
_STOP_GRACE_S = 5.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _at(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


class ApprovalService:
    """Approval requests, votes, grants and waiting, over a :class:`Store`."""

    def __init__(self, store: Store, config: ApprovalsConfig, *, clock: Clock = _utcnow,
                 notify: Notify | None = None) -> None:
        self.store = store
        self.config = config
        self._clock = clock
        self._notify = notify
        self._events: dict[int, asyncio.Event] = {}
        self._waiting: dict[int, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._listen_task: asyncio.Task[None] | None = None
        self._sweep_task: asyncio.Task[None] | None = None
        self._listening = False
        self._listen_ready = asyncio.Event()

    # -- running ---------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """Whether changes by other replicas wake waiters at once (LISTEN is up)."""
        return self._listening

    async def start(self) -> None:
        """Start the expiry sweep and, on PostgreSQL, the LISTEN connection.

        Waits briefly for LISTEN to be up; if it is not, waiters poll until it is.
        """
        loop = asyncio.get_running_loop()
        if self._sweep_task is None:
            self._sweep_task = loop.create_task(self._sweep_loop())
        url = self.store.approvals_listen_url()
        if url is not None and self._listen_task is None:
            self._listen_ready = asyncio.Event()
            self._listen_task = loop.create_task(self._listen_loop(url))
            try:
                await asyncio.wait_for(self._listen_ready.wait(), _LISTEN_READY_S)
            except TimeoutError:
                log.warning("approvals: LISTEN not up after %.0fs; waiters poll the store "
                            "every %s meanwhile", _LISTEN_READY_S,
                            format_duration(self.config.poll_interval))

    async def stop(self) -> None:
        """Stop background work; notifiers still running get a short grace, then are cancelled."""
        for task in (self._listen_task, self._sweep_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._listen_task = self._sweep_task = None
        self._listening = False
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=_STOP_GRACE_S)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)

    async def drain_notifications(self) -> None:
        """Wait for the notifier calls started so far (tests, orderly shutdown)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def _listen_loop(self, url: str) -> None:
        import psycopg

        from pathwarden.store.approvals import APPROVALS_CHANNEL

        delay = _LISTEN_BACKOFF_S[0]
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    url, autocommit=True, connect_timeout=10,
                    application_name="pathwarden-approvals")
                async with conn:
                    await conn.execute(f"LISTEN {APPROVALS_CHANNEL}")
                    self._listening = True
                    self._listen_ready.set()
                    # Anything that changed while we were not listening: re-read.
                    self._wake_all()
                    delay = _LISTEN_BACKOFF_S[0]
                    async for note in conn.notifies():
                        with contextlib.suppress(ValueError):
                            self._wake(int(note.payload))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("approvals: LISTEN connection failed (%s: %s); waiters poll the "
                            "store, retrying in %.1fs", type(exc).__name__,
                            " ".join(str(exc).split()) or "closed", delay)
            finally:
                self._listening = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, _LISTEN_BACKOFF_S[1])

    async def _sweep_loop(self) -> None:
        interval = _seconds(self.config.sweep_interval)
        while True:
            try:
                await self.expire_due()
            except Exception as exc:
                log.warning("approvals: expiring requests failed: %s", exc)
            await asyncio.sleep(interval)

    # -- waking ----------------------------------------------------------------------

    def _wake(self, request_id: int) -> None:
        event = self._events.pop(request_id, None)
        if event is not None:
            event.set()

    def _wake_all(self) -> None:
        events, self._events = self._events, {}
        for event in events.values():
            event.set()

    # -- rules -----------------------------------------------------------------------

    def rules_for(self, request: ApprovalRequest) -> ApprovalRules:
        """The approval rules that govern ``request`` (its policy's, else the defaults)."""
        return self.config.rules_for(request.policy)

    def link(self, request_id: int) -> str | None:
        """Where a person opens the request (``<base_url>/approvals/<id>``), if configured."""
        return self.config.link(request_id)

    # -- the gateway's side ----------------------------------------------------------

    async def check(self, op: Operation, decision: Decision) -> Decision | None:
        """ALLOW when an approval already covers ``op`` (one-time approvals are used up).

        Only for an APPROVE ``decision``; None when nothing covers the operation.
        """
        if decision.verdict is not Verdict.APPROVE:
            return None
        now = self._clock()
        used = await self.store.consume_approval(
            op.identity.name, op.connection.name, statement_hash(op), now)
        if used is not None:
            self._wake(used.id)
            return self._approved(used, decision)
        for grant in await self.store.list_grants(
                identity=op.identity.name, connection=op.connection.name, active_at=now):
            if grant.covers(op, now):
                return Decision(
                    Verdict.ALLOW,
                    f"{decision.reason}; covered by grant {grant.id} ({grant.scope.describe()} "
                    f"until {_at(grant.ends_at)}, request {grant.request_id})",
                    policy=decision.policy, rule=f"grant {grant.id}", until=grant.ends_at)
        return None

    def _approved(self, request: ApprovalRequest, decision: Decision) -> Decision:
        names = ", ".join(v.approver for v in request.approvals) or "?"
        return Decision(Verdict.ALLOW,
                        f"{decision.reason}; approved once by {names} (request {request.id})",
                        policy=decision.policy, rule=f"approval {request.id}", once=True)

    async def request_for(self, op: Operation, decision: Decision,
                          display_text: str | None = None) -> ApprovalRequest:
        """The pending request for ``op``: created, or the one already pending for it.

        ``display_text`` is what approvers and the store see (the masked text);
        the approval stays bound to the hash of the exact text.
        """
        rules = self.config.rules_for(decision.policy)
        now = self._clock()
        details = OperationDetails(
            text=op.text if display_text is None else display_text,
            statement_hash=statement_hash(op), action=op.action,
            kinds=tuple(a.kind for a in op.actions), policy=decision.policy,
            rule=decision.rule, decision_reason=decision.reason, session_id=op.session_id,
            seq=op.seq)
        draft = ApprovalRequest(
            id=0, kind=RequestKind.OPERATION, state=RequestState.PENDING,
            requester=op.identity.name, connection=op.connection.name, created_at=now,
            expires_at=now + rules.request_ttl, requester_groups=op.identity.groups,
            requester_claims=op.identity.claims, policy=decision.policy, operation=details)
        stored, created = await self.store.create_approval(draft, lambda r: expire(r, now))
        if created:
            self._notify_soon(stored, "created")
        return stored

    async def wait(self, request_id: int,
                   timeout: float | timedelta | None = None) -> ApprovalRequest:
        """The request once it leaves ``pending``, or as it is when ``timeout`` passes.

        ``timeout`` defaults to the request's ``wait_timeout``.
        """
        loop = asyncio.get_running_loop()
        self._waiting[request_id] = self._waiting.get(request_id, 0) + 1
        try:
            deadline: float | None = None
            while True:
                event = self._events.setdefault(request_id, asyncio.Event())
                request = await self._fresh(request_id)
                if deadline is None:
                    limit = timeout if timeout is not None else \
                        self.rules_for(request).wait_timeout
                    deadline = loop.time() + _seconds(limit)
                if not request.pending:
                    return request
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return request
                step = _LISTENING_POLL_S if self._listening else \
                    _seconds(self.config.poll_interval)
                to_expiry = (request.expires_at - self._clock()).total_seconds()
                step = max(0.001, min(remaining, step, to_expiry + 0.001))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), step)
        finally:
            left = self._waiting[request_id] - 1
            if left:
                self._waiting[request_id] = left
            else:
                del self._waiting[request_id]
                self._events.pop(request_id, None)

    async def resolve(self, op: Operation, decision: Decision,
                      timeout: float | timedelta | None = None,
                      display_text: str | None = None,
                      on_request: Callable[[ApprovalRequest], None] | None = None) -> Decision:
        """Hold ``op`` (APPROVE ``decision``) until approved, refused, or the wait times out.

        ALLOW when an approval covers it (a one-time approval is used up);
        otherwise DENY with a reason naming the request and what to do next. A
        pending request survives the timeout, so a retry waits on the same one.
        ``on_request`` is called with each request the operation waits for.
        """
        if decision.verdict is not Verdict.APPROVE:
            return decision
        allowed = await self.check(op, decision)
        if allowed is not None:
            return allowed
        loop = asyncio.get_running_loop()
        rules = self.config.rules_for(decision.policy)
        limit = _seconds(timeout if timeout is not None else rules.wait_timeout)
        deadline = loop.time() + limit
        while True:
            request = await self.request_for(op, decision, display_text)
            if on_request is not None:
                on_request(request)  # the caller tells its client what it waits for
            request = await self.wait(request.id, max(0.0, deadline - loop.time()))
            if request.state is RequestState.APPROVED:
                used = await self.store.consume_approval(
                    op.identity.name, op.connection.name, statement_hash(op), self._clock(),
                    request_id=request.id)
                if used is not None:
                    self._wake(used.id)
                    return self._approved(used, decision)
            if request.state in (RequestState.APPROVED, RequestState.USED) \
                    and deadline > loop.time():
                # Another session with the same statement used this approval: ask again.
                continue
            return self._refusal(request, decision, limit)

    def _refusal(self, request: ApprovalRequest, decision: Decision, waited: float) -> Decision:
        rid = request.id
        link = self.link(rid)
        see = f" ({link})" if link else ""
        if request.state is RequestState.PENDING:
            rules = self.rules_for(request)
            more = missing_approvals(rules, request)
            who = ", ".join(rules.approvers) or "no approvers configured"
            reason = (f"{decision.reason}; approval request {rid}{see} still pending after "
                      f"{format_duration(timedelta(seconds=round(waited, 3)))} (needs {more} "
                      f"more approval(s) from {who}); approve with: pathwarden approve {rid}, "
                      f"then run the statement again before {_at(request.expires_at)}")
        elif request.state is RequestState.USED:
            reason = (f"{decision.reason}; approval request {rid}{see} was used by another "
                      f"session; request approval again")
        else:
            reason = (f"{decision.reason}; approval request {rid}{see} "
                      f"{request.outcome or request.state}")
        return Decision(Verdict.DENY, reason, policy=decision.policy, rule=f"approval {rid}")

    # -- people's side ---------------------------------------------------------------

    async def vote(self, request_id: int, approver: Identity, approve: bool,
                   comment: str = "") -> ApprovalRequest:
        """Record ``approver``'s vote; raises :class:`ApprovalError` naming the rule refused."""
        current = await self._fresh(request_id)
        rules = self.rules_for(current)
        now = self._clock()
        request = await self._change(
            request_id, lambda r: decide_vote(rules, r, approver, approve, comment, now))
        log.info("approvals: %s %s request %d (%s)", approver.name,
                 "approved" if approve else "denied", request_id, request.state)
        if not request.pending:
            self._notify_soon(request, "decided")
        return request

    async def withdraw(self, request_id: int, by: Identity | str,
                       why: str = "") -> ApprovalRequest:
        """Withdraw a pending request (its requester only: a client that gave up)."""
        name = by.name if isinstance(by, Identity) else by
        now = self._clock()
        request = await self._change(request_id, lambda r: withdraw(r, name, now, why))
        self._notify_soon(request, "decided")
        return request

    async def request_grant(self, identity: Identity, connection: ConnectionRef | str,
                            scope: GrantScope, duration: timedelta,
                            reason: str) -> ApprovalRequest:
        """Ask for time-boxed access; approved, it becomes a Grant from the decision on."""
        rules = self.config.rules
        target = connection.name if isinstance(connection, ConnectionRef) else connection
        if not scope.actions:
            raise ApprovalError("grant_scope", "a grant names at least one action class, "
                                "e.g. ddl or write")
        if not reason.strip():
            raise ApprovalError("grant_reason", "say why the grant is needed (--reason)")
        now = self._clock()
        draft = ApprovalRequest(
            id=0, kind=RequestKind.GRANT, state=RequestState.PENDING,
            requester=identity.name, connection=target, created_at=now,
            expires_at=now + rules.request_ttl, requester_groups=identity.groups,
            requester_claims=identity.claims, reason=reason.strip(), scope=scope,
            duration=grant_duration(rules, duration))
        stored, _ = await self.store.create_approval(draft, lambda r: expire(r, now))
        self._notify_soon(stored, "created")
        return stored

    async def get(self, request_id: int) -> ApprovalRequest | None:
        """One request (expired first if it is due), or None."""
        try:
            return await self._fresh(request_id)
        except ApprovalError:
            return None

    async def list(self, state: RequestState | str | None = None,
                   identity: str | None = None, connection: str | None = None,
                   kind: RequestKind | str | None = None) -> builtins.list[ApprovalRequest]:
        """Requests newest first, filtered by state, requester identity and connection."""
        await self.expire_due()
        return await self.store.list_approvals(
            state=RequestState(state) if state is not None else None, requester=identity,
            connection=connection, kind=RequestKind(kind) if kind is not None else None)

    async def grants(self, identity: str | None = None, connection: str | None = None,
                     active: bool = True) -> builtins.list[Grant]:
        """Grants newest first; by default only those in force now."""
        return await self.store.list_grants(
            identity=identity, connection=connection,
            active_at=self._clock() if active else None)

    async def expire_due(self) -> builtins.list[int]:
        """Expire requests past their time; waiters on them wake. The ids expired."""
        now = self._clock()
        ids = await self.store.sweep_approvals(now, lambda r: expire(r, now))
        for request_id in ids:
            self._wake(request_id)
            request = await self.store.get_approval(request_id)
            if request is not None and request.decided_by == "expiry":
                self._notify_soon(request, "decided")
        return ids

    async def record_notification(self, request_id: int, channel: str, ok: bool,
                                  error: str | None = None) -> None:
        """Record how notifying ``channel`` about a request went (never raises)."""
        try:
            await self.store.record_approval_notification(
                request_id, channel, ok, error, self._clock())
        except StoreError as exc:
            log.warning("approvals: cannot record the %s notification of request %d: %s",
                        channel, request_id, exc)

    # -- internals -------------------------------------------------------------------

    async def _fresh(self, request_id: int) -> ApprovalRequest:
        """The request, expired first if it is past its time (checked on read)."""
        request = await self.store.get_approval(request_id)
        if request is None:
            raise ApprovalError("not_found", f"no approval request {request_id} (see: "
                                f"pathwarden approvals list)")
        now = self._clock()
        if expire(request, now) is None:
            return request
        request = await self._change(request_id, lambda r: expire(r, now))
        if request.decided_by == "expiry":
            self._notify_soon(request, "decided")
        return request

    async def _change(self, request_id: int,
                      change: Callable[[ApprovalRequest], ApprovalChange | None]
                      ) -> ApprovalRequest:
        try:
            request = await self.store.change_approval(request_id, change)
        except NotFound:
            raise ApprovalError("not_found", f"no approval request {request_id} (see: "
                                f"pathwarden approvals list)") from None
        self._wake(request_id)
        return request

    def _notify_soon(self, request: ApprovalRequest, event: str) -> None:
        if self._notify is None:
            return
        task = asyncio.get_running_loop().create_task(self._run_notify(request, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_notify(self, request: ApprovalRequest, event: str) -> None:
        assert self._notify is not None
        try:
            await asyncio.wait_for(self._notify(request, event), _NOTIFY_TIMEOUT_S)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning("approvals: notifying about request %d (%s) failed: %s",
                        request.id, event, error)
            await self.record_notification(request.id, "notify", False, error)
