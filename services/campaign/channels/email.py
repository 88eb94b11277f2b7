"""E-mail over SMTP: smtplib in a worker thread (the event loop never blocks on the network).

The Message-ID is derived from the idempotency key (``<sha256(key)[:32]@domain>``), so a message sent twice
with the same key carries the same Message-ID and the duplicate is detectable by the receiving side (and by
``smtp_sink``). SMTP gives no server-side deduplication: the dispatcher's outbox is what sends a key once.

Outcome mapping: 2xx accepted; a permanent 5xx reply (recipient refused, content refused) REJECTED with reason
``SMTP_<code>``; 4xx replies, connection errors and timeouts RETRYABLE.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
from email.message import EmailMessage
from email.utils import formatdate

from services.campaign.channels.base import OutboundMessage, SendResult, SendStatus, key_digest
from services.platform.masking import customer_token

log = logging.getLogger(__name__)


def message_id_for(idempotency_key: str, domain: str) -> str:
    return f"<{key_digest(idempotency_key)}@{domain}>"


class SmtpEmailAdapter:
    channel = "email"

    def __init__(self, host: str, port: int, *, sender: str, domain: str = "lodestar.local",
                 timeout: float = 10.0, starttls: bool = False, username: str = "", password: str = "") -> None:
        self.host, self.port, self.sender, self.domain = host, port, sender, domain
        self.timeout, self.starttls = timeout, starttls
        self.username, self.password = username, password

    def build(self, message: OutboundMessage, idempotency_key: str) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self.sender
        mail["To"] = message.recipient
        mail["Subject"] = message.subject
        mail["Date"] = formatdate(usegmt=True)
        mail["Message-ID"] = message_id_for(idempotency_key, self.domain)
        if message.campaign_id:
            mail["X-Lodestar-Campaign"] = message.campaign_id
        mail.set_content(message.body)
        return mail

    def _send_blocking(self, mail: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username:
                smtp.login(self.username, self.password)
            smtp.send_message(mail)

    async def send(self, message: OutboundMessage, idempotency_key: str) -> SendResult:
        mail = self.build(message, idempotency_key)
        mid = mail["Message-ID"]
        try:
            await asyncio.to_thread(self._send_blocking, mail)
        except smtplib.SMTPRecipientsRefused as exc:
            code = next(iter(exc.recipients.values()))[0] if exc.recipients else 550
            result = self._from_code(code, "recipient refused")
        except smtplib.SMTPResponseException as exc:  # includes SMTPDataError, SMTPSenderRefused
            result = self._from_code(exc.smtp_code, "reply refused")
        except TimeoutError:
            result = SendResult(SendStatus.RETRYABLE, "TIMEOUT")
        except (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, ConnectionError, OSError) as exc:
            result = SendResult(SendStatus.RETRYABLE, "CONNECTION_FAILED", detail=type(exc).__name__)
        else:
            result = SendResult(SendStatus.ACCEPTED, provider_message_id=mid)
        log.info("email send", extra={"customer": customer_token(message.customer_ref),
                                      "status": result.status.value, "reason": result.reason})
        return result

    @staticmethod
    def _from_code(code: int, detail: str) -> SendResult:
        status = SendStatus.REJECTED if 500 <= code < 600 else SendStatus.RETRYABLE
        return SendResult(status, f"SMTP_{code}", detail=detail)
