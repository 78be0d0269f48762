"""Refunds: POST /v1/purchases/{transaction_id}/refunds."""

import pytest
from sqlalchemy import func, select

from loyalty_api.purchases.models import Refund

from .helpers import (
    WORKED_ITEMS,
    assert_invariants,
    assert_problem,
    balance,
    buy,
    make_member,
    make_rule,
)


@pytest.fixture
def member(api):
    return make_member(api)


@pytest.fixture
def worked(api, member):
    """The worked example: 152.00 earning 608 points."""
    make_rule(api)
    return buy(api, member["id"], total=15200, items=WORKED_ITEMS)


def _refund(api, refund_id, amount, transaction_id="t1"):
    return api.post(f"/v1/purchases/{transaction_id}/refunds", json={"refund_id": refund_id, "amount": amount})


def test_worked_example_refund_of_76_reverses_304(api, session, member, worked):
    r = api.as_role("pos").post("/v1/purchases/t1/refunds", json={"refund_id": "r1", "amount": 7600})
    assert r.status_code == 201, r.json
    assert r.json["points_reversed"] == 304
    assert r.json["balance"]["available"] == 304 and r.json["balance"]["lifetime_earned"] == 304
    assert r.json["refund_id"] == "r1" and r.json["transaction_id"] == "t1" and r.json["amount"] == 7600
    entries = api.get(f"/v1/members/{member['id']}/ledger").json["data"]
    assert [(e["type"], e["points"], e["source"]) for e in entries] == [
        ("reverse", -304, {"type": "refund", "id": "r1"}), ("earn", 608, {"type": "purchase", "id": "t1"})]
    assert_invariants(session)


def test_refunds_add_up_so_that_a_full_refund_reverses_all(api, session, member, worked):
    reversed_ = [_refund(api, f"r{i}", amount).json["points_reversed"]
                 for i, amount in enumerate([3333, 3333, 3333, 5201])]
    # floor(608 × refunded ÷ 15200) so far, minus what was reversed before.
    assert reversed_ == [133, 133, 133, 209]
    assert sum(reversed_) == 608
    assert balance(api, member["id"]) == {"available": 0, "pending": 0, "lifetime_earned": 0, "expiring": []}
    p = api.get("/v1/purchases/t1").json
    assert p["refunded_amount"] == 15200 and p["points_reversed"] == 608
    assert [r["refund_id"] for r in p["refunds"]] == ["r0", "r1", "r2", "r3"]
    assert_invariants(session)


def test_small_refunds_reverse_nothing_until_a_point_is_owed(api, session, member):
    make_rule(api, {"type": "fixed", "points": 10})
    buy(api, member["id"], total=300)
    assert [_refund(api, f"r{i}", 100).json["points_reversed"] for i in range(3)] == [3, 3, 4]
    assert_invariants(session)


def test_over_refund_is_refused(api, session, member, worked):
    body = assert_problem(_refund(api, "r1", 15201), 422, "refund_exceeds_purchase", "amount")
    assert body["errors"]["amount"]
    assert _refund(api, "r2", 15000).status_code == 201
    assert_problem(_refund(api, "r3", 201), 422, "refund_exceeds_purchase", "amount")
    assert _refund(api, "r4", 200).status_code == 201
    assert_problem(_refund(api, "r5", 1), 422, "refund_exceeds_purchase")
    assert session.execute(select(func.count()).select_from(Refund)).scalar() == 2
    assert_invariants(session)


def test_replay_and_conflict(api, session, member, worked):
    first = _refund(api, "r1", 7600)
    again = _refund(api, "r1", 7600)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json == first.json
    assert_problem(_refund(api, "r1", 7601), 409, "idempotency_conflict")
    buy(api, member["id"], "t2", total=7600)
    assert_problem(_refund(api, "r1", 7600, "t2"), 409, "idempotency_conflict")
    assert balance(api, member["id"])["available"] == 304 + 304
    assert session.execute(select(func.count()).select_from(Refund)).scalar() == 1
    assert_invariants(session)


def test_refund_of_unknown_purchase_is_404(api):
    assert_problem(_refund(api, "r1", 100, "nope"), 404, "not_found")


@pytest.mark.parametrize("body, field", [
    ({"refund_id": "r1", "amount": 0}, "amount"), ({"refund_id": "r1", "amount": -5}, "amount"),
    ({"refund_id": "r1", "amount": 2**64}, "amount"), ({"refund_id": "r1", "amount": "5"}, "amount"),
    ({"refund_id": "r1"}, "amount"), ({"amount": 5}, "refund_id"), ({"refund_id": "", "amount": 5}, "refund_id"),
    ({"refund_id": "r1", "amount": 5, "points": 3}, "points"),
])
def test_invalid_refund_bodies(api, worked, body, field):
    assert_problem(api.post("/v1/purchases/t1/refunds", json=body), 422, "validation_error", field)


def test_refund_of_a_purchase_that_earned_nothing(api, session, member):
    buy(api, member["id"])
    r = _refund(api, "r1", 5000)
    assert r.status_code == 201 and r.json["points_reversed"] == 0
    assert_invariants(session)


def test_refund_of_pending_points_takes_them_from_pending(api, session, member):
    make_rule(api)
    api.patch("/v1/program", json={"pending_days": 30})
    buy(api, member["id"], total=10000)
    r = _refund(api, "r1", 2500)
    assert r.json["points_reversed"] == 100
    assert r.json["balance"]["pending"] == 300 and r.json["balance"]["available"] == 0
    assert r.json["balance"]["lifetime_earned"] == 300
    entries = api.get(f"/v1/members/{member['id']}/ledger").json["data"]
    assert entries[0]["type"] == "reverse" and entries[0]["points"] == -100
    assert_invariants(session)


def test_marketer_and_app_may_not_refund(api, worked):
    for role in ("app", "marketer"):
        assert_problem(_refund(api.as_role(role), "r1", 100), 403, "forbidden")
    assert api.get("/v1/purchases/t1").json["refunded_amount"] == 0
