"""SMS, app push and WeChat-style template messages over a provider's HTTP JSON API.

``POST {base_url}/v1/messages/{channel}`` with a JSON body and an ``Idempotency-Key`` header (the platform's
key hashed, so no customer id leaves in it). The provider is expected to deduplicate by that header (the bundled
simulator does): a retry of the same key returns the first response and sends nothing twice.

Retries: only on 5xx replies, timeouts and connection failures, up to ``max_attempts`` in all, sleeping
``uniform(0, min(max_delay, base_delay * 2**(attempt-1)))`` between them (exponential backoff with full jitter,
seeded when a seed is given). A 4xx is final: REJECTED with reason ``HTTP_<status>`` (429 included: rate limits
are the dispatcher's to pace, so it comes back RETRYABLE ``HTTP_429`` at once, without sleeping here). When the
attempts run out the result is RETRYABLE with the last reason (``HTTP_503``, ``TIMEOUT``, ``CONNECTION_FAILED``).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from services.campaign.channels.base import OutboundMessage, SendResult, SendStatus, key_digest
from services.platform.masking import customer_token, redact

log = logging.getLogger(__name__)

CHANNELS = ("sms", "app_push", "wechat")


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes


class _Transient(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def payload_for(message: OutboundMessage) -> dict[str, Any]:
    """The provider's JSON body per channel: text for SMS, title and body for push, template id and data for
    WeChat-style template messages."""
    common = {"to": message.recipient, "campaign": message.campaign_id, "arm": message.arm_id}
    if message.channel == "sms":
        return {**common, "text": message.body}
    if message.channel == "app_push":
        return {**common, "title": message.subject, "body": message.body}
    if message.channel == "wechat":
        return {**common, "template_id": message.template_id,
                "data": {k: {"value": v} for k, v in sorted(message.fields.items())}, "footer": message.body}
    raise ValueError(f"unsupported channel {message.channel!r}")


class HttpProviderAdapter:
    def __init__(self, base_url: str, channel: str, *, timeout: float = 5.0, max_attempts: int = 4,
                 base_delay: float = 0.2, max_delay: float = 5.0, api_key: str = "", seed: int | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if channel not in CHANNELS:
            raise ValueError(f"channel must be one of {CHANNELS}")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an http(s) URL")
        self.channel = channel
        self._scheme, self._host = parts.scheme, parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._path = parts.path.rstrip("/") + f"/v1/messages/{channel}"
        self.timeout, self.max_attempts = timeout, max_attempts
        self.base_delay, self.max_delay = base_delay, max_delay
        self._api_key = api_key
        self._rng = random.Random(seed)  # noqa: S311  # nosec B311 - backoff jitter, not security
        self._sleep = sleep
        self.delays: list[float] = []  # the backoff sleeps taken, for tests and metrics

    def backoff(self, attempt: int) -> float:
        """Delay before attempt ``attempt + 1`` (attempt counts from 1): full jitter."""
        return self._rng.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))

    def _post(self, body: bytes, headers: dict[str, str]) -> _Reply:
        conn_cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(self._host, self._port, timeout=self.timeout)
        try:
            conn.request("POST", self._path, body=body, headers=headers)
            resp = conn.getresponse()
            return _Reply(resp.status, resp.read())
        except TimeoutError as exc:
            raise _Transient("TIMEOUT") from exc
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            raise _Transient("CONNECTION_FAILED") from exc
        finally:
            conn.close()

    async def send(self, message: OutboundMessage, idempotency_key: str) -> SendResult:
        if message.channel != self.channel:
            return SendResult(SendStatus.REJECTED, "CHANNEL_MISMATCH", attempts=0)
        body = json.dumps(payload_for(message), sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": key_digest(idempotency_key, 40)}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        result = SendResult(SendStatus.RETRYABLE, "NOT_ATTEMPTED", attempts=0)
        for attempt in range(1, self.max_attempts + 1):
            try:
                reply = await asyncio.to_thread(self._post, body, headers)
            except _Transient as exc:
                result = SendResult(SendStatus.RETRYABLE, exc.reason, attempts=attempt)
            else:
                result = self._classify(reply, attempt)
                if result.status is not SendStatus.RETRYABLE or reply.status == 429:
                    break
            if attempt < self.max_attempts:
                delay = self.backoff(attempt)
                self.delays.append(delay)
                await self._sleep(delay)
        log.info("provider send", extra={"channel": self.channel, "customer": customer_token(message.customer_ref),
                                         "status": result.status.value, "reason": result.reason,
                                         "attempts": result.attempts})
        return result

    @staticmethod
    def _classify(reply: _Reply, attempt: int) -> SendResult:
        try:
            doc = json.loads(reply.body or b"{}")
        except ValueError:
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        if 200 <= reply.status < 300:
            return SendResult(SendStatus.ACCEPTED, provider_message_id=str(doc.get("message_id", "")),
                              attempts=attempt)
        detail = redact(str(doc.get("error", ""))[:200])  # providers echo numbers back
        if reply.status == 429 or reply.status >= 500:
            return SendResult(SendStatus.RETRYABLE, f"HTTP_{reply.status}", attempts=attempt, detail=detail)
        return SendResult(SendStatus.REJECTED, f"HTTP_{reply.status}", attempts=attempt, detail=detail)
