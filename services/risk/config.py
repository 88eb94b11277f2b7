"""The risk service's own settings, read from ServiceSettings.extra at start-up; bad values fail fast.

RISK_QUIET_HOURS_START / _END   local quiet hours, HH:MM (default 21:00 / 08:00)
RISK_COOL_OFF_DAYS              days of no marketing contact after a complaint or an opt-out (default 30)
RISK_CAPS                       contact caps, e.g. "sms:1/day,3/week;email:2/week;all:5/week" (the default):
                                `;`-separated groups `<channel>:<limit>/<period>[,<limit>/<period>...]`,
                                channel one of sms, email, app_push, wechat, phone or all (across channels),
                                period day (24 h), week (7 days) or month (30 days), rolling; "" or "none" = no caps
RISK_RESERVATION_TTL_SECONDS    how long an unconfirmed reservation holds its slot (default 900)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import time, timedelta

from services.platform.config import ConfigError
from services.risk import fraud
from services.risk.domain import Cap, Channel, ContactPolicy, QuietHours
from services.risk.rules import DEFAULT_QUIET_HOURS, OUTBOUND_CHANNELS

QUIET_HOURS_START = "RISK_QUIET_HOURS_START"
QUIET_HOURS_END = "RISK_QUIET_HOURS_END"
COOL_OFF_DAYS = "RISK_COOL_OFF_DAYS"
CAPS = "RISK_CAPS"
RESERVATION_TTL = "RISK_RESERVATION_TTL_SECONDS"
EXTRA_SETTINGS = (QUIET_HOURS_START, QUIET_HOURS_END, COOL_OFF_DAYS, CAPS, RESERVATION_TTL, *fraud.FRAUD_SETTINGS)

DEFAULT_CAPS = "sms:1/day,3/week;email:2/week;all:5/week"
DEFAULT_COOL_OFF_DAYS = 30
DEFAULT_RESERVATION_TTL_SECONDS = 900
PERIODS = {"day": timedelta(days=1), "week": timedelta(days=7), "month": timedelta(days=30)}

_HH_MM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_LIMIT = re.compile(r"^\s*(\d{1,6})\s*/\s*([a-z]+)\s*$")


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


def parse_caps(raw: str) -> tuple[Cap, ...]:
    raw = raw.strip()
    if raw.lower() in ("", "none"):
        return ()
    outbound = {c.value.lower(): c for c in OUTBOUND_CHANNELS}
    caps: list[Cap] = []
    for group in filter(None, (g.strip() for g in raw.split(";"))):
        name, sep, limits = group.partition(":")
        name = name.strip().lower()
        if not sep or (name != "all" and name not in outbound):
            raise ConfigError(
                f"{CAPS}: {group!r} must be <channel>:<limit>/<period>,... with channel one of "
                f"{', '.join(sorted(outbound))} or all"
            )
        channel: Channel | None = None if name == "all" else outbound[name]
        for part in limits.split(","):
            match = _LIMIT.match(part)
            if not match or match.group(2) not in PERIODS or int(match.group(1)) < 1:
                raise ConfigError(f"{CAPS}: {part.strip()!r} must be <limit>/<period>, limit >= 1, period day, "
                                  "week or month")
            period = match.group(2)
            caps.append(Cap(channel, int(match.group(1)), period, PERIODS[period]))
    return tuple(caps)


def _positive_int(name: str, raw: str | None, default: int) -> int:
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"{name} must be a whole number >= 0, got {raw!r}")
    return value


def contact_policy_from(extra: Mapping[str, str]) -> ContactPolicy:
    caps_raw = extra.get(CAPS)
    return ContactPolicy(
        caps=parse_caps(DEFAULT_CAPS if caps_raw is None else caps_raw),
        cool_off=timedelta(days=_positive_int(COOL_OFF_DAYS, extra.get(COOL_OFF_DAYS), DEFAULT_COOL_OFF_DAYS)),
        reservation_ttl=timedelta(seconds=_positive_int(
            RESERVATION_TTL, extra.get(RESERVATION_TTL), DEFAULT_RESERVATION_TTL_SECONDS)),
    )


def validate(extra: Mapping[str, str]) -> None:
    quiet_hours_from(extra)
    contact_policy_from(extra)
    fraud.policy_from(extra)
