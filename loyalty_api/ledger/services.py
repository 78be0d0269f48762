"""The ledger: balances, point lots, and every credit and debit of points.

Every function here runs inside the caller's transaction after `lock_balance` took the
member's balance row, so the balance, the lots and the entries move together.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import BindParameter, Subquery, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from ..bulk import Writes, update_from_rows
from ..driver import DriverQuery, Read
from ..errors import InsufficientPoints, MemberNotActive, NotFound
from ..idempotency import Outcome, replay, request_hash
from ..ids import new_id
from ..members.models import Member, MemberBalance
from ..pagination import Page, decode_cursor, encode_cursor
from ..program.services import ProgramSettings
from ..timeutil import add_days, add_months, isoformat
from .models import Adjustment, LedgerEntry, LotAllocation, PointLot

# Ledger entry types that count towards lifetime_earned.
EARNING_TYPES = frozenset({"earn", "referral"})
EXPIRING_SHOWN = 5


@dataclass
class Balance:
    available: int
    pending: int
    lifetime_earned: int


@dataclass(frozen=True)
class Credit:
    """One ledger line of a credit: a rule's award, a bonus or an adjustment."""

    points: int
    description: str
    rule_id: str | None = None
    rule_version: int | None = None


@dataclass
class Debit:
    """The outcome of a debit: points taken from lots, and any part that went below zero."""

    entry_id: str
    points: int
    allocations: list[tuple[str, int]] = field(default_factory=list)


def lock_balance(session: Session, member_id: str) -> Balance:
    """Lock the member's balance row for this transaction and return it.

    Raises NotFound when the member does not exist.
    """
    row = session.execute(
        select(MemberBalance.available, MemberBalance.pending, MemberBalance.lifetime_earned)
        .where(MemberBalance.member_id == member_id)
        .with_for_update()
    ).first()
    if row is None:
        raise NotFound("No such member")
    return Balance(row.available, row.pending, row.lifetime_earned)


def lot_dates(program: ProgramSettings, occurred_at: datetime) -> tuple[datetime, datetime | None]:
    """Return when points earned at `occurred_at` become available and when they expire."""
    available_at = add_days(occurred_at, program.pending_days)
    expires_at = None
    if program.expiry_mode == "fixed":
        expires_at = add_months(occurred_at, program.expiry_months)
    return available_at, expires_at


@dataclass(frozen=True)
class CreditPlan:
    """The rows one credit writes: a lot and its ledger entries."""

    lot: dict
    entries: list[dict]

    @property
    def lot_id(self) -> str:
        return self.lot["id"]


def plan_credit(
    member_id: str,
    balance: Balance,
    credits: Sequence[Credit],
    *,
    entry_type: str,
    source_type: str,
    source_id: str,
    occurred_at: datetime,
    program: ProgramSettings,
    now: datetime,
    pending_allowed: bool = True,
) -> CreditPlan | None:
    """Plan a credit as one lot with a ledger entry per credit, and apply it to `balance`.

    Nothing is written: `write_credits` and `write_balances` do that, so a batch writes all
    its credits with a few multi-row statements. The lot is pending until `pending_days`
    after `occurred_at`. When the member owes points (a negative available balance), an
    available lot first pays the debt off, so the lots never hold more than the balance.
    """
    credits = [c for c in credits if c.points > 0]
    total = sum(c.points for c in credits)
    if total == 0:
        return None
    available_at, expires_at = lot_dates(program, occurred_at)
    pending = pending_allowed and available_at > now
    if not pending:
        available_at = min(available_at, now)
    lot_id = new_id()
    remaining = total if pending else max(0, min(total, balance.available + total))
    lot = {"id": lot_id, "member_id": member_id, "source_type": source_type, "source_id": source_id,
           "points": total, "remaining": remaining, "status": "pending" if pending else "available",
           "occurred_at": occurred_at, "available_at": available_at, "expires_at": expires_at, "created_at": now}
    entries = [
        {"id": new_id(), "member_id": member_id, "type": entry_type, "points": c.points, "lot_id": lot_id,
         "source_type": source_type, "source_id": source_id, "rule_id": c.rule_id,
         "rule_version": c.rule_version, "description": c.description[:500], "created_at": now}
        for c in credits
    ]
    if pending:
        balance.pending += total
    else:
        balance.available += total
    if entry_type in EARNING_TYPES:
        balance.lifetime_earned += total
    return CreditPlan(lot, entries)


_lots = PointLot.__table__
_entries = LedgerEntry.__table__
_UPDATE_BALANCES = (
    update(MemberBalance.__table__).where(MemberBalance.__table__.c.member_id == bindparam("b_member"))
    .values(available=bindparam("b_available"), pending=bindparam("b_pending"),
            lifetime_earned=bindparam("b_lifetime"), version=MemberBalance.__table__.c.version + 1)
)
_UPDATE_LAST_ACTIVITY = (
    update(Member.__table__)
    .where(Member.__table__.c.id == bindparam("b_member"),
           (Member.__table__.c.last_activity_at.is_(None)) | (Member.__table__.c.last_activity_at < bindparam("b_at")))
    .values(last_activity_at=bindparam("b_at"))
)


# The same two updates for PostgreSQL, with the rows as one JSON array (see loyalty_api.bulk.Writes).
_PG_UPDATE_BALANCES = update_from_rows(
    "member_balances", "b", "b_member text, b_available bigint, b_pending bigint, b_lifetime bigint",
    "available = r.b_available, pending = r.b_pending, lifetime_earned = r.b_lifetime, version = b.version + 1",
    {"member_id": "b_member"})
_PG_UPDATE_LAST_ACTIVITY = update_from_rows(
    "members", "m", "b_member text, b_at timestamptz", "last_activity_at = r.b_at", {"id": "b_member"},
    "m.last_activity_at IS NULL OR m.last_activity_at < r.b_at")


def write_credits(writes: Writes, plans: Iterable[CreditPlan | None]) -> None:
    """Insert the lots and entries of planned credits, each kind in one statement."""
    plans = [plan for plan in plans if plan is not None]
    if plans:
        writes.insert(_lots, [plan.lot for plan in plans])
        writes.insert(_entries, [entry for plan in plans for entry in plan.entries])


def write_balances(writes: Writes, balances: Mapping[str, Balance]) -> None:
    """Store balances computed under the member lock (so the values are current)."""
    writes.update(MemberBalance.__table__, _UPDATE_BALANCES, _PG_UPDATE_BALANCES, [
        {"b_member": member_id, "b_available": b.available, "b_pending": b.pending,
         "b_lifetime": b.lifetime_earned} for member_id, b in balances.items()])


def write_last_activity(writes: Writes, activity: Mapping[str, datetime]) -> None:
    """Move members' last activity (the inactivity-expiry clock) forward, never back."""
    writes.update(Member.__table__, _UPDATE_LAST_ACTIVITY, _PG_UPDATE_LAST_ACTIVITY, [
        {"b_member": member_id, "b_at": moment} for member_id, moment in activity.items()])


def credit_points(
    session: Session,
    member_id: str,
    balance: Balance,
    credits: Sequence[Credit],
    *,
    entry_type: str,
    source_type: str,
    source_id: str,
    occurred_at: datetime,
    program: ProgramSettings,
    now: datetime,
    pending_allowed: bool = True,
) -> str | None:
    """Credit points to one member now (see `plan_credit`); return the lot id, if any."""
    plan = plan_credit(member_id, balance, credits, entry_type=entry_type, source_type=source_type,
                       source_id=source_id, occurred_at=occurred_at, program=program, now=now,
                       pending_allowed=pending_allowed)
    if plan is None:
        return None
    writes = Writes()
    write_credits(writes, [plan])
    write_balances(writes, {member_id: balance})
    write_last_activity(writes, {member_id: occurred_at})
    writes.run(session.connection())
    return plan.lot_id


def _move_balance(session: Session, member_id: str, balance: Balance, *, available: int = 0,
                  pending: int = 0, lifetime: int = 0) -> None:
    balance.available += available
    balance.pending += pending
    balance.lifetime_earned = max(balance.lifetime_earned + lifetime, 0)
    writes = Writes()
    write_balances(writes, {member_id: balance})
    writes.run(session.connection())


def _spend_order(member_id: str):
    return (
        select(PointLot.id, PointLot.remaining)
        .where(PointLot.member_id == member_id, PointLot.status == "available", PointLot.remaining > 0)
        .order_by(PointLot.expires_at.asc().nulls_last(), PointLot.id)
    )


def debit_points(
    session: Session,
    member_id: str,
    balance: Balance,
    points: int,
    *,
    entry_type: str,
    source_type: str,
    source_id: str,
    description: str,
    now: datetime,
    allow_negative: bool = False,
    first_lot_id: str | None = None,
    reduce_lifetime: bool = False,
) -> Debit:
    """Take `points` of available points, soonest-expiring lots first, as one ledger entry.

    `first_lot_id` is spent before any other lot (a refund reverses its own purchase's
    points first). Beyond the lots, the balance goes below zero only with
    `allow_negative`; otherwise InsufficientPoints is raised and nothing is written.
    """
    if points <= 0:
        raise ValueError("a debit takes a positive number of points")
    if points > balance.available and not allow_negative:
        raise InsufficientPoints(f"{points} points requested, {max(balance.available, 0)} available")
    allocations: list[tuple[str, int]] = []
    still = points
    if first_lot_id is not None:
        row = session.execute(select(PointLot.remaining).where(
            PointLot.id == first_lot_id, PointLot.status == "available")).first()
        if row is not None and row.remaining > 0:
            take = min(row.remaining, still)
            allocations.append((first_lot_id, take))
            still -= take
    if still > 0:
        for lot_id, remaining in session.execute(_spend_order(member_id)):
            if lot_id == first_lot_id:
                continue
            take = min(remaining, still)
            allocations.append((lot_id, take))
            still -= take
            if still == 0:
                break
    entry_id = new_id()
    session.execute(insert(LedgerEntry).values(
        id=entry_id, member_id=member_id, type=entry_type, points=-points, source_type=source_type,
        source_id=source_id, description=description[:500], created_at=now))
    _take_from_lots(session, member_id, entry_id, allocations)
    _move_balance(session, member_id, balance, available=-points, lifetime=-points if reduce_lifetime else 0)
    return Debit(entry_id=entry_id, points=points, allocations=allocations)


def _take_from_lots(session: Session, member_id: str, entry_id: str, allocations: list[tuple[str, int]]) -> None:
    if not allocations:
        return
    lots = PointLot.__table__
    session.execute(
        update(lots).where(lots.c.id == bindparam("b_lot")).values(remaining=lots.c.remaining - bindparam("b_take")),
        [{"b_lot": lot_id, "b_take": take} for lot_id, take in allocations],
    )
    session.execute(insert(LotAllocation), [
        {"id": new_id(), "member_id": member_id, "lot_id": lot_id, "entry_id": entry_id, "points": take}
        for lot_id, take in allocations
    ])


def reverse_pending(
    session: Session, member_id: str, balance: Balance, lot_id: str, points: int, *,
    source_type: str, source_id: str, description: str, now: datetime,
) -> int:
    """Reverse up to `points` still pending in `lot_id`; return how many were reversed."""
    row = session.execute(select(PointLot.remaining).where(
        PointLot.id == lot_id, PointLot.status == "pending")).first()
    if row is None or row.remaining == 0 or points <= 0:
        return 0
    take = min(row.remaining, points)
    entry_id = new_id()
    session.execute(insert(LedgerEntry).values(
        id=entry_id, member_id=member_id, type="reverse", points=-take, source_type=source_type,
        source_id=source_id, description=description[:500], created_at=now))
    _take_from_lots(session, member_id, entry_id, [(lot_id, take)])
    _move_balance(session, member_id, balance, pending=-take, lifetime=-take)
    return take


@dataclass(frozen=True)
class Restore:
    """The outcome of restoring a debit: how many points came back, and how many already expired."""

    entry_id: str
    points: int
    restored: int
    expired: int


def restore_allocations(
    session: Session, member_id: str, balance: Balance, debit_entry_id: str, *,
    source_type: str, source_id: str, description: str, now: datetime,
) -> Restore:
    """Give a debit's points back to exactly the lots it took them from, as a `cancel` entry.

    Points of a lot that has expired since (status expired, or past its expires_at) come
    back already expired: an `expire` entry takes them straight out again, so they never
    reach the balance and the expiry job has nothing of them to expire twice. When the
    member owes points, the restored points pay the debt first (as a credit does), so the
    lots never hold more than the balance. The caller makes sure a debit is restored once.
    Raises ValueError for a debit that went below zero (it has points in no lot).
    """
    points = -session.execute(select(LedgerEntry.points).where(LedgerEntry.id == debit_entry_id)).scalar_one()
    rows = session.execute(
        select(LotAllocation.lot_id, LotAllocation.points, PointLot.status, PointLot.expires_at)
        .join(PointLot, PointLot.id == LotAllocation.lot_id)
        .where(LotAllocation.entry_id == debit_entry_id)
        .order_by(PointLot.expires_at.asc().nulls_last(), PointLot.id)
    ).all()
    if points <= 0 or sum(row.points for row in rows) != points:
        raise ValueError("only a debit taken wholly from lots can be restored")
    debt = max(0, -balance.available)
    gives: list[tuple[str, int]] = []
    expired = 0
    for row in rows:
        if row.status == "expired" or (row.expires_at is not None and row.expires_at <= now):
            expired += row.points
            continue
        paid = min(debt, row.points)
        debt -= paid
        if row.points > paid:
            gives.append((row.lot_id, row.points - paid))
    if gives:
        lots = PointLot.__table__
        session.execute(
            update(lots).where(lots.c.id == bindparam("b_lot"))
            .values(remaining=lots.c.remaining + bindparam("b_give")),
            [{"b_lot": lot_id, "b_give": give} for lot_id, give in gives],
        )
    entry_id = new_id()
    entries = [{"id": entry_id, "member_id": member_id, "type": "cancel", "points": points,
                "source_type": source_type, "source_id": source_id, "description": description[:500],
                "created_at": now}]
    if expired:
        entries.append({"id": new_id(), "member_id": member_id, "type": "expire", "points": -expired,
                        "source_type": source_type, "source_id": source_id,
                        "description": f"Expired before it was given back: {description}"[:500],
                        "created_at": now})
    session.execute(insert(LedgerEntry), entries)
    _move_balance(session, member_id, balance, available=points - expired)
    return Restore(entry_id=entry_id, points=points, restored=points - expired, expired=expired)


def balance_view(session: Session, member_id: str, balance: Balance, program: ProgramSettings) -> dict:
    """Return the balance as the API shows it, with the soonest expiries."""
    return {
        "available": balance.available,
        "pending": balance.pending,
        "lifetime_earned": balance.lifetime_earned,
        "expiring": expiring_points(session, member_id, balance, program),
    }


def expiring_points(session: Session, member_id: str, balance: Balance, program: ProgramSettings) -> list[dict]:
    """Return the next expiries: per lot date (fixed mode) or the whole balance (inactivity)."""
    groups = load_expiry_groups(session, [member_id], program).get(member_id, {})
    last_activity = None
    if program.expiry_mode == "inactivity":
        last_activity = session.execute(select(Member.last_activity_at).where(Member.id == member_id)).scalar()
    return expiring_view(groups, balance, program, last_activity)


_grouped_expiries = (
    select(_lots.c.member_id, _lots.c.expires_at, func.sum(_lots.c.remaining).label("points"),
           func.row_number().over(partition_by=_lots.c.member_id, order_by=_lots.c.expires_at).label("position"))
    .where(_lots.c.member_id.in_(bindparam("member_ids", expanding=True)), _lots.c.status == "available",
           _lots.c.remaining > 0, _lots.c.expires_at.is_not(None))
    .group_by(_lots.c.member_id, _lots.c.expires_at)
    .subquery()
)
_EXPIRY_GROUPS = DriverQuery(select(_grouped_expiries).where(_grouped_expiries.c.position <= EXPIRING_SHOWN))


def load_expiry_groups(session: Session, member_ids: Sequence[str],
                       program: ProgramSettings) -> dict[str, dict[datetime, int]]:
    """Return, per member, its soonest expiry dates with the available points expiring then.

    Only the first few dates per member are read (what the balance shows); points added to
    later dates can never move them ahead of those.
    """
    return expiry_groups_read(member_ids, program).run(session.connection())


def expiry_groups_read(member_ids: Sequence[str], program: ProgramSettings) -> Read:
    """`load_expiry_groups` as a read to send with others (`read_together`)."""
    if program.expiry_mode != "fixed" or not member_ids:
        return Read.known({})
    return Read(_EXPIRY_GROUPS, {"member_ids": list(member_ids)}, _expiry_groups_of)


def _expiry_groups_of(rows: list) -> dict[str, dict[datetime, int]]:
    groups: dict[str, dict[datetime, int]] = {}
    for row in rows:
        groups.setdefault(row.member_id, {})[row.expires_at] = int(row.points)
    return groups


def next_expiries(member_id: BindParameter) -> Subquery:
    """A subquery of one member's expiry groups: its soonest expiry dates (`expires_at`, at most
    EXPIRING_SHOWN) with the available points expiring then (`points`), soonest first.

    Made to be joined to a read of the member, so one statement carries its whole balance.
    """
    return (
        select(_lots.c.expires_at, func.sum(_lots.c.remaining).label("points"))
        .where(_lots.c.member_id == member_id, _lots.c.status == "available", _lots.c.remaining > 0,
               _lots.c.expires_at.is_not(None))
        .group_by(_lots.c.expires_at)
        .order_by(_lots.c.expires_at)
        .limit(EXPIRING_SHOWN)
        .subquery("next_expiries")
    )


def expiring_view(groups: Mapping[datetime, int], balance: Balance, program: ProgramSettings,
                  last_activity: datetime | None) -> list[dict]:
    """Return the balance's `expiring` list from its expiry groups or its last activity."""
    return expiring_list(groups, balance.available, program.expiry_mode, program.expiry_months, last_activity)


def expiring_list(groups: Mapping[datetime, int], available: int, expiry_mode: str, expiry_months: int,
                  last_activity: datetime | None) -> list[dict]:
    """Return the balance's `expiring` list from the program's expiry settings alone (see expiring_view)."""
    if expiry_mode == "fixed":
        return [{"points": points, "expires_at": isoformat(expires_at)}
                for expires_at, points in sorted(groups.items())[:EXPIRING_SHOWN] if points > 0]
    if expiry_mode == "inactivity" and available > 0 and last_activity is not None:
        expires_at = add_months(last_activity, expiry_months)
        return [{"points": available, "expires_at": isoformat(expires_at)}]
    return []


def list_ledger(session: Session, member_id: str, limit: int, cursor: str | None) -> Page:
    """Return the member's ledger entries, newest first."""
    if session.get(Member, member_id) is None:
        raise NotFound("No such member")
    query = (
        select(LedgerEntry, PointLot.status, PointLot.available_at, PointLot.expires_at)
        .outerjoin(PointLot, PointLot.id == LedgerEntry.lot_id)
        .where(LedgerEntry.member_id == member_id)
        .order_by(LedgerEntry.id.desc())
        .limit(limit + 1)
    )
    if cursor:
        query = query.where(LedgerEntry.id < decode_cursor(cursor))
    rows = session.execute(query).all()
    entries = [_entry_view(entry, lot_status, available_at, expires_at)
               for entry, lot_status, available_at, expires_at in rows[:limit]]
    next_cursor = encode_cursor(rows[limit - 1][0].id) if len(rows) > limit else None
    return Page(entries, next_cursor)


def _entry_view(entry: LedgerEntry, lot_status: str | None, available_at, expires_at) -> dict:
    return {
        "id": entry.id,
        "type": entry.type,
        "points": entry.points,
        "status": "pending" if lot_status == "pending" else "available",
        "created_at": entry.created_at,
        "available_at": available_at,
        "expires_at": expires_at,
        "source": {"type": entry.source_type, "id": entry.source_id},
        "rule_id": entry.rule_id,
        "rule_version": entry.rule_version,
        "description": entry.description,
    }


def load_active_member(session: Session, member_id: str) -> Member:
    """Return the member; raise NotFound, or MemberNotActive when suspended or erased."""
    member = session.get(Member, member_id)
    if member is None:
        raise NotFound("No such member")
    if member.status != "active":
        raise MemberNotActive()
    return member


def create_adjustment(session: Session, member_id: str, data: dict, now: datetime) -> Outcome:
    """Credit or debit points by hand (admin), once per adjustment_id.

    A debit may not take the balance below zero: InsufficientPoints.
    """
    from ..program.services import get_program

    body_hash = request_hash({**data, "member_id": member_id})
    existing = session.execute(select(Adjustment.request_hash, Adjustment.response)
                               .where(Adjustment.adjustment_id == data["adjustment_id"])).first()
    if existing is not None:
        return replay(existing.request_hash, existing.response, body_hash, data["adjustment_id"])
    program = get_program(session)
    balance = lock_balance(session, member_id)
    if session.execute(select(Member.status).where(Member.id == member_id)).scalar() == "erased":
        raise MemberNotActive()
    points, reason = data["points"], data["reason"]
    source_id = data["adjustment_id"]
    if points > 0:
        credit_points(session, member_id, balance, [Credit(points, reason)], entry_type="adjust",
                      source_type="adjustment", source_id=source_id, occurred_at=now, program=program,
                      now=now, pending_allowed=False)
    elif points < 0:
        debit_points(session, member_id, balance, -points, entry_type="adjust", source_type="adjustment",
                     source_id=source_id, description=reason, now=now)
    adjustment_id = new_id()
    response = {"id": adjustment_id, "adjustment_id": source_id, "member_id": member_id, "points": points,
                "reason": reason, "balance": balance_view(session, member_id, balance, program)}
    session.execute(insert(Adjustment).values(
        id=adjustment_id, adjustment_id=source_id, member_id=member_id, points=points, reason=reason,
        request_hash=body_hash, response=response, created_at=now))
    return Outcome(response)


def ledger_totals(session: Session, member_ids: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
    """Return, per member, what the ledger and the lots add up to (for invariant checks)."""
    entries = select(LedgerEntry.member_id, func.sum(LedgerEntry.points)).group_by(LedgerEntry.member_id)
    lots = (select(PointLot.member_id, func.sum(PointLot.remaining))
            .where(PointLot.status == "available").group_by(PointLot.member_id))
    if member_ids is not None:
        member_ids = list(member_ids)
        entries = entries.where(LedgerEntry.member_id.in_(member_ids))
        lots = lots.where(PointLot.member_id.in_(member_ids))
    totals: dict[str, dict[str, int]] = {}
    for member_id, points in session.execute(entries):
        totals.setdefault(member_id, {"ledger": 0, "lots": 0})["ledger"] = int(points or 0)
    for member_id, points in session.execute(lots):
        totals.setdefault(member_id, {"ledger": 0, "lots": 0})["lots"] = int(points or 0)
    return totals
