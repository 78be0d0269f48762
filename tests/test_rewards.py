"""The rewards catalogue: marketers manage it; members see only what they may redeem."""

import pytest
from sqlalchemy import update

from loyalty_api.ids import new_id
from loyalty_api.members.models import Member
from loyalty_api.program.services import bump_rules_revision
from loyalty_api.tiers.models import Tier

from .conftest import NOW
from .helpers import assert_problem, make_member


@pytest.fixture
def tiers(session):
    """Tiers silver and gold; returns {code: id}."""
    ids = {}
    for code, rank in (("silver", 1), ("gold", 2)):
        ids[code] = new_id()
        session.add(Tier(id=ids[code], code=code, name=code.title(), rank=rank, threshold=rank * 1000,
                         benefits=[], created_at=NOW, updated_at=NOW))
    bump_rules_revision(session)  # tiers added behind the service's back
    session.commit()
    return ids


def create(api, code, **fields):
    body = {"code": code, "name": f"The {code}", "cost_points": 100, **fields}
    r = api.as_role("marketer").post("/v1/rewards", json=body)
    assert r.status_code == 201, r.json
    return r.json


def codes(response) -> list[str]:
    assert response.status_code == 200, response.json
    return [reward["code"] for reward in response.json["data"]]


def test_create_and_get(api, tiers):
    reward = create(api, "mug", cost_points=250, stock=10, tiers=["gold", "silver"])
    assert {k: reward[k] for k in ("code", "name", "cost_points", "stock", "tiers", "active")} == {
        "code": "mug", "name": "The mug", "cost_points": 250, "stock": 10, "tiers": ["gold", "silver"],
        "active": True}
    assert reward["created_at"].endswith("Z")
    r = api.get(f"/v1/rewards/{reward['id']}")
    assert r.status_code == 200 and r.json == reward


def test_stock_and_tiers_are_optional(api):
    reward = create(api, "voucher")
    assert reward["stock"] is None and reward["tiers"] == [] and reward["active"] is True


def test_duplicate_code_is_409(api):
    create(api, "mug")
    r = api.as_role("marketer").post("/v1/rewards", json={"code": "mug", "name": "Other", "cost_points": 5})
    assert_problem(r, 409, "reward_exists", "code")


def test_unknown_tier_is_refused(api, tiers):
    r = api.as_role("marketer").post("/v1/rewards", json={"code": "mug", "name": "Mug", "cost_points": 5,
                                                           "tiers": ["platinum"]})
    assert_problem(r, 422, "validation_error", "tiers")


@pytest.mark.parametrize("body,field", [
    ({"code": "x", "name": "X", "cost_points": 0}, "cost_points"),
    ({"code": "x", "name": "X", "cost_points": "10"}, "cost_points"),
    ({"code": "x", "name": "X", "cost_points": 10, "stock": -1}, "stock"),
    ({"code": "x", "name": "X"}, "cost_points"),
    ({"code": "x", "name": "X", "cost_points": 10, "colour": "red"}, "colour"),
])
def test_invalid_bodies(api, body, field):
    assert_problem(api.as_role("marketer").post("/v1/rewards", json=body), 422, "validation_error", field)


def test_update_and_deactivate(api, tiers):
    reward = create(api, "mug", stock=3, tiers=["gold"])
    marketer = api.as_role("marketer")
    r = marketer.patch(f"/v1/rewards/{reward['id']}", json={"name": "Big mug", "stock": None, "tiers": []})
    assert r.status_code == 200, r.json
    assert (r.json["name"], r.json["stock"], r.json["tiers"], r.json["cost_points"]) == ("Big mug", None, [], 100)
    r = marketer.patch(f"/v1/rewards/{reward['id']}", json={"tiers": ["silver"], "cost_points": 120})
    assert (r.json["tiers"], r.json["cost_points"]) == (["silver"], 120)
    assert marketer.delete(f"/v1/rewards/{reward['id']}").status_code == 204
    assert api.get(f"/v1/rewards/{reward['id']}").json["active"] is False
    r = marketer.patch(f"/v1/rewards/{reward['id']}", json={"active": True})
    assert r.json["active"] is True


def test_update_to_a_taken_code_is_409(api):
    create(api, "mug")
    cap = create(api, "cap")
    assert_problem(api.as_role("marketer").patch(f"/v1/rewards/{cap['id']}", json={"code": "mug"}),
                   409, "reward_exists")
    # Keeping its own code is not a conflict.
    assert api.as_role("marketer").patch(f"/v1/rewards/{cap['id']}", json={"code": "cap"}).status_code == 200


def test_unknown_reward_is_404(api):
    assert_problem(api.get("/v1/rewards/nothing"), 404, "not_found")
    assert_problem(api.patch("/v1/rewards/nothing", json={"name": "x"}), 404, "not_found")
    assert_problem(api.delete("/v1/rewards/nothing"), 404, "not_found")


def test_list_filters_by_active_and_tier(api, tiers):
    create(api, "open")
    create(api, "gold-only", tiers=["gold"])
    create(api, "silver-or-gold", tiers=["silver", "gold"])
    create(api, "retired", active=False)
    assert codes(api.get("/v1/rewards")) == ["retired", "silver-or-gold", "gold-only", "open"]
    assert codes(api.get("/v1/rewards?active=true")) == ["silver-or-gold", "gold-only", "open"]
    assert codes(api.get("/v1/rewards?active=false")) == ["retired"]
    assert codes(api.get("/v1/rewards?tier=silver")) == ["retired", "silver-or-gold", "open"]
    assert codes(api.get("/v1/rewards?tier=gold&active=true")) == ["silver-or-gold", "gold-only", "open"]


def test_list_pages(api):
    for index in range(5):
        create(api, f"r{index}")
    first = api.get("/v1/rewards?limit=2").json
    assert [r["code"] for r in first["data"]] == ["r4", "r3"] and first["next_cursor"]
    second = api.get(f"/v1/rewards?limit=2&cursor={first['next_cursor']}").json
    third = api.get(f"/v1/rewards?limit=2&cursor={second['next_cursor']}").json
    assert [r["code"] for r in second["data"] + third["data"]] == ["r2", "r1", "r0"]
    assert third["next_cursor"] is None


def test_scopes(api):
    reward = create(api, "mug")
    for role in ("pos", "app"):
        assert api.as_role(role).get("/v1/rewards").status_code == 200
        assert api.as_role(role).get(f"/v1/rewards/{reward['id']}").status_code == 200
        assert_problem(api.as_role(role).post("/v1/rewards", json={"code": "x", "name": "x", "cost_points": 1}),
                       403, "forbidden")
        assert_problem(api.as_role(role).patch(f"/v1/rewards/{reward['id']}", json={"name": "y"}), 403, "forbidden")
    r = api.as_role("admin").post("/v1/rewards", json={"code": "x", "name": "x", "cost_points": 1})
    assert r.status_code == 201
    assert_problem(api.as_role(None).get("/v1/rewards"), 401, "unauthorized")


def _token(api, member_id) -> str:
    r = api.as_role("app").post(f"/v1/members/{member_id}/tokens")
    assert r.status_code == 201, r.json
    return r.json["token"]


def test_members_see_only_what_they_may_redeem(api, session, tiers):
    create(api, "open")
    create(api, "gold-only", tiers=["gold"])
    create(api, "silver-or-gold", tiers=["silver", "gold"])
    create(api, "retired", active=False)
    create(api, "sold-out", stock=0)
    create(api, "last-one", stock=1)
    untiered = make_member(api, "m1")["id"]
    silver = make_member(api, "m2")["id"]
    gold = make_member(api, "m3")["id"]
    session.execute(update(Member).where(Member.id == silver).values(tier_id=tiers["silver"]))
    session.execute(update(Member).where(Member.id == gold).values(tier_id=tiers["gold"]))
    session.commit()
    assert codes(api.as_token(_token(api, untiered)).get("/v1/rewards")) == ["last-one", "open"]
    assert codes(api.as_token(_token(api, silver)).get("/v1/rewards")) == ["last-one", "silver-or-gold", "open"]
    # Filters cannot widen what a member sees.
    assert codes(api.as_token(_token(api, gold)).get("/v1/rewards?active=false&tier=silver")) == [
        "last-one", "silver-or-gold", "gold-only", "open"]
