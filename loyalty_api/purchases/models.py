from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db


class Purchase(db.Model):
    __tablename__ = "purchases"
    __table_args__ = (Index("ix_purchases_member_id_occurred_at", "member_id", "occurred_at"),)

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    transaction_id: Mapped[str] = mapped_column(String(200), unique=True)
    member_id: Mapped[str] = mapped_column(ForeignKey("members.id"))
    occurred_at: Mapped[datetime]
    currency: Mapped[str] = mapped_column(String(3))
    total: Mapped[int]
    channel: Mapped[str | None] = mapped_column(String(64))
    store_id: Mapped[str | None] = mapped_column(String(200))
    items: Mapped[list | None]
    metadata_: Mapped[dict | None] = mapped_column("metadata")
    points: Mapped[int]
    # The lot this purchase's points were credited to (none when it earned nothing).
    lot_id: Mapped[str | None] = mapped_column(ForeignKey("point_lots.id"))
    refunded_amount: Mapped[int] = mapped_column(default=0)
    # Σ floor(points × refunded ÷ total) owed back so far; what refunds have reversed.
    reversed_points: Mapped[int] = mapped_column(default=0)
    request_hash: Mapped[str] = mapped_column(String(64))
    response: Mapped[dict]
    created_at: Mapped[datetime]


class Refund(db.Model):
    __tablename__ = "refunds"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    refund_id: Mapped[str] = mapped_column(String(200), unique=True)
    purchase_id: Mapped[str] = mapped_column(ForeignKey("purchases.id"), index=True)
    member_id: Mapped[str] = mapped_column(ForeignKey("members.id"))
    amount: Mapped[int]
    points_reversed: Mapped[int]
    request_hash: Mapped[str] = mapped_column(String(64))
    response: Mapped[dict]
    created_at: Mapped[datetime]


class Event(db.Model):
    """A custom member event (app review, survey, check-in) that earns through rules."""

    __tablename__ = "events"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(200), unique=True)
    type: Mapped[str] = mapped_column(String(100))
    member_id: Mapped[str] = mapped_column(ForeignKey("members.id"), index=True)
    occurred_at: Mapped[datetime]
    attributes: Mapped[dict]
    points: Mapped[int]
    request_hash: Mapped[str] = mapped_column(String(64))
    response: Mapped[dict]
    created_at: Mapped[datetime]
