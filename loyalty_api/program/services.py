"""The program's settings."""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..driver import DriverQuery
from ..errors import ValidationFailed
from ..ids import new_id
from .models import PROGRAM_ID, Program


@dataclass(frozen=True)
class ProgramSettings:
    """An immutable snapshot of the settings, read once per unit of work."""

    currency: str
    pending_days: int
    expiry_mode: str
    expiry_months: int
    tier_window_months: int
    tier_metric: str
    negative_balance: str
    referral_min_purchase: int
    referral_window_days: int
    referral_max_per_referrer: int
    rules_revision: str

    def as_dict(self) -> dict:
        return {
            "currency": self.currency,
            "pending_days": self.pending_days,
            "expiry": {"mode": self.expiry_mode, "months": self.expiry_months},
            "tier_window_months": self.tier_window_months,
            "tier_metric": self.tier_metric,
            "negative_balance": self.negative_balance,
            "referral": {
                "min_purchase": self.referral_min_purchase,
                "window_days": self.referral_window_days,
                "max_per_referrer": self.referral_max_per_referrer,
            },
        }


_COLUMNS = [c for c in ProgramSettings.__dataclass_fields__]


_READ_PROGRAM = DriverQuery(
    select(*[Program.__table__.c[c] for c in _COLUMNS]).where(Program.__table__.c.id == PROGRAM_ID))


def get_program(session: Session) -> ProgramSettings:
    """Return the program's settings."""
    session.flush()  # the read below bypasses the session's autoflush
    (row,) = _READ_PROGRAM.rows(session.connection())
    return ProgramSettings(*row)


def update_program(session: Session, changes: dict, now: datetime) -> ProgramSettings:
    """Apply a partial update of the settings; return the new settings."""
    values: dict = {}
    for key in ("currency", "pending_days", "tier_window_months", "tier_metric", "negative_balance"):
        if key in changes:
            values[key] = changes[key]
    if "expiry" in changes:
        expiry = changes["expiry"]
        if expiry["mode"] != "none" and expiry.get("months", 0) < 1:
            raise ValidationFailed("expiry needs months", {"expiry.months": ["must be at least 1 for this mode"]})
        values["expiry_mode"] = expiry["mode"]
        values["expiry_months"] = expiry.get("months", 0)
    for key, value in changes.get("referral", {}).items():
        values[f"referral_{key}"] = value
    if values:
        values["updated_at"] = now
        session.execute(update(Program).where(Program.id == PROGRAM_ID).values(**values))
        session.flush()
    return get_program(session)


def bump_rules_revision(session: Session) -> None:
    """Tell every worker that the earning configuration (rules or tiers) changed.

    Workers keep the compiled rule set and the tier ladder under this token.
    """
    session.execute(update(Program).where(Program.id == PROGRAM_ID)
                    .values(rules_revision=new_id()))
