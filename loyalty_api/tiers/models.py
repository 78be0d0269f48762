from datetime import datetime
from decimal import Decimal

from sqlalchemy import ForeignKey, Index, Numeric, String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db


class Tier(db.Model):
    __tablename__ = "tiers"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    rank: Mapped[int] = mapped_column(unique=True)
    threshold: Mapped[int]
    # Exact decimal factor (e.g. 1.5); never a float.
    multiplier: Mapped[Decimal] = mapped_column(Numeric(8, 4), default=Decimal(1))
    benefits: Mapped[list] = mapped_column(default=list)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class TierChange(db.Model):
    """One change of a member's tier, kept as history with its reason.

    Tiers are named by code and name as they were at the change, so the history keeps its
    meaning after a tier is renamed or deleted.
    """

    __tablename__ = "tier_changes"
    __table_args__ = (Index("ix_tier_changes_member_id_id", "member_id", "id"),)

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    member_id: Mapped[str] = mapped_column(ForeignKey("members.id"))
    from_code: Mapped[str | None] = mapped_column(String(64))
    from_name: Mapped[str | None] = mapped_column(String(200))
    to_code: Mapped[str | None] = mapped_column(String(64))
    to_name: Mapped[str | None] = mapped_column(String(200))
    # upgrade (an earn crossed a threshold) | review (the periodic tier review)
    reason: Mapped[str] = mapped_column(String(16))
    # The qualifying figure (program's tier_metric over its window) the change was decided on.
    qualifying: Mapped[int]
    metric: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
