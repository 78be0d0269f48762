"""The ledger as a state machine: random interleavings of every write, at random times.

hypothesis drives purchases, refunds, events, redemptions, cancels, adjustments, retries, and
activate-pending / expire-points runs through the HTTP API while the clock moves forward by
random amounts. The test keeps its own model of the member's point lots (pending until
`pending_days`, expiring a month after they were earned, spent soonest-expiring first, debts
paid first) and after every step checks the service's balance against the model and DESIGN.md's
invariants against the database. LOYALTY_PROPERTY_EXAMPLES raises the number of runs.
"""

import itertools
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule, run_state_machine_as_test

from loyalty_api.timeutil import add_months, isoformat

from .conftest import NOW
from .helpers import assert_invariants, at, make_member, make_rule

EXAMPLES = int(os.environ.get("LOYALTY_PROPERTY_EXAMPLES", "25"))
PENDING_DAYS, EXPIRY_MONTHS, EVENT_POINTS = 2, 1, 25
_machines = itertools.count()


@dataclass
class Lot:
    order: int
    points: int
    remaining: int
    status: str
    available_at: datetime
    expires_at: datetime


@dataclass
class Purchase:
    transaction_id: str
    total: int
    points: int
    lot: Lot | None
    refunded: int = 0
    reversed: int = 0


@dataclass
class Redemption:
    id: str
    points: int
    taken: list[tuple[Lot, int]]
    cancelled: bool = False


@dataclass
class Model:
    """What the member's balance must be, computed without the service."""

    available: int = 0
    pending: int = 0
    lifetime: int = 0
    lots: list[Lot] = field(default_factory=list)

    def credit(self, points: int, occurred_at: datetime, now: datetime, *, pending_allowed: bool,
               earning: bool) -> Lot:
        available_at = occurred_at + timedelta(days=PENDING_DAYS)
        pending = pending_allowed and available_at > now
        lot = Lot(len(self.lots), points, points if pending else max(0, min(points, self.available + points)),
                  "pending" if pending else "available", available_at if pending else min(available_at, now),
                  add_months(occurred_at, EXPIRY_MONTHS))
        self.lots.append(lot)
        if pending:
            self.pending += points
        else:
            self.available += points
        if earning:
            self.lifetime += points
        return lot

    def debit(self, points: int, first: Lot | None = None) -> list[tuple[Lot, int]]:
        taken, still = [], points
        spendable = (lot for lot in self.lots if lot.status == "available" and lot.remaining > 0 and lot is not first)
        order = sorted(spendable, key=lambda lot: (lot.expires_at, lot.order))
        if first is not None and first.status == "available" and first.remaining > 0:
            order.insert(0, first)
        for lot in order:
            if still == 0:
                break
            take = min(lot.remaining, still)
            lot.remaining -= take
            still -= take
            taken.append((lot, take))
        self.available -= points
        return taken

    def restore(self, taken: list[tuple[Lot, int]], now: datetime) -> None:
        debt, expired = max(0, -self.available), 0
        for lot, points in sorted(taken, key=lambda t: (t[0].expires_at, t[0].order)):
            if lot.status == "expired" or lot.expires_at <= now:
                expired += points
                continue
            paid = min(debt, points)
            debt -= paid
            lot.remaining += points - paid
        self.available += sum(points for _, points in taken) - expired

    def activate(self, now: datetime) -> None:
        due = sorted((lot for lot in self.lots if lot.status == "pending" and lot.available_at <= now),
                     key=lambda lot: (lot.available_at, lot.order))
        moving = sum(lot.remaining for lot in due)
        debt = max(0, -self.available)
        for lot in due:
            paid = min(debt, lot.remaining)
            debt -= paid
            lot.remaining -= paid
            lot.status = "available"
        self.pending -= moving
        self.available += moving

    def expire(self, now: datetime) -> None:
        for lot in self.lots:
            if lot.status == "available" and lot.expires_at <= now:
                self.available -= lot.remaining
                lot.remaining, lot.status = 0, "expired"


class LedgerMachine(RuleBasedStateMachine):
    api = session = None  # set by the test (pytest fixtures)

    purchases = Bundle("purchases")
    redemptions = Bundle("redemptions")

    def __init__(self):
        super().__init__()
        self.n = next(_machines)
        self.now = NOW
        at(self.now)
        self.member_id = make_member(self.api, f"prop-{self.n}")["id"]
        self.model = Model()
        self.ids = itertools.count()

    def _id(self, kind: str) -> str:
        return f"{kind}-{self.n}-{next(self.ids)}"

    # --- the clock and the jobs --------------------------------------------------------------

    @rule(hours=st.integers(1, 24 * 20))
    def time_passes(self, hours):
        self.now += timedelta(hours=hours)
        at(self.now)

    @rule()
    def activate_pending(self):
        r = self.api.post("/v1/jobs/activate-pending/runs")
        assert r.status_code == 201 and r.json["status"] == "succeeded", r.json
        self.model.activate(self.now)

    @rule()
    def expire_points(self):
        r = self.api.post("/v1/jobs/expire-points/runs")
        assert r.status_code == 201 and r.json["status"] == "succeeded", r.json
        self.model.expire(self.now)
        again = self.api.post("/v1/jobs/expire-points/runs")  # running twice never expires twice
        assert again.status_code == 201 and again.json["counts"]["points"] == 0, again.json

    # --- earn ----------------------------------------------------------------------------------

    @rule(target=purchases, total=st.integers(0, 40000), age_hours=st.integers(0, 24 * 5))
    def purchase(self, total, age_hours):
        occurred_at = self.now - timedelta(hours=age_hours)
        body = {"transaction_id": self._id("t"), "member_id": self.member_id, "occurred_at": isoformat(occurred_at),
                "currency": "EUR", "total": total}
        r = self.api.post("/v1/purchases", json=body)
        assert r.status_code == 201, r.json
        points = total * 4 // 100
        assert r.json["points"] == points
        lot = self.model.credit(points, occurred_at, self.now, pending_allowed=True, earning=True) if points else None
        # A retry with the same body replays; nothing is applied twice.
        replay = self.api.post("/v1/purchases", json=body)
        assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
        return Purchase(body["transaction_id"], total, points, lot)

    @rule(age_hours=st.integers(0, 24 * 5))
    def event(self, age_hours):
        occurred_at = self.now - timedelta(hours=age_hours)
        r = self.api.post("/v1/events", json={"event_id": self._id("e"), "type": "survey", "member_id": self.member_id,
                                              "occurred_at": isoformat(occurred_at), "attributes": {}})
        assert r.status_code == 201 and r.json["points"] == EVENT_POINTS, r.json
        self.model.credit(EVENT_POINTS, occurred_at, self.now, pending_allowed=True, earning=True)

    @rule(purchase=purchases, share=st.integers(1, 100))
    def refund(self, purchase, share):
        amount = max(1, purchase.total * share // 100)
        r = self.api.post(f"/v1/purchases/{purchase.transaction_id}/refunds",
                          json={"refund_id": self._id("r"), "amount": amount})
        if purchase.refunded + amount > purchase.total:
            assert r.status_code == 422 and r.json["code"] == "refund_exceeds_purchase", r.json
            return
        assert r.status_code == 201, r.json
        purchase.refunded += amount
        owed = purchase.points * purchase.refunded // purchase.total
        to_reverse, purchase.reversed = owed - purchase.reversed, owed
        assert r.json["points_reversed"] == to_reverse
        lot, model = purchase.lot, self.model
        if to_reverse and lot is not None and lot.status == "pending" and lot.remaining:
            take = min(lot.remaining, to_reverse)
            lot.remaining -= take
            model.pending -= take
            model.lifetime -= take
            to_reverse -= take
        if to_reverse:
            model.debit(to_reverse, first=lot)  # negative_balance: allow
            model.lifetime = max(model.lifetime - to_reverse, 0)

    # --- burn ----------------------------------------------------------------------------------

    @rule(target=redemptions, points=st.integers(1, 3000))
    def redeem(self, points):
        body = {"redemption_id": self._id("x"), "points": points}
        r = self.api.post(f"/v1/members/{self.member_id}/redemptions", json=body)
        if points > self.model.available:
            assert r.status_code == 422 and r.json["code"] == "insufficient_points", r.json
            return None
        assert r.status_code == 201 and r.json["points"] == points, r.json
        return Redemption(r.json["id"], points, self.model.debit(points))

    @rule(redemption=redemptions)
    def cancel(self, redemption):
        if redemption is None:
            return
        r = self.api.post(f"/v1/redemptions/{redemption.id}/cancel")
        assert r.status_code == 200, r.json
        if redemption.cancelled:
            assert r.headers.get("Idempotent-Replayed") == "true"
            return
        redemption.cancelled = True
        self.model.restore(redemption.taken, self.now)

    @rule(redemption=consumes(redemptions))
    def cancel_twice(self, redemption):
        self.cancel(redemption)
        self.cancel(redemption)

    @rule(points=st.integers(-3000, 3000).filter(bool))
    def adjust(self, points):
        r = self.api.post(f"/v1/members/{self.member_id}/adjustments",
                          json={"adjustment_id": self._id("a"), "points": points, "reason": "property"})
        if points < 0 and -points > self.model.available:
            assert r.status_code == 422 and r.json["code"] == "insufficient_points", r.json
            return
        assert r.status_code == 201, r.json
        if points > 0:
            self.model.credit(points, self.now, self.now, pending_allowed=False, earning=False)
        else:
            self.model.debit(-points)

    # --- after every step ----------------------------------------------------------------------

    @invariant()
    def balance_matches_the_model_and_the_ledger(self):
        r = self.api.get(f"/v1/members/{self.member_id}")
        assert r.status_code == 200, r.json
        balance, model = r.json["balance"], self.model
        assert (balance["available"], balance["pending"], balance["lifetime_earned"]) == (
            model.available, model.pending, model.lifetime), (balance, model)
        if model.available >= 0:
            assert sum(lot.remaining for lot in model.lots if lot.status == "available") == model.available
        assert all(0 <= lot.remaining <= lot.points for lot in model.lots)
        assert_invariants(self.session)


def test_ledger_state_machine(api, session):
    make_rule(api)  # 4 points per 1.00
    make_rule(api, {"type": "fixed", "points": EVENT_POINTS}, name="survey", trigger="event:survey")
    r = api.post("/v1/rules", json={"name": "burn", "kind": "burn", "trigger": "redemption", "status": "active",
                                    "effect": {"type": "conversion", "points": 1, "value": 1}})
    assert r.status_code == 201, r.json
    r = api.patch("/v1/program", json={"pending_days": PENDING_DAYS, "negative_balance": "allow",
                                       "expiry": {"mode": "fixed", "months": EXPIRY_MONTHS}})
    assert r.status_code == 200, r.json
    LedgerMachine.api, LedgerMachine.session = api, session
    try:
        run_state_machine_as_test(LedgerMachine, settings=settings(
            max_examples=EXAMPLES, stateful_step_count=30, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    finally:
        LedgerMachine.api = LedgerMachine.session = None
