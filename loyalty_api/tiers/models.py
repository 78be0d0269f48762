from datetime import datetime
from decimal import Decimal

from sqlalchemy import Numeric, String
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
