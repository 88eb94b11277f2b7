"""Credentials and pseudonyms: API keys, the admin token, partner-scoped customer refs. No SQL, no gRPC.

API keys are `lsk_<key_id>_<secret>`: a 12-character public id (letters and digits, so the separator is
unambiguous) and a 32-character url-safe secret from `secrets`. Only an argon2id hash of the secret is stored;
the full key is shown once, by CreateApiKey.

Argon2 is deliberately slow (~0.1 s), so successful verifications are remembered in memory for
`VERIFIED_KEY_TTL_SECONDS`, keyed by (key id, sha256 of the full key). Consequence: a key revoked in the
database keeps working on another replica (or after a revocation this process did not make) for up to that
TTL. Revocations made through `GatewayService.revoke_api_key` evict this process's entries at once.

Pseudonyms: ref = "p_" + lowercase unpadded base32 of the first 16 bytes of HMAC-SHA256(partner pseudonym key,
customer id) — 26 characters, deterministic per partner, different across partners, not reversible without
the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from services.platform.errors import PermissionDenied, Unauthenticated

API_KEY_HEADER = "x-api-key"
# (A metadata key, not a secret.)
ADMIN_TOKEN_HEADER = "x-admin-token"  # noqa: S105  # nosec B105

API_KEY_PREFIX = "lsk_"
KEY_ID_LENGTH = 12
SECRET_BYTES = 24  # -> 32 url-safe base64 characters
_KEY_ID_ALPHABET = string.ascii_letters + string.digits
_API_KEY = re.compile(r"^lsk_([A-Za-z0-9]{12})_([A-Za-z0-9_-]{32})$")

VERIFIED_KEY_TTL_SECONDS = 60.0
VERIFIED_KEY_CACHE_MAX = 10_000

PSEUDONYM_KEY_BYTES = 32
PSEUDONYM_PREFIX = "p_"

_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile


@dataclass(frozen=True)
class ParsedApiKey:
    key_id: str
    secret: str
    # sha256 of the whole key: what the verification cache keys on.
    digest: str


def new_key_id() -> str:
    return "".join(secrets.choice(_KEY_ID_ALPHABET) for _ in range(KEY_ID_LENGTH))


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def format_api_key(key_id: str, secret: str) -> str:
    return f"{API_KEY_PREFIX}{key_id}_{secret}"


def parse_api_key(raw: str | None) -> ParsedApiKey:
    """The key id and secret of a presented key; UNAUTHENTICATED API_KEY_MISSING / API_KEY_MALFORMED."""
    if not raw:
        raise Unauthenticated("API_KEY_MISSING", f"an API key is required in the {API_KEY_HEADER} metadata")
    match = _API_KEY.match(raw)
    if match is None:
        raise Unauthenticated("API_KEY_MALFORMED", "the API key is not of the form lsk_<key id>_<secret>")
    return ParsedApiKey(key_id=match.group(1), secret=match.group(2), digest=key_digest(raw))


def hash_secret(secret: str) -> str:
    return _hasher.hash(secret)


def verify_secret(secret_hash: str, secret: str) -> bool:
    try:
        return _hasher.verify(secret_hash, secret)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def key_digest(raw: str) -> str:
    """What the verification cache keys on, so the plain key is never held as a dictionary key."""
    return hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True)
class CachedKey:
    partner_id: str
    # A rotated key's end of overlap: checked on every use, so a cached key never outlives it.
    expire_time: datetime | None = None


class VerifiedKeyCache:
    """Successful API-key verifications, remembered for `ttl` seconds (see the module docstring)."""

    def __init__(self, ttl: float = VERIFIED_KEY_TTL_SECONDS, *, max_entries: int = VERIFIED_KEY_CACHE_MAX,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[tuple[str, str], tuple[CachedKey, float]] = {}

    def get(self, key_id: str, digest: str) -> str | None:
        """The partner id of a key verified less than `ttl` ago, else None."""
        entry = self.lookup(key_id, digest)
        return entry.partner_id if entry else None

    def lookup(self, key_id: str, digest: str) -> CachedKey | None:
        """The partner id and the key's own expiry (a rotated key's end of overlap) of a key verified less than
        `ttl` ago, else None."""
        entry = self._entries.get((key_id, digest))
        if entry is None:
            return None
        cached, expires = entry
        if self._clock() >= expires:
            del self._entries[(key_id, digest)]
            return None
        return cached

    def put(self, key_id: str, digest: str, partner_id: str, key_expire_time: datetime | None = None) -> None:
        if len(self._entries) >= self.max_entries:
            now = self._clock()
            self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
            while len(self._entries) >= self.max_entries:  # still full of live entries: drop the oldest
                del self._entries[next(iter(self._entries))]
        self._entries[(key_id, digest)] = (CachedKey(partner_id, key_expire_time), self._clock() + self.ttl)

    def evict(self, key_id: str) -> None:
        for entry in [k for k in self._entries if k[0] == key_id]:
            del self._entries[entry]

    def __len__(self) -> int:
        return len(self._entries)


def check_admin_token(configured: str, presented: str | None) -> None:
    """PERMISSION_DENIED ADMIN_API_DISABLED when no token is configured; UNAUTHENTICATED ADMIN_TOKEN_MISSING or
    ADMIN_TOKEN_INVALID otherwise. Compared in constant time."""
    if not configured:
        raise PermissionDenied("ADMIN_API_DISABLED", "the admin API is disabled on this gateway")
    if not presented:
        raise Unauthenticated("ADMIN_TOKEN_MISSING", f"an admin token is required in the {ADMIN_TOKEN_HEADER} metadata")
    if not hmac.compare_digest(presented.encode(), configured.encode()):
        raise Unauthenticated("ADMIN_TOKEN_INVALID", "the admin token is not valid")


@dataclass(frozen=True)
class CertificateIdentity:
    """What a partner's mTLS client certificate is matched on (the fingerprint) and shown as (the CN)."""

    fingerprint: str
    common_name: str


def certificate_identity(pem: bytes | str) -> CertificateIdentity | None:
    """The lower-case hex SHA-256 of the DER certificate and its subject CN; None if `pem` is not one PEM
    certificate. Only the leaf (the first certificate) counts."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else ""
    return CertificateIdentity(fingerprint=cert.fingerprint(hashes.SHA256()).hex(), common_name=common_name[:255])


def new_pseudonym_key() -> str:
    """A partner's HMAC key for its customer refs, hex."""
    return secrets.token_hex(PSEUDONYM_KEY_BYTES)


def pseudonym(pseudonym_key_hex: str, customer_id: str) -> str:
    digest = hmac.new(bytes.fromhex(pseudonym_key_hex), customer_id.encode(), hashlib.sha256).digest()
    return PSEUDONYM_PREFIX + base64.b32encode(digest[:16]).decode().rstrip("=").lower()
