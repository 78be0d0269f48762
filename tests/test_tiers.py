"""Tiers: CRUD, upgrades on earning (at once, several ranks), multipliers, downgrades at review."""

from datetime import UTC, datetime

import pytest

from loyalty_api.jobs.services import review_tiers
from loyalty_api.timeutil import utcnow

from .helpers import assert_invariants, assert_problem, at, buy, make_member, make_rule, purchase_body


def make_tier(api, code, rank, threshold, multiplier=1, **fields):
    r = api.as_role("marketer").post("/v1/tiers", json={"code": code, "name": code.title(), "rank": rank,
                                                        "threshold": threshold, "multiplier": multiplier, **fields})
    assert r.status_code == 201, r.json
    return r.json


def tier_of(api, member_id):
    tier = api.get(f"/v1/members/{member_id}").json["tier"]
    return tier["code"] if tier else None


def history(api, member_id):
    r = api.get(f"/v1/members/{member_id}/tier-history")
    assert r.status_code == 200, r.json
    return [(h["from"]["code"] if h["from"] else None, h["to"]["code"] if h["to"] else None, h["reason"],
             h["qualifying"]) for h in r.json["data"]]


@pytest.fixture
def ladder(api):
    """Silver at 100 points, gold at 300 (×2); 4 points per 1.00 spent."""
    make_rule(api)
    return {"silver": make_tier(api, "silver", 1, 100, 1.25, benefits=["free coffee"]),
            "gold": make_tier(api, "gold", 2, 300, 2)}


# --- CRUD ------------------------------------------------------------------------------------

def test_marketer_manages_tiers(api):
    marketer = api.as_role("marketer")
    silver = make_tier(api, "silver", 1, 100, 1.5, benefits=["lounge"])
    assert silver["multiplier"] == 1.5 and silver["benefits"] == ["lounge"] and silver["rank"] == 1
    gold = make_tier(api, "gold", 2, 300)
    assert [t["code"] for t in marketer.get("/v1/tiers").json["data"]] == ["silver", "gold"]
    assert marketer.get(f"/v1/tiers/{gold['id']}").json["threshold"] == 300
    r = marketer.patch(f"/v1/tiers/{gold['id']}", json={"threshold": 500, "name": "Gold+", "multiplier": 2.5})
    assert r.status_code == 200 and r.json["threshold"] == 500 and r.json["multiplier"] == 2.5
    assert_problem(marketer.post("/v1/tiers", json={"code": "silver", "name": "x", "rank": 9, "threshold": 1}),
                   409, "tier_exists", "code")
    assert_problem(marketer.patch(f"/v1/tiers/{gold['id']}", json={"rank": 1}), 409, "tier_exists", "rank")
    assert marketer.delete(f"/v1/tiers/{gold['id']}").status_code == 204
    assert_problem(marketer.get(f"/v1/tiers/{gold['id']}"), 404, "not_found")
    assert_problem(api.as_role("pos").get("/v1/tiers"), 403, "forbidden")


@pytest.mark.parametrize("body, field", [
    ({"name": "x", "rank": 1, "threshold": 1}, "code"),
    ({"code": "x", "name": "x", "rank": 1, "threshold": -1}, "threshold"),
    ({"code": "x", "name": "x", "rank": 1, "threshold": 1, "multiplier": 0.5}, "multiplier"),
    ({"code": "x", "name": "x", "rank": 1, "threshold": 1, "multiplier": 1.00001}, "multiplier"),
    ({"code": "x", "name": "x", "rank": "1", "threshold": 1}, "rank"),
])
def test_invalid_tiers(api, body, field):
    assert_problem(api.post("/v1/tiers", json=body), 422, "validation_error", field)


def test_a_tier_members_hold_cannot_be_deleted(api, ladder):
    member = make_member(api)
    buy(api, member["id"], total=5000)  # 200 points: silver
    assert_problem(api.delete(f"/v1/tiers/{ladder['silver']['id']}"), 409, "tier_in_use")


# --- upgrades ----------------------------------------------------------------------------------

def test_one_purchase_upgrades_across_two_tiers_at_once(api, session, ladder):
    member = make_member(api)
    p = buy(api, member["id"], total=10000)  # 400 points: past silver and gold
    assert p["points"] == 400
    assert tier_of(api, member["id"]) == "gold"
    assert history(api, member["id"]) == [(None, "gold", "upgrade", 400)]
    assert_invariants(session)


def test_upgrade_step_by_step_and_no_change_below_a_threshold(api, ladder):
    member = make_member(api)
    buy(api, member["id"], "t1", total=2000)  # 80
    assert tier_of(api, member["id"]) is None and history(api, member["id"]) == []
    buy(api, member["id"], "t2", total=1000)  # 120: silver
    assert tier_of(api, member["id"]) == "silver"
    buy(api, member["id"], "t3", total=3000)  # 120 base × 1.25 = 150 → 270
    assert tier_of(api, member["id"]) == "silver"
    buy(api, member["id"], "t4", total=1000)  # 40 + 10 → 320: gold
    assert history(api, member["id"]) == [("silver", "gold", "upgrade", 320), (None, "silver", "upgrade", 120)]


def test_the_tier_multiplier_applies_to_later_earnings(api, session, ladder):
    member = make_member(api)
    first = buy(api, member["id"], "t1", total=10000)
    assert first["points"] == 400 and [a["points"] for a in first["awards"]] == [400]
    second = buy(api, member["id"], "t2", total=10000)
    assert second["points"] == 800
    assert [a["rule_name"] for a in second["awards"]] == ["4 per 1.00", "Tier gold multiplier"]
    assert_invariants(session)


def test_an_upgrade_in_a_batch_multiplies_the_same_members_later_purchases(api, session, ladder):
    member = make_member(api)
    r = api.post("/v1/purchases/batch", json={"purchases": [
        purchase_body(member["id"], "b1", total=10000), purchase_body(member["id"], "b2", total=10000)]})
    assert r.status_code == 200, r.json
    assert [x["body"]["points"] for x in r.json["results"]] == [400, 800]
    assert history(api, member["id"]) == [(None, "gold", "upgrade", 400)]
    assert_invariants(session)


def test_events_count_towards_the_tier_and_refunds_do_not_downgrade(api, session, ladder):
    make_rule(api, name="review", trigger="event:review", effect={"type": "fixed", "points": 150})
    member = make_member(api)
    buy(api, member["id"], total=5000)  # 200: silver
    r = api.post("/v1/events", json={"event_id": "e1", "type": "review", "member_id": member["id"],
                                     "occurred_at": "2026-03-10T11:30:00Z", "attributes": {}})
    assert r.status_code == 201 and r.json["points"] == 150
    assert tier_of(api, member["id"]) == "gold"
    r = api.post("/v1/purchases/t1/refunds", json={"refund_id": "r1", "amount": 5000})
    assert r.status_code == 201, r.json
    assert tier_of(api, member["id"]) == "gold"
    run = review_tiers(session, utcnow())
    assert run["status"] == "succeeded" and run["counts"]["downgrades"] == 1
    assert tier_of(api, member["id"]) == "silver"  # 150 left: silver only
    assert history(api, member["id"])[0] == ("gold", "silver", "review", 150)


def test_spend_metric(api, session, ladder):
    api.patch("/v1/program", json={"tier_metric": "spend"})
    api.patch(f"/v1/tiers/{ladder['silver']['id']}", json={"threshold": 5000})
    api.patch(f"/v1/tiers/{ladder['gold']['id']}", json={"threshold": 20000})
    member = make_member(api)
    buy(api, member["id"], "t1", total=4999)
    assert tier_of(api, member["id"]) is None
    buy(api, member["id"], "t2", total=1)
    assert tier_of(api, member["id"]) == "silver"
    assert history(api, member["id"]) == [(None, "silver", "upgrade", 5000)]
    api.post("/v1/purchases/t1/refunds", json={"refund_id": "r1", "amount": 100})
    assert tier_of(api, member["id"]) == "silver"
    review_tiers(session, utcnow())
    assert tier_of(api, member["id"]) is None
    assert history(api, member["id"])[0] == ("silver", None, "review", 4900)


def test_downgrade_only_at_review_when_the_window_moves_on(api, session, ladder):
    member = make_member(api)
    buy(api, member["id"], "t1", total=10000, occurred_at="2026-03-10T11:00:00Z")  # gold
    # A year and a day later the purchase is out of the 12-month window; earning does not downgrade.
    at(datetime(2027, 3, 11, 12, tzinfo=UTC))
    small = buy(api, member["id"], "t2", total=3000, occurred_at="2027-03-11T11:00:00Z")
    assert small["points"] == 240  # still gold, still ×2
    assert tier_of(api, member["id"]) == "gold"
    run = review_tiers(session, datetime(2027, 3, 11, 12, tzinfo=UTC))
    assert run["counts"]["downgrades"] == 1 and run["counts"]["members"] == 1
    assert tier_of(api, member["id"]) == "silver"  # 240 in the window
    assert history(api, member["id"]) == [("gold", "silver", "review", 240), (None, "gold", "upgrade", 400)]
    # A second review at the same moment changes nothing.
    again = review_tiers(session, datetime(2027, 3, 11, 12, tzinfo=UTC))
    assert again["counts"]["downgrades"] == 0 and again["counts"]["upgrades"] == 0
    assert len(history(api, member["id"])) == 2
    assert_invariants(session)


def test_review_upgrades_members_when_a_threshold_is_lowered(api, session, ladder):
    member = make_member(api)
    buy(api, member["id"], total=5000)  # 200: silver
    api.patch(f"/v1/tiers/{ladder['gold']['id']}", json={"threshold": 150})
    assert tier_of(api, member["id"]) == "silver"
    run = review_tiers(session, utcnow())
    assert run["counts"]["upgrades"] == 1
    assert tier_of(api, member["id"]) == "gold"


def test_a_zero_threshold_tier_is_given_at_enrolment(api):
    make_tier(api, "base", 0, 0)
    member = make_member(api)
    assert tier_of(api, member["id"]) == "base"
    assert history(api, member["id"]) == [(None, "base", "upgrade", 0)]


def test_tier_history_of_another_member_is_hidden_from_a_member_token(api, ladder):
    mine, other = make_member(api, "mine"), make_member(api, "other")
    token = api.as_role("app").post(f"/v1/members/{mine['id']}/tokens").json["token"]
    assert api.as_token(token).get(f"/v1/members/{mine['id']}/tier-history").status_code == 200
    assert_problem(api.as_token(token).get(f"/v1/members/{other['id']}/tier-history"), 404, "not_found")
    assert_problem(api.get("/v1/members/nope/tier-history"), 404, "not_found")
