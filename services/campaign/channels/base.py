"""The adapter interface the dispatcher calls, and what it returns."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Protocol


class SendStatus(enum.StrEnum):
    ACCEPTED = "ACCEPTED"  # the provider took the message; do not send it again
    REJECTED = "REJECTED"  # the provider refused it for good (bad address, bad content): dead-letter it
    RETRYABLE = "RETRYABLE"  # transient (5xx, timeout, connection refused): try again later, same key


@dataclass(frozen=True)
class OutboundMessage:
    """One rendered message for one customer on one channel.

    ``recipient`` is the address the channel needs (e-mail address, phone number, push token, WeChat openid):
    personal data, never logged. ``customer_ref`` is the platform's customer id, logged only as
    ``masking.customer_token``. ``template_id`` and ``fields`` are for template channels (WeChat-style),
    ``body`` is the rendered text (with disclosures) for the others.
    """

    channel: str  # "email", "sms", "app_push", "wechat", "phone"
    recipient: str
    customer_ref: str
    body: str
    subject: str = ""
    template_id: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    campaign_id: str = ""
    arm_id: str = ""
    offer_id: str = ""


@dataclass(frozen=True)
class SendResult:
    status: SendStatus
    reason: str = ""  # UPPER_SNAKE_CASE when not accepted, e.g. HTTP_400, TIMEOUT, SMTP_550
    provider_message_id: str = ""
    attempts: int = 1
    detail: str = ""  # provider's error text, already free of personal data (never the recipient)

    @property
    def accepted(self) -> bool:
        return self.status is SendStatus.ACCEPTED


class ChannelAdapter(Protocol):
    channel: str

    async def send(self, message: OutboundMessage, idempotency_key: str) -> SendResult:
        """Send once per key: a second call with the same key must not produce a second message (the provider
        deduplicates, or the adapter does). Never raises for provider or network trouble: returns a result."""
        ...


def key_digest(idempotency_key: str, length: int = 32) -> str:
    """A stable, opaque token for an idempotency key (keys may embed customer ids: never send them raw)."""
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:length]
