"""Rules administration: create, list, get, patch (versions), validate, simulate."""

import pytest
from sqlalchemy import func, select

from loyalty_api.ledger.models import LedgerEntry
from loyalty_api.members.models import MemberBalance
from loyalty_api.purchases.models import Purchase
from loyalty_api.rules_admin.models import Rule

from .helpers import PER_EURO_4, WORKED_ITEMS, assert_problem, buy, make_member, make_rule

RULE = {"name": "4 per 1.00", "kind": "earn", "trigger": "purchase", "effect": PER_EURO_4}


def _count(session, model):
    return session.execute(select(func.count()).select_from(model)).scalar()


def test_create_defaults_to_draft_version_1(api):
    r = api.as_role("marketer").post("/v1/rules", json=RULE)
    assert r.status_code == 201, r.json
    rule = r.json
    assert rule["version"] == 1 and rule["status"] == "draft" and rule["id"]
    assert rule["name"] == "4 per 1.00" and rule["effect"] == PER_EURO_4
    assert rule["created_at"] == rule["updated_at"] == "2026-03-10T12:00:00Z"
    assert api.get(f"/v1/rules/{rule['id']}").json == rule


def test_get_unknown_rule_is_404(api):
    assert_problem(api.get("/v1/rules/nope"), 404, "not_found")
    assert_problem(api.patch("/v1/rules/nope", json={"status": "active"}), 404, "not_found")
    assert_problem(api.get("/v1/rules/nope/versions"), 404, "not_found")


def test_list_filters_and_pages(api):
    a = make_rule(api, status="active")
    b = make_rule(api, {"type": "fixed", "points": 5}, name="survey", trigger="event:survey", status="draft")
    c = make_rule(api, {"type": "conversion", "points": 100, "value": 100}, name="burn", kind="burn",
                  trigger="redemption", status="active")
    assert [x["id"] for x in api.get("/v1/rules").json["data"]] == [c["id"], b["id"], a["id"]]
    assert [x["id"] for x in api.get("/v1/rules?status=active").json["data"]] == [c["id"], a["id"]]
    assert [x["id"] for x in api.get("/v1/rules?kind=burn").json["data"]] == [c["id"]]
    assert [x["id"] for x in api.get("/v1/rules?trigger=event:survey").json["data"]] == [b["id"]]
    first = api.get("/v1/rules?limit=2").json
    assert len(first["data"]) == 2 and first["next_cursor"]
    rest = api.get(f"/v1/rules?limit=2&cursor={first['next_cursor']}").json
    assert [x["id"] for x in rest["data"]] == [a["id"]] and rest["next_cursor"] is None
    assert_problem(api.get("/v1/rules?status=deleted"), 422, "validation_error", "status")


def test_patch_content_makes_a_new_version_and_old_awards_keep_theirs(api, session):
    rule = make_rule(api)
    m = make_member(api)
    assert buy(api, m["id"], "t1")["awards"][0]["rule_version"] == 1
    r = api.patch(f"/v1/rules/{rule['id']}", json={"effect": {**PER_EURO_4, "points": 5}, "name": "5 per 1.00"})
    assert r.status_code == 200, r.json
    assert r.json["version"] == 2 and r.json["name"] == "5 per 1.00" and r.json["id"] == rule["id"]
    p2 = buy(api, m["id"], "t2")
    assert p2["points"] == 500
    assert p2["awards"] == [{"rule_id": rule["id"], "rule_version": 2, "rule_name": "5 per 1.00", "points": 500}]
    assert api.get("/v1/purchases/t1").json["awards"][0]["rule_version"] == 1
    versions = {e["source"]["id"]: e["rule_version"]
                for e in api.get(f"/v1/members/{m['id']}/ledger").json["data"]}
    assert versions == {"t1": 1, "t2": 2}
    listed = api.get(f"/v1/rules/{rule['id']}/versions").json["data"]
    assert [(v["version"], v["effect"]["points"], v["name"]) for v in listed] == [(2, 5, "5 per 1.00"),
                                                                                   (1, 4, "4 per 1.00")]


def test_status_change_keeps_the_version(api):
    rule = make_rule(api, status="draft")
    m = make_member(api)
    r = api.patch(f"/v1/rules/{rule['id']}", json={"status": "active"})
    assert r.status_code == 200 and r.json["version"] == 1 and r.json["status"] == "active"
    assert buy(api, m["id"], "t1")["points"] == 400
    assert api.patch(f"/v1/rules/{rule['id']}", json={"status": "paused"}).json["version"] == 1
    assert buy(api, m["id"], "t2")["points"] == 0
    assert len(api.get(f"/v1/rules/{rule['id']}/versions").json["data"]) == 1


def test_patch_with_the_same_content_makes_no_version(api):
    rule = make_rule(api)
    r = api.patch(f"/v1/rules/{rule['id']}", json={"effect": PER_EURO_4, "name": rule["name"]})
    assert r.json["version"] == 1
    assert len(api.get(f"/v1/rules/{rule['id']}/versions").json["data"]) == 1


def test_patch_null_removes_an_optional_part(api):
    rule = make_rule(api, conditions={">=": [{"var": "purchase.total"}, 100000]})
    m = make_member(api)
    assert buy(api, m["id"], "t1")["points"] == 0
    r = api.patch(f"/v1/rules/{rule['id']}", json={"conditions": None})
    assert r.json["version"] == 2 and r.json.get("conditions") is None
    assert buy(api, m["id"], "t2")["points"] == 400


def test_archived_rule_stops_and_cannot_change(api):
    rule = make_rule(api)
    m = make_member(api)
    assert api.patch(f"/v1/rules/{rule['id']}", json={"status": "archived"}).status_code == 200
    assert buy(api, m["id"])["points"] == 0
    assert_problem(api.patch(f"/v1/rules/{rule['id']}", json={"status": "active"}), 409, "rule_archived")


@pytest.mark.parametrize("change, path", [
    ({"conditions": {"frobnicate": [1, 2]}}, "conditions"),
    ({"conditions": {"==": [{"var": "purchase.nonsense"}, 1]}}, "conditions"),
    ({"item_filter": {"==": [{"var": "item.colour"}, "red"]}}, "item_filter"),
    ({"effect": {"type": "per_amount", "points": 4}}, "effect.per"),
    ({"effect": {"type": "per_amount", "points": -4, "per": 100}}, "effect.points"),
    ({"effect": {"type": "per_amount", "points": 4, "per": 0}}, "effect.per"),
    ({"effect": {"type": "per_amount", "points": 4, "per": 100, "rounding": "up"}}, "effect.rounding"),
    ({"effect": {"type": "teleport"}}, "effect.type"),
    ({"effect": {"type": "multiplier", "factor": 0.5}}, "effect.factor"),
    ({"effect": {"type": "fixed", "points": 10**30}}, "effect.points"),
    ({"effect": {"type": "per_amount", "points": 10**12, "per": 1}}, "effect.points"),
    ({"effect": {"type": "multiplier", "factor": 10**6}}, "effect.factor"),
    ({"limits": {"per_member": {"count": 1, "period": "fortnight"}}}, "limits.per_member.period"),
    ({"limits": {"per_event": 10**30}}, "limits.per_event"),
    ({"trigger": "whenever"}, "trigger"),
    ({"trigger": "redemption"}, "trigger"),
    ({"kind": "burn"}, "trigger"),
    ({"starts_at": "2026-01-01T00:00:00"}, "starts_at"),
    ({"starts_at": "2026-05-01T00:00:00Z", "ends_at": "2026-04-01T00:00:00Z"}, "ends_at"),
])
def test_invalid_rules_name_the_bad_path(api, session, change, path):
    r = api.post("/v1/rules", json={**RULE, **change})
    body = assert_problem(r, 422, "invalid_rule")
    assert any(key == path or key.startswith(path + ".") for key in body["errors"]), body["errors"]
    assert _count(session, Rule) == 0
    v = api.post("/v1/rules/validate", json={**RULE, **change})
    assert v.status_code == 200 and v.json["valid"] is False
    assert any(key == path or key.startswith(path + ".") for key in v.json["errors"]), v.json


def test_invalid_patch_makes_no_version(api):
    rule = make_rule(api)
    r = api.patch(f"/v1/rules/{rule['id']}", json={"conditions": {"nope": []}})
    assert_problem(r, 422, "invalid_rule", "conditions")
    assert api.get(f"/v1/rules/{rule['id']}").json["version"] == 1
    assert len(api.get(f"/v1/rules/{rule['id']}/versions").json["data"]) == 1


@pytest.mark.parametrize("body, field", [
    ({**RULE, "colour": "red"}, "colour"), ({**RULE, "priority": "high"}, "priority"),
    ({**RULE, "status": "live"}, "status"), ({"kind": "earn"}, "name"), ({**RULE, "effect": "x"}, "effect"),
])
def test_malformed_rule_bodies_are_validation_errors(api, body, field):
    assert_problem(api.post("/v1/rules", json=body), 422, "validation_error", field)


def test_validate_writes_nothing(api, session):
    r = api.post("/v1/rules/validate", json=RULE)
    assert r.status_code == 200 and r.json == {"valid": True, "errors": {}}
    assert _count(session, Rule) == 0


def test_simulate_worked_example_writes_nothing(api, session):
    make_rule(api, status="draft")
    m = make_member(api)
    before = session.execute(select(MemberBalance.available, MemberBalance.version)).all()
    r = api.post("/v1/rules/simulate", json={"purchase": {"total": 15200, "items": WORKED_ITEMS},
                                             "member_id": m["id"]})
    assert r.status_code == 200, r.json
    assert r.json["points"] == 608 and r.json["awards"][0]["points"] == 608
    assert r.json["outcomes"][0]["matched"] is True
    assert _count(session, Purchase) == 0 and _count(session, LedgerEntry) == 0
    assert session.execute(select(MemberBalance.available, MemberBalance.version)).all() == before


def test_simulate_a_described_member_and_inline_rules(api):
    r = api.post("/v1/rules/simulate", json={
        "purchase": {"total": 10000}, "member": {"tier": None, "lifetime_earned": 0},
        "rules": [{**RULE, "effect": {"type": "fixed", "points": 7}}]})
    assert r.status_code == 200, r.json
    assert r.json["points"] == 7


def test_simulate_an_event(api):
    make_rule(api, {"type": "fixed", "points": 25}, trigger="event:app_review")
    m = make_member(api)
    r = api.post("/v1/rules/simulate", json={"event": {"type": "app_review"}, "member_id": m["id"]})
    assert r.status_code == 200 and r.json["points"] == 25


@pytest.mark.parametrize("body, field", [
    ({"member": {}}, "purchase"),
    ({"purchase": {"total": 1}, "event": {"type": "x"}, "member": {}}, "purchase"),
    ({"purchase": {"total": 1}}, "member_id"),
    ({"purchase": {"total": -1}, "member": {}}, "purchase.total"),
    ({"purchase": {"total": 1, "currency": "USD"}, "member": {}}, "currency"),
])
def test_simulate_refusals(api, body, field):
    r = api.post("/v1/rules/simulate", json=body)
    assert r.status_code == 422 and field in r.json.get("errors", {}), r.json


def test_simulate_inline_rule_errors_are_invalid_rule(api):
    r = api.post("/v1/rules/simulate", json={"purchase": {"total": 1}, "member": {},
                                             "rules": [RULE, {**RULE, "conditions": {"nope": []}}]})
    body = assert_problem(r, 422, "invalid_rule")
    assert any(key.startswith("rules.1.conditions") for key in body["errors"]), body["errors"]


def test_rules_are_for_marketer_and_admin(api):
    for role in ("pos", "app"):
        assert_problem(api.as_role(role).post("/v1/rules", json=RULE), 403, "forbidden")
        assert_problem(api.as_role(role).get("/v1/rules"), 403, "forbidden")
