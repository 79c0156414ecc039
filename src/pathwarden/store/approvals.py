"""Approval requests, votes, grants and notification outcomes (mixed into SqlStore).

Theory of operation: every change to a request runs in one write transaction
that first holds the request's row (``SELECT ... FOR UPDATE`` on PostgreSQL;
on SQLite the write transaction is ``BEGIN IMMEDIATE``, the database's write
lock), so the pure decision function the caller passes sees the request as it
is and two approvers voting at once are both counted. The guarantees that must
hold across gateway replicas are in the schema or in one statement:

- one pending ``operation`` request per (requester, connection, statement
  hash): a partial unique index; a racing second insert fails and finds the
  first one;
- one use of a one-time approval: ``UPDATE ... SET state = 'used' WHERE id =
  :id AND state = 'approved'`` - only the caller that sees one row changed
  may run the operation;
- one vote per approver: the votes' primary key.

On PostgreSQL every change also sends ``NOTIFY pathwarden_approvals, '<id>'``
inside its transaction, delivered at commit, so waiters on other replicas wake
at once (see approvals/service.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import and_, or_, select, text, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pathwarden.approvals.model import (
    ApprovalChange,
    ApprovalRequest,
    Grant,
    GrantScope,
    NotificationRecord,
    OperationDetails,
    RequestKind,
    RequestState,
    Vote,
)
from pathwarden.store.base import NotFound
from pathwarden.store.tables import (
    approval_grants,
    approval_notifications,
    approval_requests,
    approval_votes,
)

__all__ = ["APPROVALS_CHANNEL", "ApprovalIndex"]

#: The LISTEN/NOTIFY channel carrying the id of every request that changed.
APPROVALS_CHANNEL = "pathwarden_approvals"

_R = approval_requests
_V = approval_votes
_G = approval_grants
_N = approval_notifications
_LIST_LIMIT = 200

Change = Callable[[ApprovalRequest], ApprovalChange | None]


class _Base(Protocol):
    _engine: AsyncEngine
    _writer: AsyncEngine
    _target: Any
    dialect: str

    def _errors(self, action: str, *, opening: bool = False,
                integrity_hint: str = "") -> contextlib.AbstractContextManager[None]: ...


def _request_values(req: ApprovalRequest) -> dict[str, Any]:
    op = req.operation
    scope = req.scope
    return {
        "kind": str(req.kind), "state": str(req.state), "requester": req.requester,
        "requester_groups": list(req.requester_groups),
        "requester_claims": dict(req.requester_claims), "connection": req.connection,
        "reason": req.reason, "policy": req.policy,
        "text": op.text if op else None, "statement_hash": op.statement_hash if op else None,
        "action": op.action if op else None, "kinds": list(op.kinds) if op else None,
        "rule": op.rule if op else None, "decision_reason": op.decision_reason if op else None,
        "session_id": op.session_id if op else None, "seq": op.seq if op else None,
        "scope_actions": list(scope.actions) if scope else None,
        "scope_resources": list(scope.resources) if scope else None,
        "duration_us": (req.duration // timedelta(microseconds=1)
                        if req.duration is not None else None),
        "created_at": req.created_at, "expires_at": req.expires_at,
        "decided_at": req.decided_at, "decided_by": req.decided_by, "outcome": req.outcome,
        "used_at": req.used_at,
    }


def _request(row: Row[Any], votes: Sequence[Vote], notes: Sequence[NotificationRecord],
             grant_id: int | None) -> ApprovalRequest:
    m = row._mapping
    kind = RequestKind(m["kind"])
    operation = None
    scope = None
    if kind is RequestKind.OPERATION:
        operation = OperationDetails(
            text=m["text"] or "", statement_hash=m["statement_hash"] or "",
            action=m["action"] or "unknown", kinds=tuple(m["kinds"] or ()),
            policy=m["policy"], rule=m["rule"], decision_reason=m["decision_reason"] or "",
            session_id=m["session_id"], seq=m["seq"])
    else:
        scope = GrantScope(tuple(m["scope_actions"] or ()), tuple(m["scope_resources"] or ()))
    duration = m["duration_us"]
    return ApprovalRequest(
        id=int(m["id"]), kind=kind, state=RequestState(m["state"]), requester=m["requester"],
        connection=m["connection"], created_at=m["created_at"], expires_at=m["expires_at"],
        requester_groups=tuple(m["requester_groups"] or ()),
        requester_claims=dict(m["requester_claims"] or {}), reason=m["reason"],
        policy=m["policy"], operation=operation, scope=scope,
        duration=timedelta(microseconds=int(duration)) if duration is not None else None,
        decided_at=m["decided_at"], decided_by=m["decided_by"], outcome=m["outcome"],
        used_at=m["used_at"], grant_id=grant_id, votes=tuple(votes),
        notifications=tuple(notes))


def _grant(row: Row[Any]) -> Grant:
    m = row._mapping
    return Grant(id=int(m["id"]), identity=m["identity"], connection=m["connection"],
                 scope=GrantScope(tuple(m["actions"]), tuple(m["resources"])),
                 starts_at=m["starts_at"], ends_at=m["ends_at"],
                 request_id=int(m["request_id"]))


async def _load(conn: AsyncConnection, rows: Sequence[Row[Any]]) -> list[ApprovalRequest]:
    """Requests with their votes, notifications and grant ids (three queries for all)."""
    ids = [int(r.id) for r in rows]
    if not ids:
        return []
    votes: dict[int, list[Vote]] = {i: [] for i in ids}
    for v in (await conn.execute(
            select(_V).where(_V.c.request_id.in_(ids)).order_by(_V.c.at, _V.c.approver))).all():
        votes[int(v.request_id)].append(
            Vote(v.approver, bool(v.approve), v.at, v.comment, tuple(v.groups)))
    notes: dict[int, list[NotificationRecord]] = {i: [] for i in ids}
    for n in (await conn.execute(
            select(_N).where(_N.c.request_id.in_(ids)).order_by(_N.c.channel))).all():
        notes[int(n.request_id)].append(NotificationRecord(
            n.channel, n.state, int(n.attempts), n.last_error, n.updated_at))
    grants = {int(g.request_id): int(g.id) for g in (await conn.execute(
        select(_G.c.id, _G.c.request_id).where(_G.c.request_id.in_(ids)))).all()}
    return [_request(r, votes[int(r.id)], notes[int(r.id)], grants.get(int(r.id)))
            for r in rows]


async def _one(conn: AsyncConnection, request_id: int,
               lock: bool = False) -> ApprovalRequest | None:
    query = select(_R).where(_R.c.id == request_id)
    if lock:
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    if row is None:
        return None
    return (await _load(conn, [row]))[0]


class ApprovalIndex:
    """Approval requests, votes, grants and notification outcomes (mixed into SqlStore)."""

    def approvals_listen_url(self: _Base) -> str | None:
        """A libpq URL for a LISTEN connection (PostgreSQL), None on SQLite."""
        if self.dialect != "postgresql":
            return None
        url = self._target.url.set(drivername="postgresql")
        rendered: str = url.render_as_string(hide_password=False)
        return rendered

    async def _notify(self: _Base, conn: AsyncConnection, ids: Sequence[int]) -> None:
        if self.dialect != "postgresql":
            return
        for request_id in ids:
            await conn.execute(text("SELECT pg_notify(:channel, :payload)"),
                               {"channel": APPROVALS_CHANNEL, "payload": str(request_id)})

    async def create_approval(
        self: _Base, request: ApprovalRequest, expire: Change
    ) -> tuple[ApprovalRequest, bool]:
        """Store ``request`` (its id is ignored) as new, or find its twin already pending.

        For an ``operation`` request, a pending one for the same requester,
        connection and statement hash is returned instead (``created`` False);
        one due to expire is first passed to ``expire`` so it does not block.
        """
        values = _request_values(request)
        with self._errors(f"creating an approval request for {request.requester}"):
            for attempt in range(3):
                try:
                    async with self._writer.begin() as conn:
                        if request.kind is RequestKind.OPERATION:
                            assert request.operation is not None
                            twin = (await conn.execute(select(_R).where(
                                _R.c.requester == request.requester,
                                _R.c.connection == request.connection,
                                _R.c.statement_hash == request.operation.statement_hash,
                                _R.c.state == str(RequestState.PENDING),
                            ).with_for_update())).first()
                            if twin is not None:
                                current = (await _load(conn, [twin]))[0]
                                if await ApprovalIndex._apply(self, conn, current, expire) is None:
                                    return current, False
                        result = await conn.execute(_R.insert().values(**values))
                        key = result.inserted_primary_key
                        assert key is not None
                        new_id = int(key[0])
                        created = await _one(conn, new_id)
                    assert created is not None
                    return created, True
                except IntegrityError:
                    # A twin was inserted between our look and our insert: find it.
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _apply(self: _Base, conn: AsyncConnection, current: ApprovalRequest,
                     change_fn: Change) -> ApprovalRequest | None:
        """Apply ``change_fn(current)`` on ``conn``; None when it changes nothing."""
        change = change_fn(current)
        if change is None:
            return None
        rid = current.id
        for vote in change.votes:
            await conn.execute(_V.insert().values(
                request_id=rid, approver=vote.approver, approve=vote.approve,
                comment=vote.comment, groups=list(vote.groups), at=vote.at))
        values: dict[str, Any] = {"state": str(change.state)}
        if change.decided_at is not None:
            values.update(decided_at=change.decided_at, decided_by=change.decided_by,
                          outcome=change.outcome)
        if change.expires_at is not None:
            values["expires_at"] = change.expires_at
        await conn.execute(update(_R).where(_R.c.id == rid).values(**values))
        if change.grant is not None:
            g = change.grant
            await conn.execute(_G.insert().values(
                request_id=rid, identity=g.identity, connection=g.connection,
                actions=list(g.scope.actions), resources=list(g.scope.resources),
                starts_at=g.starts_at, ends_at=g.ends_at))
        await ApprovalIndex._notify(self, conn, [rid])
        return await _one(conn, rid)

    async def change_approval(self: _Base, request_id: int,
                              change: Change) -> ApprovalRequest:
        """Apply ``change`` to the request as it is now, holding its row.

        ``change`` may raise (e.g. an ApprovalError) to refuse: nothing is
        written then and the exception propagates. Raises NotFound.
        """
        with self._errors(f"changing approval request {request_id}"):
            async with self._writer.begin() as conn:
                current = await _one(conn, request_id, lock=True)
                if current is None:
                    raise NotFound(f"no approval request {request_id} (see: pathwarden "
                                   f"approvals list)")
                changed = await ApprovalIndex._apply(self, conn, current, change)
        return changed if changed is not None else current

    async def sweep_approvals(self: _Base, now: datetime, expire: Change) -> list[int]:
        """Pass every request past its ``expires_at`` (pending, or approved and unused) to
        ``expire``; the ids of those it changed."""
        changed: list[int] = []
        due = and_(_R.c.expires_at <= now, or_(
            _R.c.state == str(RequestState.PENDING),
            and_(_R.c.state == str(RequestState.APPROVED),
                 _R.c.kind == str(RequestKind.OPERATION))))
        with self._errors("expiring approval requests"):
            async with self._engine.connect() as conn:
                ids = [int(i) for i in (await conn.execute(
                    select(_R.c.id).where(due).order_by(_R.c.id))).scalars()]
            for request_id in ids:
                async with self._writer.begin() as conn:
                    current = await _one(conn, request_id, lock=True)
                    if current is None:
                        continue
                    if await ApprovalIndex._apply(self, conn, current, expire) is not None:
                        changed.append(request_id)
        return changed

    async def consume_approval(
        self: _Base, requester: str, connection: str, statement_hash: str, now: datetime,
        request_id: int | None = None,
    ) -> ApprovalRequest | None:
        """Use one approved, unexpired one-time approval for this statement (state ``used``).

        Exactly one caller wins each approval, across sessions and replicas.
        With ``request_id``, only that request is considered.
        """
        conditions = [
            _R.c.kind == str(RequestKind.OPERATION), _R.c.state == str(RequestState.APPROVED),
            _R.c.requester == requester, _R.c.connection == connection,
            _R.c.statement_hash == statement_hash, _R.c.expires_at > now,
        ]
        if request_id is not None:
            conditions.append(_R.c.id == request_id)
        with self._errors(f"using an approval of {requester} on {connection}"):
            async with self._writer.begin() as conn:
                ids = [int(i) for i in (await conn.execute(
                    select(_R.c.id).where(*conditions).order_by(_R.c.decided_at, _R.c.id)
                )).scalars()]
                for candidate in ids:
                    done = await conn.execute(
                        update(_R).where(_R.c.id == candidate,
                                         _R.c.state == str(RequestState.APPROVED))
                        .values(state=str(RequestState.USED), used_at=now))
                    if done.rowcount == 1:
                        await ApprovalIndex._notify(self, conn, [candidate])
                        return await _one(conn, candidate)
        return None

    async def get_approval(self: _Base, request_id: int) -> ApprovalRequest | None:
        with self._errors(f"looking up approval request {request_id}"):
            async with self._engine.connect() as conn:
                return await _one(conn, request_id)

    async def list_approvals(
        self: _Base, *, state: RequestState | None = None, requester: str | None = None,
        connection: str | None = None, kind: RequestKind | None = None,
        limit: int = _LIST_LIMIT,
    ) -> list[ApprovalRequest]:
        """Requests newest first, filtered."""
        query = select(_R).order_by(_R.c.id.desc()).limit(limit)
        if state is not None:
            query = query.where(_R.c.state == str(state))
        if requester is not None:
            query = query.where(_R.c.requester == requester)
        if connection is not None:
            query = query.where(_R.c.connection == connection)
        if kind is not None:
            query = query.where(_R.c.kind == str(kind))
        with self._errors("listing approval requests"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query)).all()
                return await _load(conn, rows)

    async def list_grants(
        self: _Base, *, identity: str | None = None, connection: str | None = None,
        active_at: datetime | None = None,
    ) -> list[Grant]:
        """Grants newest first; with ``active_at``, only those in force then."""
        query = select(_G).order_by(_G.c.id.desc())
        if identity is not None:
            query = query.where(_G.c.identity == identity)
        if connection is not None:
            query = query.where(_G.c.connection == connection)
        if active_at is not None:
            query = query.where(_G.c.starts_at <= active_at, _G.c.ends_at > active_at)
        with self._errors("listing grants"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query)).all()
        return [_grant(r) for r in rows]

    async def record_approval_notification(
        self: _Base, request_id: int, channel: str, ok: bool, error: str | None,
        at: datetime,
    ) -> None:
        """Count one attempt to notify ``channel`` about a request, and how it went."""
        state = "sent" if ok else "failed"
        last_error = None if ok else (error or "failed")
        with self._errors(f"recording a notification of approval request {request_id}"):
            for attempt in range(2):
                try:
                    async with self._writer.begin() as conn:
                        done = await conn.execute(
                            update(_N).where(_N.c.request_id == request_id,
                                             _N.c.channel == channel)
                            .values(state=state, attempts=_N.c.attempts + 1,
                                    last_error=last_error, updated_at=at))
                        if done.rowcount == 0:
                            await conn.execute(_N.insert().values(
                                request_id=request_id, channel=channel, state=state,
                                attempts=1, last_error=last_error, updated_at=at))
                    return
                except IntegrityError:
                    if attempt == 1:
                        raise
