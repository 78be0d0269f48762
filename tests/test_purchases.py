"""Purchases: POST /v1/purchases and GET /v1/purchases/{transaction_id}."""

import pytest
from sqlalchemy import func, select

from loyalty_api.ledger.models import LedgerEntry, PointLot
from loyalty_api.purchases import routes as purchase_routes
from loyalty_api.purchases.models import Purchase
from loyalty_api.purchases.schemas import PurchaseResultSchema
from loyalty_api.responses import created_as_is

from .helpers import (
    WORKED_ITEMS,
    assert_invariants,
    assert_problem,
    balance,
    buy,
    make_member,
    make_rule,
    purchase_body,
)


@pytest.fixture
def member(api):
    return make_member(api)


def _count(session, model):
    return session.execute(select(func.count()).select_from(model)).scalar()


def test_worked_example_gives_608(api, session, member):
    rule = make_rule(api)
    body = purchase_body(member["id"], total=15200, items=WORKED_ITEMS)
    r = api.as_role("pos").post("/v1/purchases", json=body)
    assert r.status_code == 201, r.json
    assert "Idempotent-Replayed" not in r.headers
    p = r.json
    assert p["points"] == 608 and p["transaction_id"] == "t1" and p["member_id"] == member["id"]
    assert p["pending_until"] is None
    assert p["awards"] == [{"rule_id": rule["id"], "rule_version": 1, "rule_name": "4 per 1.00", "points": 608}]
    assert p["balance"] == {"available": 608, "pending": 0, "lifetime_earned": 608, "expiring": []}
    assert balance(api, member["id"]) == p["balance"]
    assert_invariants(session)


def test_replay_returns_the_same_body_and_applies_nothing_twice(api, session, member):
    make_rule(api)
    body = purchase_body(member["id"], total=15200, items=WORKED_ITEMS)
    first = api.post("/v1/purchases", json=body)
    buy(api, member["id"], "t2", total=100)
    again = api.post("/v1/purchases", json=body)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    # The original body, even though the balance has moved since.
    assert again.json == first.json
    reordered = dict(reversed(list(body.items())))
    assert api.post("/v1/purchases", json=reordered).status_code == 200
    # The same instant in another offset is the same request.
    assert api.post("/v1/purchases", json={**body, "occurred_at": "2026-03-10T12:00:00+01:00"}).status_code == 200
    assert _count(session, Purchase) == 2 and _count(session, PointLot) == 2
    assert balance(api, member["id"])["available"] == 612
    assert_invariants(session)


@pytest.mark.parametrize("program", [{"expiry": {"mode": "fixed", "months": 12}},
                                     {"pending_days": 14},
                                     {"expiry": {"mode": "inactivity", "months": 6}}])
def test_the_answer_written_as_it_is_is_what_the_schema_dumps(api, member, program, monkeypatch):
    """POST /v1/purchases writes its answer without PurchaseResultSchema: the same, field for field
    (a value not of its JSON type, a datetime say, would be written otherwise by each)."""
    written = []

    def record(outcome):
        written.append(outcome.body)
        return created_as_is(outcome)

    monkeypatch.setattr(purchase_routes, "created_as_is", record)
    assert api.patch("/v1/program", json=program).status_code == 200
    assert api.post("/v1/tiers", json={"code": "gold", "name": "Gold", "rank": 1, "threshold": 1,
                                       "multiplier": 1.5}).status_code == 201
    make_rule(api)
    make_rule(api, effect={"type": "fixed", "points": 25}, name="welcome")
    for n in range(3):  # the second and later climb to gold: a tier multiplier award too
        answer = buy(api, member["id"], f"as-is-{n}")
        assert PurchaseResultSchema().dump(written[-1]) == answer
    again = api.post("/v1/purchases", json=purchase_body(member["id"], "as-is-2"))
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert PurchaseResultSchema().dump(written[-1]) == again.json == answer
    assert len(written) == 4


@pytest.mark.parametrize("change", [
    {"total": 15300}, {"occurred_at": "2026-03-10T10:00:00Z"}, {"channel": "web"}, {"metadata": {"a": 1}},
    {"items": None},
])
def test_same_transaction_id_with_another_body_is_409(api, session, member, change):
    make_rule(api)
    body = purchase_body(member["id"], total=15200, items=WORKED_ITEMS)
    assert api.post("/v1/purchases", json=body).status_code == 201
    r = api.post("/v1/purchases", json={**body, **change})
    assert_problem(r, 409, "idempotency_conflict")
    assert _count(session, Purchase) == 1 and balance(api, member["id"])["available"] == 608


def test_same_transaction_id_for_another_member_is_409(api, member):
    other = make_member(api, "m2")
    buy(api, member["id"])
    assert_problem(api.post("/v1/purchases", json=purchase_body(other["id"])), 409, "idempotency_conflict")


def test_currency_mismatch(api, session, member):
    make_rule(api)
    r = api.post("/v1/purchases", json={**purchase_body(member["id"]), "currency": "USD"})
    assert_problem(r, 422, "currency_mismatch", "currency")
    assert _count(session, Purchase) == 0
    api.patch("/v1/program", json={"currency": "USD"})
    r = api.post("/v1/purchases", json={**purchase_body(member["id"]), "currency": "USD"})
    assert r.status_code == 201 and r.json["points"] == 400


@pytest.mark.parametrize("items", [
    [{"sku": "a", "quantity": 1, "unit_price": 9999}],
    [{"sku": "a", "quantity": 3, "unit_price": 5000}],
    WORKED_ITEMS,
])
def test_items_must_add_up_to_total(api, session, member, items):
    r = api.post("/v1/purchases", json=purchase_body(member["id"], total=10000, items=items))
    assert_problem(r, 422, "items_total_mismatch", "items")
    assert _count(session, Purchase) == 0


def test_items_count_quantity_times_unit_price(api, member):
    make_rule(api)
    items = [{"sku": "a", "quantity": 3, "unit_price": 2500}, {"sku": "b", "quantity": 1, "unit_price": 2500}]
    assert buy(api, member["id"], total=10000, items=items)["points"] == 400


@pytest.mark.parametrize("item, field", [
    ({"quantity": 1, "unit_price": 100}, "items.0.sku"),
    ({"sku": "a", "unit_price": 100}, "items.0.quantity"),
    ({"sku": "a", "quantity": 0, "unit_price": 100}, "items.0.quantity"),
    ({"sku": "a", "quantity": 1, "unit_price": -100}, "items.0.unit_price"),
    ({"sku": "a", "quantity": 1.5, "unit_price": 100}, "items.0.quantity"),
])
def test_invalid_items(api, member, item, field):
    r = api.post("/v1/purchases", json=purchase_body(member["id"], total=100, items=[item]))
    assert_problem(r, 422, "validation_error", field)


def test_no_rules_earn_nothing(api, session, member):
    p = buy(api, member["id"])
    assert p["points"] == 0 and p["awards"] == [] and p["pending_until"] is None
    assert _count(session, PointLot) == 0 and _count(session, LedgerEntry) == 0
    assert api.get("/v1/purchases/t1").json["points"] == 0
    assert_invariants(session)


def test_zero_total_purchase(api, member):
    make_rule(api)
    assert buy(api, member["id"], total=0)["points"] == 0


def test_several_rules_award_separately(api, session, member):
    base = make_rule(api, priority=10)
    bonus = make_rule(api, {"type": "fixed", "points": 50}, name="Big basket", priority=5,
                      conditions={">=": [{"var": "purchase.total"}, 10000]})
    p = buy(api, member["id"], total=15200, items=WORKED_ITEMS)
    assert p["points"] == 658
    assert sorted((a["rule_id"], a["points"]) for a in p["awards"]) == sorted([(base["id"], 608), (bonus["id"], 50)])
    assert buy(api, member["id"], "t2", total=9999)["points"] == 399
    entries = api.get(f"/v1/members/{member['id']}/ledger").json["data"]
    assert sorted(e["points"] for e in entries) == [50, 399, 608]
    assert_invariants(session)


def test_draft_and_paused_rules_do_not_award(api, member):
    make_rule(api, status="draft")
    make_rule(api, status="paused")
    assert buy(api, member["id"])["points"] == 0


def test_get_purchase(api, member):
    rule = make_rule(api)
    created = buy(api, member["id"], total=15200, items=WORKED_ITEMS, channel="store", store_id="s-1",
                  metadata={"till": 4}, occurred_at="2026-03-10T12:30:00+01:00")
    r = api.as_role("pos").get("/v1/purchases/t1")
    assert r.status_code == 200
    p = r.json
    assert p["id"] == created["id"] and p["member_id"] == member["id"]
    assert p["occurred_at"] == "2026-03-10T11:30:00Z"
    assert p["currency"] == "EUR" and p["total"] == 15200 and p["channel"] == "store" and p["store_id"] == "s-1"
    assert [i["sku"] for i in p["items"]] == ["123", "000", "0001"]
    assert p["metadata"] == {"till": 4}
    assert p["points"] == 608 and p["awards"][0]["rule_id"] == rule["id"]
    assert p["refunded_amount"] == 0 and p["points_reversed"] == 0 and p["refunds"] == []
    assert p["created_at"] == "2026-03-10T12:00:00Z"


def test_get_unknown_purchase_is_404(api):
    assert_problem(api.get("/v1/purchases/nope"), 404, "not_found")


def test_unknown_member_is_refused(api, session):
    r = api.post("/v1/purchases", json=purchase_body("01nosuchmember0000000000000"))
    assert r.status_code in (404, 422)
    assert r.json["code"] in ("not_found", "validation_error")
    assert _count(session, Purchase) == 0


def test_pending_days_hold_points(api, session, member):
    make_rule(api)
    api.patch("/v1/program", json={"pending_days": 14})
    p = buy(api, member["id"], occurred_at="2026-03-09T08:00:00Z")
    assert p["pending_until"] == "2026-03-23T08:00:00Z"
    assert p["balance"]["available"] == 0 and p["balance"]["pending"] == 400
    assert p["balance"]["lifetime_earned"] == 400
    old = buy(api, member["id"], "t-old", occurred_at="2026-02-20T08:00:00Z")
    assert old["pending_until"] is None and old["balance"]["available"] == 400
    entries = api.get(f"/v1/members/{member['id']}/ledger").json["data"]
    assert [(e["source"]["id"], e["status"]) for e in entries] == [("t-old", "available"), ("t1", "pending")]
    assert_invariants(session)


def test_occurred_at_may_be_slightly_ahead_of_the_clock(api, member):
    assert buy(api, member["id"], occurred_at="2026-03-10T12:04:00Z")["points"] == 0
    r = api.post("/v1/purchases", json=purchase_body(member["id"], "t2", occurred_at="2026-03-10T12:10:00Z"))
    assert_problem(r, 422, "validation_error", "occurred_at")


@pytest.mark.parametrize("field, value", [
    ("transaction_id", ""), ("transaction_id", "x" * 201), ("channel", "c" * 65), ("currency", "EURO"),
])
def test_field_limits(api, member, field, value):
    body = purchase_body(member["id"])
    body[field] = value
    assert_problem(api.post("/v1/purchases", json=body), 422, "validation_error", field)


def test_the_largest_rules_and_totals_fit_a_balance(api, session, member):
    make_rule(api, {"type": "per_amount", "points": 100, "per": 1, "rounding": "ceil"})
    make_rule(api, {"type": "multiplier", "factor": 100}, name="x100")
    make_rule(api, {"type": "fixed", "points": 10**9}, name="fixed")
    p = buy(api, member["id"], total=10**13)
    assert p["points"] == 10**15 * 100 + 10**9
    assert_invariants(session)


def test_per_item_rule_counts_units(api, member):
    make_rule(api, {"type": "per_item", "points": 5}, item_filter={"==": [{"var": "item.category"}, "red"]})
    items = [{"sku": "a", "category": "red", "quantity": 3, "unit_price": 100},
             {"sku": "b", "category": "blue", "quantity": 2, "unit_price": 100}]
    assert buy(api, member["id"], total=500, items=items)["points"] == 15
