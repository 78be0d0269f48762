"""Tiers: the marketer's ladder, the qualifying figure, upgrades on earning and the review.

A member's qualifying figure is the program's `tier_metric` over the last
`tier_window_months`: points earned from purchases and events net of what refunds reversed
(`points`), or purchase totals net of refunds (`spend`), for what occurred in the window.
Earning upgrades at once (see `TierLadder.target`); only the review moves a member down.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import ColumnElement, bindparam, func, select, union_all, update
from sqlalchemy.orm import Session

from ..bulk import insert_rows
from ..driver import DriverQuery, Read
from ..errors import NotFound, TierExists, TierInUse
from ..ids import new_id
from ..members.models import Member
from ..pagination import Page, decode_cursor, encode_cursor
from ..program.services import ProgramSettings, bump_rules_revision
from ..purchases.models import Event, Purchase
from ..rewards.models import RewardTier
from ..timeutil import add_months
from .models import Tier, TierChange

UPGRADE, REVIEW = "upgrade", "review"


@dataclass(frozen=True)
class TierStep:
    id: str
    code: str
    name: str
    rank: int
    threshold: int
    multiplier: Decimal


_tiers = Tier.__table__
_READ_LADDER = select(_tiers.c.id, _tiers.c.code, _tiers.c.name, _tiers.c.rank, _tiers.c.threshold,
                      _tiers.c.multiplier)


_cached_ladder: tuple[str, "TierLadder"] | None = None


class TierLadder:
    """The tiers ordered by rank, read once per unit of work."""

    def __init__(self, steps: Sequence[TierStep]):
        self.steps = sorted(steps, key=lambda step: step.rank)
        self.by_code = {step.code: step for step in self.steps}
        self.by_id = {step.id: step for step in self.steps}

    @classmethod
    def load(cls, session: Session) -> "TierLadder":
        rows = session.connection().execute(_READ_LADDER)
        return cls([TierStep(r.id, r.code, r.name, r.rank, r.threshold, Decimal(r.multiplier)) for r in rows])

    @classmethod
    def current(cls, session: Session, program: ProgramSettings) -> "TierLadder":
        """Return the ladder, read again only when the tiers changed.

        Like the compiled rule set, the ladder is kept per process under the program's
        revision token, which every tier change renews (bump_rules_revision), so earning
        pays no query for it.
        """
        global _cached_ladder
        cached = _cached_ladder
        if cached is not None and cached[0] == program.rules_revision:
            return cached[1]
        ladder = cls.load(session)
        _cached_ladder = (program.rules_revision, ladder)
        return ladder

    def __bool__(self) -> bool:
        return bool(self.steps)

    def has_above(self, current: TierStep | None) -> bool:
        """Whether a tier ranks above `current` (any tier when the member has none)."""
        return bool(self.steps) and (current is None or self.steps[-1].rank > current.rank)

    def qualifies_for(self, figure: int) -> TierStep | None:
        """Return the highest-ranked tier whose threshold `figure` reaches, if any."""
        best = None
        for step in self.steps:
            if figure >= step.threshold and (best is None or step.rank > best.rank):
                best = step
        return best

    def upgrade_for(self, current: TierStep | None, figure: int) -> TierStep | None:
        """Return the tier an earning moves the member up to (several ranks at once), or None."""
        best = self.qualifies_for(figure)
        if best is not None and (current is None or best.rank > current.rank):
            return best
        return None


def window_start(program: ProgramSettings, now: datetime) -> datetime:
    """Return the start (exclusive) of the qualifying window ending at `now`."""
    return add_months(now, -program.tier_window_months)


def counts_towards_tier(program: ProgramSettings, source_type: str) -> bool:
    """Whether an earning of this source moves the qualifying figure."""
    if program.tier_metric == "spend":
        return source_type == "purchase"
    return source_type in ("purchase", "event")


_purchases = Purchase.__table__
_events = Event.__table__


def _figure_statement(*parts):
    """Sum (table, value) over each member's rows in the window, all tables in one statement."""
    rows = union_all(*(
        select(table.c.member_id, value.label("figure"))
        .where(table.c.member_id.in_(bindparam("member_ids", expanding=True)),
               table.c.occurred_at > bindparam("start"), table.c.occurred_at <= bindparam("now"))
        for table, value in parts)).subquery()
    return select(rows.c.member_id, func.sum(rows.c.figure).label("figure")).group_by(rows.c.member_id)


# The purchase path asks for a few members' figures on every earning: built once.
_FIGURE_STATEMENTS = {
    "points": DriverQuery(_figure_statement((_purchases, _purchases.c.points - _purchases.c.reversed_points),
                                            (_events, _events.c.points))),
    "spend": DriverQuery(_figure_statement((_purchases, _purchases.c.total - _purchases.c.refunded_amount))),
}


def figures_read(program: ProgramSettings, now: datetime, member_ids: Iterable[str]) -> Read:
    """The qualifying figures of `member_ids` (see `qualifying_figures`) as a read to send
    with others (`read_together`)."""
    member_ids = list(member_ids)
    if not member_ids:
        return Read.known({})
    params = {"member_ids": member_ids, "start": window_start(program, now), "now": now}
    return Read(_FIGURE_STATEMENTS[program.tier_metric], params, _figures_of)


def _figures_of(rows: list) -> dict[str, int]:
    return {row.member_id: int(row.figure or 0) for row in rows}


def qualifying_figures(session: Session, program: ProgramSettings, now: datetime, *,
                       member_ids: Iterable[str] | None = None, after: str | None = None,
                       upto: str | None = None) -> dict[str, int]:
    """Return the qualifying figure per member (members with none are absent: their figure is 0).

    Members are those of `member_ids`, or those with ids in (after, upto] (a job's chunk).
    """
    if member_ids is not None and after is None and upto is None:
        return figures_read(program, now, member_ids).run(session.connection())
    start = window_start(program, now)

    def members_of(column) -> list[ColumnElement]:
        conditions = []
        if member_ids is not None:
            conditions.append(column.in_(list(member_ids)))
        if after is not None:
            conditions.append(column > after)
        if upto is not None:
            conditions.append(column <= upto)
        return conditions

    figures: dict[str, int] = {}
    if program.tier_metric == "spend":
        value = func.sum(Purchase.total - Purchase.refunded_amount)
    else:
        value = func.sum(Purchase.points - Purchase.reversed_points)
    rows = session.execute(
        select(Purchase.member_id, value)
        .where(*members_of(Purchase.member_id), Purchase.occurred_at > start, Purchase.occurred_at <= now)
        .group_by(Purchase.member_id))
    for member_id, figure in rows:
        figures[member_id] = int(figure or 0)
    if program.tier_metric == "points":
        rows = session.execute(
            select(Event.member_id, func.sum(Event.points))
            .where(*members_of(Event.member_id), Event.occurred_at > start, Event.occurred_at <= now)
            .group_by(Event.member_id))
        for member_id, figure in rows:
            figures[member_id] = figures.get(member_id, 0) + int(figure or 0)
    return figures


def tier_change_row(member_id: str, old: TierStep | None, new: TierStep | None, reason: str, figure: int,
                    program: ProgramSettings, now: datetime) -> dict:
    """Return the tier_changes row recording one change."""
    return {"id": new_id(), "member_id": member_id,
            "from_code": old.code if old else None, "from_name": old.name if old else None,
            "to_code": new.code if new else None, "to_name": new.name if new else None,
            "reason": reason, "qualifying": figure, "metric": program.tier_metric, "created_at": now}


def write_tier_changes(session: Session, changes: Sequence[tuple[dict, str | None]]) -> None:
    """Store tier changes: (tier_changes row, new tier id) pairs, a statement per table."""
    if not changes:
        return
    insert_rows(session.connection(), TierChange.__table__, [row for row, _ in changes])
    # One UPDATE per target tier (a review of thousands of members moves them to a few tiers).
    by_tier: dict[str | None, list[str]] = {}
    for row, tier_id in changes:
        by_tier.setdefault(tier_id, []).append(row["member_id"])
    table = Member.__table__
    for tier_id, member_ids in by_tier.items():
        session.execute(update(table).where(table.c.id.in_(member_ids)).values(tier_id=tier_id))


# --- the marketer's CRUD -------------------------------------------------------------------

def tier_view(tier: Tier) -> dict:
    return {"id": tier.id, "code": tier.code, "name": tier.name, "rank": tier.rank, "threshold": tier.threshold,
            "multiplier": Decimal(tier.multiplier), "benefits": tier.benefits or [],
            "created_at": tier.created_at, "updated_at": tier.updated_at}


def _check_free(session: Session, data: Mapping, tier_id: str | None = None) -> None:
    errors = {}
    for key, column in (("code", Tier.code), ("rank", Tier.rank)):
        if key in data:
            query = select(Tier.id).where(column == data[key])
            if tier_id is not None:
                query = query.where(Tier.id != tier_id)
            if session.execute(query).first() is not None:
                errors[key] = [f"another tier has this {key}"]
    if errors:
        raise TierExists("; ".join(f"{key} is taken" for key in errors), errors)


def create_tier(session: Session, data: Mapping, now: datetime) -> dict:
    """Add a tier; raise TierExists for a taken code or rank.

    Members reach it when they next earn (or at the next review), not at once.
    """
    _check_free(session, data)
    tier = Tier(id=new_id(), code=data["code"], name=data["name"], rank=data["rank"], threshold=data["threshold"],
                multiplier=data.get("multiplier", Decimal(1)), benefits=data.get("benefits") or [],
                created_at=now, updated_at=now)
    session.add(tier)
    bump_rules_revision(session)
    session.flush()
    return tier_view(tier)


def list_tiers(session: Session, limit: int, cursor: str | None) -> Page:
    """Return the tiers, lowest rank first."""
    query = select(Tier).order_by(Tier.rank, Tier.id).limit(limit + 1)
    if cursor:
        after = decode_cursor(cursor)
        rank = session.execute(select(Tier.rank).where(Tier.id == after)).scalar()
        if rank is not None:
            query = query.where((Tier.rank > rank) | ((Tier.rank == rank) & (Tier.id > after)))
    tiers = session.execute(query).scalars().all()
    return Page([tier_view(t) for t in tiers[:limit]],
                encode_cursor(tiers[limit - 1].id) if len(tiers) > limit else None)


def _load(session: Session, tier_id: str) -> Tier:
    tier = session.get(Tier, tier_id)
    if tier is None:
        raise NotFound("No such tier")
    return tier


def get_tier(session: Session, tier_id: str) -> dict:
    return tier_view(_load(session, tier_id))


def update_tier(session: Session, tier_id: str, changes: Mapping, now: datetime) -> dict:
    """Change a tier; a new code carries the rewards restricted to the old one along."""
    tier = _load(session, tier_id)
    _check_free(session, changes, tier_id)
    if "code" in changes and changes["code"] != tier.code:
        session.execute(update(RewardTier).where(RewardTier.tier_code == tier.code).values(tier_code=changes["code"]))
    for key in ("code", "name", "rank", "threshold", "multiplier", "benefits"):
        if key in changes:
            setattr(tier, key, changes[key] if key != "benefits" else (changes[key] or []))
    tier.updated_at = now
    bump_rules_revision(session)
    session.flush()
    return tier_view(tier)


def delete_tier(session: Session, tier_id: str) -> None:
    """Delete a tier no member holds and no reward is restricted to; raise TierInUse otherwise."""
    tier = _load(session, tier_id)
    if session.execute(select(Member.id).where(Member.tier_id == tier_id).limit(1)).first() is not None:
        raise TierInUse("members hold this tier; lower its threshold or wait for the review to move them")
    if session.execute(select(RewardTier.reward_id).where(RewardTier.tier_code == tier.code).limit(1)).first():
        raise TierInUse("rewards are restricted to this tier")
    session.delete(tier)
    bump_rules_revision(session)
    session.flush()


def list_tier_history(session: Session, member_id: str, limit: int, cursor: str | None) -> Page:
    """Return a member's tier changes, newest first."""
    if session.get(Member, member_id) is None:
        raise NotFound("No such member")
    query = (select(TierChange).where(TierChange.member_id == member_id)
             .order_by(TierChange.id.desc()).limit(limit + 1))
    if cursor:
        query = query.where(TierChange.id < decode_cursor(cursor))
    rows = session.execute(query).scalars().all()
    data = [{"id": c.id,
             "from_": {"code": c.from_code, "name": c.from_name} if c.from_code else None,
             "to": {"code": c.to_code, "name": c.to_name} if c.to_code else None,
             "reason": c.reason, "metric": c.metric, "qualifying": c.qualifying, "changed_at": c.created_at}
            for c in rows[:limit]]
    return Page(data, encode_cursor(rows[limit - 1].id) if len(rows) > limit else None)
