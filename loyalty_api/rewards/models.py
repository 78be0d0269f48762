from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db


class Reward(db.Model):
    """Something a member may take for points; `stock` None means unlimited."""

    __tablename__ = "rewards"
    __table_args__ = (
        CheckConstraint("cost_points > 0", name="cost_points_positive"),
        # Concurrent claims decrement with a guarded UPDATE; this is the last line of defence.
        CheckConstraint("stock IS NULL OR stock >= 0", name="stock_not_negative"),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    cost_points: Mapped[int]
    stock: Mapped[int | None]
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class RewardTier(db.Model):
    """A tier that may redeem a reward; a reward without any row is open to every member."""

    __tablename__ = "reward_tiers"

    reward_id: Mapped[str] = mapped_column(ForeignKey("rewards.id", ondelete="CASCADE"), primary_key=True)
    tier_code: Mapped[str] = mapped_column(String(64), primary_key=True)
