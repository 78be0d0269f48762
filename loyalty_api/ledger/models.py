from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db


class LedgerEntry(db.Model):
    """One signed movement of points; append-only (a correction is a new entry)."""

    __tablename__ = "ledger_entries"
    __table_args__ = (Index("ix_ledger_entries_member_id_id", "member_id", "id"),)

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    member_id: Mapped[str] = mapped_column(ForeignKey("members.id"))
    # earn | redeem | reverse | expire | adjust | referral | cancel
    type: Mapped[str] = mapped_column(String(16))
    points: Mapped[int]
    # The lot this entry credited, when it credited one: its status says pending/available.
    lot_id: Mapped[str | None] = mapped_column(ForeignKey("point_lots.id"))
    source_type: Mapped[str] = mapped_column(String(32))
    source_id: Mapped[str] = mapped_column(String(64))
    rule_id: Mapped[str | None] = mapped_column(String(26))
    rule_version: Mapped[int | None]
    description: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime]


class PointLot(db.Model):
    """Points credited together, spent soonest-expiring first."""

    __tablename__ = "point_lots"
    __table_args__ = (
        CheckConstraint("remaining >= 0 AND remaining <= points", name="remaining_in_range"),
        Index("ix_point_lots_member_spend_order", "member_id", "status", "expires_at", "id"),
        Index("ix_point_lots_status_available_at", "status", "available_at"),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    member_id: Mapped[str] = mapped_column(ForeignKey("members.id"))
    source_type: Mapped[str] = mapped_column(String(32))
    source_id: Mapped[str] = mapped_column(String(64))
    points: Mapped[int]
    remaining: Mapped[int]
    # pending | available | expired
    status: Mapped[str] = mapped_column(String(16))
    occurred_at: Mapped[datetime]
    available_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class LotAllocation(db.Model):
    """Which lots a debit took points from, so a cancel or reversal restores exactly those."""

    __tablename__ = "lot_allocations"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    member_id: Mapped[str] = mapped_column(ForeignKey("members.id"))
    lot_id: Mapped[str] = mapped_column(ForeignKey("point_lots.id"), index=True)
    entry_id: Mapped[str] = mapped_column(ForeignKey("ledger_entries.id"), index=True)
    points: Mapped[int]


class Adjustment(db.Model):
    __tablename__ = "adjustments"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    adjustment_id: Mapped[str] = mapped_column(String(200), unique=True)
    member_id: Mapped[str] = mapped_column(ForeignKey("members.id"))
    points: Mapped[int]
    reason: Mapped[str] = mapped_column(String(500))
    request_hash: Mapped[str] = mapped_column(String(64))
    response: Mapped[dict]
    created_at: Mapped[datetime]


class RuleUsage(db.Model):
    """What one rule has awarded one member in one limit period (for per_member limits)."""

    __tablename__ = "rule_usage"
    __table_args__ = (UniqueConstraint("member_id", "rule_id", "period_start", name="uq_rule_usage_key"),)

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    member_id: Mapped[str] = mapped_column(ForeignKey("members.id"))
    rule_id: Mapped[str] = mapped_column(String(26))
    # Start of the limit period (UTC); the epoch stands for "lifetime".
    period_start: Mapped[datetime]
    count: Mapped[int] = mapped_column(default=0)
    points: Mapped[int] = mapped_column(default=0)
