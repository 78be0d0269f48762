from datetime import datetime

from sqlalchemy import CheckConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db

PROGRAM_ID = 1


class Program(db.Model):
    """The one loyalty program this deployment runs (a single row, id 1)."""

    __tablename__ = "program"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(primary_key=True, default=PROGRAM_ID)
    currency: Mapped[str] = mapped_column(String(3), default="EUR")
    pending_days: Mapped[int] = mapped_column(default=0)
    expiry_mode: Mapped[str] = mapped_column(String(16), default="none")
    expiry_months: Mapped[int] = mapped_column(default=0)
    tier_window_months: Mapped[int] = mapped_column(default=12)
    tier_metric: Mapped[str] = mapped_column(String(16), default="points")
    negative_balance: Mapped[str] = mapped_column(String(16), default="forbid")
    referral_min_purchase: Mapped[int] = mapped_column(default=0)
    referral_window_days: Mapped[int] = mapped_column(default=30)
    referral_max_per_referrer: Mapped[int] = mapped_column(default=100)
    # Bumped by every rule change; workers compare it to refresh their compiled rule set.
    # A fresh random token (not a counter) so that a rolled-back change can never make
    # two different rule sets share one revision.
    rules_revision: Mapped[str] = mapped_column(String(26), default="0")
    updated_at: Mapped[datetime | None]
