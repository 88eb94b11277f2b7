"""One masking helper for every service's logs, traces and error messages.

Log resource names and customer *tokens*, never names, e-mails, phone numbers or the bank's own ids.
`customer_token` is a keyed hash: the same customer gives the same token in every service's logs, so lines
can be correlated, but the id cannot be read back from them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re

_TOKEN_KEY = os.environ.get("LOG_PSEUDONYM_KEY", "lodestar-log-pseudonym").encode()

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# An international number (+ and 8-19 digits, spaces or dashes between) or a bare run of 11-15 digits (a mobile
# number without its prefix). Dots are not separators, so addresses such as 127.0.0.1:50051 stay readable.
_PHONE = re.compile(r"\+\d[\d\s-]{6,17}\d|(?<!\d)\d{11,15}(?!\d)")


def customer_token(customer_id: str) -> str:
    """A stable, non-reversible token for a customer id, safe to log and trace."""
    digest = hmac.new(_TOKEN_KEY, customer_id.encode(), hashlib.sha256).hexdigest()
    return f"cust_{digest[:16]}"


def mask_email(value: str) -> str:
    local, _, domain = value.partition("@")
    if not domain:
        return "***"
    return f"{local[:1]}***@{domain}"


def mask_phone(value: str) -> str:
    digits = [c for c in value if c.isdigit()]
    return "***" + "".join(digits[-2:]) if digits else "***"


def redact(text: str) -> str:
    """Replace anything shaped like an e-mail address or a phone number."""
    text = _EMAIL.sub("[email]", text)
    return _PHONE.sub("[phone]", text)


class RedactingFilter(logging.Filter):
    """Defence in depth: scrubs e-mail- and phone-shaped strings from every log message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True
