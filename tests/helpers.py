"""Small helpers for the HTTP tests."""

from datetime import datetime

from sqlalchemy import func, select

from loyalty_api.ledger.models import LedgerEntry, PointLot
from loyalty_api.ledger.services import ledger_totals
from loyalty_api.members.models import MemberBalance
from loyalty_api.timeutil import freeze


class ApiClient:
    def __init__(self, client, keys: dict, role: str | None, token: str | None = None):
        self.client, self.keys, self.role, self.token = client, keys, role, token

    def as_role(self, role: str | None) -> "ApiClient":
        return ApiClient(self.client, self.keys, role)

    def as_token(self, token: str) -> "ApiClient":
        return ApiClient(self.client, self.keys, None, token)

    def _headers(self, headers):
        headers = dict(headers or {})
        credential = self.token or (self.keys[self.role] if self.role else None)
        if credential:
            headers.setdefault("Authorization", f"Bearer {credential}")
        return headers

    def request(self, method, path, json=None, headers=None, **kwargs):
        return self.client.open(path, method=method, json=json, headers=self._headers(headers), **kwargs)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, json=None, **kw):
        return self.request("POST", path, json=json, **kw)

    def patch(self, path, json=None, **kw):
        return self.request("PATCH", path, json=json, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)


def at(moment: datetime) -> None:
    """Move the service's clock."""
    freeze(moment)


def assert_invariants(session) -> None:
    """Check DESIGN.md's ledger invariants for every member."""
    totals = ledger_totals(session)
    for balance in session.execute(select(MemberBalance)).scalars():
        member_totals = totals.get(balance.member_id, {"ledger": 0, "lots": 0})
        assert balance.available + balance.pending == member_totals["ledger"], balance.member_id
        if balance.available >= 0:
            assert member_totals["lots"] == balance.available, balance.member_id
        assert balance.pending >= 0
        pending_lots = session.execute(select(func.coalesce(func.sum(PointLot.remaining), 0)).where(
            PointLot.member_id == balance.member_id, PointLot.status == "pending")).scalar()
        assert pending_lots == balance.pending, balance.member_id
    bad_lots = session.execute(select(func.count()).select_from(PointLot).where(
        (PointLot.remaining < 0) | (PointLot.remaining > PointLot.points))).scalar()
    assert bad_lots == 0
    assert session.execute(select(func.count()).select_from(LedgerEntry)).scalar() is not None


# --- factories over the HTTP API (shared by the domain tests) ---------------------------------

PER_EURO_4 = {"type": "per_amount", "points": 4, "per": 100, "rounding": "floor"}
WORKED_ITEMS = [{"sku": "123", "category": "red", "quantity": 1, "unit_price": 1200},
                {"sku": "000", "category": "blue", "quantity": 1, "unit_price": 10000},
                {"sku": "0001", "category": "delivery", "quantity": 1, "unit_price": 4000}]


def make_rule(api, effect=None, **fields) -> dict:
    """Create an active earn rule on `purchase` (4 points per 1.00 unless told otherwise)."""
    body = {"name": "4 per 1.00", "kind": "earn", "trigger": "purchase", "status": "active",
            "effect": effect or PER_EURO_4, **fields}
    r = api.post("/v1/rules", json=body)
    assert r.status_code == 201, r.json
    return r.json


def make_member(api, external_id="m1", **fields) -> dict:
    r = api.post("/v1/members", json={"external_id": external_id, **fields})
    assert r.status_code == 201, r.json
    return r.json


def purchase_body(member_id, transaction_id="t1", total=10000, occurred_at="2026-03-10T11:00:00Z", **fields):
    return {"transaction_id": transaction_id, "member_id": member_id, "occurred_at": occurred_at,
            "currency": "EUR", "total": total, **fields}


def buy(api, member_id, transaction_id="t1", total=10000, **fields) -> dict:
    r = api.post("/v1/purchases", json=purchase_body(member_id, transaction_id, total, **fields))
    assert r.status_code == 201, r.json
    return r.json


def adjust(api, member_id, points, adjustment_id="a1", reason="goodwill"):
    return api.post(f"/v1/members/{member_id}/adjustments",
                    json={"adjustment_id": adjustment_id, "points": points, "reason": reason})


def balance(api, member_id) -> dict:
    r = api.get(f"/v1/members/{member_id}")
    assert r.status_code == 200, r.json
    return r.json["balance"]


def assert_problem(response, status, code, field=None):
    """Assert a problem+json refusal; `field` must be named in `errors` when given."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == "application/problem+json"
    body = response.json
    assert body["code"] == code, body
    assert body["status"] == status and body["title"] and body["type"] and body["detail"]
    if field is not None:
        assert field in (body.get("errors") or {}), body
    return body
