"""Outbound-call lists: each message becomes one row of a CSV file an agent team (or dialler) works from.

Appending is idempotent: the file's ``idempotency_key`` column is read at start, and a key already present
is ACCEPTED again without a second row, so a retried or replayed send never puts a customer on the list twice.
The stored key is a digest, not the platform's key (which may embed customer ids). The file itself holds
phone numbers: it is personal data and belongs in the access-controlled export location, never in logs.
"""

from __future__ import annotations

import asyncio
import csv
import os
from pathlib import Path

from services.campaign.channels.base import OutboundMessage, SendResult, SendStatus, key_digest

COLUMNS = ["idempotency_key", "campaign_id", "arm_id", "offer_id", "customer_ref", "phone", "script"]


class CallListAdapter:
    channel = "phone"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._keys: set[str] = set()
        self._lock = asyncio.Lock()
        if self.path.exists():
            with self.path.open(newline="", encoding="utf-8") as fh:
                self._keys = {row["idempotency_key"] for row in csv.DictReader(fh)}

    def _append(self, row: dict[str, str]) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow(row)
            fh.flush()
            os.fsync(fh.fileno())

    async def send(self, message: OutboundMessage, idempotency_key: str) -> SendResult:
        if not message.recipient.strip():
            return SendResult(SendStatus.REJECTED, "RECIPIENT_MISSING")
        digest = key_digest(idempotency_key)
        async with self._lock:
            if digest not in self._keys:
                row = {"idempotency_key": digest, "campaign_id": message.campaign_id, "arm_id": message.arm_id,
                       "offer_id": message.offer_id, "customer_ref": message.customer_ref,
                       "phone": message.recipient, "script": message.body}
                try:
                    await asyncio.to_thread(self._append, row)
                except OSError as exc:
                    return SendResult(SendStatus.RETRYABLE, "EXPORT_WRITE_FAILED", detail=type(exc).__name__)
                self._keys.add(digest)
        return SendResult(SendStatus.ACCEPTED, provider_message_id=digest)
