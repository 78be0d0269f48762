from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db


class Referral(db.Model):
    """A referee enrolled with a referrer's code; completed by the referee's first qualifying purchase."""

    __tablename__ = "referrals"
    __table_args__ = (
        Index("ix_referrals_referrer_id_id", "referrer_id", "id"),
        Index("ix_referrals_status_expires_at", "status", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    referrer_id: Mapped[str] = mapped_column(ForeignKey("members.id"))
    # A member is referred at most once: at its enrolment.
    referee_id: Mapped[str] = mapped_column(ForeignKey("members.id"), unique=True)
    # pending | completed | expired | rejected
    status: Mapped[str] = mapped_column(String(16))
    # Why a referral was rejected (its completing purchase was refunded).
    reason: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    # The last moment a purchase can complete it: enrolment + window_days.
    expires_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]
    # The purchase that completed it, and the lots its bonuses went to (a refund reverses them).
    transaction_id: Mapped[str | None] = mapped_column(String(200))
    referee_lot_id: Mapped[str | None] = mapped_column(ForeignKey("point_lots.id"))
    referrer_lot_id: Mapped[str | None] = mapped_column(ForeignKey("point_lots.id"))
    updated_at: Mapped[datetime]
