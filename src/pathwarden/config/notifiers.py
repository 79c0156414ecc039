"""The ``notifiers:`` configuration block: who hears about approval requests.

A list of notifiers, each a Slack app or incoming webhook, an SMTP relay or an
HTTP webhook (a ticketing system, a chat bridge ...)::

    notifiers:
      - name: ops-slack
        type: slack
        bot_token: {env: SLACK_BOT_TOKEN}
        channel: C0123456789
        signing_secret: {env: SLACK_SIGNING_SECRET}
        users: {U0123ABCD: alice}
      - name: ops-mail
        type: email
        host: smtp.example.com
        sender: pathwarden@example.com
        to: [dba@example.com]
        username: {env: SMTP_USER}
        password: {env: SMTP_PASSWORD}
      - name: tickets
        type: webhook
        url: https://tickets.example.com/hooks/pathwarden
        secret: {env: TICKETS_HMAC}

Every notifier has ``events`` (``created`` and/or ``decided``), ``retries``
and ``backoff``: a failed delivery is retried ``retries`` times, waiting
``backoff`` doubled at each attempt, with jitter, at most 60 s.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from pathwarden.config.durations import Duration
from pathwarden.config.names import check_name
from pathwarden.config.secrets import Secret

__all__ = [
    "BACKOFF_CAP",
    "EmailNotifierConfig",
    "NotifierConfig",
    "NotifierEvent",
    "NotifiersConfig",
    "SlackNotifierConfig",
    "WebhookNotifierConfig",
    "is_loopback_host",
]

#: The longest wait between two attempts, whatever ``backoff`` and ``retries`` say.
BACKOFF_CAP = timedelta(seconds=60)

NotifierEvent = Literal["created", "decided"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_SLACK_USER = re.compile(r"[UW][A-Z0-9]{2,31}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Headers the webhook notifier sets itself; configured headers may not replace them.
_RESERVED_HEADERS = frozenset({
    "content-type", "content-length", "host", "x-pathwarden-signature",
    "x-pathwarden-timestamp", "x-pathwarden-event", "x-pathwarden-delivery",
})
_EMAIL = re.compile(r"[^@\s<>\"',;]+@[^@\s<>\"',;]+")


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _check_events(value: tuple[NotifierEvent, ...]) -> tuple[NotifierEvent, ...]:
    if len(set(value)) != len(value):
        raise PydanticCustomError("events", "each event may be listed once")
    return value


def _check_email(value: str) -> str:
    if not _EMAIL.fullmatch(value):
        raise PydanticCustomError(
            "email", "'{value}' is not an email address (name@domain)", {"value": value})
    return value


def _check_http_url(value: str, *, what: str) -> str:
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise PydanticCustomError("url", "{what} is not a valid URL", {"what": what}) from None
    if parts.scheme not in ("https", "http") or not host:
        raise PydanticCustomError(
            "url", "{what} must be an https:// URL", {"what": what})
    if parts.scheme == "http" and not is_loopback_host(host):
        raise PydanticCustomError(
            "url", "{what} must use https:// (plain http:// only to a loopback address)",
            {"what": what})
    return value


Name = Annotated[str, AfterValidator(check_name)]
EmailAddress = Annotated[str, AfterValidator(_check_email)]
Timeout = Duration


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Notifier(_Model):
    """What every notifier has."""

    name: Name
    events: Annotated[
        tuple[NotifierEvent, ...], Field(min_length=1), AfterValidator(_check_events)
    ] = ("created", "decided")
    # Attempts after the first; 0: one attempt only.
    retries: Annotated[int, Field(ge=0, le=20, strict=True)] = 5
    # Wait before the first retry; doubled at each further one, jittered, capped at 60 s.
    backoff: Duration = timedelta(seconds=1)
    # One attempt (connect, send, answer) may take at most this long.
    timeout: Timeout = timedelta(seconds=10)


class SlackNotifierConfig(_Notifier):
    """Slack: an incoming webhook (plain messages) and/or a bot (interactive messages).

    With ``bot_token`` and ``channel`` messages are posted with ``chat.postMessage``
    and updated in place when the request is decided; with ``signing_secret`` they
    also carry Approve/Deny buttons, and the people in ``users`` may press them.
    With both a webhook and a bot, each message goes to both.
    """

    type: Literal["slack"]
    webhook_url: Secret | None = None
    bot_token: Secret | None = None
    channel: Annotated[str | None, Field(min_length=1, max_length=80)] = None
    signing_secret: Secret | None = None
    # Slack user id (U0123ABCD) -> the pathwarden identity that decides when they press.
    users: dict[str, Annotated[str, Field(min_length=1)]] = Field(default_factory=dict)
    api_url: str = "https://slack.com/api"

    @field_validator("users")
    @classmethod
    def _check_users(cls, value: dict[str, str]) -> dict[str, str]:
        for user_id in value:
            if not _SLACK_USER.fullmatch(user_id):
                raise PydanticCustomError(
                    "slack_user",
                    "'{user}' is not a Slack user id (such as U0123ABCD; in Slack: "
                    "profile > ... > Copy member ID)", {"user": user_id})
        return value

    @field_validator("api_url")
    @classmethod
    def _check_api_url(cls, value: str) -> str:
        return _check_http_url(value, what="api_url").rstrip("/")

    @model_validator(mode="after")
    def _check_targets(self) -> SlackNotifierConfig:
        if self.webhook_url is None and self.bot_token is None:
            raise PydanticCustomError(
                "slack_target", "give webhook_url (incoming webhook) or bot_token and channel")
        if (self.bot_token is None) != (self.channel is None):
            raise PydanticCustomError(
                "slack_bot", "bot_token and channel go together (the bot posts to channel)")
        if self.signing_secret is not None and self.bot_token is None:
            raise PydanticCustomError(
                "slack_interactive",
                "signing_secret is for Approve/Deny buttons, which need bot_token and channel")
        if self.users and self.signing_secret is None:
            raise PydanticCustomError(
                "slack_users",
                "users decide with Approve/Deny buttons, which need signing_secret")
        return self

    @property
    def interactive(self) -> bool:
        """Messages carry Approve/Deny buttons."""
        return self.bot_token is not None and self.signing_secret is not None


class EmailNotifierConfig(_Notifier):
    """Email through an SMTP relay, as plain text and HTML."""

    type: Literal["email"]
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535, strict=True)] = 587
    # starttls: plain connection upgraded (and refused if the server cannot);
    # tls: TLS from the first byte (usually port 465); none: only to a loopback relay.
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: Secret | None = None
    password: Secret | None = None
    sender: EmailAddress
    to: Annotated[tuple[EmailAddress, ...], Field(min_length=1)]
    timeout: Timeout = timedelta(seconds=30)

    @model_validator(mode="after")
    def _check(self) -> EmailNotifierConfig:
        if (self.username is None) != (self.password is None):
            raise PydanticCustomError(
                "smtp_auth", "give both username and password, or neither")
        if self.security == "none" and not is_loopback_host(self.host):
            raise PydanticCustomError(
                "smtp_security",
                "security: none sends mail unencrypted; it is allowed only to a relay on "
                "a loopback address (localhost, 127.0.0.1, ::1)")
        return self


class WebhookNotifierConfig(_Notifier):
    """A JSON document POSTed to a URL, signed with HMAC-SHA256."""

    type: Literal["webhook"]
    url: str
    secret: Secret
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _check_http_url(value, what="url")

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise PydanticCustomError(
                    "header", "'{name}' is not a valid header name", {"name": name})
            if name.lower() in _RESERVED_HEADERS:
                raise PydanticCustomError(
                    "header", "header '{name}' is set by pathwarden", {"name": name})
            if any(ch in header for ch in "\r\n\0"):
                raise PydanticCustomError(
                    "header", "the value of header '{name}' has a line break", {"name": name})
        return value


NotifierConfig = Annotated[
    SlackNotifierConfig | EmailNotifierConfig | WebhookNotifierConfig,
    Field(discriminator="type"),
]


def _unique_names(value: tuple[NotifierConfig, ...]) -> tuple[NotifierConfig, ...]:
    seen: set[str] = set()
    for notifier in value:
        if notifier.name in seen:
            raise PydanticCustomError(
                "notifier_name", "two notifiers are named '{name}'", {"name": notifier.name})
        seen.add(notifier.name)
    return value


#: The ``notifiers:`` list: names must be unique.
NotifiersConfig = Annotated[tuple[NotifierConfig, ...], AfterValidator(_unique_names)]
