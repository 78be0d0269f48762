from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db


class Redemption(db.Model):
    """Points a member spent, by the burn rule's price or on a reward; cancelled at most once."""

    __tablename__ = "redemptions"
    __table_args__ = (
        CheckConstraint("points > 0", name="points_positive"),
        Index("ix_redemptions_member_id_id", "member_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    # The client's idempotency id.
    redemption_id: Mapped[str] = mapped_column(String(200), unique=True)
    member_id: Mapped[str] = mapped_column(ForeignKey("members.id"))
    points: Mapped[int]
    # Minor units the points paid (0 for a reward).
    value: Mapped[int]
    reward_id: Mapped[str | None] = mapped_column(ForeignKey("rewards.id"))
    rule_id: Mapped[str | None] = mapped_column(String(26))
    rule_version: Mapped[int | None]
    order_total: Mapped[int | None]
    channel: Mapped[str | None] = mapped_column(String(32))
    # completed | cancelled
    status: Mapped[str] = mapped_column(String(16))
    # The `redeem` ledger entry; its lot_allocations say which lots a cancel gives back to.
    entry_id: Mapped[str] = mapped_column(ForeignKey("ledger_entries.id"))
    cancel_entry_id: Mapped[str | None] = mapped_column(ForeignKey("ledger_entries.id"))
    request_hash: Mapped[str] = mapped_column(String(64))
    response: Mapped[dict]
    cancel_response: Mapped[dict | None]
    created_at: Mapped[datetime]
    cancelled_at: Mapped[datetime | None]
