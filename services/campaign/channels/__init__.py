"""Delivery channel adapters: one interface, ``async send(message, idempotency_key) -> SendResult``.

* ``base``: ``OutboundMessage``, ``SendResult`` (accepted / rejected with a reason / retryable failure) and the
  ``ChannelAdapter`` protocol the dispatcher calls;
* ``templates``: per-customer rendering with the offer's required disclosures appended;
* ``email``: SMTP (smtplib in a worker thread), Message-ID derived from the idempotency key;
* ``http_provider``: SMS, app push and WeChat-style template messages over a provider's JSON API, with an
  ``Idempotency-Key`` header and retries (exponential backoff, full jitter) on 5xx and timeouts only;
* ``call_list``: outbound-call lists appended to a CSV file, one row per idempotency key;
* ``simulator`` and ``smtp_sink``: local stand-ins for a provider and a mail server (dev and tests).
"""

from services.campaign.channels.base import ChannelAdapter, OutboundMessage, SendResult, SendStatus

__all__ = ["ChannelAdapter", "OutboundMessage", "SendResult", "SendStatus"]
