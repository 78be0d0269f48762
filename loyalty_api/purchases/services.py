"""Earning: purchases, refunds and custom events, evaluated by the rules engine."""

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

import rules as engine

from ..bulk import Writes, update_from_rows
from ..driver import DriverQuery, Read, read_together
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
    Credit,
    CreditPlan,
    balance_view,
    debit_points,
    expiring_view,
    expiry_groups_read,
    lock_balance,
    plan_credit,
    reverse_pending,
    write_balances,
    write_credits,
    write_last_activity,
)
from ..members.services import MemberState, member_facts, multiplier_of_tier, read_members
from ..program.services import ProgramSettings, get_program
from ..referrals.services import (
    PendingReferral,
    pending_referrals,
    reverse_referral,
    write_completions,
)
from ..rules_admin.services import award_view, current_rule_set
from ..tiers.models import Tier
from ..tiers.services import (
    UPGRADE,
    TierLadder,
    counts_towards_tier,
    figures_read,
    tier_change_row,
    window_start,
    write_tier_changes,
)
from ..timeutil import isoformat
from .models import Event, Purchase, Refund

LIFETIME = datetime(1970, 1, 1, tzinfo=UTC)
# How far in the future a client clock may be before occurred_at is refused.
CLOCK_SKEW = timedelta(minutes=5)


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


def member_facts_for(session: Session, member_id: str | None, member: Mapping | None):
    """Return (member facts, tier multiplier) for a stored member or a described one (simulation)."""
    if member_id is not None:
        states = read_members(session, member_ids=[member_id], lock=False)
        if member_id not in states:
            raise ValidationFailed("no such member", {"member_id": ["no member has this id"]})
        return states[member_id].facts(), states[member_id].tier_multiplier
    member = member or {}
    tier_code, multiplier = member.get("tier"), None
    if tier_code:
        factor = session.execute(select(Tier.multiplier).where(Tier.code == tier_code)).scalar()
        multiplier = multiplier_of_tier(tier_code, factor)
    facts = member_facts(tier_code, member.get("enrolled_at") or LIFETIME, member.get("lifetime_earned", 0),
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


# --- earning -------------------------------------------------------------------------------

_usage = RuleUsage.__table__
_READ_USAGE = DriverQuery(
    select(_usage.c.member_id, _usage.c.rule_id, _usage.c.period_start, _usage.c.count, _usage.c.points)
    .where(_usage.c.member_id.in_(bindparam("member_ids", expanding=True)),
           _usage.c.rule_id.in_(bindparam("rule_ids", expanding=True)),
           _usage.c.period_start.in_(bindparam("starts", expanding=True)))
)
_UPDATE_USAGE = (
    update(_usage).where(_usage.c.member_id == bindparam("b_member"), _usage.c.rule_id == bindparam("b_rule"),
                         _usage.c.period_start == bindparam("b_start"))
    .values(count=bindparam("b_count"), points=bindparam("b_points"))
)
_PG_UPDATE_USAGE = update_from_rows(
    "rule_usage", "u", "b_member text, b_rule text, b_start timestamptz, b_count bigint, b_points bigint",
    "count = r.b_count, points = r.b_points",
    {"member_id": "b_member", "rule_id": "b_rule", "period_start": "b_start"})


class Earnings:
    """Earning for a set of members in one unit of work.

    Reads what it needs once (members, balances, tiers, rule usage, expiries), evaluates and
    plans each earning in order in memory, as if each had been posted alone, and writes
    everything at the end with one statement per table. A single purchase and a batch of a
    thousand go through the same steps.
    """

    def __init__(self, session: Session, program: ProgramSettings, now: datetime):
        self.session, self.program, self.now = session, program, now
        # Reads below go straight to the connection (no autoflush): flush pending ORM work first.
        session.flush()
        self.rule_set = current_rule_set(session, program)
        self.members: dict[str, MemberState] = {}
        self._by_external_id: dict[str, str] = {}
        self._usage: dict[tuple, list[int]] = {}
        self._stored_usage: set[tuple] = set()
        self._changed_usage: set[tuple] = set()
        self._plans: list[CreditPlan] = []
        self._changed_balances: set[str] = set()
        self._activity: dict[str, datetime] = {}
        # Tiers: the ladder, each member's qualifying figure (read only for members a higher
        # tier exists for), and the upgrades planned.
        self.ladder: TierLadder | None = None
        self._figures: dict[str, int] = {}
        self._tier_changes: list[tuple[dict, str | None]] = []
        # Referrals a purchase of this unit of work may complete, by referee.
        self._referrals: dict[str, PendingReferral] = {}
        self._completions: list[dict] = []

    def lock(self, bodies: Iterable[Mapping], occasion: Callable[[Mapping], tuple[str, datetime]],
             *, referrals: bool = False) -> None:
        """Lock and read every member the bodies name by member_id or member_external_id, and
        what earning for them reads: expiry groups, tier figures, and the rule usage of each
        body's `occasion(body)` (trigger, occurred_at).

        With `referrals`, the referrers of those members' pending referrals are locked too,
        so that completing a referral can credit them. They are locked after the members (a
        pending referral is rare: it waits for the referee's first purchase), which breaks
        the id order every other lock follows; the rare deadlock this allows is retried
        with the whole unit of work, like any other.
        """
        bodies = list(bodies)
        member_ids = {b["member_id"] for b in bodies if b.get("member_id") is not None}
        external_ids = {b["member_external_id"] for b in bodies if b.get("member_external_id") is not None}
        states = read_members(self.session, lock=True, member_ids=member_ids, external_ids=external_ids)
        referees = [state.id for state in states.values() if state.pending_referrer_id is not None]
        if referrals and referees:
            referrers = {states[m].pending_referrer_id for m in referees} - states.keys()
            states.update(read_members(self.session, lock=True, member_ids=referrers))
        self.members.update(states)
        self._by_external_id.update({state.external_id: state.id for state in states.values()})
        if self.ladder is None:
            self.ladder = TierLadder.current(self.session, self.program)
        ladder = self.ladder
        climbing = ([s.id for s in states.values() if ladder.has_above(ladder.by_code.get(s.tier_code))]
                    if ladder else [])
        occasions = [(member.id, *occasion(body)) for body in bodies if (member := self.find(body)) is not None]
        # Read after the lock, so that they see what the purchases that held it wrote.
        groups, figures, _ = read_together(
            self.session.connection(), expiry_groups_read(list(states), self.program),
            figures_read(self.program, self.now, climbing), self._usage_read(occasions))
        for member_id, member_groups in groups.items():
            self.members[member_id].expiry_groups = member_groups
        self._figures.update({member_id: figures.get(member_id, 0) for member_id in climbing})
        # The referral was read with the member, possibly before a concurrent purchase that
        # completed it released the lock: read it again, now that it is held.
        if referrals and referees:
            self._referrals.update(pending_referrals(self.session, referees))

    def find(self, body: Mapping) -> MemberState | None:
        """Return the locked member a body names, if any."""
        if body.get("member_id") is not None:
            return self.members.get(body["member_id"])
        return self.members.get(self._by_external_id.get(body.get("member_external_id")))

    def member_for(self, body: Mapping) -> MemberState:
        """Return the locked member a body names; refuse a body naming none, or both, or an unknown one."""
        has_id, has_external = body.get("member_id") is not None, body.get("member_external_id") is not None
        if has_id == has_external:
            raise ValidationFailed("name the member once",
                                   {"member_id": ["give exactly one of member_id, member_external_id"]})
        state = self.find(body)
        if state is None:
            field_name = "member_id" if has_id else "member_external_id"
            raise ValidationFailed("no such member", {field_name: ["no member has this id"]})
        return state

    def load_usage(self, occasions: Iterable[tuple[str, str, datetime]]) -> None:
        """Read the rule usage that (member_id, trigger, occurred_at) occasions may need, at once."""
        self._usage_read(occasions).run(self.session.connection())

    def _usage_read(self, occasions: Iterable[tuple[str, str, datetime]]) -> Read:
        """`load_usage` as a read to send with others (`read_together`); its rows go into the
        usage kept here."""
        wanted = {
            (member_id, rule_id, engine.period_start(period, at) or LIFETIME)
            for member_id, trigger, at in occasions
            for rule_id, period in self.rule_set.limited_rules(trigger)
        }
        wanted -= self._usage.keys()
        if not wanted:
            return Read.known(None)

        def keep(rows: list) -> None:
            for row in rows:
                key = (row.member_id, row.rule_id, row.period_start)
                if key in wanted:
                    self._usage[key] = [row.count, row.points]
                    self._stored_usage.add(key)

        return Read(_READ_USAGE, {"member_ids": list({k[0] for k in wanted}), "rule_ids": list({k[1] for k in wanted}),
                                  "starts": list({k[2] for k in wanted})}, keep)

    def earn(self, member: MemberState, *, trigger: str, facts: dict, at: datetime, source_type: str,
             source_id: str, entry_type: str = "earn") -> tuple[engine.Evaluation, CreditPlan | None]:
        """Evaluate the active rules for one occasion and plan the credit of what they award."""
        facts["member"] = member.facts()
        keys = {rule_id: (member.id, rule_id, engine.period_start(period, at) or LIFETIME)
                for rule_id, period in self.rule_set.limited_rules(trigger)}
        usage = {rule_id: engine.Usage(*self._usage[key]) for rule_id, key in keys.items() if key in self._usage}
        evaluation = engine.evaluate(self.rule_set, trigger, facts, at=at, usage=usage,
                                     tier_multiplier=member.tier_multiplier)
        for rule_id, used in evaluation.consumed.items():
            key = keys[rule_id]
            counts = self._usage.setdefault(key, [0, 0])
            counts[0] += used.count
            counts[1] += used.points
            self._changed_usage.add(key)
        credits = [Credit(a.points, a.rule_name, a.rule_id, a.rule_version) for a in evaluation.awards]
        plan = plan_credit(member.id, member.balance, credits, entry_type=entry_type, source_type=source_type,
                           source_id=source_id, occurred_at=at, program=self.program, now=self.now)
        if plan is not None:
            self._plans.append(plan)
            self._changed_balances.add(member.id)
            if member.last_activity_at is None or member.last_activity_at < at:
                member.last_activity_at = self._activity[member.id] = at
            lot = plan.lot
            if lot["status"] == "available" and lot["expires_at"] is not None and lot["remaining"]:
                groups = member.expiry_groups
                groups[lot["expires_at"]] = groups.get(lot["expires_at"], 0) + lot["remaining"]
        self._climb(member, source_type=source_type, facts=facts, points=evaluation.points, at=at)
        return evaluation, plan

    def _climb(self, member: MemberState, *, source_type: str, facts: dict, points: int, at: datetime) -> None:
        """Upgrade the member at once (several ranks if need be) when its figure reaches a higher tier.

        The new tier's multiplier applies to the member's later earnings in this unit of
        work too. Only the review moves a member down.
        """
        if not self.ladder:
            return
        current = self.ladder.by_code.get(member.tier_code)
        if not self.ladder.has_above(current):
            return
        figure = self._figures.get(member.id, 0)
        if counts_towards_tier(self.program, source_type) and at > window_start(self.program, self.now):
            figure += facts["purchase"]["total"] if self.program.tier_metric == "spend" else points
            self._figures[member.id] = figure
        target = self.ladder.upgrade_for(current, figure)
        if target is None:
            return
        self._tier_changes.append(
            (tier_change_row(member.id, current, target, UPGRADE, figure, self.program, self.now), target.id))
        member.tier_code = target.code
        member.tier_multiplier = multiplier_of_tier(target.code, target.multiplier)

    def complete_referral(self, member: MemberState, purchase: Mapping, at: datetime, transaction_id: str) -> None:
        """Complete the member's pending referral when this purchase qualifies; award both sides.

        The referee's first purchase of at least `min_purchase` within the window completes
        it; `referral_completed` rules then run once per side with `referral.role`.
        """
        referral = self._referrals.get(member.id)
        if (referral is None or purchase["total"] < self.program.referral_min_purchase
                or at > referral.expires_at):
            return
        del self._referrals[member.id]
        lots: dict[str, str | None] = {"referee": None, "referrer": None}
        for role, state in (("referee", member), ("referrer", self.members.get(referral.referrer_id))):
            if state is None or state.status != "active":
                continue
            self.load_usage([(state.id, "referral_completed", at)])
            facts = {**purchase_facts(purchase, at), "referral": {"role": role}}
            _, plan = self.earn(state, trigger="referral_completed", facts=facts, at=at, source_type="referral",
                                source_id=referral.id, entry_type="referral")
            lots[role] = plan.lot_id if plan else None
        self._completions.append({"id": referral.id, "completed_at": self.now, "transaction_id": transaction_id,
                                  "referee_lot_id": lots["referee"], "referrer_lot_id": lots["referrer"]})

    def balance_view(self, member: MemberState) -> dict:
        """Return the member's balance as it stands now in this unit of work."""
        balance = member.balance
        return {"available": balance.available, "pending": balance.pending,
                "lifetime_earned": balance.lifetime_earned,
                "expiring": expiring_view(member.expiry_groups, balance, self.program, member.last_activity_at)}

    def write(self, *, rows: Iterable[tuple[Table, list[dict]]] = ()) -> None:
        """Write every planned lot, entry, balance, activity and usage change, and `rows` (table,
        rows) of the caller's, in one statement on PostgreSQL; then tier changes and referrals."""
        writes = Writes()
        write_credits(writes, self._plans)
        write_balances(writes, {m: self.members[m].balance for m in self._changed_balances})
        write_last_activity(writes, self._activity)
        writes.insert(_usage, [
            {"id": new_id(), "member_id": k[0], "rule_id": k[1], "period_start": k[2],
             "count": self._usage[k][0], "points": self._usage[k][1]}
            for k in sorted(self._changed_usage - self._stored_usage)
        ])
        writes.update(_usage, _UPDATE_USAGE, _PG_UPDATE_USAGE, [
            {"b_member": k[0], "b_rule": k[1], "b_start": k[2], "b_count": self._usage[k][0],
             "b_points": self._usage[k][1]} for k in sorted(self._changed_usage & self._stored_usage)])
        for table, table_rows in rows:
            writes.insert(table, table_rows)
        writes.run(self.session.connection())
        # Both refer to the lots just written.
        write_tier_changes(self.session, self._tier_changes)
        write_completions(self.session, self._completions)
        self._tier_changes, self._completions = [], []
        self._plans, self._changed_balances, self._activity = [], set(), {}
        self._stored_usage |= self._changed_usage
        self._changed_usage = set()


def _pending_until(plan: CreditPlan | None) -> str | None:
    if plan is None or plan.lot["status"] != "pending":
        return None
    return isoformat(plan.lot["available_at"])


def award_points(session: Session, program: ProgramSettings, body: Mapping, *, trigger: str, facts: dict,
                 at: datetime, source_type: str, source_id: str, now: datetime):
    """Earn for one member named by `body` (member_id or member_external_id), and write it.

    Returns (member state, evaluation, credit plan). Raises MemberNotActive for a suspended
    or erased member and ValidationFailed for an unknown one.
    """
    earnings = Earnings(session, program, now)
    earnings.lock([body], lambda _body: (trigger, at))
    member = earnings.member_for(body)
    if member.status != "active":
        raise MemberNotActive()
    evaluation, plan = earnings.earn(member, trigger=trigger, facts=facts, at=at, source_type=source_type,
                                     source_id=source_id)
    earnings.write()
    return member, evaluation, plan, earnings


# --- purchases -----------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchEntry:
    """One purchase of a batch: its parsed body, or why it could not be parsed."""

    transaction_id: str | None
    data: Mapping | None = None
    refusal: DomainError | None = None


def create_purchase(session: Session, data: Mapping, now: datetime) -> Outcome:
    """Record a purchase once per transaction_id and award its points."""
    (result,) = apply_purchases(session, [BatchEntry(data["transaction_id"], data)], now)
    if isinstance(result, DomainError):
        raise result
    return result


def create_purchases_batch(session: Session, entries: Sequence[BatchEntry], now: datetime) -> list[dict]:
    """Apply each purchase on its own, exactly as if posted alone; return one result each."""
    results = []
    for entry, result in zip(entries, apply_purchases(session, entries, now), strict=True):
        if isinstance(result, DomainError):
            results.append({"transaction_id": entry.transaction_id, "status": result.status, "body": result.body()})
        else:
            results.append({"transaction_id": entry.transaction_id, "status": 200 if result.replayed else 201,
                            "body": result.body})
    return results


def apply_purchases(session: Session, entries: Sequence[BatchEntry], now: datetime) -> list[Outcome | DomainError]:
    """Apply purchases in order, each accepted or refused on its own, with set-based reads and writes.

    Returns, per entry, its Outcome (new or replayed) or the DomainError refusing it; a
    refused purchase writes nothing. A transaction_id seen earlier (stored, or earlier in
    the same batch) replays or conflicts exactly as a retried single request would.
    """
    program = get_program(session)
    results: list[Outcome | DomainError | None] = [None] * len(entries)
    candidates = []
    for index, entry in enumerate(entries):
        if entry.refusal is not None:
            results[index] = entry.refusal
        else:
            candidates.append((index, entry.data, request_hash(entry.data)))
    known = _stored_purchases(session, {data["transaction_id"] for _, data, _ in candidates})
    to_earn = []
    for index, data, body_hash in candidates:
        if data["transaction_id"] in known:
            results[index] = _replay_or_refusal(known[data["transaction_id"]], body_hash, data["transaction_id"])
            continue
        try:
            validate_purchase_body(data, program)
            _check_occurred_at(data["occurred_at"], now)
        except DomainError as err:
            results[index] = err
            continue
        to_earn.append((index, data, body_hash))
    if not to_earn:
        return results
    earnings = Earnings(session, program, now)
    earnings.lock((data for _, data, _ in to_earn), _purchase_occasion, referrals=True)
    rows = []
    for index, data, body_hash in to_earn:
        transaction_id = data["transaction_id"]
        if transaction_id in known:  # an earlier purchase of this batch
            results[index] = _replay_or_refusal(known[transaction_id], body_hash, transaction_id)
            continue
        try:
            member = earnings.member_for(data)
            if member.status != "active":
                raise MemberNotActive()
        except DomainError as err:
            results[index] = err
            continue
        at = data["occurred_at"]
        evaluation, plan = earnings.earn(member, trigger="purchase", facts=purchase_facts(data, at), at=at,
                                         source_type="purchase", source_id=transaction_id)
        earnings.complete_referral(member, data, at, transaction_id)
        purchase_id = new_id()
        response = {
            "id": purchase_id,
            "transaction_id": transaction_id,
            "member_id": member.id,
            "points": evaluation.points,
            "pending_until": _pending_until(plan),
            "awards": [award_view(a) for a in evaluation.awards],
            "balance": earnings.balance_view(member),
        }
        rows.append({
            "id": purchase_id, "transaction_id": transaction_id, "member_id": member.id, "occurred_at": at,
            "currency": data["currency"], "total": data["total"], "channel": data.get("channel"),
            "store_id": data.get("store_id"), "items": _stored_items(data.get("items")),
            "metadata": data.get("metadata"), "points": evaluation.points,
            "lot_id": plan.lot_id if plan else None, "refunded_amount": 0, "reversed_points": 0,
            "request_hash": body_hash, "response": response, "created_at": now,
        })
        known[transaction_id] = (body_hash, response)
        results[index] = Outcome(response)
    earnings.write(rows=[(_purchases, rows)])
    return results


_purchases = Purchase.__table__
_STORED_PURCHASES = DriverQuery(
    select(_purchases.c.transaction_id, _purchases.c.request_hash, _purchases.c.response)
    .where(_purchases.c.transaction_id.in_(bindparam("transaction_ids", expanding=True))))


def _stored_purchases(session: Session, transaction_ids: set[str]) -> dict[str, tuple[str, dict]]:
    if not transaction_ids:
        return {}
    rows = _STORED_PURCHASES.rows(session.connection(), {"transaction_ids": list(transaction_ids)})
    return {row.transaction_id: (row.request_hash, row.response) for row in rows}


def _purchase_occasion(body: Mapping) -> tuple[str, datetime]:
    return "purchase", body["occurred_at"]


def _replay_or_refusal(stored: tuple[str, dict], body_hash: str, client_id: str) -> Outcome | DomainError:
    try:
        return replay(stored[0], stored[1], body_hash, client_id)
    except DomainError as err:
        return err


def _stored_items(items):
    return [dict(item) for item in items] if items else None


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
    reverse_referral(session, program, transaction_id, purchase.total, refunded, purchase.occurred_at, balance,
                     refund_id=data["refund_id"], now=now)
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
    at = data["occurred_at"]
    member, evaluation, plan, earnings = award_points(
        session, program, data, trigger=f"event:{data['type']}", facts=event_facts(data, at), at=at,
        source_type="event", source_id=data["event_id"], now=now)
    event_id = new_id()
    response = {
        "id": event_id,
        "event_id": data["event_id"],
        "member_id": member.id,
        "points": evaluation.points,
        "pending_until": _pending_until(plan),
        "awards": [award_view(a) for a in evaluation.awards],
        "balance": earnings.balance_view(member),
    }
    session.execute(insert(Event).values(
        id=event_id, event_id=data["event_id"], type=data["type"], member_id=member.id, occurred_at=at,
        attributes=data.get("attributes") or {}, points=evaluation.points, request_hash=body_hash,
        response=response, created_at=now))
    return Outcome(response)


