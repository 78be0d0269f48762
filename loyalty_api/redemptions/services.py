"""Burning points: quotes, redemptions by points or for a reward, and their cancellation."""

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

import rules as engine

from ..bulk import Writes
from ..errors import (
    BelowMinimum,
    DomainError,
    ExceedsOrderShare,
    InsufficientPoints,
    InvalidStep,
    MemberNotActive,
    NoBurnRule,
    NotFound,
)
from ..idempotency import Outcome, replay, request_hash
from ..ids import new_id
from ..ledger.services import (
    balance_view,
    debit_points,
    lock_balance,
    restore_allocations,
    write_last_activity,
)
from ..members.services import MemberState, read_members
from ..program.services import ProgramSettings, get_program
from ..rewards.services import offered_reward, release_reward, take_stock
from ..rules_admin.services import current_rule_set
from ..timeutil import isoformat
from .models import Redemption

# The engine's refusal codes, as the API's errors (and the field each one is about).
_REFUSALS: dict[str, tuple[type[DomainError], str | None]] = {
    "no_burn_rule": (NoBurnRule, None),
    "below_minimum": (BelowMinimum, "points"),
    "invalid_step": (InvalidStep, "points"),
    "exceeds_order_share": (ExceedsOrderShare, "points"),
    "insufficient_points": (InsufficientPoints, "points"),
}


def load_burning_member(session: Session, member_id: str, *, lock: bool) -> MemberState:
    """Read the member with balance and tier in one query; with `lock`, lock its balance row.

    Raises NotFound, or MemberNotActive when suspended or erased.
    """
    member = read_members(session, member_ids=[member_id], lock=lock).get(member_id)
    if member is None:
        raise NotFound("No such member")
    if member.status != "active":
        raise MemberNotActive()
    return member


def burn_facts(member: MemberState, program: ProgramSettings, order_total: int | None,
               channel: str | None, at: datetime) -> dict:
    """Return what a burn rule's conditions see: the order as `purchase`, the member, `now`."""
    return {"purchase": {"total": order_total, "currency": program.currency, "channel": channel},
            "member": member.facts(), "now": isoformat(at)}


def _refusal(err: engine.BurnRefused) -> DomainError:
    error_class, field = _REFUSALS[err.code]
    return error_class(err.message, {field: [err.message]} if field else None)


def quote_redemption(session: Session, member_id: str, data: Mapping, now: datetime) -> dict:
    """Return the most points the member may spend on this order, and what they are worth.

    Only available points count (pending ones are never spent); 0 when no burn rule applies.
    """
    program = get_program(session)
    member = load_burning_member(session, member_id, lock=False)
    balance = member.balance
    facts = burn_facts(member, program, data["order_total"], data.get("channel"), now)
    quote = engine.price_redemption(current_rule_set(session, program), facts, at=now,
                                    available=balance.available, order_total=data["order_total"])
    return {"max_points": quote.points, "value": quote.value}


def create_redemption(session: Session, member_id: str, data: Mapping, now: datetime) -> Outcome:
    """Spend points once per redemption_id: `points` priced by the burn rule, or a reward.

    Raises InsufficientPoints, BelowMinimum, InvalidStep, ExceedsOrderShare, NoBurnRule,
    RewardUnavailable, MemberNotActive; nothing is written then. The member's balance row
    is locked first, so concurrent redemptions are serialised and never overdraw.
    """
    body_hash = request_hash({**data, "member_id": member_id})
    existing = session.execute(select(Redemption.request_hash, Redemption.response)
                               .where(Redemption.redemption_id == data["redemption_id"])).first()
    if existing is not None:
        return replay(existing.request_hash, existing.response, body_hash, data["redemption_id"])
    program = get_program(session)
    # The member's balance row is locked first: concurrent writes for the member queue here.
    member = load_burning_member(session, member_id, lock=True)
    balance = member.balance
    redemption_id = new_id()
    reward = None
    if data.get("reward_id") is not None:
        reward = offered_reward(session, data["reward_id"], member.tier_code)
        points, value, rule_id, rule_version = reward.cost_points, 0, None, None
        description = f"Reward {reward.name}"
    else:
        facts = burn_facts(member, program, data.get("order_total"), data.get("channel"), now)
        try:
            quote = engine.price_redemption(current_rule_set(session, program), facts, at=now,
                                            available=balance.available, order_total=data.get("order_total"),
                                            points=data["points"])
        except engine.BurnRefused as err:
            raise _refusal(err) from err
        points, value, rule_id, rule_version = quote.points, quote.value, quote.rule_id, quote.rule_version
        description = f"Redemption {data['redemption_id']}"
    debit = debit_points(session, member_id, balance, points, entry_type="redeem", source_type="redemption",
                         source_id=redemption_id, description=description, now=now)
    if reward is not None:
        take_stock(session, reward.id)
    writes = Writes()
    write_last_activity(writes, {member_id: now})
    writes.run(session.connection())
    response = {
        "id": redemption_id,
        "redemption_id": data["redemption_id"],
        "member_id": member_id,
        "status": "completed",
        "points": points,
        "value": value,
        "reward": None if reward is None else {"id": reward.id, "code": reward.code, "name": reward.name,
                                                "cost_points": reward.cost_points},
        "rule_id": rule_id,
        "rule_version": rule_version,
        "created_at": isoformat(now),
        "balance": balance_view(session, member_id, balance, program),
    }
    session.execute(insert(Redemption).values(
        id=redemption_id, redemption_id=data["redemption_id"], member_id=member_id, points=points, value=value,
        reward_id=None if reward is None else reward.id, rule_id=rule_id, rule_version=rule_version,
        order_total=data.get("order_total"), channel=data.get("channel"), status="completed",
        entry_id=debit.entry_id, request_hash=body_hash, response=response, created_at=now))
    return Outcome(response)


def cancel_redemption(session: Session, redemption_id: str, now: datetime, *,
                      member_id: str | None = None) -> Outcome:
    """Give a redemption's points back to the lots it took them from, and its reward unit, once.

    A second cancel replays the first one's result. With `member_id` (a member token), only
    that member's redemption is found: NotFound otherwise.
    """
    owner = session.execute(select(Redemption.member_id).where(Redemption.id == redemption_id)).scalar()
    if owner is None or (member_id is not None and owner != member_id):
        raise NotFound("No such redemption")
    program = get_program(session)
    balance = lock_balance(session, owner)
    # Read under the member's lock: a concurrent cancel has committed or waits behind us.
    redemption = session.execute(select(Redemption).where(Redemption.id == redemption_id)
                                 .execution_options(populate_existing=True)).scalar_one()
    if redemption.status == "cancelled":
        return Outcome(redemption.cancel_response, replayed=True)
    restored = restore_allocations(
        session, owner, balance, redemption.entry_id, source_type="redemption", source_id=redemption.id,
        description=f"Cancel of redemption {redemption.redemption_id}", now=now)
    if redemption.reward_id is not None:
        release_reward(session, redemption.reward_id)
    response = {
        **redemption.response,
        "status": "cancelled",
        "cancelled_at": isoformat(now),
        "points_restored": restored.restored,
        "points_expired": restored.expired,
        "balance": balance_view(session, owner, balance, program),
    }
    redemption.status = "cancelled"
    redemption.cancelled_at = now
    redemption.cancel_entry_id = restored.entry_id
    redemption.cancel_response = response
    session.flush()
    return Outcome(response)
