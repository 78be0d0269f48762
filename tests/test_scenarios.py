"""Multi-step stories across purchases, refunds, events and adjustments; each ends with the invariants."""

from datetime import timedelta

from sqlalchemy import select

from loyalty_api.ledger.models import LotAllocation, PointLot

from .conftest import NOW
from .helpers import (
    WORKED_ITEMS,
    adjust,
    assert_invariants,
    assert_problem,
    at,
    balance,
    buy,
    make_member,
    make_rule,
)


def _refund(api, transaction_id, refund_id, amount):
    r = api.post(f"/v1/purchases/{transaction_id}/refunds", json={"refund_id": refund_id, "amount": amount})
    assert r.status_code == 201, r.json
    return r.json


def _ledger(api, member_id):
    return api.get(f"/v1/members/{member_id}/ledger?limit=200").json["data"]


def test_a_members_month(api, session):
    make_rule(api)
    make_rule(api, {"type": "fixed", "points": 25}, name="Review", trigger="event:app_review",
              limits={"per_member": {"count": 1, "period": "lifetime"}})
    ana, bo = make_member(api, "ana"), make_member(api, "bo")
    buy(api, ana["id"], "t1", total=15200, items=WORKED_ITEMS)
    buy(api, bo["id"], "t2", total=2500)
    for event_id in ("e1", "e2"):
        api.post("/v1/events", json={"event_id": event_id, "type": "app_review", "member_id": ana["id"],
                                     "occurred_at": "2026-03-10T11:30:00Z"})
    _refund(api, "t1", "r1", 7600)
    adjust(api, ana["id"], -29, "a1", "correction")
    adjust(api, bo["id"], 1, "a2", "rounding")
    assert balance(api, ana["id"])["available"] == 608 + 25 - 304 - 29
    assert balance(api, bo["id"])["available"] == 101
    assert sum(e["points"] for e in _ledger(api, ana["id"])) == 300
    assert_invariants(session)


def test_pending_points_with_the_clock_moved(api, session):
    make_rule(api)
    api.patch("/v1/program", json={"pending_days": 14})
    m = make_member(api)
    first = buy(api, m["id"], "t1", occurred_at=NOW.isoformat())
    assert first["pending_until"] == "2026-03-24T12:00:00Z"
    at(NOW + timedelta(days=20))
    # Occurred 19 days before the new clock: its 14 days are over, so it is available at once.
    late = buy(api, m["id"], "t2", occurred_at=(NOW + timedelta(days=1)).isoformat())
    assert late["pending_until"] is None and late["balance"]["available"] == 400
    fresh = buy(api, m["id"], "t3", occurred_at=(NOW + timedelta(days=20)).isoformat())
    assert fresh["pending_until"] == "2026-04-13T12:00:00Z"
    entries = {e["source"]["id"]: e for e in _ledger(api, m["id"])}
    assert entries["t3"]["status"] == "pending" and entries["t3"]["available_at"] == "2026-04-13T12:00:00Z"
    assert entries["t2"]["status"] == "available"
    assert entries["t3"]["created_at"] == "2026-03-30T12:00:00Z"
    # Refunding a purchase whose points are still pending takes them from pending.
    r = _refund(api, "t3", "r3", 10000)
    assert r["points_reversed"] == 400 and r["balance"]["available"] == 400
    assert_invariants(session)


def test_fixed_expiry_clamps_to_the_end_of_the_month(api, session):
    make_rule(api)
    api.patch("/v1/program", json={"expiry": {"mode": "fixed", "months": 1}})
    m = make_member(api)
    at(NOW.replace(year=2028, month=4, day=1))
    buy(api, m["id"], "jan31-leap", occurred_at="2028-01-31T10:00:00Z", total=100)
    buy(api, m["id"], "mar31", occurred_at="2028-03-31T10:00:00Z", total=200)
    buy(api, m["id"], "feb15", occurred_at="2028-02-15T10:00:00+02:00", total=300)
    entries = {e["source"]["id"]: e["expires_at"] for e in _ledger(api, m["id"])}
    assert entries == {"jan31-leap": "2028-02-29T10:00:00Z", "mar31": "2028-04-30T10:00:00Z",
                       "feb15": "2028-03-15T08:00:00Z"}
    assert balance(api, m["id"])["expiring"] == [
        {"points": 4, "expires_at": "2028-02-29T10:00:00Z"}, {"points": 12, "expires_at": "2028-03-15T08:00:00Z"},
        {"points": 8, "expires_at": "2028-04-30T10:00:00Z"}]
    api.patch("/v1/program", json={"expiry": {"mode": "fixed", "months": 13}})
    at(NOW.replace(year=2027, month=2, day=1))
    buy(api, m["id"], "jan31", occurred_at="2027-01-31T10:00:00Z", total=100)
    assert {e["source"]["id"]: e["expires_at"] for e in _ledger(api, m["id"])}["jan31"] == "2028-02-29T10:00:00Z"
    assert_invariants(session)


def test_inactivity_expiry_shows_the_whole_balance(api, session):
    make_rule(api)
    api.patch("/v1/program", json={"expiry": {"mode": "inactivity", "months": 12}})
    m = make_member(api)
    buy(api, m["id"], "t1", occurred_at="2026-01-31T10:00:00Z")
    buy(api, m["id"], "t2", occurred_at="2026-02-28T10:00:00Z")
    buy(api, m["id"], "t3", occurred_at="2026-02-01T10:00:00Z")
    assert balance(api, m["id"])["expiring"] == [{"points": 1200, "expires_at": "2027-02-28T10:00:00Z"}]
    entries = _ledger(api, m["id"])
    assert all(e["expires_at"] is None for e in entries)
    assert_invariants(session)


def _spent_then_refunded(api, mode):
    make_rule(api)
    api.patch("/v1/program", json={"negative_balance": mode})
    m = make_member(api)
    buy(api, m["id"], "t1", total=10000)          # +400
    assert adjust(api, m["id"], -300, "spend", "spent at the till").status_code == 201
    return m, _refund(api, "t1", "r1", 10000)


def test_refund_of_spent_points_with_negative_balance_forbidden(api, session):
    m, r = _spent_then_refunded(api, "forbid")
    assert r["points_reversed"] == 100
    assert r["balance"]["available"] == 0 and r["balance"]["lifetime_earned"] == 300
    assert buy(api, m["id"], "t2", total=1000)["balance"]["available"] == 40
    assert_invariants(session)


def test_refund_of_spent_points_with_negative_balance_allowed(api, session):
    m, r = _spent_then_refunded(api, "allow")
    assert r["points_reversed"] == 400
    assert r["balance"]["available"] == -300
    assert sum(e["points"] for e in _ledger(api, m["id"])) == -300
    assert_problem(adjust(api, m["id"], -1, "a-more"), 422, "insufficient_points")
    assert_invariants(session)
    # The next earn pays the debt first; the lots never hold more than the balance.
    assert buy(api, m["id"], "t2", total=10000)["balance"]["available"] == 100
    assert_invariants(session)
    assert buy(api, m["id"], "t3", total=2500)["balance"]["available"] == 200
    assert_invariants(session)


def _lots_by_source(session, member_id):
    rows = session.execute(select(PointLot.source_id, PointLot.remaining, PointLot.id)
                           .where(PointLot.member_id == member_id)).all()
    return {row.source_id: (row.remaining, row.id) for row in rows}


def test_debits_take_the_soonest_expiring_points_first(api, session):
    make_rule(api)
    api.patch("/v1/program", json={"expiry": {"mode": "fixed", "months": 12}})
    m = make_member(api)
    buy(api, m["id"], "march", occurred_at="2026-03-01T10:00:00Z", total=10000)   # 400, expires 2027-03-01
    buy(api, m["id"], "january", occurred_at="2026-01-15T10:00:00Z", total=5000)  # 200, expires 2027-01-15
    buy(api, m["id"], "february", occurred_at="2026-02-10T10:00:00Z", total=2500)  # 100, expires 2027-02-10
    assert adjust(api, m["id"], -250, "a1").status_code == 201
    lots = _lots_by_source(session, m["id"])
    assert {k: v[0] for k, v in lots.items()} == {"january": 0, "february": 50, "march": 400}
    allocations = session.execute(select(LotAllocation.lot_id, LotAllocation.points)).all()
    assert sorted(allocations) == sorted([(lots["january"][1], 200), (lots["february"][1], 50)])
    assert balance(api, m["id"])["expiring"] == [
        {"points": 50, "expires_at": "2027-02-10T10:00:00Z"}, {"points": 400, "expires_at": "2027-03-01T10:00:00Z"}]
    # A refund reverses its own purchase's points first, whatever their expiry.
    _refund(api, "march", "r1", 5000)
    assert {k: v[0] for k, v in _lots_by_source(session, m["id"]).items()} == {
        "january": 0, "february": 50, "march": 200}
    assert_invariants(session)


def test_non_expiring_points_are_spent_last(api, session):
    make_rule(api)
    m = make_member(api)
    buy(api, m["id"], "no-expiry", occurred_at="2026-03-01T10:00:00Z", total=10000)
    api.patch("/v1/program", json={"expiry": {"mode": "fixed", "months": 6}})
    buy(api, m["id"], "expiring", occurred_at="2026-03-02T10:00:00Z", total=2500)
    adjust(api, m["id"], -150, "a1")
    assert {k: v[0] for k, v in _lots_by_source(session, m["id"]).items()} == {"no-expiry": 350, "expiring": 0}
    assert_invariants(session)


def test_nothing_applied_twice_across_a_retried_day(api, session):
    make_rule(api)
    m = make_member(api)
    for _ in range(3):
        api.post("/v1/purchases", json={"transaction_id": "t1", "member_id": m["id"], "currency": "EUR",
                                        "occurred_at": "2026-03-10T11:00:00Z", "total": 10000})
        api.post("/v1/purchases/t1/refunds", json={"refund_id": "r1", "amount": 2500})
        adjust(api, m["id"], 5, "a1")
        api.post("/v1/events", json={"event_id": "e1", "type": "x", "member_id": m["id"],
                                     "occurred_at": "2026-03-10T11:00:00Z"})
    assert balance(api, m["id"])["available"] == 400 - 100 + 5
    assert len(_ledger(api, m["id"])) == 3
    assert_invariants(session)
