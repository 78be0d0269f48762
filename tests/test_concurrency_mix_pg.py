"""Many clients at once on one member, mixing every write, while expire-points runs (PostgreSQL).

Purchases, refunds, redemptions, cancels, retries of each and two job runs are released
together from threads with their own connections. No deadlock or serialization failure may
surface (no 5xx), every client id lands once, and the balance is exactly what the accepted
answers add up to, with the ledger invariants intact.
"""

import threading
from collections import Counter

import pytest
from sqlalchemy import delete, func, select

from loyalty_api.extensions import db
from loyalty_api.members.models import MemberBalance
from loyalty_api.purchases.models import Purchase, Refund
from loyalty_api.redemptions.models import Redemption

from .helpers import assert_invariants, purchase_body
from .test_concurrency_pg import _client, _setup, live  # noqa: F401 (a fixture)

pytestmark = pytest.mark.postgres

ROUNDS = 3


@pytest.fixture
def mixed(live):  # noqa: F811
    """`live`, also deleting the redemptions (its own cleanup knows nothing of them)."""
    yield live
    live_app, _ = live
    with live_app.app_context():
        from loyalty_api.ledger.models import LotAllocation
        from loyalty_api.members.models import Member

        members = select(Member.id).where(Member.external_id.like("conc-%"))
        db.session.execute(delete(LotAllocation).where(LotAllocation.member_id.in_(members)))
        db.session.execute(delete(Redemption).where(Redemption.member_id.in_(members)))
        db.session.commit()
        db.session.remove()


def _race(live, requests):  # noqa: F811
    """Send each (role, method, path, body) from its own thread, all released at once."""
    barrier = threading.Barrier(len(requests))
    results: list = [None] * len(requests)

    def worker(i, role, method, path, body):
        client = _client(live, role)
        barrier.wait()
        r = client.request(method, path, json=body)
        results[i] = (r.status_code, r.json)

    threads = [threading.Thread(target=worker, args=(i, *req)) for i, req in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None for r in results), "a request did not finish"
    return results


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_mixed_writes_on_one_member_with_a_job_running(mixed, round_):
    live = mixed  # noqa: F811
    member_id = _setup(live)
    admin, pos = _client(live), _client(live, "pos")
    r = admin.post("/v1/rules", json={"name": "conc burn", "kind": "burn", "trigger": "redemption", "status": "active",
                                      "effect": {"type": "conversion", "points": 1, "value": 1}})
    assert r.status_code == 201, r.json
    for i in range(4):  # 400 points each
        assert pos.post("/v1/purchases", json=purchase_body(member_id, f"conc-seed{i}", total=10000)).status_code == 201
    earlier = []
    for i in range(3):
        r = pos.post(f"/v1/members/{member_id}/redemptions", json={"redemption_id": f"conc-old{i}", "points": 100})
        assert r.status_code == 201, r.json
        earlier.append(r.json["id"])
    # 1600 earned, 300 redeemed: 1300 available before the race.
    requests = []
    for i in range(6):
        body = purchase_body(member_id, f"conc-new{i}", total=2500)
        requests += [("pos", "POST", "/v1/purchases", body), ("pos", "POST", "/v1/purchases", body)]  # + a retry
    for i in range(4):
        requests.append(("pos", "POST", f"/v1/purchases/conc-seed{i}/refunds", {"refund_id": f"conc-rf{i}",
                                                                                 "amount": 5000}))
    for i in range(8):
        body = {"redemption_id": f"conc-x{i}", "points": 250}
        requests += [("pos", "POST", f"/v1/members/{member_id}/redemptions", body)]
    requests.append(("pos", "POST", f"/v1/members/{member_id}/redemptions", {"redemption_id": "conc-x0",
                                                                              "points": 250}))
    for redemption_id in earlier:
        requests += [("pos", "POST", f"/v1/redemptions/{redemption_id}/cancel", None)] * 2
    requests += [("admin", "POST", "/v1/jobs/expire-points/runs", None)] * 2
    requests += [("admin", "POST", "/v1/jobs/activate-pending/runs", None)]

    results = _race(live, requests)
    statuses = Counter(status for status, _ in results)
    assert all(status < 500 for status in statuses), results
    redeemed, reversed_ = {}, 0
    for (_role, _method, path, body), (status, answer) in zip(requests, results, strict=True):
        if path.endswith("/redemptions"):
            assert status in (200, 201) or answer["code"] == "insufficient_points", answer
            if status in (200, 201):
                redeemed[body["redemption_id"]] = answer["points"]
        elif path.endswith("/refunds"):
            assert status == 201, answer
            # negative_balance `forbid`: what was spent already is not taken back.
            assert 0 <= answer["points_reversed"] <= 200
            reversed_ += answer["points_reversed"]
        elif path == "/v1/purchases" or path.endswith("/cancel"):
            assert status in (200, 201), answer
        else:
            assert status == 201 and answer["status"] in ("succeeded", "skipped"), answer

    live_app, _ = live
    with live_app.app_context():
        session = db.session
        assert_invariants(session)
        purchases = session.execute(select(func.count()).select_from(Purchase)
                                    .where(Purchase.member_id == member_id)).scalar()
        refunds = session.execute(select(func.count()).select_from(Refund)
                                  .where(Refund.member_id == member_id)).scalar()
        redemptions = session.execute(select(Redemption.redemption_id, Redemption.status)
                                      .where(Redemption.member_id == member_id)).all()
        balance = session.get(MemberBalance, member_id)
        available = balance.available
        db.session.remove()
    assert (purchases, refunds) == (10, 4)  # each client id once, retries replayed
    assert {r.redemption_id for r in redemptions} == {f"conc-old{i}" for i in range(3)} | set(redeemed)
    # 1300 + 6 × 100 new − what refunds reversed + 300 cancelled − what the race redeemed.
    assert available == 1300 + 600 - reversed_ + 300 - sum(redeemed.values())
    # Refunds take back at most 4 × 200 and nothing else lowers the balance but redemptions, so
    # whatever the order, the first two redemptions find at least 500 points; more than two
    # succeed only when purchases or cancels land before the refunds (order of arrival).
    assert available >= 0 and len(redeemed) >= 2
