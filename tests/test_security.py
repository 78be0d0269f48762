"""Keeping intruders out: every operation of the spec against every kind of credential, and the rest.

The scope matrix is written from API.md's table, not from the code, and covers every operation
in openapi.yaml (a new operation without a row here fails the test). test_auth.py and
test_member_tokens.py cover key revocation, token expiry and tampering; this file adds the
matrix, constant-time comparison, secrets kept out of logs and bodies, limits, headers and
injection strings in every string field.
"""

import hmac
import logging
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from loyalty_api.auth import services as auth_services
from loyalty_api.members.models import Member

from .helpers import assert_problem, make_member, make_rule, purchase_body

SPEC = yaml.safe_load((Path(__file__).resolve().parent.parent / "openapi.yaml").read_text())
KEY_ROLES = ("pos", "app", "marketer", "admin")
PUBLIC = "public"
OWN = "member"  # a member token, acting on its own member

MEMBERS_READ = {"pos", "app", "admin", OWN}
MEMBERS_WRITE = {"pos", "admin"}
EARN = {"pos", "admin"}
BURN = {"pos", "app", "admin", OWN}
MARKETING = {"marketer", "admin"}
ADMIN = {"admin"}
# API.md "Scopes", operation by operation.
ALLOWED = {
    ("GET", "/healthz"): PUBLIC, ("GET", "/readyz"): PUBLIC, ("GET", "/openapi.yaml"): PUBLIC,
    ("POST", "/v1/integrations/stripe/webhook"): PUBLIC,  # authenticated by its Stripe signature
    ("GET", "/v1/program"): MARKETING, ("PATCH", "/v1/program"): MARKETING,
    ("POST", "/v1/members"): MEMBERS_WRITE, ("GET", "/v1/members"): {"pos", "app", "admin"},
    ("GET", "/v1/members/{member_id}"): MEMBERS_READ, ("PATCH", "/v1/members/{member_id}"): MEMBERS_WRITE,
    ("DELETE", "/v1/members/{member_id}"): MEMBERS_WRITE,
    ("GET", "/v1/members/{member_id}/ledger"): MEMBERS_READ,
    ("GET", "/v1/members/{member_id}/tier-history"): MEMBERS_READ,
    ("GET", "/v1/members/{member_id}/referrals"): {"admin", OWN},
    ("POST", "/v1/members/{member_id}/adjustments"): ADMIN,
    ("POST", "/v1/members/{member_id}/tokens"): {"app", "admin"},
    ("POST", "/v1/members/{member_id}/redemptions/quote"): BURN,
    ("POST", "/v1/members/{member_id}/redemptions"): BURN,
    ("POST", "/v1/redemptions/{redemption_id}/cancel"): BURN,
    ("POST", "/v1/purchases"): EARN, ("POST", "/v1/purchases/batch"): EARN,
    ("GET", "/v1/purchases/{transaction_id}"): EARN, ("POST", "/v1/purchases/{transaction_id}/refunds"): EARN,
    ("POST", "/v1/events"): EARN,
    ("POST", "/v1/rules"): MARKETING, ("GET", "/v1/rules"): MARKETING, ("GET", "/v1/rules/{rule_id}"): MARKETING,
    ("PATCH", "/v1/rules/{rule_id}"): MARKETING, ("GET", "/v1/rules/{rule_id}/versions"): MARKETING,
    ("POST", "/v1/rules/validate"): MARKETING, ("POST", "/v1/rules/simulate"): MARKETING,
    ("POST", "/v1/tiers"): MARKETING, ("GET", "/v1/tiers"): MARKETING, ("GET", "/v1/tiers/{tier_id}"): MARKETING,
    ("PATCH", "/v1/tiers/{tier_id}"): MARKETING, ("DELETE", "/v1/tiers/{tier_id}"): MARKETING,
    ("POST", "/v1/rewards"): MARKETING, ("GET", "/v1/rewards"): {"pos", "app", "marketer", "admin", OWN},
    ("GET", "/v1/rewards/{reward_id}"): {"pos", "app", "marketer", "admin"},
    ("PATCH", "/v1/rewards/{reward_id}"): MARKETING, ("DELETE", "/v1/rewards/{reward_id}"): MARKETING,
    ("POST", "/v1/jobs/{name}/runs"): ADMIN, ("GET", "/v1/jobs/{name}/runs"): ADMIN,
    ("GET", "/v1/integrations/stripe/events"): ADMIN,
    ("POST", "/v1/integrations/stripe/unmatched/{event_id}/replay"): ADMIN,
}
OPERATIONS = sorted((method.upper(), path) for path, item in SPEC["paths"].items()
                    for method in item if method in ("get", "post", "patch", "put", "delete"))


@pytest.fixture
def world(app, api, monkeypatch):
    monkeypatch.setitem(app.config, "STRIPE_WEBHOOK_SECRET", "whsec_security")
    make_rule(api)
    member = make_member(api, "sec-1")
    other = make_member(api, "sec-2")
    assert api.post("/v1/purchases", json=purchase_body(member["id"], "sec-t1")).status_code == 201
    token = api.post(f"/v1/members/{member['id']}/tokens").json["token"]
    return {"member_id": member["id"], "other_id": other["id"], "token": token, "transaction_id": "sec-t1",
            "rule_id": "r0", "tier_id": "t0", "reward_id": "w0", "redemption_id": "x0",
            "name": "reconcile-balances", "event_id": "evt_0"}


def _path(template: str, values: dict, member_id: str) -> str:
    return template.format(**{**values, "member_id": member_id})


def test_every_operation_has_a_row_in_the_matrix():
    assert set(OPERATIONS) == set(ALLOWED)


@pytest.mark.parametrize("method, template", OPERATIONS)
def test_scope_matrix(api, world, method, template):
    allowed = ALLOWED[(method, template)]
    path = _path(template, world, world["member_id"])
    callers = {"none": {}, "bad key": {"Authorization": "Bearer lk_0000_notakey"},
               "bad token": {"Authorization": "Bearer " + world["token"][:-4] + "AAAA"},
               "member": {"Authorization": f"Bearer {world['token']}"},
               **{role: {"Authorization": f"Bearer {api.keys[role]}"} for role in KEY_ROLES}}
    for caller, headers in callers.items():
        r = api.as_role(None).request(method, path, json={}, headers=headers)
        assert r.status_code < 500, (caller, method, path, r.json)
        if allowed == PUBLIC:
            assert r.status_code not in (401, 403), (caller, method, path)
        elif caller in ("none", "bad key", "bad token"):
            assert_problem(r, 401, "unauthorized")
        elif caller in allowed:
            assert r.status_code not in (401, 403), (caller, method, path, r.json)
        else:
            assert_problem(r, 403, "forbidden")
        assert "WWW-Authenticate" not in r.headers or r.status_code == 401


@pytest.mark.parametrize("method, template", [op for op in OPERATIONS if "{member_id}" in op[1]])
def test_a_member_token_never_reaches_another_member(api, world, method, template):
    if ALLOWED[(method, template)] == PUBLIC:
        return
    path = _path(template, world, world["other_id"])
    r = api.as_token(world["token"]).request(method, path, json={})
    expected = (404, "not_found") if OWN in ALLOWED[(method, template)] else (403, "forbidden")
    assert_problem(r, *expected)


def test_keys_are_compared_in_constant_time(api, keys, monkeypatch):
    calls, compare = [], hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(auth_services.hmac, "compare_digest", spy)
    monkeypatch.setattr(auth_services, "_key_cache", {})
    assert api.as_role("pos").get("/v1/members").status_code == 200  # from the database
    assert api.as_role("pos").get("/v1/members").status_code == 200  # from the cache
    prefix = keys["pos"].split("_")[1]
    assert api.as_role(None).get("/v1/members", headers={"Authorization": f"Bearer lk_{prefix}_forged"}) \
        .status_code == 401
    assert len(calls) >= 3
    # Only hashes are compared, never the key itself.
    assert all(len(a) == len(b) == 64 and keys["pos"] not in (a, b) for a, b in calls)


def test_no_key_token_or_secret_reaches_logs_or_error_bodies(app, api, world, keys, caplog, monkeypatch):
    secrets = [*keys.values(), world["token"], app.config["SECRET_KEY"], "whsec_never_logged", "whsec_security"]
    monkeypatch.setitem(app.config, "STRIPE_WEBHOOK_SECRET", "whsec_never_logged")
    caplog.set_level(logging.DEBUG)
    bodies = []

    def boom(*args, **kwargs):
        raise RuntimeError("the database said no")

    monkeypatch.setattr("loyalty_api.members.services.get_member", boom)
    for key in secrets[:5]:
        bodies.append(api.as_role(None).get(f"/v1/members/{world['member_id']}",
                                            headers={"Authorization": f"Bearer {key}"}))
        bodies.append(api.as_role(None).get("/v1/program", headers={"Authorization": f"Bearer {key}x"}))
    bodies.append(api.as_role(None).post("/v1/integrations/stripe/webhook", data=b"{}",
                                         headers={"Stripe-Signature": "t=1,v1=00", "Content-Type": "application/json"}))
    assert any(r.status_code == 500 for r in bodies)  # the unexpected error was logged with its traceback
    text = caplog.text + "".join(r.get_data(as_text=True) for r in bodies)
    for secret in secrets:
        assert secret not in text
        assert secret[-20:] not in text


def test_batch_size_is_limited(api, world):
    body = {"purchases": [purchase_body(world["member_id"], f"b{i}", total=100) for i in range(1001)]}
    assert_problem(api.post("/v1/purchases/batch", json=body), 422, "validation_error", "purchases")


def test_request_size_is_limited_by_default(app):
    assert 0 < app.config["MAX_CONTENT_LENGTH"] <= 16 * 1024 * 1024


@pytest.mark.parametrize("path", ["/v1/members", "/v1/rules", "/v1/tiers", "/v1/rewards", "/v1/jobs/expire-points/runs",
                                  "/v1/integrations/stripe/events"])
def test_every_list_caps_its_limit(api, world, path):
    assert_problem(api.get(f"{path}?limit=201"), 422, "validation_error", "limit")
    assert api.get(f"{path}?limit=200").status_code == 200


@pytest.mark.parametrize("path, status", [("/healthz", 200), ("/v1/program", 200), ("/v1/members/nope", 404),
                                          ("/v1/nowhere", 404)])
def test_security_headers_on_every_response(api, path, status):
    for client in (api, api.as_role(None)):
        r = client.get(path)
        assert r.status_code in (status, 401)
        assert r.headers.getlist("X-Content-Type-Options") == ["nosniff"]
        assert r.headers.getlist("X-Frame-Options") == ["DENY"]
        assert r.headers.getlist("Referrer-Policy") == ["no-referrer"]
        assert r.headers.getlist("Cache-Control") == ["no-store"]


INJECTIONS = ["' OR '1'='1", "x'; DROP TABLE members; --", '" OR ""="', "1; SELECT pg_sleep(10)--",
              "%' OR 1=1 --", "\\'; DELETE FROM ledger_entries; --", "$$; DROP TABLE members; $$"]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_injection_strings_are_data_not_sql(api, session, world, payload):
    members_before = session.execute(select(func.count()).select_from(Member)).scalar()
    m = api.post("/v1/members", json={"external_id": payload, "email": None, "name": payload,
                                      "metadata": {payload: payload}})
    assert m.status_code == 201, m.json
    assert m.json["external_id"] == payload and m.json["name"] == payload
    found = api.get("/v1/members", query_string={"external_id": payload})
    assert [row["id"] for row in found.json["data"]] == [m.json["id"]]
    body = purchase_body(m.json["id"], payload, channel=payload, store_id=payload,
                         items=[{"sku": payload, "category": payload, "quantity": 1, "unit_price": 10000}],
                         metadata={payload: payload})
    assert api.post("/v1/purchases", json=body).status_code == 201
    assert api.get("/v1/purchases/" + payload.replace("%", "%25").replace("?", "%3F").replace("#", "%23")) \
        .json["transaction_id"] == payload
    r = api.post(f"/v1/purchases/{payload.replace('%', '%25')}/refunds", json={"refund_id": payload, "amount": 100})
    assert r.status_code == 201, r.json
    assert api.post("/v1/events", json={"event_id": payload, "type": "survey", "member_external_id": payload,
                                        "occurred_at": "2026-03-10T11:00:00Z",
                                        "attributes": {payload: payload}}).status_code == 201
    assert api.post(f"/v1/members/{m.json['id']}/adjustments",
                    json={"adjustment_id": payload, "points": 5, "reason": payload}).status_code == 201
    for path in (f"/v1/members/{payload}", f"/v1/rules/{payload}", f"/v1/tiers/{payload}",
                 f"/v1/rewards/{payload}", f"/v1/jobs/{payload}/runs"):
        r = api.get(path.replace("%", "%25"))
        assert r.status_code in (404, 422), (path, r.json)
    for query in ({"external_id": payload}, {"cursor": payload}):
        assert api.get("/v1/members", query_string=query).status_code in (200, 422)
    r = api.post("/v1/rules", json={"name": payload, "kind": "earn", "trigger": f"event:{payload}",
                                    "effect": {"type": "fixed", "points": 1}})
    assert r.status_code in (201, 422)
    assert session.execute(select(func.count()).select_from(Member)).scalar() == members_before + 1
    assert api.get(f"/v1/members/{world['member_id']}").json["balance"]["available"] == 400
