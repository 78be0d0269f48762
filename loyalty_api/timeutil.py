"""The clock is read here, at the edges (requests, commands, jobs), and passed in as `now`."""

import calendar
from datetime import UTC, datetime, timedelta

_frozen: datetime | None = None


def utcnow() -> datetime:
    """Return the current time (or the time tests froze with `freeze`)."""
    return _frozen if _frozen is not None else datetime.now(UTC)


def freeze(moment: datetime | None) -> None:
    """Make `utcnow` return `moment` (None unfreezes); for tests and simulations."""
    global _frozen
    _frozen = moment


def isoformat(value: datetime | None) -> str | None:
    """Format a timestamp as RFC 3339 in UTC with a Z suffix."""
    if value is None:
        return None
    value = value.astimezone(UTC)
    text = value.isoformat(timespec="microseconds" if value.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def add_months(value: datetime, months: int) -> datetime:
    """Add calendar months, clamping to the month's end (31 January + 1 month = 28/29 February)."""
    month_index = value.month - 1 + months
    year, month = value.year + month_index // 12, month_index % 12 + 1
    day = min(value.day, calendar.monthrange(year, month)[1])
    return value.replace(year=year, month=month, day=day)


def add_days(value: datetime, days: int) -> datetime:
    return value + timedelta(days=days)
