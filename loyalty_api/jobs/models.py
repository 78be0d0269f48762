from datetime import datetime

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db


class JobRun(db.Model):
    """One run of a job: when, as of which moment, what it did, and how it ended."""

    __tablename__ = "job_runs"
    __table_args__ = (Index("ix_job_runs_name_id", "name", "id"),)

    id: Mapped[str] = mapped_column(String(26), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    # running | succeeded | failed | skipped (another run held the job's lock)
    status: Mapped[str] = mapped_column(String(16))
    # cli | api | scheduler, and which process ran it
    trigger: Mapped[str] = mapped_column(String(16))
    runner: Mapped[str] = mapped_column(String(200))
    # The moment the job evaluated ("now" as the job saw it).
    as_of: Mapped[datetime]
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    # Figures accumulated over committed chunks: members, lots, points, changes, mismatches…
    counts: Mapped[dict]
    # What the job found that needs a human (reconcile-balances' mismatches), capped.
    findings: Mapped[list]
    error: Mapped[str | None] = mapped_column(Text)
