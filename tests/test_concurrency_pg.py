"""Real concurrency on PostgreSQL: threads with their own connections, real commits.

The savepoint harness cannot show races (one connection, nothing committed), so these tests
build their own app on the test database, commit for real, and delete their rows afterwards.
"""

import threading
import time
from collections import Counter

import pytest
from sqlalchemy import delete, func, select, update

from loyalty_api import create_app
from loyalty_api.auth.models import ApiKey
from loyalty_api.auth.services import _key_cache, create_api_key
from loyalty_api.extensions import db
from loyalty_api.ledger.models import Adjustment, LedgerEntry, LotAllocation, PointLot, RuleUsage
from loyalty_api.members.models import Member, MemberBalance
from loyalty_api.program.models import PROGRAM_ID, Program
from loyalty_api.purchases.models import Event, Purchase, Refund
from loyalty_api.referrals.models import Referral
from loyalty_api.rules_admin.models import Rule, RuleVersion
from loyalty_api.timeutil import freeze
from loyalty_api.transactions import run_write

from .conftest import NOW
from .helpers import PER_EURO_4, ApiClient, assert_invariants, purchase_body

pytestmark = pytest.mark.postgres

THREADS = 8
MEMBER_TABLES = (LotAllocation, LedgerEntry, Refund, Purchase, Event, Adjustment, RuleUsage, PointLot,
                 MemberBalance)


@pytest.fixture
def live(app, database_url):
    """An app on the test database whose requests commit for real; its rows are deleted after."""
    live_app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "TESTING": True,
                           "SECRET_KEY": app.config["SECRET_KEY"], "LOYALTY_POOL_SIZE": THREADS + 2})
    freeze(NOW)
    with live_app.app_context():
        program = db.session.execute(select(Program)).scalar_one()
        saved_program = {c.key: getattr(program, c.key) for c in Program.__table__.columns}
        keys = {role: run_write(lambda s, role=role: create_api_key(s, role, NOW, "concurrency test"))
                for role in ("pos", "marketer", "admin")}
        key_ids = db.session.execute(select(ApiKey.id).where(ApiKey.name == "concurrency test")).scalars().all()
        db.session.remove()
    try:
        yield live_app, keys
    finally:
        freeze(None)
        with live_app.app_context():
            session = db.session
            members = select(Member.id).where(Member.external_id.like("conc-%"))
            member_ids = session.execute(members).scalars().all()
            session.execute(delete(Referral).where(Referral.referee_id.in_(member_ids)))
            for model in MEMBER_TABLES:
                session.execute(delete(model).where(model.member_id.in_(member_ids)))
            session.execute(delete(Member).where(Member.id.in_(member_ids)))
            rule_ids = session.execute(select(Rule.id).where(Rule.name.like("conc %"))).scalars().all()
            session.execute(delete(RuleVersion).where(RuleVersion.rule_id.in_(rule_ids)))
            session.execute(delete(Rule).where(Rule.id.in_(rule_ids)))
            session.execute(delete(ApiKey).where(ApiKey.id.in_(key_ids)))
            session.execute(update(Program).where(Program.id == PROGRAM_ID).values(**saved_program))
            session.commit()
            db.session.remove()
        with live_app.app_context():
            db.engine.dispose()


def _client(live, role="admin"):
    live_app, keys = live
    return ApiClient(live_app.test_client(), keys, role)


def _setup(live):
    admin = _client(live)
    r = admin.post("/v1/rules", json={"name": "conc 4 per 1.00", "kind": "earn", "trigger": "purchase",
                                      "status": "active", "effect": PER_EURO_4})
    assert r.status_code == 201, r.json
    r = admin.post("/v1/members", json={"external_id": "conc-1"})
    assert r.status_code == 201, r.json
    return r.json["id"]


def _race(live, requests, role="pos"):
    """Send each (method, path, body) from its own thread, all released at once; return responses."""
    barrier = threading.Barrier(len(requests))
    results: list = [None] * len(requests)

    def worker(i, method, path, body):
        client = _client(live, role)
        barrier.wait()
        r = client.request(method, path, json=body)
        results[i] = (r.status_code, r.headers.get("Idempotent-Replayed"), r.json)

    threads = [threading.Thread(target=worker, args=(i, *req)) for i, req in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(r is not None for r in results), "a request did not finish"
    return results


def _check(live, member_id):
    live_app, _ = live
    with live_app.app_context():
        assert_invariants(db.session)
        balance = db.session.get(MemberBalance, member_id)
        counts = db.session.execute(select(func.count()).select_from(Purchase)
                                    .where(Purchase.member_id == member_id)).scalar()
        result = (balance.available, counts)
        db.session.remove()
    return result


def test_concurrent_purchases_for_one_member_all_land(live):
    member_id = _setup(live)
    requests = [("POST", "/v1/purchases", purchase_body(member_id, f"conc-t{i}", total=1000 + i))
                for i in range(THREADS * 2)]
    results = _race(live, requests)
    assert [status for status, _, _ in results] == [201] * len(requests), results
    expected = sum((1000 + i) * 4 // 100 for i in range(THREADS * 2))
    assert _check(live, member_id) == (expected, THREADS * 2)


def test_concurrent_retries_of_one_transaction_apply_once(live):
    member_id = _setup(live)
    body = purchase_body(member_id, "conc-same", total=15200)
    results = _race(live, [("POST", "/v1/purchases", body)] * THREADS)
    assert Counter(status for status, _, _ in results) == {201: 1, 200: THREADS - 1}, results
    assert all(replayed == "true" for status, replayed, _ in results if status == 200)
    assert len({repr(body) for _, _, body in results}) == 1  # every answer is the original body
    assert _check(live, member_id) == (608, 1)


def test_concurrent_debits_never_overdraw(live):
    member_id = _setup(live)
    admin = _client(live)
    r = admin.post(f"/v1/members/{member_id}/adjustments", json={"adjustment_id": "conc-a0", "points": 100,
                                                                 "reason": "seed"})
    assert r.status_code == 201, r.json
    requests = [("POST", f"/v1/members/{member_id}/adjustments",
                 {"adjustment_id": f"conc-a{i + 1}", "points": -30, "reason": "race"}) for i in range(THREADS)]
    results = _race(live, requests, role="admin")
    statuses = Counter(status for status, _, _ in results)
    assert statuses == {201: 3, 422: THREADS - 3}, results
    assert all(body["code"] == "insufficient_points" for status, _, body in results if status == 422)
    assert _check(live, member_id) == (10, 0)


def test_concurrent_refunds_never_exceed_the_purchase(live):
    member_id = _setup(live)
    assert _client(live, "pos").post("/v1/purchases", json=purchase_body(member_id, "conc-p", total=10000)) \
        .status_code == 201
    requests = [("POST", "/v1/purchases/conc-p/refunds", {"refund_id": f"conc-r{i}", "amount": 3000})
                for i in range(THREADS)]
    results = _race(live, requests)
    statuses = Counter(status for status, _, _ in results)
    assert statuses == {201: 3, 422: THREADS - 3}, results
    assert sum(body["points_reversed"] for status, _, body in results if status == 201) == 360
    assert _check(live, member_id) == (40, 1)


def test_concurrent_single_purchases_share_a_transaction_and_answer_as_if_alone(live, monkeypatch):
    """Purchases posted while another is being written go together in the next transaction;
    each still gets its own answer: accepted, replayed, conflicting or refused."""
    from loyalty_api.purchases import services

    member_id = _setup(live)
    groups, real = [], services.apply_purchases

    def slow_first_group(session, entries, now):
        groups.append([entry.transaction_id for entry in entries])
        if len(groups) == 1:
            time.sleep(0.3)  # the other requests queue behind this one meanwhile
        return real(session, entries, now)

    monkeypatch.setattr(services, "apply_purchases", slow_first_group)
    first = purchase_body(member_id, "conc-g0", total=1000)
    second = purchase_body(member_id, "conc-g1", total=1001)
    requests = [("POST", "/v1/purchases", first), ("POST", "/v1/purchases", first),  # one is a retry
                ("POST", "/v1/purchases", second),
                ("POST", "/v1/purchases", {**second, "total": 5}),  # same id, another body
                ("POST", "/v1/purchases", {**purchase_body(member_id, "conc-gx", total=1000), "currency": "USD"}),
                ("POST", "/v1/purchases", purchase_body("01JUNKNOWNMEMBER0000000000", "conc-gy", total=1000))]
    # More requests than pooled connections, all with an API key not cached yet: a request
    # waiting for its group must not hold a connection the group's leader needs.
    requests += [("POST", "/v1/purchases", purchase_body(member_id, f"conc-h{i}", total=2000 + i))
                 for i in range(THREADS * 2)]
    _key_cache.clear()
    results = _race(live, requests)
    statuses = [status for status, _, _ in results]
    assert sorted(statuses[:2]) == [200, 201] and results[0][2] == results[1][2], results[:2]
    assert sorted(statuses[2:4]) == [201, 409], results[2:4]
    assert (statuses[4], results[4][2]["code"]) == (422, "currency_mismatch")
    assert (statuses[5], results[5][2]["code"]) == (422, "validation_error")
    assert statuses[6:] == [201] * THREADS * 2, results
    assert max(len(group) for group in groups) > 1, groups  # they did go together
    stored_second = 1001 if statuses[2] == 201 else 5
    expected = 1000 * 4 // 100 + stored_second * 4 // 100 + sum((2000 + i) * 4 // 100 for i in range(THREADS * 2))
    assert _check(live, member_id) == (expected, 2 + THREADS * 2)
    balances = sorted(body["balance"]["available"] for status, _, body in results if status == 201)
    assert balances[-1] == expected  # each answer shows the balance right after its own purchase


def test_racing_first_purchases_complete_a_referral_once(live):
    """Concurrent qualifying purchases of a referee (and of its referrer) award the bonuses once."""
    admin = _client(live)
    assert admin.patch("/v1/program", json={"referral": {"min_purchase": 1000, "window_days": 30,
                                                         "max_per_referrer": 5}}).status_code == 200
    for name, role, points in (("conc referrer", "referrer", 500), ("conc referee", "referee", 200)):
        r = admin.post("/v1/rules", json={"name": name, "kind": "earn", "trigger": "referral_completed",
                                          "status": "active", "effect": {"type": "fixed", "points": points},
                                          "conditions": {"==": [{"var": "referral.role"}, role]}})
        assert r.status_code == 201, r.json
    referrer = admin.post("/v1/members", json={"external_id": "conc-referrer"}).json
    referee = admin.post("/v1/members", json={"external_id": "conc-referee",
                                              "referral_code": referrer["referral_code"]}).json
    # Batches of one are never grouped: each is its own transaction, so these really race.
    requests = [("POST", "/v1/purchases/batch", {"purchases": [purchase_body(member, f"conc-rf{i}", total=2000)]})
                for i, member in enumerate([referee["id"]] * THREADS + [referrer["id"]] * 4)]
    results = _race(live, requests)
    assert all(status == 200 and body["results"][0]["status"] == 201 for status, _, body in results), results
    live_app, _ = live
    with live_app.app_context():
        bonuses = db.session.execute(select(LedgerEntry.member_id, func.sum(LedgerEntry.points))
                                     .where(LedgerEntry.type == "referral").group_by(LedgerEntry.member_id)).all()
        statuses = db.session.execute(select(Referral.status).where(Referral.referee_id == referee["id"])).all()
        assert_invariants(db.session)
        db.session.remove()
    assert sorted(bonuses) == sorted([(referrer["id"], 500), (referee["id"], 200)])
    assert statuses == [("completed",)]
