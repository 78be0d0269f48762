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
