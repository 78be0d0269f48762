"""Earning: purchases, refunds and custom events, evaluated by the rules engine."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

import rules as engine

from ..errors import (
    CurrencyMismatch,
    DomainError,
    ItemsTotalMismatch,
    MemberNotActive,
    NotFound,
    RefundExceedsPurchase,
    ValidationFailed,
)
from ..idempotency import Outcome, replay, request_hash
from ..ids import new_id
from ..ledger.models import RuleUsage
from ..ledger.services import (
    Balance,
    Credit,
    balance_view,
    credit_points,
    debit_points,
    lock_balance,
    reverse_pending,
)
from ..members.models import Member
from ..program.services import ProgramSettings, get_program
from ..rules_admin.services import award_view, current_rule_set
from ..tiers.models import Tier
from ..timeutil import isoformat
from .models import Event, Purchase, Refund

LIFETIME = datetime(1970, 1, 1, tzinfo=UTC)
# How far in the future a client clock may be before occurred_at is refused.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class EarningMember:
    """What earning needs to know of a member, read with its tier in one query."""

    id: str
    status: str
    facts: dict
    tier_multiplier: tuple[str, Decimal] | None


# --- facts ---------------------------------------------------------------------------------

def purchase_facts(purchase: Mapping, at: datetime) -> dict:
    """Return the engine's view of a purchase."""
    items = [
        {"sku": item["sku"], "category": item.get("category"), "quantity": item["quantity"],
         "unit_price": item["unit_price"], "amount": item["quantity"] * item["unit_price"]}
        for item in purchase.get("items") or ()
    ]
    return {
        "purchase": {
            "total": purchase["total"], "currency": purchase.get("currency"),
            "channel": purchase.get("channel"), "store_id": purchase.get("store_id"),
            "occurred_at": isoformat(at), "items": items, "metadata": purchase.get("metadata") or {},
        },
        "now": isoformat(at),
    }


def event_facts(event: Mapping, at: datetime) -> dict:
    return {"event": {"type": event["type"], "attributes": event.get("attributes") or {}}, "now": isoformat(at)}


def _member_facts(tier_code: str | None, enrolled_at: datetime, lifetime_earned: int, status: str,
                  metadata: Mapping | None) -> dict:
    return {"tier": tier_code, "enrolled_at": isoformat(enrolled_at), "lifetime_earned": lifetime_earned,
            "status": status, "metadata": dict(metadata or {})}


def load_earning_member(session: Session, member_id: str, balance: Balance) -> EarningMember:
    """Read the member and its tier; raise NotFound when there is no such member."""
    row = session.execute(
        select(Member.status, Member.enrolled_at, Member.metadata_, Tier.code, Tier.multiplier)
        .outerjoin(Tier, Tier.id == Member.tier_id).where(Member.id == member_id)
    ).first()
    if row is None:
        raise NotFound("No such member")
    multiplier = (row.code, Decimal(row.multiplier)) if row.code and Decimal(row.multiplier) > 1 else None
    facts = _member_facts(row.code, row.enrolled_at, balance.lifetime_earned, row.status, row.metadata_)
    return EarningMember(member_id, row.status, facts, multiplier)


def member_facts_for(session: Session, member_id: str | None, member: Mapping | None):
    """Return (member facts, tier multiplier) for a stored member or a described one."""
    if member_id is not None:
        from ..ledger.services import read_balance

        earning = load_earning_member(session, member_id, read_balance(session, member_id))
        return earning.facts, earning.tier_multiplier
    member = member or {}
    tier_code, multiplier = member.get("tier"), None
    if tier_code:
        factor = session.execute(select(Tier.multiplier).where(Tier.code == tier_code)).scalar()
        if factor is not None and Decimal(factor) > 1:
            multiplier = (tier_code, Decimal(factor))
    facts = _member_facts(tier_code, member.get("enrolled_at") or LIFETIME, member.get("lifetime_earned", 0),
                          member.get("status", "active"), member.get("metadata"))
    return facts, multiplier


# --- validation ----------------------------------------------------------------------------

def validate_purchase_body(purchase: Mapping, program: ProgramSettings) -> None:
    """Refuse a purchase whose items do not add up or whose currency is not the program's."""
    items = purchase.get("items")
    if items:
        items_total = sum(item["quantity"] * item["unit_price"] for item in items)
        if items_total != purchase["total"]:
            raise ItemsTotalMismatch(
                f"items add up to {items_total}, total is {purchase['total']}",
                {"items": [f"add up to {items_total}, not the total {purchase['total']}"]})
    if purchase.get("currency") is not None and purchase["currency"] != program.currency:
        raise CurrencyMismatch(f"the program's currency is {program.currency}",
                               {"currency": [f"must be {program.currency}"]})


def _check_occurred_at(occurred_at: datetime, now: datetime) -> None:
    if occurred_at > now + CLOCK_SKEW:
        raise ValidationFailed("occurred_at is in the future", {"occurred_at": ["must not be in the future"]})


def resolve_member_id(session: Session, data: Mapping) -> str:
    """Return the member id a body names by `member_id` or `member_external_id`."""
    has_id, has_external = data.get("member_id") is not None, data.get("member_external_id") is not None
    if has_id == has_external:
        raise ValidationFailed("name the member once",
                               {"member_id": ["give exactly one of member_id, member_external_id"]})
    if has_id:
        found = session.execute(select(Member.id).where(Member.id == data["member_id"])).scalar()
        field = "member_id"
    else:
        found = session.execute(select(Member.id).where(
            Member.external_id == data["member_external_id"])).scalar()
        field = "member_external_id"
    if found is None:
        raise ValidationFailed("no such member", {field: ["no member has this id"]})
    return found


# --- earning -------------------------------------------------------------------------------

def award_points(
    session: Session, member: EarningMember, balance: Balance, program: ProgramSettings, *,
    trigger: str, facts: dict, at: datetime, source_type: str, source_id: str, now: datetime,
) -> tuple[engine.Evaluation, str | None]:
    """Evaluate the active rules for one member and credit what they award.

    Returns the evaluation and the id of the lot credited (None when nothing was earned).
    """
    rule_set = current_rule_set(session, program)
    facts["member"] = member.facts
    limited = rule_set.limited_rules(trigger)
    usage, usage_keys = _load_usage(session, member.id, limited, at)
    evaluation = engine.evaluate(rule_set, trigger, facts, at=at, usage=usage,
                                 tier_multiplier=member.tier_multiplier)
    credits = [Credit(a.points, a.rule_name, a.rule_id, a.rule_version) for a in evaluation.awards]
    lot_id = credit_points(
        session, member.id, balance, credits, entry_type="earn", source_type=source_type,
        source_id=source_id, occurred_at=at, program=program, now=now)
    _store_usage(session, member.id, evaluation.consumed, usage, usage_keys)
    return evaluation, lot_id


def _load_usage(session: Session, member_id: str, limited: Sequence[tuple[str, str]], at: datetime):
    if not limited:
        return {}, {}
    keys = {rule_id: engine.period_start(period, at) or LIFETIME for rule_id, period in limited}
    rows = session.execute(select(RuleUsage.rule_id, RuleUsage.period_start, RuleUsage.count, RuleUsage.points)
                           .where(RuleUsage.member_id == member_id, RuleUsage.rule_id.in_(list(keys)))).all()
    usage = {row.rule_id: engine.Usage(row.count, row.points) for row in rows
             if row.period_start == keys[row.rule_id]}
    return usage, keys


def _store_usage(session: Session, member_id: str, consumed: Mapping[str, engine.Usage],
                 usage: Mapping[str, engine.Usage], keys: Mapping) -> None:
    for rule_id, used in consumed.items():
        if rule_id in usage:
            session.execute(update(RuleUsage).where(
                RuleUsage.member_id == member_id, RuleUsage.rule_id == rule_id,
                RuleUsage.period_start == keys[rule_id],
            ).values(count=RuleUsage.count + used.count, points=RuleUsage.points + used.points))
        else:
            session.execute(insert(RuleUsage).values(
                id=new_id(), member_id=member_id, rule_id=rule_id, period_start=keys[rule_id],
                count=used.count, points=used.points))


def _require_active(member: EarningMember) -> None:
    if member.status != "active":
        raise MemberNotActive()


# --- purchases -----------------------------------------------------------------------------

def create_purchase(session: Session, data: Mapping, now: datetime) -> Outcome:
    """Record a purchase once per transaction_id and award its points."""
    program = get_program(session)
    body_hash = request_hash(data)
    existing = session.execute(select(Purchase.request_hash, Purchase.response)
                               .where(Purchase.transaction_id == data["transaction_id"])).first()
    if existing is not None:
        return replay(existing.request_hash, existing.response, body_hash, data["transaction_id"])
    validate_purchase_body(data, program)
    _check_occurred_at(data["occurred_at"], now)
    member_id = resolve_member_id(session, data)
    balance = lock_balance(session, member_id)
    member = load_earning_member(session, member_id, balance)
    _require_active(member)
    purchase_id = new_id()
    at = data["occurred_at"]
    evaluation, lot_id = award_points(
        session, member, balance, program, trigger="purchase", facts=purchase_facts(data, at), at=at,
        source_type="purchase", source_id=data["transaction_id"], now=now)
    response = {
        "id": purchase_id,
        "transaction_id": data["transaction_id"],
        "member_id": member_id,
        "points": evaluation.points,
        "pending_until": _pending_until(balance, lot_id, at, program, now),
        "awards": [award_view(a) for a in evaluation.awards],
        "balance": balance_view(session, member_id, balance, program),
    }
    session.execute(insert(Purchase).values(
        id=purchase_id, transaction_id=data["transaction_id"], member_id=member_id, occurred_at=at,
        currency=data["currency"], total=data["total"], channel=data.get("channel"),
        store_id=data.get("store_id"), items=_stored_items(data.get("items")), metadata_=data.get("metadata"),
        points=evaluation.points, lot_id=lot_id, request_hash=body_hash, response=response, created_at=now))
    return Outcome(response)


def _stored_items(items):
    return [dict(item) for item in items] if items else None


def _pending_until(balance: Balance, lot_id: str | None, at: datetime, program: ProgramSettings,
                   now: datetime) -> str | None:
    if lot_id is None:
        return None
    available_at = at + timedelta(days=program.pending_days)
    return isoformat(available_at) if available_at > now else None


def get_purchase(session: Session, transaction_id: str) -> dict:
    """Return a stored purchase with what its refunds reversed."""
    purchase = session.execute(select(Purchase).where(Purchase.transaction_id == transaction_id)).scalar()
    if purchase is None:
        raise NotFound("No such purchase")
    refunds = session.execute(select(Refund.refund_id, Refund.amount, Refund.points_reversed, Refund.created_at)
                              .where(Refund.purchase_id == purchase.id).order_by(Refund.id)).all()
    return {
        "id": purchase.id,
        "transaction_id": purchase.transaction_id,
        "member_id": purchase.member_id,
        "occurred_at": purchase.occurred_at,
        "currency": purchase.currency,
        "total": purchase.total,
        "channel": purchase.channel,
        "store_id": purchase.store_id,
        "items": purchase.items or [],
        "metadata": purchase.metadata_ or {},
        "points": purchase.points,
        "pending_until": purchase.response.get("pending_until"),
        "awards": purchase.response.get("awards", []),
        "refunded_amount": purchase.refunded_amount,
        "points_reversed": sum(r.points_reversed for r in refunds),
        "refunds": [{"refund_id": r.refund_id, "amount": r.amount, "points_reversed": r.points_reversed,
                     "created_at": r.created_at} for r in refunds],
        "created_at": purchase.created_at,
    }


# --- refunds -------------------------------------------------------------------------------

def create_refund(session: Session, transaction_id: str, data: Mapping, now: datetime) -> Outcome:
    """Reverse floor(earned × refunded ÷ total), cumulatively, once per refund_id.

    Pending points of the purchase go first, then its own lot, then other lots soonest
    expiring first; past the balance only when the program allows a negative balance.
    """
    body_hash = request_hash({**data, "transaction_id": transaction_id})
    existing = session.execute(select(Refund.request_hash, Refund.response)
                               .where(Refund.refund_id == data["refund_id"])).first()
    if existing is not None:
        return replay(existing.request_hash, existing.response, body_hash, data["refund_id"])
    found = session.execute(select(Purchase.id, Purchase.member_id)
                            .where(Purchase.transaction_id == transaction_id)).first()
    if found is None:
        raise NotFound("No such purchase")
    program = get_program(session)
    balance = lock_balance(session, found.member_id)
    # Read after the lock: concurrent refunds of one purchase are serialised by it.
    purchase = session.execute(select(Purchase).where(Purchase.id == found.id)).scalar_one()
    refunded = purchase.refunded_amount + data["amount"]
    if refunded > purchase.total:
        raise RefundExceedsPurchase(
            f"{purchase.total - purchase.refunded_amount} of {purchase.total} is left to refund",
            {"amount": [f"must be at most {purchase.total - purchase.refunded_amount}"]})
    owed = purchase.points * refunded // purchase.total
    to_reverse = owed - purchase.reversed_points
    reversed_points = 0
    description = f"Refund {data['refund_id']} of {transaction_id}"
    if to_reverse > 0 and purchase.lot_id is not None:
        reversed_points = reverse_pending(
            session, purchase.member_id, balance, purchase.lot_id, to_reverse, source_type="refund",
            source_id=data["refund_id"], description=description, now=now)
    rest = to_reverse - reversed_points
    if rest > 0:
        allow_negative = program.negative_balance == "allow"
        take = rest if allow_negative else min(rest, max(balance.available, 0))
        if take > 0:
            debit_points(session, purchase.member_id, balance, take, entry_type="reverse",
                         source_type="refund", source_id=data["refund_id"], description=description,
                         now=now, allow_negative=allow_negative, first_lot_id=purchase.lot_id,
                         reduce_lifetime=True)
            reversed_points += take
    purchase.refunded_amount = refunded
    purchase.reversed_points = owed
    refund_id = new_id()
    response = {
        "id": refund_id,
        "refund_id": data["refund_id"],
        "transaction_id": transaction_id,
        "amount": data["amount"],
        "points_reversed": reversed_points,
        "balance": balance_view(session, purchase.member_id, balance, program),
    }
    session.execute(insert(Refund).values(
        id=refund_id, refund_id=data["refund_id"], purchase_id=purchase.id, member_id=purchase.member_id,
        amount=data["amount"], points_reversed=reversed_points, request_hash=body_hash, response=response,
        created_at=now))
    session.flush()
    return Outcome(response)


# --- events --------------------------------------------------------------------------------

def create_event(session: Session, data: Mapping, now: datetime) -> Outcome:
    """Record a custom event once per event_id and award what `event:<type>` rules give."""
    body_hash = request_hash(data)
    existing = session.execute(select(Event.request_hash, Event.response)
                               .where(Event.event_id == data["event_id"])).first()
    if existing is not None:
        return replay(existing.request_hash, existing.response, body_hash, data["event_id"])
    _check_occurred_at(data["occurred_at"], now)
    program = get_program(session)
    member_id = resolve_member_id(session, data)
    balance = lock_balance(session, member_id)
    member = load_earning_member(session, member_id, balance)
    _require_active(member)
    at = data["occurred_at"]
    evaluation, lot_id = award_points(
        session, member, balance, program, trigger=f"event:{data['type']}", facts=event_facts(data, at),
        at=at, source_type="event", source_id=data["event_id"], now=now)
    event_id = new_id()
    response = {
        "id": event_id,
        "event_id": data["event_id"],
        "member_id": member_id,
        "points": evaluation.points,
        "pending_until": _pending_until(balance, lot_id, at, program, now),
        "awards": [award_view(a) for a in evaluation.awards],
        "balance": balance_view(session, member_id, balance, program),
    }
    session.execute(insert(Event).values(
        id=event_id, event_id=data["event_id"], type=data["type"], member_id=member_id, occurred_at=at,
        attributes=data.get("attributes") or {}, points=evaluation.points, request_hash=body_hash,
        response=response, created_at=now))
    return Outcome(response)


# --- batch ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchEntry:
    """One purchase of a batch: its parsed body, or why it could not be parsed."""

    transaction_id: str | None
    data: Mapping | None = None
    refusal: DomainError | None = None


def create_purchases_batch(session: Session, entries: Sequence[BatchEntry], now: datetime) -> list[dict]:
    """Apply each purchase on its own, exactly as if posted alone; return one result each.

    Each purchase runs in its own savepoint, so one refused purchase leaves the others.
    """
    results = []
    for entry in entries:
        try:
            if entry.refusal is not None:
                raise entry.refusal
            with session.begin_nested():
                outcome = create_purchase(session, entry.data, now)
            status = 200 if outcome.replayed else 201
            results.append({"transaction_id": entry.transaction_id, "status": status, "body": outcome.body})
        except DomainError as err:
            results.append({"transaction_id": entry.transaction_id, "status": err.status, "body": err.body()})
    return results
