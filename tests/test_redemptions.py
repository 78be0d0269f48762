"""Burning points: quotes, redemptions by points and for rewards, cancels, idempotency."""

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from loyalty_api.ledger.models import LedgerEntry, LotAllocation, PointLot
from loyalty_api.members.models import Member
from loyalty_api.program.services import bump_rules_revision
from loyalty_api.redemptions.models import Redemption
from loyalty_api.rewards.models import Reward

from .conftest import NOW
from .helpers import adjust, assert_invariants, assert_problem, at, balance, buy, make_member, make_rule


def make_burn_rule(api, points=1, value=1, limits=None, **fields) -> dict:
    """An active burn rule: `points` points are worth `value` cents (1:1 unless told)."""
    body = {"name": "burn", "kind": "burn", "trigger": "redemption", "status": "active",
            "effect": {"type": "conversion", "points": points, "value": value}, **fields}
    if limits is not None:
        body["limits"] = limits
    r = api.post("/v1/rules", json=body)
    assert r.status_code == 201, r.json
    return r.json


def make_reward(api, code="mug", cost_points=300, **fields) -> dict:
    r = api.post("/v1/rewards", json={"code": code, "name": code.title(), "cost_points": cost_points, **fields})
    assert r.status_code == 201, r.json
    return r.json


def member_with(api, points, external_id="m1") -> str:
    member = make_member(api, external_id)
    if points:
        assert adjust(api, member["id"], points, adjustment_id=f"seed-{external_id}").status_code == 201
    return member["id"]


def redeem(api, member_id, redemption_id="r1", **body):
    return api.post(f"/v1/members/{member_id}/redemptions", json={"redemption_id": redemption_id, **body})


def quote(api, member_id, order_total, **body):
    return api.post(f"/v1/members/{member_id}/redemptions/quote", json={"order_total": order_total, **body})


def lots_by_source(session, member_id) -> dict[str, PointLot]:
    lots = session.execute(select(PointLot).where(PointLot.member_id == member_id)).scalars()
    return {lot.source_id: lot for lot in lots}


def fresh(session, model, key):
    return session.execute(select(model).where(model.id == key).execution_options(populate_existing=True)).scalar_one()


# --- quotes --------------------------------------------------------------------------------

def test_quote_honours_min_points_step_share_and_balance(api, session):
    make_burn_rule(api, points=100, value=100, limits={"min_points": 100, "step": 50, "max_order_share": 0.5})
    member_id = member_with(api, 1234)
    # Half of 20.00 is 1000 points; 1000 is a multiple of 50.
    r = quote(api, member_id, 2000)
    assert r.status_code == 200, r.json
    assert r.json == {"max_points": 1000, "value": 1000}
    # A large order: the balance limits, rounded down to the step.
    assert quote(api, member_id, 100000).json == {"max_points": 1200, "value": 1200}
    # Half of 1.50 is 75 points: below the minimum of 100.
    assert quote(api, member_id, 150).json == {"max_points": 0, "value": 0}
    assert_invariants(session)


def test_quote_uses_the_highest_priority_matching_rule(api, session):
    make_burn_rule(api, points=100, value=100, priority=0)
    make_burn_rule(api, points=100, value=200, priority=10, name="app doubles",
                   conditions={"==": [{"var": "purchase.channel"}, "app"]})
    member_id = member_with(api, 500)
    assert quote(api, member_id, 100000).json == {"max_points": 500, "value": 500}
    assert quote(api, member_id, 100000, channel="app").json == {"max_points": 500, "value": 1000}
    r = redeem(api, member_id, points=200, channel="app")
    assert r.status_code == 201, r.json
    assert r.json["value"] == 400


def test_quote_without_a_burn_rule_is_zero(api):
    member_id = member_with(api, 500)
    assert quote(api, member_id, 10000).json == {"max_points": 0, "value": 0}


def test_quote_needs_an_order_total(api):
    member_id = member_with(api, 500)
    assert_problem(api.post(f"/v1/members/{member_id}/redemptions/quote", json={}), 422, "validation_error",
                   "order_total")


def test_quote_of_an_unknown_member_is_404(api):
    make_burn_rule(api)
    assert_problem(quote(api, "nobody", 1000), 404, "not_found")


# --- redeeming points ----------------------------------------------------------------------

def test_redeem_points(api, session):
    make_burn_rule(api, points=100, value=100)
    member_id = member_with(api, 1000)
    r = redeem(api, member_id, points=400, order_total=5000)
    assert r.status_code == 201, r.json
    body = r.json
    assert {k: body[k] for k in ("points", "value", "reward", "status", "redemption_id")} == {
        "points": 400, "value": 400, "reward": None, "status": "completed", "redemption_id": "r1"}
    assert body["id"] and body["balance"]["available"] == 600
    assert balance(api, member_id)["available"] == 600
    ledger = api.get(f"/v1/members/{member_id}/ledger").json["data"]
    assert ledger[0]["type"] == "redeem" and ledger[0]["points"] == -400
    assert ledger[0]["source"] == {"type": "redemption", "id": body["id"]}
    assert_invariants(session)


def test_redemption_moves_the_inactivity_clock(api, session):
    make_burn_rule(api)
    member_id = member_with(api, 1000)
    at(datetime(2026, 5, 1, tzinfo=UTC))
    assert redeem(api, member_id, points=10).status_code == 201
    assert fresh(session, Member, member_id).last_activity_at == datetime(2026, 5, 1, tzinfo=UTC)


def test_insufficient_points(api, session):
    make_burn_rule(api)
    member_id = member_with(api, 300)
    assert_problem(redeem(api, member_id, points=301), 422, "insufficient_points", "points")
    assert balance(api, member_id)["available"] == 300
    assert session.execute(select(Redemption)).first() is None


def test_below_minimum(api):
    make_burn_rule(api, limits={"min_points": 200})
    member_id = member_with(api, 1000)
    assert_problem(redeem(api, member_id, points=150), 422, "below_minimum", "points")
    assert redeem(api, member_id, points=200).status_code == 201


def test_invalid_step(api):
    make_burn_rule(api, limits={"step": 50})
    member_id = member_with(api, 1000)
    assert_problem(redeem(api, member_id, points=220), 422, "invalid_step", "points")
    assert redeem(api, member_id, points=250).status_code == 201


def test_exceeds_order_share(api):
    make_burn_rule(api, limits={"max_order_share": 0.5})
    member_id = member_with(api, 1000)
    assert_problem(redeem(api, member_id, points=501, order_total=1000), 422, "exceeds_order_share", "points")
    assert redeem(api, member_id, points=500, order_total=1000).status_code == 201


def test_no_burn_rule(api):
    member_id = member_with(api, 1000)
    assert_problem(redeem(api, member_id, points=100), 422, "no_burn_rule")


def test_burn_rule_conditions_can_refuse_a_channel(api):
    make_burn_rule(api, conditions={"!=": [{"var": "purchase.channel"}, "web"]})
    member_id = member_with(api, 1000)
    assert_problem(redeem(api, member_id, points=100, channel="web"), 422, "no_burn_rule")
    assert redeem(api, member_id, points=100, channel="pos").status_code == 201


@pytest.mark.parametrize("status", ["suspended", "erased"])
def test_member_not_active(api, status):
    make_burn_rule(api)
    reward = make_reward(api, cost_points=100)
    member_id = member_with(api, 1000)
    if status == "suspended":
        assert api.patch(f"/v1/members/{member_id}", json={"status": "suspended"}).status_code == 200
    else:
        assert api.delete(f"/v1/members/{member_id}").status_code == 204
    assert_problem(redeem(api, member_id, points=100), 409, "member_not_active")
    assert_problem(redeem(api, member_id, reward_id=reward["id"]), 409, "member_not_active")
    assert_problem(quote(api, member_id, 1000), 409, "member_not_active")


def test_pending_points_are_never_spent(api, session):
    make_rule(api)
    make_burn_rule(api)
    assert api.patch("/v1/program", json={"pending_days": 14}).status_code == 200
    member_id = member_with(api, 100)
    buy(api, member_id, total=10000)  # 400 points, pending for 14 days
    assert balance(api, member_id)["pending"] == 400
    assert quote(api, member_id, 100000).json["max_points"] == 100
    assert_problem(redeem(api, member_id, points=101), 422, "insufficient_points")
    assert redeem(api, member_id, points=100).status_code == 201
    pending_lot = session.execute(select(PointLot).where(PointLot.member_id == member_id,
                                                         PointLot.status == "pending")).scalar_one()
    assert pending_lot.remaining == 400
    assert_invariants(session)


def test_points_and_reward_are_exclusive(api):
    make_burn_rule(api)
    reward = make_reward(api)
    member_id = member_with(api, 1000)
    assert_problem(redeem(api, member_id, points=100, reward_id=reward["id"]), 422, "validation_error", "points")
    assert_problem(redeem(api, member_id), 422, "validation_error", "points")
    assert_problem(redeem(api, member_id, points=0), 422, "validation_error", "points")
    assert_problem(redeem(api, member_id, points="100"), 422, "validation_error", "points")


def test_redeeming_for_an_unknown_member_is_404(api):
    make_burn_rule(api)
    assert_problem(redeem(api, "nobody", points=10), 404, "not_found")


# --- FIFO across lots and cancels --------------------------------------------------------------

def _three_lots(api) -> str:
    """Three 400-point lots expiring 2026-06-01, 2026-04-01 and 2027-03-01 (fixed 12 months)."""
    make_rule(api)
    make_burn_rule(api)
    assert api.patch("/v1/program", json={"expiry": {"mode": "fixed", "months": 12}}).status_code == 200
    member_id = make_member(api)["id"]
    buy(api, member_id, "june", occurred_at="2025-06-01T10:00:00Z")
    buy(api, member_id, "april", occurred_at="2025-04-01T10:00:00Z")
    buy(api, member_id, "march", occurred_at="2026-03-01T10:00:00Z")
    assert balance(api, member_id)["available"] == 1200
    return member_id


def test_debits_take_the_soonest_expiring_lots_first_and_record_them(api, session):
    member_id = _three_lots(api)
    r = redeem(api, member_id, points=600)
    assert r.status_code == 201, r.json
    lots = lots_by_source(session, member_id)
    assert (lots["april"].remaining, lots["june"].remaining, lots["march"].remaining) == (0, 200, 400)
    redemption = session.execute(select(Redemption)).scalar_one()
    allocations = session.execute(select(LotAllocation.lot_id, LotAllocation.points)
                                  .where(LotAllocation.entry_id == redemption.entry_id)).all()
    assert sorted(allocations) == sorted([(lots["april"].id, 400), (lots["june"].id, 200)])
    assert r.json["balance"]["expiring"] == [{"points": 200, "expires_at": "2026-06-01T10:00:00Z"},
                                             {"points": 400, "expires_at": "2027-03-01T10:00:00Z"}]
    assert_invariants(session)


def test_cancel_restores_exactly_the_lots_taken_once(api, session):
    member_id = _three_lots(api)
    first = redeem(api, member_id, "r1", points=600).json
    second = redeem(api, member_id, "r2", points=300).json  # june 200 → 0, march 400 → 300
    lots = lots_by_source(session, member_id)
    assert (lots["april"].remaining, lots["june"].remaining, lots["march"].remaining) == (0, 0, 300)

    r = api.post(f"/v1/redemptions/{first['id']}/cancel")
    assert r.status_code == 200, r.json
    assert "Idempotent-Replayed" not in r.headers
    assert r.json["status"] == "cancelled" and r.json["id"] == first["id"]
    assert (r.json["points_restored"], r.json["points_expired"]) == (600, 0)
    assert r.json["balance"]["available"] == 900
    lots = {k: fresh(session, PointLot, v.id) for k, v in lots.items()}
    assert (lots["april"].remaining, lots["june"].remaining, lots["march"].remaining) == (400, 200, 300)

    again = api.post(f"/v1/redemptions/{first['id']}/cancel")
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json == r.json
    assert balance(api, member_id)["available"] == 900
    cancels = session.execute(select(LedgerEntry).where(LedgerEntry.type == "cancel")).scalars().all()
    assert [(e.points, e.source_id) for e in cancels] == [(600, first["id"])]
    assert fresh(session, Redemption, second["id"]).status == "completed"
    assert_invariants(session)


def test_cancel_gives_points_of_lots_past_their_expiry_back_expired(api, session):
    member_id = _three_lots(api)
    redemption = redeem(api, member_id, points=600).json  # april 400 (expires 2026-04-01), june 200
    at(datetime(2026, 4, 15, tzinfo=UTC))  # april's lot is past expiry; no job has run yet
    r = api.post(f"/v1/redemptions/{redemption['id']}/cancel")
    assert r.status_code == 200, r.json
    assert (r.json["points_restored"], r.json["points_expired"]) == (200, 400)
    assert r.json["balance"]["available"] == 800
    lots = {k: fresh(session, PointLot, v.id) for k, v in lots_by_source(session, member_id).items()}
    assert (lots["april"].remaining, lots["june"].remaining, lots["march"].remaining) == (0, 400, 400)
    ledger = api.get(f"/v1/members/{member_id}/ledger").json["data"]
    assert [(e["type"], e["points"]) for e in ledger[:3]] == [("expire", -400), ("cancel", 600), ("redeem", -600)]
    assert_invariants(session)


def test_cancel_gives_points_of_expired_lots_back_expired(api, session):
    member_id = _three_lots(api)
    redemption = redeem(api, member_id, points=600).json
    # The expiry job marked the emptied lot expired (it had nothing left to expire).
    april = lots_by_source(session, member_id)["april"]
    april.status = "expired"
    session.commit()
    r = api.post(f"/v1/redemptions/{redemption['id']}/cancel")
    assert (r.json["points_restored"], r.json["points_expired"]) == (200, 400)
    assert fresh(session, PointLot, april.id).remaining == 0
    assert balance(api, member_id)["available"] == 800
    assert_invariants(session)


def test_cancel_of_an_unknown_redemption_is_404(api):
    assert_problem(api.post("/v1/redemptions/nothing/cancel"), 404, "not_found")


def test_cancelled_points_can_be_redeemed_again(api, session):
    make_burn_rule(api)
    member_id = member_with(api, 500)
    first = redeem(api, member_id, "r1", points=500).json
    assert_problem(redeem(api, member_id, "r2", points=500), 422, "insufficient_points")
    assert api.post(f"/v1/redemptions/{first['id']}/cancel").status_code == 200
    assert redeem(api, member_id, "r2", points=500).status_code == 201
    assert balance(api, member_id)["available"] == 0
    assert_invariants(session)


# --- idempotency ---------------------------------------------------------------------------

def test_same_redemption_id_and_body_replays(api, session):
    make_burn_rule(api)
    member_id = member_with(api, 1000)
    first = redeem(api, member_id, points=300, order_total=5000)
    again = redeem(api, member_id, points=300, order_total=5000)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json == first.json
    assert balance(api, member_id)["available"] == 700
    assert len(session.execute(select(Redemption)).all()) == 1


def test_same_redemption_id_with_another_body_conflicts(api):
    make_burn_rule(api)
    member_id = member_with(api, 1000)
    other_id = member_with(api, 1000, "m2")
    assert redeem(api, member_id, points=300).status_code == 201
    assert_problem(redeem(api, member_id, points=301), 409, "idempotency_conflict")
    assert_problem(redeem(api, other_id, points=300), 409, "idempotency_conflict")
    assert balance(api, member_id)["available"] == 700
    assert balance(api, other_id)["available"] == 1000


def test_a_refused_redemption_leaves_its_id_free(api):
    make_burn_rule(api)
    member_id = member_with(api, 100)
    assert_problem(redeem(api, member_id, points=200), 422, "insufficient_points")
    assert adjust(api, member_id, 100, adjustment_id="more").status_code == 201
    assert redeem(api, member_id, points=200).status_code == 201


# --- rewards -------------------------------------------------------------------------------

def test_redeem_a_reward(api, session):
    reward = make_reward(api, cost_points=300, stock=2)
    member_id = member_with(api, 1000)
    r = redeem(api, member_id, reward_id=reward["id"])
    assert r.status_code == 201, r.json
    assert r.json["points"] == 300 and r.json["value"] == 0
    assert r.json["reward"] == {"id": reward["id"], "code": "mug", "name": "Mug", "cost_points": 300}
    assert r.json["balance"]["available"] == 700
    assert fresh(session, Reward, reward["id"]).stock == 1
    assert_invariants(session)


def test_reward_out_of_stock_and_stock_restored_by_cancel(api, session):
    reward = make_reward(api, cost_points=100, stock=1)
    member_id = member_with(api, 1000)
    first = redeem(api, member_id, "r1", reward_id=reward["id"]).json
    assert_problem(redeem(api, member_id, "r2", reward_id=reward["id"]), 422, "reward_unavailable", "reward_id")
    assert fresh(session, Reward, reward["id"]).stock == 0
    assert balance(api, member_id)["available"] == 900
    assert api.post(f"/v1/redemptions/{first['id']}/cancel").status_code == 200
    assert fresh(session, Reward, reward["id"]).stock == 1
    assert api.post(f"/v1/redemptions/{first['id']}/cancel").headers["Idempotent-Replayed"] == "true"
    assert fresh(session, Reward, reward["id"]).stock == 1
    assert redeem(api, member_id, "r2", reward_id=reward["id"]).status_code == 201
    assert_invariants(session)


def test_unlimited_reward_stock_stays_unlimited(api, session):
    reward = make_reward(api, cost_points=100)
    member_id = member_with(api, 1000)
    first = redeem(api, member_id, "r1", reward_id=reward["id"]).json
    assert redeem(api, member_id, "r2", reward_id=reward["id"]).status_code == 201
    api.post(f"/v1/redemptions/{first['id']}/cancel")
    assert fresh(session, Reward, reward["id"]).stock is None


def test_inactive_or_unknown_reward_is_unavailable(api):
    reward = make_reward(api, cost_points=100, active=False)
    member_id = member_with(api, 1000)
    assert_problem(redeem(api, member_id, "r1", reward_id=reward["id"]), 422, "reward_unavailable", "reward_id")
    assert_problem(redeem(api, member_id, "r2", reward_id="nosuchreward"), 422, "reward_unavailable")
    assert balance(api, member_id)["available"] == 1000


def test_tier_restricted_reward_refuses_other_tiers(api, session):
    from loyalty_api.ids import new_id
    from loyalty_api.tiers.models import Tier

    for code, rank in (("silver", 1), ("gold", 2)):
        session.add(Tier(id=new_id(), code=code, name=code.title(), rank=rank, threshold=rank * 1000,
                         benefits=[], created_at=NOW, updated_at=NOW))
    bump_rules_revision(session)  # tiers added behind the service's back
    session.commit()
    gold_id = session.execute(select(Tier.id).where(Tier.code == "gold")).scalar_one()
    reward = make_reward(api, cost_points=100, tiers=["gold"])
    untiered = member_with(api, 1000, "m1")
    silver = member_with(api, 1000, "m2")
    gold = member_with(api, 1000, "m3")
    session.execute(Member.__table__.update().where(Member.id == silver).values(
        tier_id=session.execute(select(Tier.id).where(Tier.code == "silver")).scalar_one()))
    session.execute(Member.__table__.update().where(Member.id == gold).values(tier_id=gold_id))
    session.commit()
    assert_problem(redeem(api, untiered, "r1", reward_id=reward["id"]), 422, "reward_unavailable")
    assert_problem(redeem(api, silver, "r2", reward_id=reward["id"]), 422, "reward_unavailable")
    assert redeem(api, gold, "r3", reward_id=reward["id"]).status_code == 201


def test_reward_costing_more_than_the_balance_is_insufficient_points(api, session):
    reward = make_reward(api, cost_points=500, stock=3)
    member_id = member_with(api, 499)
    assert_problem(redeem(api, member_id, reward_id=reward["id"]), 422, "insufficient_points")
    assert fresh(session, Reward, reward["id"]).stock == 3


# --- scopes --------------------------------------------------------------------------------

def test_pos_and_app_may_redeem_marketer_may_not(api):
    make_burn_rule(api)
    member_id = member_with(api, 1000)
    assert redeem(api.as_role("pos"), member_id, "r1", points=10).status_code == 201
    assert redeem(api.as_role("app"), member_id, "r2", points=10).status_code == 201
    assert_problem(redeem(api.as_role("marketer"), member_id, "r3", points=10), 403, "forbidden")
    assert_problem(redeem(api.as_role(None), member_id, "r4", points=10), 401, "unauthorized")
