"""The ledger (GET /v1/members/{id}/ledger) and adjustments."""

import pytest
from sqlalchemy import func, select

from loyalty_api.ledger.models import Adjustment, LedgerEntry

from .helpers import adjust, assert_invariants, assert_problem, balance, buy, make_member, make_rule


@pytest.fixture
def member(api):
    return make_member(api)


def test_entries_newest_first_with_every_field(api, session, member):
    rule = make_rule(api)
    buy(api, member["id"], "t1", total=1000)
    adjust(api, member["id"], 7, "a1", "goodwill")
    buy(api, member["id"], "t2", total=2000)
    r = api.as_role("app").get(f"/v1/members/{member['id']}/ledger")
    assert r.status_code == 200
    data = r.json["data"]
    assert r.json["next_cursor"] is None
    assert [(e["type"], e["points"], e["source"]["id"]) for e in data] == [
        ("earn", 80, "t2"), ("adjust", 7, "a1"), ("earn", 40, "t1")]
    earn = data[0]
    assert earn["status"] == "available" and earn["rule_id"] == rule["id"] and earn["rule_version"] == 1
    assert earn["created_at"] == "2026-03-10T12:00:00Z" and earn["source"] == {"type": "purchase", "id": "t2"}
    assert earn["description"] and earn["id"]
    assert data[1]["description"] == "goodwill" and data[1]["rule_id"] is None
    assert sum(e["points"] for e in data) == balance(api, member["id"])["available"] == 127
    assert_invariants(session)


def test_ledger_pages(api, member):
    for i in range(7):
        assert adjust(api, member["id"], i + 1, f"a{i}").status_code == 201
    pages, cursor = [], None
    while True:
        r = api.get(f"/v1/members/{member['id']}/ledger?limit=3" + (f"&cursor={cursor}" if cursor else ""))
        assert r.status_code == 200, r.json
        pages.append([e["points"] for e in r.json["data"]])
        cursor = r.json["next_cursor"]
        if cursor is None:
            break
    assert pages == [[7, 6, 5], [4, 3, 2], [1]]
    exact = api.get(f"/v1/members/{member['id']}/ledger?limit=7").json
    assert len(exact["data"]) == 7 and exact["next_cursor"] is None


@pytest.mark.parametrize("query", ["limit=0", "limit=201", "limit=x", "cursor=!!", "cursor=", "colour=1"])
def test_bad_paging(api, member, query):
    r = api.get(f"/v1/members/{member['id']}/ledger?{query}")
    if query == "cursor=":
        assert r.status_code in (200, 422)
    else:
        assert_problem(r, 422, "validation_error")


def test_ledger_of_unknown_member_is_404(api):
    assert_problem(api.get("/v1/members/nope/ledger"), 404, "not_found")


def test_marketer_may_not_read_the_ledger(api, member):
    assert_problem(api.as_role("marketer").get(f"/v1/members/{member['id']}/ledger"), 403, "forbidden")


def test_positive_adjustment_is_available_at_once(api, session, member):
    api.patch("/v1/program", json={"pending_days": 30})
    r = adjust(api, member["id"], 150, reason="Compensation for a late delivery")
    assert r.status_code == 201, r.json
    body = r.json
    assert body["adjustment_id"] == "a1" and body["member_id"] == member["id"] and body["points"] == 150
    assert body["reason"] == "Compensation for a late delivery"
    assert body["balance"]["available"] == 150 and body["balance"]["pending"] == 0
    entry = api.get(f"/v1/members/{member['id']}/ledger").json["data"][0]
    assert entry["type"] == "adjust" and entry["status"] == "available"
    assert entry["source"] == {"type": "adjustment", "id": "a1"}
    assert_invariants(session)


def test_negative_adjustment(api, session, member):
    adjust(api, member["id"], 100, "a1")
    r = adjust(api, member["id"], -60, "a2", "correction")
    assert r.status_code == 201 and r.json["balance"]["available"] == 40
    assert adjust(api, member["id"], -40, "a3").json["balance"]["available"] == 0
    assert_invariants(session)


def test_adjustment_beyond_the_balance_is_insufficient_points(api, session, member):
    adjust(api, member["id"], 100, "a1")
    assert_problem(adjust(api, member["id"], -101, "a2"), 422, "insufficient_points")
    assert balance(api, member["id"])["available"] == 100
    assert session.execute(select(func.count()).select_from(Adjustment)).scalar() == 1
    assert session.execute(select(func.count()).select_from(LedgerEntry)).scalar() == 1
    assert_problem(adjust(api, make_member(api, "m2")["id"], -1, "a3"), 422, "insufficient_points")
    assert_invariants(session)


def test_pending_points_cannot_be_adjusted_away(api, session, member):
    make_rule(api)
    api.patch("/v1/program", json={"pending_days": 30})
    buy(api, member["id"])
    assert_problem(adjust(api, member["id"], -1), 422, "insufficient_points")
    assert_invariants(session)


def test_adjustment_replay_and_conflict(api, session, member):
    first = adjust(api, member["id"], 100, "a1", "x")
    again = adjust(api, member["id"], 100, "a1", "x")
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json == first.json
    assert_problem(adjust(api, member["id"], 101, "a1", "x"), 409, "idempotency_conflict")
    assert_problem(adjust(api, member["id"], 100, "a1", "y"), 409, "idempotency_conflict")
    other = make_member(api, "m2")
    assert_problem(adjust(api, other["id"], 100, "a1", "x"), 409, "idempotency_conflict")
    assert balance(api, member["id"])["available"] == 100 and balance(api, other["id"])["available"] == 0
    assert_invariants(session)


@pytest.mark.parametrize("body, field", [
    ({"adjustment_id": "a", "points": 0, "reason": "r"}, "points"),
    ({"adjustment_id": "a", "points": 5}, "reason"),
    ({"adjustment_id": "a", "points": 5, "reason": ""}, "reason"),
    ({"adjustment_id": "a", "points": 5, "reason": "r" * 501}, "reason"),
    ({"points": 5, "reason": "r"}, "adjustment_id"),
    ({"adjustment_id": "a", "points": 5, "reason": "r", "type": "earn"}, "type"),
])
def test_invalid_adjustments(api, member, body, field):
    assert_problem(api.post(f"/v1/members/{member['id']}/adjustments", json=body), 422, "validation_error", field)


def test_adjustments_are_admin_only(api, member):
    for role in ("pos", "app", "marketer"):
        assert_problem(adjust(api.as_role(role), member["id"], 5), 403, "forbidden")
    assert balance(api, member["id"])["available"] == 0


def test_adjustment_of_unknown_member_is_404(api):
    assert_problem(adjust(api, "nope", 5), 404, "not_found")
