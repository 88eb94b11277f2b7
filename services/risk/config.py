"""The risk service's own settings, read from ServiceSettings.extra at start-up; bad values fail fast."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import time

from services.platform.config import ConfigError
from services.risk.domain import QuietHours
from services.risk.rules import DEFAULT_QUIET_HOURS

QUIET_HOURS_START = "RISK_QUIET_HOURS_START"
QUIET_HOURS_END = "RISK_QUIET_HOURS_END"
EXTRA_SETTINGS = (QUIET_HOURS_START, QUIET_HOURS_END)

_HH_MM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_clock(name: str, raw: str) -> time:
    match = _HH_MM.match(raw.strip())
    if not match:
        raise ConfigError(f"{name} must be a local time HH:MM (00:00-23:59), got {raw!r}")
    return time(int(match.group(1)), int(match.group(2)))


def quiet_hours_from(extra: Mapping[str, str]) -> QuietHours:
    start = extra.get(QUIET_HOURS_START)
    end = extra.get(QUIET_HOURS_END)
    return QuietHours(
        start=parse_clock(QUIET_HOURS_START, start) if start else DEFAULT_QUIET_HOURS.start,
        end=parse_clock(QUIET_HOURS_END, end) if end else DEFAULT_QUIET_HOURS.end,
    )
