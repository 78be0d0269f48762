"""API keys and scopes: 401 without a valid key, 403 without the scope (API.md "Scopes")."""

import pytest
from sqlalchemy import select

from loyalty_api.auth.models import ApiKey
from loyalty_api.auth.services import create_api_key, revoke_api_key

from .conftest import NOW
from .helpers import ApiClient, assert_problem, make_member, make_rule, purchase_body

ROLES = ("pos", "app", "marketer", "admin")
MEMBER_READ = {"pos", "app", "admin"}
MEMBER_WRITE = {"pos", "admin"}
EARN = {"pos", "admin"}
MARKETING = {"marketer", "admin"}
ADMIN = {"admin"}


@pytest.fixture
def world(api):
    """A member with a purchase, and a rule: something for every route to find."""
    rule = make_rule(api)
    member = make_member(api)
    r = api.post("/v1/purchases", json=purchase_body(member["id"], "t0"))
    assert r.status_code == 201
    return {"member": member["id"], "rule": rule["id"]}


def _routes(w):
    m, rule = w["member"], w["rule"]
    rule_body = {"name": "x", "kind": "earn", "trigger": "purchase",
                 "effect": {"type": "fixed", "points": 1}}
    return [
        ("GET", "/v1/program", None, MARKETING),
        ("PATCH", "/v1/program", {}, MARKETING),
        ("POST", "/v1/members", {"external_id": "new"}, MEMBER_WRITE),
        ("GET", "/v1/members?external_id=m1", None, MEMBER_READ),
        ("GET", f"/v1/members/{m}", None, MEMBER_READ),
        ("PATCH", f"/v1/members/{m}", {"name": "N"}, MEMBER_WRITE),
        ("GET", f"/v1/members/{m}/ledger", None, MEMBER_READ),
        ("POST", f"/v1/members/{m}/adjustments", {"adjustment_id": "a", "points": 5, "reason": "r"}, ADMIN),
        ("POST", "/v1/purchases", purchase_body(m, "t-new"), EARN),
        ("GET", "/v1/purchases/t0", None, EARN),
        ("POST", "/v1/purchases/t0/refunds", {"refund_id": "r", "amount": 100}, EARN),
        ("POST", "/v1/events", {"event_id": "e", "type": "survey", "member_id": m,
                                "occurred_at": "2026-03-10T11:00:00Z"}, EARN),
        ("POST", "/v1/rules", rule_body, MARKETING),
        ("GET", "/v1/rules", None, MARKETING),
        ("GET", f"/v1/rules/{rule}", None, MARKETING),
        ("PATCH", f"/v1/rules/{rule}", {"priority": 3}, MARKETING),
        ("GET", f"/v1/rules/{rule}/versions", None, MARKETING),
        ("POST", "/v1/rules/validate", rule_body, MARKETING),
        ("POST", "/v1/rules/simulate", {"purchase": {"total": 100}, "member_id": m}, MARKETING),
        ("DELETE", f"/v1/members/{m}", None, MEMBER_WRITE),
    ]


def test_each_role_gets_exactly_its_scopes(api, world):
    for method, path, body, allowed in _routes(world):
        for role in ROLES:
            r = api.as_role(role).request(method, path, json=body)
            if role in allowed:
                # A second create may conflict (409); what matters is that the key got through.
                assert r.status_code in (200, 201, 204, 409), (role, method, path, r.json)
            else:
                assert_problem(r, 403, "forbidden")


def test_without_credentials_every_route_is_401(api, world):
    anonymous = api.as_role(None)
    for method, path, body, _ in _routes(world):
        assert_problem(anonymous.request(method, path, json=body), 401, "unauthorized")


@pytest.mark.parametrize("header", [
    "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "lk_abc_def", "Bearer lk_nope_nope", "Bearer lk_",
    "Bearer lk_a_b_c_d", "Bearer not-a-jwt", "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
])
def test_bad_credentials_are_401(api, header):
    r = api.as_role(None).get("/v1/program", headers={"Authorization": header})
    assert_problem(r, 401, "unauthorized")


def test_a_key_with_a_wrong_secret_is_401(api, keys):
    prefix = keys["admin"].rsplit("_", 1)[0]
    r = api.as_role(None).get("/v1/program", headers={"Authorization": f"Bearer {prefix}_wrongsecret"})
    assert_problem(r, 401, "unauthorized")


def test_scheme_is_case_insensitive(api, keys):
    r = api.as_role(None).get("/v1/program", headers={"Authorization": f"bearer {keys['admin']}"})
    assert r.status_code == 200


def test_revoked_key_is_401(api, session, keys):
    assert api.as_role("pos").get("/v1/members").status_code == 200
    revoke_api_key(session, keys["pos"].split("_")[1], NOW)
    session.commit()
    assert_problem(api.as_role("pos").get("/v1/members"), 401, "unauthorized")


def test_keys_are_stored_hashed(session, keys):
    stored = session.execute(select(ApiKey.key_hash, ApiKey.prefix, ApiKey.role)).all()
    assert {row.role for row in stored} == set(ROLES)
    for row in stored:
        assert all(row.key_hash not in key and key not in row.key_hash for key in keys.values())
        assert len(row.key_hash) == 64


def test_a_new_key_works_at_once(app, api, session):
    key = create_api_key(session, "marketer", NOW, "campaigns")
    session.commit()
    client = ApiClient(app.test_client(), {}, None, key)
    assert client.get("/v1/rules").status_code == 200
    assert_problem(client.get("/v1/members"), 403, "forbidden")


def test_auth_is_checked_before_the_body(api):
    r = api.as_role(None).post("/v1/purchases", json={"nonsense": True})
    assert_problem(r, 401, "unauthorized")
    r = api.as_role("app").post("/v1/purchases", json={"nonsense": True})
    assert_problem(r, 403, "forbidden")


def test_operations_need_no_key(api):
    anonymous = api.as_role(None)
    assert anonymous.get("/healthz").status_code == 200
    assert anonymous.get("/readyz").status_code == 200
    assert anonymous.get("/openapi.yaml").status_code == 200


def test_a_cached_key_opens_no_database_session(app, keys):
    """The key of a request is read once, then cached: later requests authenticate without a
    session (a read unit that never used the session makes none)."""
    from loyalty_api.auth.decorators import require
    from loyalty_api.extensions import db

    seen = []

    @require("program")
    def probe():
        seen.append(db.session.registry.has())
        return "ok"

    client = ApiClient(app.test_client(), keys, "admin")
    assert client.get("/v1/program").status_code == 200  # reads the key into the cache
    with app.test_request_context(headers={"Authorization": f"Bearer {keys['admin']}"}):
        db.session.remove()  # the test's own session, made by the fixtures: start without one
        assert probe() == "ok"
    assert seen == [False]
