from .helpers import assert_invariants


def test_purchase_flow(api, session):
    r = api.post("/v1/rules", json={"name": "4 per 1.00", "kind": "earn", "trigger": "purchase", "status": "active",
                                     "effect": {"type": "per_amount", "points": 4, "per": 100, "rounding": "floor"}})
    assert r.status_code == 201, r.json
    r = api.post("/v1/members", json={"external_id": "m1", "email": "a@example.com"})
    assert r.status_code == 201, r.json
    member = r.json
    body = {"transaction_id": "t1", "member_id": member["id"], "occurred_at": "2026-03-10T11:00:00Z",
            "currency": "EUR", "total": 15200,
            "items": [{"sku": "123", "category": "red", "quantity": 1, "unit_price": 1200},
                      {"sku": "000", "category": "blue", "quantity": 1, "unit_price": 10000},
                      {"sku": "0001", "category": "delivery", "quantity": 1, "unit_price": 4000}]}
    r = api.post("/v1/purchases", json=body)
    assert r.status_code == 201, r.json
    assert r.json["points"] == 608
    r2 = api.post("/v1/purchases", json=body)
    assert r2.status_code == 200 and r2.headers["Idempotent-Replayed"] == "true"
    assert r2.json == r.json
    r = api.post("/v1/purchases/t1/refunds", json={"refund_id": "r1", "amount": 7600})
    assert r.status_code == 201, r.json
    assert r.json["points_reversed"] == 304
    r = api.get(f"/v1/members/{member['id']}/ledger")
    assert r.status_code == 200, r.json
    assert [e["type"] for e in r.json["data"]] == ["reverse", "earn"]
    assert_invariants(session)
