"""Email through an SMTP relay (stdlib ``smtplib`` in a worker thread).

``starttls`` refuses a server that does not offer STARTTLS rather than sending
in the clear; ``tls`` speaks TLS from the first byte; ``none`` is allowed only
to a relay on a loopback address (checked by the config). Certificates are
verified against the system's trust store.

Both emails about a request (created, decided) share a ``References`` header,
so mail clients thread them.
"""

from __future__ import annotations

import asyncio
import os
import smtplib
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from pathwarden.approvals.notify.base import (
    ChannelNotifier,
    DeliveryError,
    RequestView,
    redact,
    reveal,
)
from pathwarden.approvals.notify.messages import email_message
from pathwarden.config.notifiers import EmailNotifierConfig

__all__ = ["EmailNotifier", "build_email"]


def build_email(config: EmailNotifierConfig, event: str, request: RequestView) -> EmailMessage:
    """The message sent for one event: text and HTML alternatives."""
    content = email_message(event, request)
    domain = config.sender.rpartition("@")[2] or "pathwarden.invalid"
    message = EmailMessage()
    message["Subject"] = content.subject
    message["From"] = config.sender
    message["To"] = ", ".join(config.to)
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid("pathwarden", domain=domain)
    thread = f"<approval-{request.id}.{int(request.created_at.timestamp())}@{domain}>"
    message["References"] = thread
    if event != "created":
        message["In-Reply-To"] = thread
    message["Auto-Submitted"] = "auto-generated"
    message["X-Pathwarden-Request"] = str(request.id)
    message["X-Pathwarden-Event"] = event
    message.set_content(content.text)
    message.add_alternative(content.html, subtype="html")
    return message


class EmailNotifier(ChannelNotifier[EmailNotifierConfig]):
    """Sends one email per event to ``to`` through ``host:port``."""

    async def send(self, event: str, request: RequestView) -> None:
        message = build_email(self.config, event, request)
        credentials: tuple[str, str] | None = None
        if self.config.username is not None and self.config.password is not None:
            credentials = (reveal(self.config.username, "SMTP"),
                           reveal(self.config.password, "SMTP"))
        try:
            # The thread's own socket timeout ends it; this bounds the wait for it.
            async with asyncio.timeout(self._timeout * 3):
                await asyncio.to_thread(self._deliver, message, credentials)
        except TimeoutError:
            raise DeliveryError(f"SMTP: no answer within {self._timeout:g}s") from None
        except DeliveryError as exc:
            exc.message = redact(exc.message, credentials or ())
            raise

    def _deliver(self, message: EmailMessage, credentials: tuple[str, str] | None) -> None:
        config = self.config
        try:
            smtp: smtplib.SMTP
            if config.security == "tls":
                smtp = smtplib.SMTP_SSL(
                    config.host, config.port, timeout=self._timeout,
                    context=ssl.create_default_context())
            else:
                smtp = smtplib.SMTP(config.host, config.port, timeout=self._timeout)
            with smtp:
                smtp.ehlo()
                if config.security == "starttls":
                    if not smtp.has_extn("starttls"):
                        raise DeliveryError(
                            "SMTP: the server does not offer STARTTLS; not sending in the clear",
                            permanent=True)
                    smtp.starttls(context=ssl.create_default_context())
                    smtp.ehlo()
                if credentials is not None:
                    smtp.login(*credentials)
                refused = smtp.send_message(message)
            if refused:
                rejected = ", ".join(sorted(refused))
                raise DeliveryError(f"SMTP: recipients refused: {rejected}", permanent=True)
        except DeliveryError:
            raise
        except smtplib.SMTPRecipientsRefused as exc:
            rejected = ", ".join(sorted(exc.recipients))
            raise DeliveryError(f"SMTP: recipients refused: {rejected}", permanent=True) from None
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(
                f"SMTP: authentication failed ({exc.smtp_code})", permanent=True) from None
        except smtplib.SMTPResponseException as exc:
            text = _text(exc.smtp_error)
            raise DeliveryError(
                f"SMTP: {exc.smtp_code} {text}", permanent=500 <= exc.smtp_code < 600) from None
        except smtplib.SMTPNotSupportedError:
            raise DeliveryError("SMTP: the server does not support AUTH", permanent=True) from None
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryError(
                f"SMTP: TLS certificate not trusted ({exc.verify_message})", permanent=True
            ) from None
        except ssl.SSLError as exc:
            raise DeliveryError(f"SMTP: TLS failed ({exc.reason})") from None
        except TimeoutError:
            raise DeliveryError(f"SMTP: no answer within {self._timeout:g}s") from None
        except smtplib.SMTPServerDisconnected:
            raise DeliveryError("SMTP: the server closed the connection") from None
        except smtplib.SMTPException as exc:
            raise DeliveryError(f"SMTP: {type(exc).__name__}") from None
        except OSError as exc:
            reason = (os.strerror(exc.errno) if exc.errno else type(exc).__name__).lower()
            raise DeliveryError(f"SMTP: cannot connect ({reason})") from None


def _text(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return " ".join(text.split())[:200]
