"""Notifications about approval requests: Slack, email and signed webhooks.

The approvals service builds a :class:`RequestView` and calls
:meth:`Dispatcher.notify`; see ``docs/notifiers.md``.
"""

from __future__ import annotations

from collections.abc import Iterable

from pathwarden.approvals.notify.base import (
    EVENTS,
    DeliveryError,
    Dispatcher,
    Notifier,
    Record,
    RequestView,
    RetryPolicy,
)
from pathwarden.approvals.notify.email import EmailNotifier
from pathwarden.approvals.notify.slack import (
    SlackAction,
    SlackAuthError,
    SlackNotifier,
    SlackPayloadError,
    parse_slack_action,
    slack_decider,
    verify_slack_request,
)
from pathwarden.approvals.notify.webhook import (
    WebhookNotifier,
    WebhookSignatureError,
    verify_webhook_signature,
)
from pathwarden.config.notifiers import (
    EmailNotifierConfig,
    SlackNotifierConfig,
    WebhookNotifierConfig,
)

__all__ = [
    "EVENTS",
    "DeliveryError",
    "Dispatcher",
    "EmailNotifier",
    "Notifier",
    "Record",
    "RequestView",
    "RetryPolicy",
    "SlackAction",
    "SlackAuthError",
    "SlackNotifier",
    "SlackPayloadError",
    "WebhookNotifier",
    "WebhookSignatureError",
    "build_notifier",
    "build_notifiers",
    "parse_slack_action",
    "slack_decider",
    "verify_slack_request",
    "verify_webhook_signature",
]


def build_notifier(
    config: SlackNotifierConfig | EmailNotifierConfig | WebhookNotifierConfig,
) -> Notifier:
    """The channel for one configured notifier."""
    if isinstance(config, SlackNotifierConfig):
        return SlackNotifier(config)
    if isinstance(config, EmailNotifierConfig):
        return EmailNotifier(config)
    return WebhookNotifier(config)


def build_notifiers(
    configs: Iterable[SlackNotifierConfig | EmailNotifierConfig | WebhookNotifierConfig],
) -> list[Notifier]:
    """The channels for the ``notifiers:`` list, in order."""
    return [build_notifier(config) for config in configs]
