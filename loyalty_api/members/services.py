"""Members: enrolment, profile, status and erasure."""

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy import bindparam, insert, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from ..driver import DriverQuery
from ..errors import DomainError, MemberExists, MemberNotActive, NotFound
from ..ids import new_id
from ..ledger.services import (
    Balance,
    expiring_list,
    expiring_view,
    load_expiry_groups,
    lock_balance,
    next_expiries,
)
from ..pagination import Page, decode_cursor, encode_cursor
from ..program.models import PROGRAM_ID, Program
from ..program.services import ProgramSettings, get_program
from ..referrals.models import Referral
from ..tiers.models import Tier
from ..timeutil import isoformat
from .models import Member, MemberBalance

_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O or 1/I to misread


class StripeCustomerTaken(DomainError):
    status, code, title = 409, "stripe_customer_taken", "Another member has this Stripe customer"


def _new_referral_code() -> str:
    return "".join(secrets.choice(_CODE_ALPHABET) for _ in range(8))


_members, _balances, _tiers, _program = Member.__table__, MemberBalance.__table__, Tier.__table__, Program.__table__
_MEMBER_VIEWS = (
    select(_members, _balances.c.available, _balances.c.pending, _balances.c.lifetime_earned,
           _tiers.c.code.label("tier_code"), _tiers.c.name.label("tier_name"))
    .join(_balances, _balances.c.member_id == _members.c.id)
    .outerjoin(_tiers, _tiers.c.id == _members.c.tier_id)
    .where(_members.c.id.in_(bindparam("member_ids", expanding=True)))
)


def member_views(session: Session, member_ids: list[str], program: ProgramSettings) -> dict[str, dict]:
    """Return members as the API shows them, with tier and balance, in two queries for any number."""
    session.flush()  # the reads below go to the connection, past the session's autoflush
    rows = session.connection().execute(_MEMBER_VIEWS, {"member_ids": member_ids}).all()
    groups = load_expiry_groups(session, [row.id for row in rows], program)
    views = {}
    for row in rows:
        balance = Balance(row.available, row.pending, row.lifetime_earned)
        views[row.id] = _view(row, expiring_view(groups.get(row.id, {}), balance, program, row.last_activity_at))
    return views


def _view(row, expiring: list[dict]) -> dict:
    """Return the member of a row of _MEMBER_VIEWS or _MEMBER_VIEW as the API shows it."""
    return {
        "id": row.id,
        "external_id": row.external_id,
        "email": row.email,
        "name": row.name,
        "birthdate": row.birthdate,
        "status": row.status,
        "tier": {"code": row.tier_code, "name": row.tier_name} if row.tier_code is not None else None,
        "referral_code": row.referral_code,
        "enrolled_at": row.enrolled_at,
        "metadata": row.metadata or {},
        "stripe_customer_id": row.stripe_customer_id,
        "balance": {"available": row.available, "pending": row.pending, "lifetime_earned": row.lifetime_earned,
                    "expiring": expiring},
    }


def member_view(session: Session, member: Member, program: ProgramSettings) -> dict:
    """Return a member as the API shows it, with tier and balance."""
    return member_views(session, [member.id], program)[member.id]


def create_member(session: Session, data: Mapping, now: datetime) -> dict:
    """Enrol a member and award what `enrollment` rules give.

    Raises MemberExists for a known external_id, InvalidReferralCode for an unknown code,
    SelfReferral and ReferralLimitReached for a code that may not refer this member.
    """
    from ..purchases.services import award_points
    from ..referrals.services import check_referral, create_referral

    program = get_program(session)
    if session.execute(select(Member.id).where(Member.external_id == data["external_id"])).first():
        raise MemberExists(f"external_id {data['external_id']!r} is taken")
    referrer_id = None
    if data.get("referral_code"):
        referrer_id = check_referral(session, data["referral_code"], data.get("email"), program)
    member = Member(
        id=new_id(), external_id=data["external_id"], email=data.get("email"), name=data.get("name"),
        birthdate=data.get("birthdate"), status="active", referral_code=_new_referral_code(),
        metadata_=data.get("metadata") or {}, enrolled_at=now,
    )
    session.add(member)
    session.flush()
    session.execute(insert(MemberBalance).values(member_id=member.id))
    if referrer_id is not None:
        create_referral(session, referrer_id, member.id, program, now)
    award_points(session, program, {"member_id": member.id}, trigger="enrollment", facts={}, at=now,
                 source_type="enrollment", source_id=member.id, now=now)
    session.refresh(member)
    return member_view(session, member, program)


# One member, everything its view needs in one statement: the member, balance and tier, the
# program's expiry settings, and (in fixed mode) its next expiry groups, one row per group.
# Balance reads are the most frequent request; this one statement replaces three.
_member_id = bindparam("member_id")
_next_expiries = next_expiries(_member_id)
_MEMBER_VIEW = (
    select(_members.c.id, _members.c.external_id, _members.c.email, _members.c.name, _members.c.birthdate,
           _members.c.status, _members.c.referral_code, _members.c.enrolled_at, _members.c.metadata,
           _members.c.stripe_customer_id, _members.c.last_activity_at,
           _balances.c.available, _balances.c.pending, _balances.c.lifetime_earned,
           _tiers.c.code.label("tier_code"), _tiers.c.name.label("tier_name"),
           _program.c.expiry_mode, _program.c.expiry_months,
           _next_expiries.c.expires_at.label("group_expires_at"), _next_expiries.c.points.label("group_points"))
    .join(_balances, _balances.c.member_id == _members.c.id)
    .join(_program, _program.c.id == PROGRAM_ID)
    .outerjoin(_tiers, _tiers.c.id == _members.c.tier_id)
    .outerjoin(_next_expiries, _program.c.expiry_mode == "fixed")
    .where(_members.c.id == _member_id)
)
_READ_MEMBER_VIEW = DriverQuery(_MEMBER_VIEW)


def get_member(connection: Connection, member_id: str) -> dict:
    """Return a member as the API shows it, read with one statement (`run_statement`); raise
    NotFound for an unknown one."""
    rows = _READ_MEMBER_VIEW.rows(connection, {"member_id": member_id})
    if not rows:
        raise NotFound("No such member")
    row = rows[0]
    groups = {r.group_expires_at: int(r.group_points) for r in rows if r.group_expires_at is not None}
    return _view(row, expiring_list(groups, row.available, row.expiry_mode, row.expiry_months,
                                    row.last_activity_at))


def list_members(session: Session, filters: Mapping, limit: int, cursor: str | None) -> Page:
    """Return members, newest first, optionally those with one external_id or email."""
    query = select(Member.id).order_by(Member.id.desc()).limit(limit + 1)
    if filters.get("external_id") is not None:
        query = query.where(Member.external_id == filters["external_id"])
    if filters.get("email") is not None:
        query = query.where(Member.email == filters["email"])
    if cursor:
        query = query.where(Member.id < decode_cursor(cursor))
    ids = session.execute(query).scalars().all()
    views = member_views(session, ids[:limit], get_program(session))
    return Page([views[member_id] for member_id in ids[:limit]],
                encode_cursor(ids[limit - 1]) if len(ids) > limit else None)


def update_member(session: Session, member_id: str, changes: Mapping, now: datetime) -> dict:
    """Change a member's profile or status (active|suspended); an erased member stays erased."""
    lock_balance(session, member_id)
    member = session.get(Member, member_id)
    if member.status == "erased":
        raise MemberNotActive("An erased member cannot change")
    if changes.get("stripe_customer_id"):
        taken = session.execute(select(Member.id).where(
            Member.stripe_customer_id == changes["stripe_customer_id"], Member.id != member_id)).first()
        if taken:
            raise StripeCustomerTaken(errors={"stripe_customer_id": ["belongs to another member"]})
    for key in ("email", "name", "birthdate", "status", "stripe_customer_id"):
        if key in changes:
            setattr(member, key, changes[key])
    if "metadata" in changes:
        member.metadata_ = changes["metadata"] or {}
    session.flush()
    return member_view(session, member, get_program(session))


def erase_member(session: Session, member_id: str, now: datetime) -> None:
    """Erase a member's personal data; the ledger stays, and the member earns nothing more."""
    lock_balance(session, member_id)
    member = session.get(Member, member_id)
    member.email = member.name = member.birthdate = member.stripe_customer_id = None
    member.metadata_ = {}
    # external_id is the client's identifier of a person: replace it, keep it unique.
    member.external_id = f"erased:{member.id}"
    member.status = "erased"
    member.erased_at = member.erased_at or now
    session.flush()


# --- members as earning and burning see them ------------------------------------------

def member_facts(tier_code: str | None, enrolled_at: datetime, lifetime_earned: int, status: str,
                 metadata: Mapping | None) -> dict:
    """Return the `member` facts rules see."""
    return {"tier": tier_code, "enrolled_at": isoformat(enrolled_at), "lifetime_earned": lifetime_earned,
            "status": status, "metadata": dict(metadata or {})}


def multiplier_of_tier(code: str | None, factor) -> tuple[str, Decimal] | None:
    """Return the (tier code, factor) the engine takes, or None when the tier multiplies nothing."""
    if code is None or factor is None or Decimal(factor) <= 1:
        return None
    return code, Decimal(factor)


@dataclass
class MemberState:
    """A member as one unit of work sees it: facts, the balance it holds locked, expiries."""

    id: str
    external_id: str
    status: str
    enrolled_at: datetime
    metadata: dict | None
    last_activity_at: datetime | None
    tier_code: str | None
    tier_multiplier: tuple[str, Decimal] | None
    balance: Balance
    expiry_groups: dict[datetime, int] = field(default_factory=dict)
    # The referrer of the member's pending referral, as read with the member (see Earnings.lock).
    pending_referrer_id: str | None = None

    def facts(self) -> dict:
        return member_facts(self.tier_code, self.enrolled_at, self.balance.lifetime_earned, self.status,
                             self.metadata)


_referrals = Referral.__table__
# Built once: the purchase path runs these on every request, and building a statement
# costs several times more than executing it.
_MEMBERS_WITH_BALANCES = (
    select(_balances.c.member_id, _balances.c.available, _balances.c.pending, _balances.c.lifetime_earned,
           _members.c.external_id, _members.c.status, _members.c.enrolled_at, _members.c.metadata,
           _members.c.last_activity_at, _tiers.c.code, _tiers.c.multiplier,
           _referrals.c.referrer_id.label("pending_referrer_id"))
    .join(_members, _members.c.id == _balances.c.member_id)
    .outerjoin(_tiers, _tiers.c.id == _members.c.tier_id)
    .outerjoin(_referrals, (_referrals.c.referee_id == _members.c.id) & (_referrals.c.status == "pending"))
    .where(or_(_members.c.id.in_(bindparam("member_ids", expanding=True)),
               _members.c.external_id.in_(bindparam("external_ids", expanding=True))))
    .order_by(_balances.c.member_id)
)
_READ_MEMBERS = DriverQuery(_MEMBERS_WITH_BALANCES)
_LOCK_MEMBERS = DriverQuery(_MEMBERS_WITH_BALANCES.with_for_update(of=_balances))


def read_members(session: Session, *, member_ids: Iterable[str] = (), external_ids: Iterable[str] = (),
                  lock: bool) -> dict[str, MemberState]:
    """Read members with balance and tier in one query; with `lock`, lock their balances (first).

    Locks are taken in member id order, so two batches touching the same members never
    deadlock on each other.
    """
    rows = (_LOCK_MEMBERS if lock else _READ_MEMBERS).rows(
        session.connection(), {"member_ids": list(member_ids), "external_ids": list(external_ids)})
    return {
        row.member_id: MemberState(
            id=row.member_id, external_id=row.external_id, status=row.status, enrolled_at=row.enrolled_at,
            metadata=row.metadata, last_activity_at=row.last_activity_at, tier_code=row.code,
            tier_multiplier=multiplier_of_tier(row.code, row.multiplier),
            balance=Balance(row.available, row.pending, row.lifetime_earned),
            pending_referrer_id=row.pending_referrer_id)
        for row in rows
    }
