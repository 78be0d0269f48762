"""Every field of every request body, fed what it must refuse; nothing may be written.

The fields and their types come from openapi.yaml, the bodies are valid but for the one field
under test, and each refusal must be a 4xx problem naming that field, with the database as it
was before. test_errors.py holds the hand-written cases (malformed JSON, deep nesting, ...).
"""

import json
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from loyalty_api.ledger.models import LedgerEntry, PointLot
from loyalty_api.members.models import Member
from loyalty_api.purchases.models import Event, Purchase, Refund
from loyalty_api.redemptions.models import Redemption
from loyalty_api.rewards.models import Reward
from loyalty_api.tiers.models import Tier

from .helpers import make_member, make_rule, purchase_body

SPEC = yaml.safe_load((Path(__file__).resolve().parent.parent / "openapi.yaml").read_text())
TABLES = (Member, Purchase, Refund, Event, Redemption, LedgerEntry, PointLot, Reward, Tier)
TEN_KB = "x" * 10240
LONE_SURROGATE = "\\ud800"  # written into the raw JSON: not Unicode


def _schema(method: str, path: str) -> dict:
    ref = SPEC["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return SPEC["components"]["schemas"][ref.rsplit("/", 1)[1]]


def _bad_values(field: str, prop: dict, path: str) -> list:
    """What a field of this schema must refuse (as JSON text, so NaN-free and surrogate-capable)."""
    kind = prop.get("type")
    values = [] if prop.get("nullable") else ["null"]
    if kind == "string":
        values += ["12", "true", "{}", "[]", json.dumps("a\x00b"), f'"{LONE_SURROGATE}"']
        if prop.get("minLength", 0) >= 1:
            values.append('""')
        if prop.get("maxLength", 10**9) < len(TEN_KB):
            values.append(json.dumps(TEN_KB))
        if prop.get("format") == "date-time":
            values += ['"2026-13-01T00:00:00Z"', '"2026-03-10T11:00:00"', '"2026-03-10T11:00:00+25:00"',
                       '"yesterday"', '"2026-03-10 11:00"', '"\u0662\u0660\u0662\u0666-03-10T11:00:00Z"']
        if field == "currency":  # unknown or malformed ISO 4217 codes, and look-alikes
            values += ['"eur"', '"EURO"', '"\u20ac"', '"E\u0301UR"', '"XXX"', '"QQQ"']
            if path != "/v1/program":  # any real currency may become the program's
                values.append('"USD"')
        elif "pattern" in prop:
            values += ['"has space"', '"\u202eevil"']
        if "enum" in prop:
            values += ['"nonsense"', json.dumps(prop["enum"][0].upper() + "\u200b")]
    elif kind == "integer":
        values += ['"5"', "1.5", "true", str(2**70), str(-(2**70)), "[]", "1e400"]
        if prop.get("minimum", -1) >= 0:
            values.append("-1")
    elif kind == "number":
        values += ['"5"', "true", "1e400", "[]"]
    elif kind == "boolean":
        values += ['"true"', "1", "0", "[]"]
    elif kind == "object" or "$ref" in prop:
        values += ['"x"', "[]", "12"]
    elif kind == "array":
        values += ['"x"', "{}", "12"]
    return values


@pytest.fixture
def world(api):
    rule = make_rule(api)
    api.post("/v1/rules", json={"name": "burn", "kind": "burn", "trigger": "redemption", "status": "active",
                                "effect": {"type": "conversion", "points": 1, "value": 1}})
    member = make_member(api, "bad-1")
    assert api.post("/v1/purchases", json=purchase_body(member["id"], "bad-t0", total=100000)).status_code == 201
    m = member["id"]
    tier = api.post("/v1/tiers", json={"code": "silver", "name": "Silver", "rank": 9, "threshold": 50}).json
    reward = api.post("/v1/rewards", json={"code": "cup", "name": "Cup", "cost_points": 5}).json
    return {
        ("post", "/v1/purchases"): ("/v1/purchases", purchase_body(
            m, "bad-t1", items=[{"sku": "a", "category": "c", "quantity": 1, "unit_price": 10000}], channel="web",
            store_id="s1", metadata={"k": "v"})),
        ("post", "/v1/purchases/{transaction_id}/refunds"): ("/v1/purchases/bad-t0/refunds",
                                                             {"refund_id": "bad-r1", "amount": 100}),
        ("post", "/v1/events"): ("/v1/events", {"event_id": "bad-e1", "type": "survey", "member_id": m,
                                                "occurred_at": "2026-03-10T11:00:00Z", "attributes": {}}),
        ("post", "/v1/members/{member_id}/redemptions"): (f"/v1/members/{m}/redemptions",
                                                          {"redemption_id": "bad-x1", "points": 10, "order_total": 5000,
                                                           "channel": "web"}),
        ("post", "/v1/members/{member_id}/adjustments"): (f"/v1/members/{m}/adjustments",
                                                          {"adjustment_id": "bad-a1", "points": 10, "reason": "r"}),
        ("post", "/v1/members"): ("/v1/members", {"external_id": "bad-2", "email": "a@example.com", "name": "A",
                                                  "birthdate": "1990-01-01", "metadata": {}}),
        ("post", "/v1/tiers"): ("/v1/tiers", {"code": "gold", "name": "Gold", "rank": 1, "threshold": 100,
                                              "multiplier": 1.5, "benefits": ["x"]}),
        ("post", "/v1/rewards"): ("/v1/rewards", {"code": "mug", "name": "Mug", "cost_points": 10, "stock": 1,
                                                  "tiers": [], "active": True}),
        ("post", "/v1/purchases/batch"): ("/v1/purchases/batch", {"purchases": [purchase_body(m, "bad-b1")]}),
        ("post", "/v1/members/{member_id}/redemptions/quote"): (f"/v1/members/{m}/redemptions/quote",
                                                                {"order_total": 5000, "channel": "web"}),
        ("patch", "/v1/members/{member_id}"): (f"/v1/members/{m}", {"name": "B", "status": "active"}),
        ("patch", "/v1/program"): ("/v1/program", {"pending_days": 0, "tier_metric": "points"}),
        ("post", "/v1/rules"): ("/v1/rules", {"name": "r", "kind": "earn", "trigger": "purchase", "priority": 1,
                                              "effect": {"type": "fixed", "points": 1}}),
        ("patch", "/v1/rules/{rule_id}"): (f"/v1/rules/{rule['id']}", {"priority": 2}),
        ("patch", "/v1/tiers/{tier_id}"): (f"/v1/tiers/{tier['id']}", {"name": "Silver"}),
        ("patch", "/v1/rewards/{reward_id}"): (f"/v1/rewards/{reward['id']}", {"name": "Cup"}),
    }


def _cases():
    for method, path in [("post", "/v1/purchases"), ("post", "/v1/purchases/{transaction_id}/refunds"),
                         ("post", "/v1/events"), ("post", "/v1/members/{member_id}/redemptions"),
                         ("post", "/v1/members/{member_id}/adjustments"), ("post", "/v1/members"),
                         ("post", "/v1/tiers"), ("post", "/v1/rewards"), ("post", "/v1/purchases/batch"),
                         ("post", "/v1/members/{member_id}/redemptions/quote"), ("patch", "/v1/members/{member_id}"),
                         ("patch", "/v1/program"), ("post", "/v1/rules"), ("patch", "/v1/rules/{rule_id}"),
                         ("patch", "/v1/tiers/{tier_id}"), ("patch", "/v1/rewards/{reward_id}")]:
        for field, prop in _schema(method, path).get("properties", {}).items():
            if prop.get("readOnly"):
                continue
            yield pytest.param(method, path, field, id=f"{path}:{field}")


def _counts(session):
    return [session.execute(select(func.count()).select_from(model)).scalar() for model in TABLES]


@pytest.mark.parametrize("method, template, field", list(_cases()))
def test_every_bad_value_of_every_field_is_refused_and_writes_nothing(api, session, world, method, template, field):
    path, body = world[(method, template)]
    prop = _schema(method, template)["properties"][field]
    before = _counts(session)
    failures = []
    for bad in _bad_values(field, prop, template):
        valid = json.dumps({k: v for k, v in body.items() if k != field})
        data = valid[:-1] + (", " if len(valid) > 2 else "") + f'"{field}": {bad}' + "}"
        r = api.request(method.upper(), path, data=data, headers={"Content-Type": "application/json"})
        problem = r.json if r.mimetype == "application/problem+json" else {}
        named = any(key == field or key.startswith(f"{field}.") for key in (problem.get("errors") or {}))
        if not (400 <= r.status_code < 500 and named):
            failures.append((bad[:40], r.status_code, problem or r.get_data(as_text=True)[:200]))
    assert not failures, failures
    assert _counts(session) == before


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
def test_unstorable_text_is_refused_in_every_encoding_json_reads(api, session, encoding):
    """A lone surrogate written raw (not as an escape) and NUL escaped, in each encoding the
    JSON parser recognises: the check that skips plain ASCII bodies must not skip these."""
    member = make_member(api, f"enc-{encoding}")
    before = _counts(session)
    for field, text in (("store_id", "s\ud800"), ("channel", "\\u0000")):
        body = json.dumps(purchase_body(member["id"], f"enc-{encoding}"))[:-1] + f', "{field}": "{text}"}}'
        r = api.post("/v1/purchases", data=body.encode(encoding, errors="surrogatepass"),
                     headers={"Content-Type": "application/json"})
        assert r.status_code == 422, (field, r.get_data(as_text=True)[:200])
        assert field in r.json["errors"]
    assert _counts(session) == before
