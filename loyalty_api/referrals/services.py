"""Referrals: recorded at enrolment, completed by the referee's first qualifying purchase.

Completion happens inside the earning pipeline (purchases/services.py, `Earnings`), which
awards both sides through `referral_completed` rules; a refund of the completing purchase
within `pending_days` reverses both bonuses (`reverse_referral`); the tier review expires
referrals whose window passed (`expire_referrals`).
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from ..errors import InvalidReferralCode, NotFound, ReferralLimitReached, SelfReferral
from ..ids import new_id
from ..ledger.models import PointLot
from ..ledger.services import Balance, debit_points, lock_balance, reverse_pending
from ..members.models import Member
from ..pagination import Page, decode_cursor, encode_cursor
from ..program.services import ProgramSettings
from ..timeutil import add_days
from .models import Referral

PENDING, COMPLETED, EXPIRED, REJECTED = "pending", "completed", "expired", "rejected"
# Referrals that hold one of the referrer's `max_per_referrer` places.
COUNTED = (PENDING, COMPLETED)


def _same_email(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and a.strip().lower() == b.strip().lower()


def check_referral(session: Session, code: str, email: str | None, program: ProgramSettings,
                   member_id: str | None = None) -> str:
    """Return the referrer's id for a referral code a new member gives.

    Locks the referrer's balance row, so that concurrent enrolments count its referrals one
    at a time. Raises InvalidReferralCode (no active member has the code), SelfReferral
    (the same member, or the same email) or ReferralLimitReached (`max_per_referrer`).
    """
    referrer = session.execute(select(Member.id, Member.email).where(
        Member.referral_code == code.strip().upper(), Member.status == "active")).first()
    if referrer is None:
        raise InvalidReferralCode(errors={"referral_code": ["no active member has this code"]})
    if referrer.id == member_id or _same_email(referrer.email, email):
        raise SelfReferral("the referral code is the new member's own",
                           {"referral_code": ["belongs to a member with the same email"]})
    lock_balance(session, referrer.id)
    used = session.execute(select(func.count()).select_from(Referral).where(
        Referral.referrer_id == referrer.id, Referral.status.in_(COUNTED))).scalar()
    if used >= program.referral_max_per_referrer:
        raise ReferralLimitReached(
            f"the referrer has {used} referrals, the most allowed is {program.referral_max_per_referrer}",
            {"referral_code": ["its member cannot refer anyone more"]})
    return referrer.id


def create_referral(session: Session, referrer_id: str, referee_id: str, program: ProgramSettings,
                    now: datetime) -> None:
    """Record a pending referral that a purchase can complete until `window_days` from now."""
    session.add(Referral(id=new_id(), referrer_id=referrer_id, referee_id=referee_id, status=PENDING,
                         created_at=now, expires_at=add_days(now, program.referral_window_days),
                         updated_at=now))
    session.flush()


@dataclass
class PendingReferral:
    """A referral the earning pipeline may complete in this unit of work."""

    id: str
    referrer_id: str
    referee_id: str
    expires_at: datetime


_referrals = Referral.__table__
_members = Member.__table__
# The purchase path runs these on every request: built once.
_PENDING_REFERRALS = select(_referrals.c.id, _referrals.c.referrer_id, _referrals.c.referee_id,
                            _referrals.c.expires_at).where(
    _referrals.c.status == PENDING, _referrals.c.referee_id.in_(bindparam("referee_ids", expanding=True)))


def pending_referrals(session: Session, referee_ids: Iterable[str]) -> dict[str, PendingReferral]:
    """Return the pending referral of each referee that has one (call with the referees locked)."""
    referee_ids = list(referee_ids)
    if not referee_ids:
        return {}
    rows = session.connection().execute(_PENDING_REFERRALS, {"referee_ids": referee_ids})
    return {row.referee_id: PendingReferral(row.id, row.referrer_id, row.referee_id, row.expires_at)
            for row in rows}


def write_completions(session: Session, completions: Iterable[Mapping]) -> None:
    """Mark referrals completed, with their purchase and bonus lots (one statement)."""
    completions = list(completions)
    if not completions:
        return
    table = Referral.__table__
    # No status guard: the completing purchase fell inside the window, so it wins over an
    # expiry that raced it.
    session.execute(
        update(table).where(table.c.id == bindparam("b_id")).values(
            status=COMPLETED, completed_at=bindparam("b_at"), transaction_id=bindparam("b_transaction"),
            referee_lot_id=bindparam("b_referee_lot"), referrer_lot_id=bindparam("b_referrer_lot"),
            updated_at=bindparam("b_at")),
        [{"b_id": c["id"], "b_at": c["completed_at"], "b_transaction": c["transaction_id"],
          "b_referee_lot": c["referee_lot_id"], "b_referrer_lot": c["referrer_lot_id"]} for c in completions])


def reverse_referral(session: Session, program: ProgramSettings, transaction_id: str, purchase_total: int,
                     refunded_amount: int, occurred_at: datetime, referee_balance: Balance, *,
                     refund_id: str, now: datetime) -> int:
    """Reverse both bonuses of the referral a purchase completed when its refund undoes the purchase.

    Applies within `pending_days` of the purchase (while the bonuses are still pending) and
    when what is left of the purchase is below `min_purchase` (a full refund always).
    The referee's balance is already locked by the refund; the referrer's is locked here.
    Returns the points reversed from the referee (the caller reports its own balance).
    """
    if now >= add_days(occurred_at, program.pending_days):
        return 0
    if purchase_total - refunded_amount >= max(program.referral_min_purchase, 1):
        return 0
    referral = session.execute(select(Referral).where(
        Referral.transaction_id == transaction_id, Referral.status == COMPLETED)).scalar()
    if referral is None:
        return 0
    description = f"Referral bonus reversed: refund {refund_id} of {transaction_id}"
    referee_points = 0
    for member_id, lot_id in ((referral.referee_id, referral.referee_lot_id),
                              (referral.referrer_id, referral.referrer_lot_id)):
        if lot_id is None:
            continue
        balance = referee_balance if member_id == referral.referee_id else lock_balance(session, member_id)
        reversed_points = _reverse_lot(session, program, member_id, balance, lot_id, description=description,
                                       refund_id=refund_id, now=now)
        if member_id == referral.referee_id:
            referee_points = reversed_points
    referral.status, referral.reason, referral.updated_at = REJECTED, "purchase_refunded", now
    session.flush()
    return referee_points


def _reverse_lot(session: Session, program: ProgramSettings, member_id: str, balance: Balance, lot_id: str, *,
                 description: str, refund_id: str, now: datetime) -> int:
    """Take a bonus lot's points back: pending ones first, then available ones as a refund would."""
    points = session.execute(select(PointLot.points).where(PointLot.id == lot_id)).scalar_one()
    taken = reverse_pending(session, member_id, balance, lot_id, points, source_type="refund",
                            source_id=refund_id, description=description, now=now)
    rest = points - taken
    if rest > 0:
        allow_negative = program.negative_balance == "allow"
        take = rest if allow_negative else min(rest, max(balance.available, 0))
        if take > 0:
            debit_points(session, member_id, balance, take, entry_type="reverse", source_type="refund",
                         source_id=refund_id, description=description, now=now, allow_negative=allow_negative,
                         first_lot_id=lot_id, reduce_lifetime=True)
            taken += take
    return taken


def expire_referrals(session: Session, now: datetime, *, after: str | None = None, upto: str | None = None) -> int:
    """Expire pending referrals whose window closed before `now` (referees in (after, upto]); return how many."""
    table = Referral.__table__
    query = update(table).where(table.c.status == PENDING, table.c.expires_at < now)
    if after is not None:
        query = query.where(table.c.referee_id > after)
    if upto is not None:
        query = query.where(table.c.referee_id <= upto)
    return session.execute(query.values(status=EXPIRED, updated_at=now)).rowcount or 0


def list_referrals(session: Session, member_id: str, limit: int, cursor: str | None) -> Page:
    """Return the referrals a member made, newest first."""
    if session.get(Member, member_id) is None:
        raise NotFound("No such member")
    query = (select(Referral).where(Referral.referrer_id == member_id)
             .order_by(Referral.id.desc()).limit(limit + 1))
    if cursor:
        query = query.where(Referral.id < decode_cursor(cursor))
    rows = session.execute(query).scalars().all()
    data = [{"id": r.id, "referee_id": r.referee_id, "status": r.status, "reason": r.reason,
             "created_at": r.created_at, "expires_at": r.expires_at, "completed_at": r.completed_at}
            for r in rows[:limit]]
    return Page(data, encode_cursor(rows[limit - 1].id) if len(rows) > limit else None)
