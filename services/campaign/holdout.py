"""The persistent global holdout: a stable share of customers that no campaign ever contacts.

Membership is a pure function of the customer id: u = sha256("{salt}:{customer_id}")[:8] / 2^64 < share, with a
fixed salt that is not any campaign's id, so the holdout is independent of every campaign's own control/arm
assignment (which hashes "{campaign_id}:{customer_id}") and the same on every replica, every day, for batch
launches, triggers and real-time Decide alike. Raising the share only adds members (u below the old share stays
below the new one); lowering it releases the ones with the highest u first. Members are recorded (partition
results, trigger firings, decision records) as GLOBAL_HOLDOUT, never contacted; their outcomes against everyone
else's are the "total effect of marketing" (docs/triggers.md, "Global holdout").
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

HOLDOUT_SALT = "lodestar-global-holdout-v1"
DEFAULT_SHARE = 0.02
SETTING = "CAMPAIGN_GLOBAL_HOLDOUT_SHARE"
REASON = "GLOBAL_HOLDOUT"


def position(customer_id: str, salt: str = HOLDOUT_SALT) -> float:
    """The customer's place in [0, 1) on the holdout's hash line."""
    return float(positions([customer_id], salt)[0])


def positions(customer_ids: Sequence[str], salt: str) -> np.ndarray:
    """Every customer's place in [0, 1) on the hash line of `salt`: the first 8 bytes of
    sha256("{salt}:{customer_id}") as a fraction of 2^64, one sha256 per customer (a copy of the hashed salt, so
    the prefix is hashed once) and the digests read as one big-endian array."""
    if not len(customer_ids):
        return np.zeros(0, dtype=np.float64)
    prefix = hashlib.sha256(f"{salt}:".encode())
    digests = []
    for customer_id in customer_ids:
        digest = prefix.copy()
        digest.update(customer_id.encode())
        digests.append(digest.digest())
    first = np.frombuffer(b"".join(digests), dtype=">u8").reshape(len(digests), 4)[:, 0]
    return first.astype(np.float64) / 2.0 ** 64


def parse_share(raw: str | None) -> float:
    """The setting's value: a number in [0, 0.5]; ValueError otherwise (the service refuses to start)."""
    if raw is None or raw.strip() == "":
        return DEFAULT_SHARE
    value = float(raw)
    if not 0.0 <= value <= 0.5:
        raise ValueError(f"{SETTING} must be a share between 0 and 0.5, got {raw!r}")
    return value


@dataclass(frozen=True)
class GlobalHoldout:
    share: float = DEFAULT_SHARE
    salt: str = HOLDOUT_SALT

    def contains(self, customer_id: str) -> bool:
        return self.share > 0 and position(customer_id, self.salt) < self.share

    def mask(self, customer_ids: Sequence[str]) -> np.ndarray:
        """True for every member of the holdout, vectorised over a partition."""
        if not len(customer_ids) or self.share <= 0:
            return np.zeros(len(customer_ids), dtype=bool)
        return positions(customer_ids, self.salt) < self.share
