from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from ...extensions import db


class StripeEvent(db.Model):
    """One Stripe event as delivered, and what it did; an event id is applied at most once."""

    __tablename__ = "stripe_events"
    __table_args__ = (Index("ix_stripe_events_status_id", "status", "id"),)

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), unique=True)
    type: Mapped[str] = mapped_column(String(100))
    # applied | ignored | unmatched | refused | pending
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(500))
    # The event as Stripe sent it (none for event types the service does not handle).
    payload: Mapped[dict | None]
    livemode: Mapped[bool] = mapped_column(default=False)
    member_id: Mapped[str | None] = mapped_column(ForeignKey("members.id"))
    payment_intent_id: Mapped[str | None] = mapped_column(String(255), index=True)
    # The Stripe refund a refund event is about (a charge.refunded event may name several).
    refund_id: Mapped[str | None] = mapped_column(String(255), index=True)
    # The purchase the payment became (our transaction_id).
    transaction_id: Mapped[str | None] = mapped_column(String(200))
    # When Stripe created the event (its `created`).
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class StripeRefund(db.Model):
    """What the service knows of one Stripe refund, merged over its events in any order.

    `status` only moves forward (pending → succeeded → failed/canceled), so deliveries out
    of order end in the same state. `reversed_at` and `restored_at` record that the refund's
    points were taken back (once) and given back after the refund failed (once).
    """

    __tablename__ = "stripe_refunds"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    refund_id: Mapped[str] = mapped_column(String(255), unique=True)
    payment_intent_id: Mapped[str | None] = mapped_column(String(255), index=True)
    charge_id: Mapped[str | None] = mapped_column(String(255))
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    # pending | succeeded | failed | canceled (Stripe's requires_action counts as pending)
    status: Mapped[str] = mapped_column(String(16))
    points_reversed: Mapped[int | None]
    reversed_at: Mapped[datetime | None]
    points_restored: Mapped[int | None]
    restored_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
