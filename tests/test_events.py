"""Custom events: POST /v1/events earn through `event:<type>` rules."""

import pytest
from sqlalchemy import func, select

from loyalty_api.purchases.models import Event

from .helpers import assert_invariants, assert_problem, balance, make_member, make_rule


@pytest.fixture
def member(api):
    return make_member(api)


def _event(member_id, event_id="e1", type_="app_review", **fields):
    return {"event_id": event_id, "type": type_, "member_id": member_id,
            "occurred_at": "2026-03-10T11:00:00Z", **fields}


def test_event_earns_through_its_rule(api, session, member):
    rule = make_rule(api, {"type": "fixed", "points": 25}, name="App review", trigger="event:app_review")
    make_rule(api, {"type": "fixed", "points": 99}, name="Survey", trigger="event:survey")
    make_rule(api)  # a purchase rule: not for events
    r = api.as_role("pos").post("/v1/events", json=_event(member["id"], attributes={"stars": 5}))
    assert r.status_code == 201, r.json
    assert r.json["points"] == 25
    assert r.json["awards"] == [{"rule_id": rule["id"], "rule_version": 1, "rule_name": "App review", "points": 25}]
    assert r.json["balance"]["available"] == 25
    entries = api.get(f"/v1/members/{member['id']}/ledger").json["data"]
    assert [(e["type"], e["points"], e["source"], e["rule_id"]) for e in entries] == [
        ("earn", 25, {"type": "event", "id": "e1"}, rule["id"])]
    assert_invariants(session)


def test_event_without_a_rule_earns_nothing(api, session, member):
    r = api.post("/v1/events", json=_event(member["id"], type_="check-in"))
    assert r.status_code == 201 and r.json["points"] == 0 and r.json["awards"] == []
    assert session.execute(select(func.count()).select_from(Event)).scalar() == 1


def test_conditions_on_attributes(api, member):
    make_rule(api, {"type": "fixed", "points": 10}, trigger="event:survey",
              conditions={">=": [{"var": "event.attributes.score"}, 8]})
    low = api.post("/v1/events", json=_event(member["id"], "e1", "survey", attributes={"score": 3}))
    high = api.post("/v1/events", json=_event(member["id"], "e2", "survey", attributes={"score": 9}))
    assert (low.json["points"], high.json["points"]) == (0, 10)


def test_per_member_limit_lifetime(api, session, member):
    make_rule(api, {"type": "fixed", "points": 25}, trigger="event:app_review",
              limits={"per_member": {"count": 1, "period": "lifetime"}})
    points = [api.post("/v1/events", json=_event(member["id"], f"e{i}")).json["points"] for i in range(3)]
    assert points == [25, 0, 0]
    other = make_member(api, "m2")
    assert api.post("/v1/events", json=_event(other["id"], "e-other")).json["points"] == 25
    assert_invariants(session)


def test_replay_and_conflict(api, session, member):
    make_rule(api, {"type": "fixed", "points": 25}, trigger="event:app_review")
    first = api.post("/v1/events", json=_event(member["id"], attributes={"a": 1}))
    again = api.post("/v1/events", json=_event(member["id"], attributes={"a": 1}))
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json == first.json
    assert_problem(api.post("/v1/events", json=_event(member["id"], attributes={"a": 2})), 409,
                   "idempotency_conflict")
    assert_problem(api.post("/v1/events", json=_event(member["id"], type_="survey")), 409, "idempotency_conflict")
    assert balance(api, member["id"])["available"] == 25
    assert_invariants(session)


def test_member_by_external_id(api, member):
    body = _event(None, member_external_id="m1")
    del body["member_id"]
    r = api.post("/v1/events", json=body)
    assert r.status_code == 201 and r.json["member_id"] == member["id"]


@pytest.mark.parametrize("change, field", [
    ({"type": "bad type!"}, "type"), ({"type": ""}, "type"), ({"type": "x" * 101}, "type"),
    ({"attributes": [1]}, "attributes"), ({"attributes": "x"}, "attributes"),
    ({"occurred_at": "2026-03-10T11:00:00"}, "occurred_at"), ({"occurred_at": "2026-03-11T11:00:00Z"}, "occurred_at"),
    ({"event_id": ""}, "event_id"), ({"points": 5}, "points"),
])
def test_invalid_events(api, member, change, field):
    assert_problem(api.post("/v1/events", json={**_event(member["id"]), **change}), 422, "validation_error", field)


def test_missing_fields(api):
    body = assert_problem(api.post("/v1/events", json={}), 422, "validation_error")
    assert {"event_id", "type", "occurred_at"} <= set(body["errors"])


def test_suspended_member_earns_nothing(api, session, member):
    make_rule(api, {"type": "fixed", "points": 25}, trigger="event:app_review")
    api.patch(f"/v1/members/{member['id']}", json={"status": "suspended"})
    assert_problem(api.post("/v1/events", json=_event(member["id"])), 409, "member_not_active")
    assert session.execute(select(func.count()).select_from(Event)).scalar() == 0


def test_roles(api, member):
    for role in ("app", "marketer"):
        assert_problem(api.as_role(role).post("/v1/events", json=_event(member["id"])), 403, "forbidden")
