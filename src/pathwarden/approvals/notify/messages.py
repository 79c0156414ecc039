"""Rendering an approval request for each channel.

Everything that comes from a request (names, claims, the statement, comments)
is user-controlled: it is escaped for Slack mrkdwn (``&``, ``<``, ``>``, so no
links or ``<!channel>`` mentions can be smuggled in, and ``verbatim`` so
nothing is auto-linked) and for HTML, and control characters are dropped. The
statement is shown as given, the caller having masked it, cut to a length each
channel can display.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from pathwarden.approvals.notify.base import RequestView

__all__ = [
    "APPROVE_ACTION",
    "DENY_ACTION",
    "EMAIL_OPERATION_LIMIT",
    "SLACK_OPERATION_LIMIT",
    "WEBHOOK_OPERATION_LIMIT",
    "WEBHOOK_VERSION",
    "EmailContent",
    "email_message",
    "slack_message",
    "summary",
    "webhook_body",
    "webhook_document",
]

#: ``action_id`` of the Slack buttons; the button's ``value`` is the request id.
APPROVE_ACTION = "pathwarden_approve"
DENY_ACTION = "pathwarden_deny"

SLACK_OPERATION_LIMIT = 2500  # a section's text may hold 3000 characters
EMAIL_OPERATION_LIMIT = 20_000
WEBHOOK_OPERATION_LIMIT = 65_536
WEBHOOK_VERSION = 1

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# Claims shown, in this order, with their labels.
_CLAIMS = (
    ("repository", "Repository"),
    ("workflow", "Workflow"),
    ("run_id", "Run"),
    ("sha", "Commit"),
    ("ref", "Ref"),
    ("actor", "Actor"),
    ("environment", "Environment"),
)
_STATES = {
    "pending": "waiting for approval",
    "approved": "approved",
    "denied": "denied",
    "expired": "expired",
    "cancelled": "cancelled",
}


# -- text helpers -------------------------------------------------------------


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _clean(text: str) -> str:
    """Drop control and bidi-override characters, keep newlines and tabs; lone
    surrogates (undecodable bytes) become U+FFFD."""
    text = _SURROGATE.sub("\ufffd", text)
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def _line(text: str, limit: int = 200) -> str:
    """One line, at most ``limit`` characters."""
    flat = " ".join(_clean(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _cut(text: str, limit: int) -> tuple[str, bool]:
    text = _clean(text)
    if len(text) <= limit:
        return text, False
    return text[:limit], True


def _state(request: RequestView) -> str:
    return _STATES.get(request.state, request.state)


def _what(request: RequestView) -> str:
    if request.action:
        return request.action
    return "access grant" if request.kind == "grant" else "operation"


def _when(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: int) -> str:
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _safe_url(url: str | None) -> str | None:
    """The request's link if it is a plain http(s) URL, else None."""
    if not url or any(ch in url for ch in " \t\r\n<>|\"'`") or _CONTROL.search(url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return None
    return url


def _claims(request: RequestView) -> list[tuple[str, str]]:
    shown = []
    for key, label in _CLAIMS:
        value = request.claims.get(key)
        if value:
            if key == "sha":
                value = value[:12]
            shown.append((label, _line(value, 120)))
    return shown


def _progress(request: RequestView) -> str:
    plural = "s" if request.required != 1 else ""
    return f"{request.approvals} of {request.required} approval{plural}"


def summary(request: RequestView) -> str:
    """``ddl on prod-db by ci-deploy``: one line, unescaped."""
    return (
        f"{_line(_what(request), 60)} on {_line(request.connection, 60)} "
        f"by {_line(request.requester, 60)}"
    )


# -- Slack --------------------------------------------------------------------


def _mrkdwn(text: str, limit: int = 200) -> str:
    """Escape one line of user text for Slack mrkdwn."""
    return _line(text, limit).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str, limit: int = 120) -> str:
    """User text as inline code (no formatting inside); backticks become quotes."""
    inner = _mrkdwn(text, limit).replace("`", "'")
    return f"`{inner}`"


def _md(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def _slack_time(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return f"<!date^{int(moment.timestamp())}^{{date_short_pretty}} {{time}}|{_when(moment)}>"


def slack_message(event: str, request: RequestView, *, interactive: bool) -> dict[str, Any]:
    """``{"text": ..., "blocks": [...]}`` for ``chat.postMessage``/``chat.update``/webhooks.

    With ``interactive`` a pending request gets Approve/Deny buttons whose
    ``action_id`` is :data:`APPROVE_ACTION`/:data:`DENY_ACTION` and whose
    ``value`` is the request id.
    """
    state = _state(request)
    text = f"Approval #{request.id} {state}: {_mrkdwn(summary(request), 300)}"
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _line(f"Approval #{request.id}: {state}", 150)},
        }
    ]
    if request.kind == "grant":
        ask = f"*{_mrkdwn(request.requester, 80)}* asks for access to {_code(request.connection)}"
        if request.duration_s:
            ask += f" for {_duration(request.duration_s)}"
    else:
        ask = (
            f"*{_mrkdwn(request.requester, 80)}* asks to run "
            f"*{_mrkdwn(_what(request), 60)}* on {_code(request.connection)}"
        )
    blocks.append({"type": "section", "text": _md(ask)})

    fields = [_md(f"*Requester*\n{_mrkdwn(request.requester, 100)}")]
    if request.groups:
        fields.append(_md(f"*Groups*\n{_mrkdwn(', '.join(request.groups), 300)}"))
    fields.append(_md(f"*Connection*\n{_code(request.connection)}"))
    for label, value in _claims(request):
        fields.append(_md(f"*{label}*\n{_code(value)}"))
    blocks.append({"type": "section", "fields": fields[:10]})

    if request.operation is not None:
        body, cut = _cut(request.operation, SLACK_OPERATION_LIMIT)
        body = body.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        # A ``` inside would close the block early.
        body = body.replace("```", "`\u200b``")
        note = "\n_(cut: the statement is longer)_" if cut else ""
        blocks.append({"type": "section", "text": _md(f"*Operation*\n```{body}```{note}")})
    if request.scope:
        scope = ", ".join(_code(item, 80) for item in request.scope[:20])
        if len(request.scope) > 20:
            scope += f" and {len(request.scope) - 20} more"
        blocks.append({"type": "section", "text": _md(f"*Scope*\n{scope}")})
    if request.reason:
        reason = _mrkdwn(request.reason, 1000)
        blocks.append({"type": "section", "text": _md(f"*Reason*\n{reason}")})

    asked = []
    if request.policy:
        asked.append(f"policy {_code(request.policy, 80)}")
    if request.rule:
        asked.append(f"rule {_code(request.rule, 80)}")
    if asked:
        blocks.append({"type": "context", "elements": [_md("Asked for by " + ", ".join(asked))]})

    lines = [f"*Approvers*: {_mrkdwn(', '.join(request.approvers), 500) or '—'}",
             f"*Progress*: {_progress(request)}"]
    for approver, vote, comment in request.votes[:20]:
        mark = ":white_check_mark:" if vote == "approve" else ":x:"
        verb = "approved" if vote == "approve" else "denied"
        line = f"{mark} {_mrkdwn(approver, 80)} {verb}"
        if comment:
            line += f": {_mrkdwn(comment, 300)}"
        lines.append(line)
    blocks.append({"type": "section", "text": _md("\n".join(lines))})

    footer = []
    if request.pending:
        footer.append(f"Expires {_slack_time(request.expires_at)}")
    footer.append(f"Requested {_slack_time(request.created_at)}")
    url = _safe_url(request.url)
    if url is not None:
        link = url.replace("&", "&amp;")
        footer.append(f"<{link}|Open request #{request.id}>")
    blocks.append({"type": "context", "elements": [_md(" · ".join(footer))]})

    if interactive and request.pending:
        blocks.append({
            "type": "actions",
            "block_id": f"pathwarden_request_{request.id}",
            "elements": [
                {
                    "type": "button",
                    "action_id": APPROVE_ACTION,
                    "text": {"type": "plain_text", "text": "Approve"},
                    "style": "primary",
                    "value": str(request.id),
                    "confirm": {
                        "title": {"type": "plain_text", "text": f"Approve #{request.id}?"},
                        "text": {
                            "type": "plain_text",
                            "text": _line(f"Approve {summary(request)}?", 300),
                        },
                        "confirm": {"type": "plain_text", "text": "Approve"},
                        "deny": {"type": "plain_text", "text": "Cancel"},
                    },
                },
                {
                    "type": "button",
                    "action_id": DENY_ACTION,
                    "text": {"type": "plain_text", "text": "Deny"},
                    "style": "danger",
                    "value": str(request.id),
                },
            ],
        })
    return {"text": text, "blocks": blocks}


# -- email --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmailContent:
    subject: str
    text: str
    html: str


def _email_rows(request: RequestView) -> list[tuple[str, str]]:
    rows = [("Requester", _line(request.requester, 200))]
    if request.groups:
        rows.append(("Groups", _line(", ".join(request.groups), 500)))
    rows.append(("Connection", _line(request.connection, 200)))
    rows.append(("Kind", _line(request.kind, 40)))
    if request.action:
        rows.append(("Action", _line(request.action, 60)))
    rows.extend(_claims(request))
    if request.scope:
        rows.append(("Scope", _line(", ".join(request.scope), 1000)))
    if request.duration_s:
        rows.append(("Duration", _duration(request.duration_s)))
    if request.policy:
        rows.append(("Policy", _line(request.policy, 200)))
    if request.rule:
        rows.append(("Rule", _line(request.rule, 200)))
    if request.reason:
        rows.append(("Reason", _line(request.reason, 1000)))
    rows.append(("Approvers", _line(", ".join(request.approvers), 1000) or "-"))
    rows.append(("Progress", _progress(request)))
    rows.append(("Requested", _when(request.created_at)))
    rows.append(("Expires" if request.pending else "Expiry", _when(request.expires_at)))
    return rows


def _votes(request: RequestView) -> list[str]:
    lines = []
    for approver, vote, comment in request.votes:
        verb = "approved" if vote == "approve" else "denied"
        line = f"{_line(approver, 100)} {verb}"
        if comment:
            line += f": {_line(comment, 500)}"
        lines.append(line)
    return lines


def email_message(event: str, request: RequestView) -> EmailContent:
    """Subject, plain text and HTML for one event."""
    head = f"approval #{request.id}" if event == "created" else (
        f"approval #{request.id} {_line(request.state, 20)}")
    subject = _line(f"[pathwarden] {head}: {summary(request)}", 250)
    state = _state(request)
    intro = f"Approval request #{request.id} is {state}."
    if request.pending:
        intro += f" It has {_progress(request)}."
    rows = _email_rows(request)
    votes = _votes(request)
    operation, cut = (None, False)
    if request.operation is not None:
        operation, cut = _cut(request.operation, EMAIL_OPERATION_LIMIT)
    url = _safe_url(request.url)

    width = max(len(label) for label, _ in rows) + 2
    text = [intro, ""]
    text += [f"{label + ':':<{width}}{value}" for label, value in rows]
    if votes:
        text += ["", "Votes:"] + [f"  - {line}" for line in votes]
    if operation is not None:
        text += ["", "Operation:"]
        text += ["    " + line for line in operation.split("\n")]
        if cut:
            text.append("    (cut: the statement is longer)")
    if url is not None:
        text += ["", f"Open: {url}"]
    text += ["", "-- ", "pathwarden access gateway"]

    esc = html.escape
    parts = [
        "<!DOCTYPE html><html><body style=\"font-family:sans-serif\">",
        f"<h2>Approval #{request.id}: {esc(state)}</h2>",
        f"<p>{esc(intro)}</p>",
        "<table cellpadding=\"3\">",
    ]
    parts += [
        f"<tr><th align=\"left\">{esc(label)}</th><td>{esc(value)}</td></tr>"
        for label, value in rows
    ]
    parts.append("</table>")
    if votes:
        parts.append("<h3>Votes</h3><ul>")
        parts += [f"<li>{esc(line)}</li>" for line in votes]
        parts.append("</ul>")
    if operation is not None:
        parts.append("<h3>Operation</h3>")
        parts.append(
            f"<pre style=\"background:#f4f4f4;padding:8px\">{esc(operation)}</pre>")
        if cut:
            parts.append("<p><em>(cut: the statement is longer)</em></p>")
    if url is not None:
        parts.append(f"<p><a href=\"{esc(url, quote=True)}\">Open request #{request.id}</a></p>")
    parts.append("</body></html>")
    return EmailContent(subject=subject, text="\n".join(text) + "\n", html="\n".join(parts) + "\n")


# -- webhook ------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def webhook_document(event: str, request: RequestView) -> dict[str, Any]:
    """The JSON document POSTed to webhooks (field names documented in docs/notifiers.md)."""
    operation = request.operation
    cut = False
    if operation is not None:
        operation, cut = _cut(operation, WEBHOOK_OPERATION_LIMIT)
    return {
        "version": WEBHOOK_VERSION,
        "event": event,
        "request": {
            "id": request.id,
            "kind": request.kind,
            "state": request.state,
            "requester": request.requester,
            "groups": list(request.groups),
            "claims": dict(request.claims),
            "connection": request.connection,
            "operation": operation,
            "operation_truncated": cut,
            "action": request.action,
            "policy": request.policy,
            "rule": request.rule,
            "scope": list(request.scope),
            "duration_s": request.duration_s,
            "reason": request.reason,
            "approvers": list(request.approvers),
            "required": request.required,
            "approvals": request.approvals,
            "votes": [
                {"approver": approver, "vote": vote, "comment": comment}
                for approver, vote, comment in request.votes
            ],
            "created_at": _iso(request.created_at),
            "expires_at": _iso(request.expires_at),
            "url": request.url,
        },
    }


def webhook_body(event: str, request: RequestView) -> bytes:
    """:func:`webhook_document` as compact, key-sorted, ASCII-only JSON (the signed bytes)."""
    return json.dumps(
        webhook_document(event, request), sort_keys=True, separators=(",", ":"),
    ).encode("ascii")
