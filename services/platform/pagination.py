"""Opaque page tokens and page sizes (AIP-158).

A token carries the position after the last item returned and a fingerprint of the query it belongs to; a
token from another query, or one that was altered, is INVALID_ARGUMENT on `page_token`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from services.platform.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(value: int, *, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    if value < 0:
        raise InvalidArgument.field("page_size", "must not be negative", reason="INVALID_PAGE_SIZE")
    if value == 0:
        return default
    return min(value, maximum)


def query_fingerprint(**query: Any) -> str:
    return hashlib.sha256(json.dumps(query, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _checksum(body: bytes) -> str:
    return hashlib.sha256(b"lodestar-page-token:" + body).hexdigest()[:12]


def encode_page_token(position: dict[str, Any], fingerprint: str) -> str:
    body = json.dumps({"p": position, "q": fingerprint}, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(body).decode().rstrip("=") + "." + _checksum(body)


def decode_page_token(token: str, fingerprint: str) -> dict[str, Any] | None:
    """None for an empty token (the first page)."""
    if not token:
        return None
    invalid = InvalidArgument.field("page_token", "is not a token this list returned", reason="INVALID_PAGE_TOKEN")
    encoded, _, checksum = token.partition(".")
    try:
        body = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise invalid from None
    if checksum != _checksum(body) or not isinstance(data, dict) or not isinstance(data.get("p"), dict):
        raise invalid
    if data.get("q") != fingerprint:
        raise InvalidArgument.field(
            "page_token", "belongs to a different query; keep the other parameters unchanged",
            reason="PAGE_TOKEN_QUERY_MISMATCH",
        )
    position: dict[str, Any] = data["p"]
    return position
