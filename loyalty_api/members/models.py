from datetime import date, datetime

from sqlalchemy import CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db


class Member(db.Model):
    __tablename__ = "members"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    external_id: Mapped[str] = mapped_column(String(200), unique=True)
    email: Mapped[str | None] = mapped_column(String(320), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    birthdate: Mapped[date | None]
    status: Mapped[str] = mapped_column(String(16), default="active")
    tier_id: Mapped[str | None] = mapped_column(ForeignKey("tiers.id"))
    referral_code: Mapped[str] = mapped_column(String(32), unique=True)
    metadata_: Mapped[dict] = mapped_column("metadata", default=dict)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    enrolled_at: Mapped[datetime]
    erased_at: Mapped[datetime | None]
    # Last earn or redemption: the clock of the "inactivity" expiry mode.
    last_activity_at: Mapped[datetime | None]


class MemberBalance(db.Model):
    """The running balance of one member; the row every write for that member locks first."""

    __tablename__ = "member_balances"
    __table_args__ = (
        CheckConstraint("pending >= 0", name="pending_not_negative"),
        CheckConstraint("lifetime_earned >= 0", name="lifetime_not_negative"),
    )

    member_id: Mapped[str] = mapped_column(ForeignKey("members.id"), primary_key=True)
    available: Mapped[int] = mapped_column(default=0)
    pending: Mapped[int] = mapped_column(default=0)
    lifetime_earned: Mapped[int] = mapped_column(default=0)
    version: Mapped[int] = mapped_column(default=0)
