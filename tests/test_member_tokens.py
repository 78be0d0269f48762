"""Member tokens: issued to apps, scoped to one member, short-lived, tamper-evident."""

import base64
import json
from datetime import timedelta

import jwt
import pytest

from loyalty_api.config import load_config

from .conftest import NOW
from .helpers import adjust, assert_problem, at, balance, make_member

SECRET = "test-secret-key-that-is-long-enough-for-hs256"


@pytest.fixture
def world(api):
    """Members A and B with 1000 points each, a 1:1 burn rule, a reward; A's and B's tokens."""
    r = api.post("/v1/rules", json={"name": "burn", "kind": "burn", "trigger": "redemption", "status": "active",
                                    "effect": {"type": "conversion", "points": 1, "value": 1}})
    assert r.status_code == 201, r.json
    reward = api.post("/v1/rewards", json={"code": "mug", "name": "Mug", "cost_points": 100}).json
    a, b = make_member(api, "a")["id"], make_member(api, "b")["id"]
    for member_id in (a, b):
        assert adjust(api, member_id, 1000, adjustment_id=f"seed-{member_id}").status_code == 201
    tokens = {}
    for name, member_id in (("a", a), ("b", b)):
        r = api.as_role("app").post(f"/v1/members/{member_id}/tokens")
        assert r.status_code == 201, r.json
        tokens[name] = r.json["token"]
    return {"a": a, "b": b, "reward": reward, "tokens": tokens}


def test_issue_a_token(api, world):
    r = api.as_role("app").post(f"/v1/members/{world['a']}/tokens")
    assert r.status_code == 201
    assert r.json["expires_at"] == "2026-03-10T12:15:00Z"  # LOYALTY_MEMBER_TOKEN_TTL: 900 s by default
    claims = jwt.decode(r.json["token"], SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert claims["sub"] == world["a"] and claims["exp"] == int((NOW + timedelta(seconds=900)).timestamp())


def test_the_secret_comes_from_loyalty_secret_key(monkeypatch):
    monkeypatch.setenv("LOYALTY_SECRET_KEY", "from-the-environment")
    assert load_config()["SECRET_KEY"] == "from-the-environment"


@pytest.mark.parametrize("role,status", [("admin", 201), ("app", 201), ("pos", 403), ("marketer", 403)])
def test_who_may_issue_tokens(api, world, role, status):
    assert api.as_role(role).post(f"/v1/members/{world['a']}/tokens").status_code == status


def test_tokens_for_unknown_or_inactive_members(api, world):
    assert_problem(api.as_role("app").post("/v1/members/nobody/tokens"), 404, "not_found")
    assert api.patch(f"/v1/members/{world['b']}", json={"status": "suspended"}).status_code == 200
    assert_problem(api.as_role("app").post(f"/v1/members/{world['b']}/tokens"), 409, "member_not_active")


def test_a_token_reads_its_own_member_and_ledger(api, world):
    me = api.as_token(world["tokens"]["a"])
    r = me.get(f"/v1/members/{world['a']}")
    assert r.status_code == 200 and r.json["id"] == world["a"]
    r = me.get(f"/v1/members/{world['a']}/ledger")
    assert r.status_code == 200 and r.json["data"][0]["points"] == 1000
    assert me.get("/v1/rewards").status_code == 200
    r = me.get(f"/v1/members/{world['a']}/referrals")
    assert r.status_code == 200, r.json


def test_a_token_redeems_and_cancels_its_own_redemptions(api, world):
    me = api.as_token(world["tokens"]["a"])
    r = me.post(f"/v1/members/{world['a']}/redemptions/quote", json={"order_total": 500})
    assert r.status_code == 200 and r.json == {"max_points": 500, "value": 500}
    r = me.post(f"/v1/members/{world['a']}/redemptions", json={"redemption_id": "a-1", "points": 300})
    assert r.status_code == 201, r.json
    r = me.post(f"/v1/members/{world['a']}/redemptions", json={"redemption_id": "a-2",
                                                                "reward_id": world["reward"]["id"]})
    assert r.status_code == 201, r.json
    assert me.post(f"/v1/redemptions/{r.json['id']}/cancel").status_code == 200
    assert balance(api, world["a"])["available"] == 700


def test_a_token_of_member_a_never_sees_member_b(api, world):
    me = api.as_token(world["tokens"]["a"])
    b = world["b"]
    theirs = api.post(f"/v1/members/{b}/redemptions", json={"redemption_id": "b-1", "points": 100}).json
    assert_problem(me.get(f"/v1/members/{b}"), 404, "not_found")
    assert_problem(me.get(f"/v1/members/{b}/ledger"), 404, "not_found")
    assert_problem(me.get(f"/v1/members/{b}/referrals"), 404, "not_found")
    assert_problem(me.post(f"/v1/members/{b}/redemptions/quote", json={"order_total": 500}), 404, "not_found")
    assert_problem(me.post(f"/v1/members/{b}/redemptions", json={"redemption_id": "x", "points": 10}),
                   404, "not_found")
    assert_problem(me.post(f"/v1/redemptions/{theirs['id']}/cancel"), 404, "not_found")
    assert balance(api, b)["available"] == 900
    # Nothing of B leaks through the member list either.
    assert_problem(me.get(f"/v1/members?external_id={'b'}"), 403, "forbidden")


@pytest.mark.parametrize("method,path,body", [
    ("GET", "/v1/members", None),
    ("POST", "/v1/members", {"external_id": "z"}),
    ("PATCH", "/v1/members/{a}", {"name": "Me"}),
    ("DELETE", "/v1/members/{a}", None),
    ("POST", "/v1/members/{a}/adjustments", {"adjustment_id": "x", "points": 10, "reason": "me"}),
    ("POST", "/v1/members/{a}/tokens", None),
    ("POST", "/v1/purchases", {}),
    ("GET", "/v1/rules", None),
    ("GET", "/v1/program", None),
    ("POST", "/v1/rewards", {"code": "x", "name": "x", "cost_points": 1}),
    ("GET", "/v1/rewards/{reward}", None),
    ("PATCH", "/v1/rewards/{reward}", {"name": "x"}),
])
def test_a_token_may_do_nothing_else(api, world, method, path, body):
    path = path.format(a=world["a"], reward=world["reward"]["id"])
    response = api.as_token(world["tokens"]["a"]).request(method, path, json=body)
    assert_problem(response, 403, "forbidden")


def test_an_expired_token_is_401(api, world):
    me = api.as_token(world["tokens"]["a"])
    at(NOW + timedelta(seconds=899))
    assert me.get(f"/v1/members/{world['a']}").status_code == 200
    at(NOW + timedelta(seconds=900))
    assert_problem(me.get(f"/v1/members/{world['a']}"), 401, "unauthorized")


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_tampered_or_foreign_tokens_are_401(api, world):
    token = world["tokens"]["a"]
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    exp = claims["exp"]
    forged = [
        f"{header}.{_b64({**claims, 'sub': world['b']})}.{signature}",  # another member, same signature
        f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}",  # altered signature
        jwt.encode({"sub": world["a"], "typ": "member", "exp": exp}, "another-secret-of-enough-length-32b",
                   algorithm="HS256"),
        f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",  # unsigned
        jwt.encode({"sub": world["a"], "typ": "admin", "exp": exp}, SECRET, algorithm="HS256"),  # not a member token
        jwt.encode({"sub": world["a"], "typ": "member"}, SECRET, algorithm="HS256"),  # no expiry
        "not-a-token",
    ]
    for token in forged:
        assert_problem(api.as_token(token).get(f"/v1/members/{world['a']}"), 401, "unauthorized")
        assert_problem(api.as_token(token).get(f"/v1/members/{world['b']}"), 401, "unauthorized")
