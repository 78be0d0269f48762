from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db


class Rule(db.Model):
    """A rule's identity and lifecycle; its content lives in immutable versions."""

    __tablename__ = "rules"

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    version: Mapped[int]
    # draft | active | paused | archived; changing it makes no new version.
    status: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(8))
    trigger: Mapped[str] = mapped_column(String(120))
    name: Mapped[str] = mapped_column(String(200))
    priority: Mapped[int]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class RuleVersion(db.Model):
    __tablename__ = "rule_versions"

    rule_id: Mapped[str] = mapped_column(ForeignKey("rules.id"), primary_key=True)
    version: Mapped[int] = mapped_column(primary_key=True)
    # The rule as the marketer sent it (without id, version and status).
    definition: Mapped[dict]
    created_at: Mapped[datetime]
