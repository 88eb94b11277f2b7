"""The audit log's hash chain: canonical entries, hashing and verification. Pure code: no I/O.

Each entry is (seq, time, kind, actor, subject, summary, payload_hash); its hash is
sha256(prev_hash + canonical entry), where the canonical entry is its JSON with sorted keys and no spaces, and
prev_hash is the previous entry's hash (GENESIS before the first). `subject` is a customer token
(masking.customer_token) or a resource name, never a customer id; `summary` a small JSON object without
personal data; `payload_hash` the sha256 of the full decision or change.

verify() walks the entries in seq order and reports the first problem:
- DELETED: a sequence number is missing (a gap), or the log ends before the head recorded beside it;
- EDITED: an entry's content no longer hashes to its stored hash;
- INSERTED: an entry is self-consistent but does not link to the one before it, or lies beyond the head.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.risk.domain import AuditVerification

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    entry_time: datetime
    kind: str
    actor: str
    subject: str
    summary: str  # canonical JSON
    payload_hash: str
    prev_hash: str
    hash: str


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def payload_hash(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def entry_hash(prev_hash: str, seq: int, entry_time: datetime, kind: str, actor: str, subject: str,
               summary: str, payload: str) -> str:
    canonical = canonical_json({
        "seq": seq, "time": entry_time.isoformat(), "kind": kind, "actor": actor, "subject": subject,
        "summary": summary, "payload_hash": payload,
    })
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def chain(prev_seq: int, prev_hash: str, entry_time: datetime,
          items: Iterable[tuple[str, str, str, Mapping[str, Any], str]]) -> list[AuditEntry]:
    """New entries after (prev_seq, prev_hash); each item is (kind, actor, subject, summary, payload_hash)."""
    out = []
    for kind, actor, subject, summary, payload in items:
        prev_seq += 1
        text = canonical_json(summary)
        digest = entry_hash(prev_hash, prev_seq, entry_time, kind, actor, subject, text, payload)
        out.append(AuditEntry(prev_seq, entry_time, kind, actor, subject, text, payload, prev_hash, digest))
        prev_hash = digest
    return out


def verify(entries: Iterable[AuditEntry], head: tuple[int, str] | None) -> AuditVerification:
    """Recomputes the chain; `head` is the (seq, hash) recorded with the last append, if any."""
    prev_seq, prev_hash, checked = 0, GENESIS, 0
    for entry in entries:
        if entry.seq != prev_seq + 1:
            if entry.seq <= prev_seq:
                return AuditVerification(False, checked, entry.seq, "INSERTED", f"entry {entry.seq} is out of order",
                                         prev_hash)
            return AuditVerification(
                False, checked, prev_seq + 1, "DELETED",
                f"entries {prev_seq + 1}..{entry.seq - 1} are missing" if entry.seq > prev_seq + 2
                else f"entry {prev_seq + 1} is missing", prev_hash)
        recomputed = entry_hash(entry.prev_hash, entry.seq, entry.entry_time, entry.kind, entry.actor,
                                entry.subject, entry.summary, entry.payload_hash)
        if recomputed != entry.hash:
            return AuditVerification(False, checked, entry.seq, "EDITED",
                                     f"entry {entry.seq} does not match its hash", prev_hash)
        if entry.prev_hash != prev_hash:
            return AuditVerification(False, checked, entry.seq, "INSERTED",
                                     f"entry {entry.seq} does not link to entry {prev_seq}", prev_hash)
        if head is not None and entry.seq > head[0]:
            return AuditVerification(False, checked, entry.seq, "INSERTED",
                                     f"entry {entry.seq} lies beyond the recorded head {head[0]}", prev_hash)
        prev_seq, prev_hash, checked = entry.seq, entry.hash, checked + 1
    if head is not None and (prev_seq, prev_hash) != head:
        if prev_seq < head[0]:
            return AuditVerification(False, checked, prev_seq + 1, "DELETED",
                                     f"the log ends at {prev_seq}, the head is at {head[0]}", prev_hash)
        return AuditVerification(False, checked, prev_seq, "EDITED",
                                 f"entry {prev_seq} does not match the recorded head", prev_hash)
    return AuditVerification(True, checked, head_hash=prev_hash)
