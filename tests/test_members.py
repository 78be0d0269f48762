"""Members: enrolment, lookup, status, erasure."""

import pytest
from sqlalchemy import func, select

from loyalty_api.ledger.models import LedgerEntry

from .helpers import (
    adjust,
    assert_invariants,
    assert_problem,
    balance,
    buy,
    make_member,
    make_rule,
    purchase_body,
)


def test_create_returns_the_member(api):
    r = api.as_role("pos").post("/v1/members", json={
        "external_id": "crm-1", "email": "ana@example.com", "name": "Ana", "birthdate": "1990-05-17",
        "metadata": {"store": "north"}})
    assert r.status_code == 201, r.json
    m = r.json
    assert m["external_id"] == "crm-1" and m["email"] == "ana@example.com" and m["name"] == "Ana"
    assert m["status"] == "active" and m["tier"] is None
    assert m["enrolled_at"] == "2026-03-10T12:00:00Z"
    assert m["balance"] == {"available": 0, "pending": 0, "lifetime_earned": 0, "expiring": []}
    assert m["id"] and m["referral_code"]
    assert api.get(f"/v1/members/{m['id']}").json == m


def test_minimal_member(api):
    m = make_member(api, "only-id")
    assert m["email"] is None and m["name"] is None


def test_ids_and_referral_codes_are_unique(api):
    a, b = make_member(api, "a"), make_member(api, "b")
    assert a["id"] != b["id"] and a["referral_code"] != b["referral_code"]


def test_duplicate_external_id_is_member_exists(api):
    make_member(api, "dup")
    assert_problem(api.post("/v1/members", json={"external_id": "dup"}), 409, "member_exists")
    assert len(api.get("/v1/members?external_id=dup").json["data"]) == 1


def test_referral_code(api):
    referrer = make_member(api, "referrer")
    r = api.post("/v1/members", json={"external_id": "friend", "referral_code": referrer["referral_code"]})
    assert r.status_code == 201, r.json
    r = api.post("/v1/members", json={"external_id": "friend2", "referral_code": referrer["referral_code"].lower()})
    assert r.status_code == 201, r.json


def test_unknown_referral_code_is_refused(api):
    r = api.post("/v1/members", json={"external_id": "x", "referral_code": "NOPE1234"})
    assert_problem(r, 422, "invalid_referral_code", "referral_code")
    assert api.get("/v1/members?external_id=x").json["data"] == []


def test_referral_code_of_a_suspended_member_is_refused(api):
    referrer = make_member(api, "referrer")
    api.patch(f"/v1/members/{referrer['id']}", json={"status": "suspended"})
    r = api.post("/v1/members", json={"external_id": "x", "referral_code": referrer["referral_code"]})
    assert_problem(r, 422, "invalid_referral_code", "referral_code")


@pytest.mark.parametrize("body, field", [
    ({}, "external_id"),
    ({"external_id": ""}, "external_id"),
    ({"external_id": "x" * 201}, "external_id"),
    ({"external_id": 5}, "external_id"),
    ({"external_id": "x", "email": "not-an-email"}, "email"),
    ({"external_id": "x", "birthdate": "17/05/1990"}, "birthdate"),
    ({"external_id": "x", "metadata": "x"}, "metadata"),
    ({"external_id": "x", "status": "active"}, "status"),
    ({"external_id": "x", "balance": 100}, "balance"),
])
def test_invalid_member_bodies(api, body, field):
    assert_problem(api.post("/v1/members", json=body), 422, "validation_error", field)


def test_enrollment_rule_awards_on_creation(api, session):
    make_rule(api, {"type": "fixed", "points": 100}, name="Welcome", trigger="enrollment")
    m = make_member(api)
    assert m["balance"]["available"] == 100 and m["balance"]["lifetime_earned"] == 100
    entries = api.get(f"/v1/members/{m['id']}/ledger").json["data"]
    assert [(e["type"], e["points"], e["source"]["type"]) for e in entries] == [("earn", 100, "enrollment")]
    assert_invariants(session)


def test_get_unknown_member_is_404(api):
    assert_problem(api.get("/v1/members/01nosuchmember0000000000000"), 404, "not_found")


def test_list_by_external_id(api):
    a = make_member(api, "a")
    make_member(api, "b")
    r = api.get("/v1/members?external_id=a")
    assert r.status_code == 200
    assert [m["id"] for m in r.json["data"]] == [a["id"]] and r.json["next_cursor"] is None
    assert api.get("/v1/members?external_id=zzz").json == {"data": [], "next_cursor": None}


def test_list_pages_newest_first(api):
    ids = [make_member(api, f"m{i}")["id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        r = api.get("/v1/members?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        assert r.status_code == 200, r.json
        assert len(r.json["data"]) <= 2
        seen += [m["id"] for m in r.json["data"]]
        cursor = r.json["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]


def test_list_default_limit_is_50(api):
    for i in range(51):
        make_member(api, f"m{i}")
    r = api.get("/v1/members")
    assert len(r.json["data"]) == 50 and r.json["next_cursor"]
    r = api.get(f"/v1/members?cursor={r.json['next_cursor']}")
    assert len(r.json["data"]) == 1 and r.json["next_cursor"] is None
    assert len(api.get("/v1/members?limit=200").json["data"]) == 51


def test_suspend_and_reactivate(api, session):
    make_rule(api)
    m = make_member(api)
    r = api.as_role("pos").patch(f"/v1/members/{m['id']}", json={"status": "suspended"})
    assert r.status_code == 200 and r.json["status"] == "suspended"
    assert_problem(api.post("/v1/purchases", json=purchase_body(m["id"])), 409, "member_not_active")
    r = api.post("/v1/events", json={"event_id": "e1", "type": "survey", "member_id": m["id"],
                                     "occurred_at": "2026-03-10T11:00:00Z"})
    assert_problem(r, 409, "member_not_active")
    r = api.patch(f"/v1/members/{m['id']}", json={"status": "active"})
    assert r.json["status"] == "active"
    assert buy(api, m["id"])["points"] == 400
    assert_invariants(session)


@pytest.mark.parametrize("body, field", [
    ({"status": "erased"}, "status"), ({"status": "gone"}, "status"), ({"external_id": "new"}, "external_id"),
    ({"referral_code": "ABC"}, "referral_code"), ({"email": "nope"}, "email"),
])
def test_invalid_patches(api, body, field):
    m = make_member(api)
    assert_problem(api.patch(f"/v1/members/{m['id']}", json=body), 422, "validation_error", field)


def test_patch_profile(api):
    m = make_member(api, email="a@example.com")
    r = api.patch(f"/v1/members/{m['id']}", json={"name": "Bo", "email": None, "metadata": {"k": "v"}})
    assert r.status_code == 200, r.json
    assert r.json["name"] == "Bo" and r.json["email"] is None
    assert api.get(f"/v1/members/{m['id']}").json["name"] == "Bo"


def test_patch_unknown_member_is_404(api):
    assert_problem(api.patch("/v1/members/nope", json={"status": "suspended"}), 404, "not_found")


def test_delete_erases_personal_data_and_keeps_the_ledger(api, session):
    make_rule(api)
    m = make_member(api, "crm-9", email="ana@example.com", name="Ana", birthdate="1990-05-17",
                    metadata={"phone": "555"})
    buy(api, m["id"])
    r = api.as_role("pos").delete(f"/v1/members/{m['id']}")
    assert r.status_code == 204 and r.get_data() == b""
    erased = api.get(f"/v1/members/{m['id']}").json
    assert erased["status"] == "erased"
    assert erased["email"] is None and erased["name"] is None and erased["external_id"] != "crm-9"
    assert not erased.get("metadata") and not erased.get("birthdate")
    assert erased["balance"]["available"] == 400
    assert api.get("/v1/members?external_id=crm-9").json["data"] == []
    ledger = api.get(f"/v1/members/{m['id']}/ledger").json["data"]
    assert [e["points"] for e in ledger] == [400]
    # The external id is free again for a new enrolment.
    assert make_member(api, "crm-9")["id"] != m["id"]
    assert_invariants(session)


def test_erased_member_earns_and_changes_nothing(api, session):
    make_rule(api)
    m = make_member(api)
    assert api.delete(f"/v1/members/{m['id']}").status_code == 204
    assert_problem(api.post("/v1/purchases", json=purchase_body(m["id"])), 409, "member_not_active")
    assert_problem(adjust(api, m["id"], 10), 409, "member_not_active")
    assert_problem(api.patch(f"/v1/members/{m['id']}", json={"status": "active"}), 409, "member_not_active")
    r = api.post("/v1/events", json={"event_id": "e1", "type": "survey", "member_id": m["id"],
                                     "occurred_at": "2026-03-10T11:00:00Z"})
    assert_problem(r, 409, "member_not_active")
    assert session.execute(select(func.count()).select_from(LedgerEntry)).scalar() == 0
    assert balance(api, m["id"])["available"] == 0


def test_delete_twice_and_unknown(api):
    m = make_member(api)
    assert api.delete(f"/v1/members/{m['id']}").status_code == 204
    assert api.delete(f"/v1/members/{m['id']}").status_code in (204, 409)
    assert_problem(api.delete("/v1/members/nope"), 404, "not_found")


def test_member_by_external_id_in_a_purchase(api, session):
    make_rule(api)
    m = make_member(api, "card-77")
    body = purchase_body(None, member_external_id="card-77")
    del body["member_id"]
    r = api.post("/v1/purchases", json=body)
    assert r.status_code == 201, r.json
    assert r.json["member_id"] == m["id"] and r.json["points"] == 400
    body["transaction_id"] = "t2"
    body["member_external_id"] = "card-78"
    assert_problem(api.post("/v1/purchases", json=body), 422, "validation_error", "member_external_id")
    assert_invariants(session)
