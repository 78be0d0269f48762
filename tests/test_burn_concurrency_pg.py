"""Concurrent redemptions on PostgreSQL: real threads, separate connections, real commits.

Nothing here runs inside the per-test savepoint: the fixture commits its own rows through
its own app (and engine) and deletes them afterwards.
"""

import threading
from collections import Counter

import pytest
from sqlalchemy import delete, func, select

from loyalty_api import create_app
from loyalty_api.auth.models import ApiKey
from loyalty_api.auth.services import create_api_key
from loyalty_api.extensions import db
from loyalty_api.ledger.models import Adjustment, LedgerEntry, LotAllocation, PointLot
from loyalty_api.ledger.services import Credit, credit_points, ledger_totals, lock_balance
from loyalty_api.members.models import Member, MemberBalance
from loyalty_api.members.services import create_member
from loyalty_api.program.services import bump_rules_revision, get_program
from loyalty_api.redemptions.models import Redemption
from loyalty_api.rewards.models import Reward, RewardTier
from loyalty_api.rewards.services import create_reward
from loyalty_api.rules_admin.models import Rule, RuleVersion
from loyalty_api.rules_admin.services import create_rule
from loyalty_api.timeutil import utcnow
from loyalty_api.transactions import run_read, run_write

pytestmark = pytest.mark.postgres

CLIENTS = 50


class Live:
    """Committed test data on the real database, and a record of what to delete."""

    def __init__(self, app):
        self.app = app
        self.members: list[str] = []
        self.rewards: list[str] = []
        self.rules: list[str] = []
        self.keys: list[str] = []

    def write(self, unit_of_work):
        with self.app.app_context():
            return run_write(unit_of_work)

    def read(self, unit_of_work):
        with self.app.app_context():
            return run_read(unit_of_work)

    def key(self, role: str) -> str:
        key = self.write(lambda s: create_api_key(s, role, utcnow(), "concurrency test"))
        self.keys.append(key.split("_")[1])
        return key

    def burn_rule(self) -> None:
        rule = self.write(lambda s: create_rule(s, {
            "name": "1 point = 1 cent", "kind": "burn", "trigger": "redemption", "status": "active",
            "effect": {"type": "conversion", "points": 1, "value": 1}}, utcnow()))
        self.rules.append(rule["id"])

    def member(self, external_id: str, lots: list[int]) -> str:
        """Enrol a member holding `lots` (one available lot each)."""

        def enrol(session):
            member = create_member(session, {"external_id": external_id}, utcnow())
            program = get_program(session)
            balance = lock_balance(session, member["id"])
            for index, points in enumerate(lots):
                credit_points(session, member["id"], balance, [Credit(points, "seed")], entry_type="adjust",
                              source_type="adjustment", source_id=f"{external_id}-{index}", occurred_at=utcnow(),
                              program=program, now=utcnow(), pending_allowed=False)
            return member["id"]

        member_id = self.write(enrol)
        self.members.append(member_id)
        return member_id

    def reward(self, code: str, cost_points: int, stock: int) -> str:
        reward = self.write(lambda s: create_reward(s, {"code": code, "name": code, "cost_points": cost_points,
                                                         "stock": stock}, utcnow()))
        self.rewards.append(reward["id"])
        return reward["id"]

    def cleanup(self) -> None:
        members, rewards, rules = self.members, self.rewards, self.rules

        def remove(session):
            session.execute(delete(Redemption).where(Redemption.member_id.in_(members)))
            session.execute(delete(LotAllocation).where(LotAllocation.member_id.in_(members)))
            session.execute(delete(LedgerEntry).where(LedgerEntry.member_id.in_(members)))
            session.execute(delete(PointLot).where(PointLot.member_id.in_(members)))
            session.execute(delete(Adjustment).where(Adjustment.member_id.in_(members)))
            session.execute(delete(MemberBalance).where(MemberBalance.member_id.in_(members)))
            session.execute(delete(Member).where(Member.id.in_(members)))
            session.execute(delete(RewardTier).where(RewardTier.reward_id.in_(rewards)))
            session.execute(delete(Reward).where(Reward.id.in_(rewards)))
            session.execute(delete(RuleVersion).where(RuleVersion.rule_id.in_(rules)))
            session.execute(delete(Rule).where(Rule.id.in_(rules)))
            session.execute(delete(ApiKey).where(ApiKey.prefix.in_(self.keys)))
            bump_rules_revision(session)

        self.write(remove)


@pytest.fixture
def live(app, database_url):
    """An app with its own engine (a connection per client thread) whose writes really commit."""
    live_app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "TESTING": True, "LOYALTY_POOL_SIZE": CLIENTS + 2,
                           "SECRET_KEY": "test-secret-key-that-is-long-enough-for-hs256"})
    state = Live(live_app)
    try:
        yield state
    finally:
        state.cleanup()
        with live_app.app_context():
            db.engine.dispose()


def run_concurrently(live: Live, requests: list[tuple[str, str, dict | None]], key: str):
    """Send each (method, path, body) from its own thread, all released at once; return the responses."""
    barrier = threading.Barrier(len(requests))
    results: list = [None] * len(requests)

    def client(index, method, path, body):
        test_client = live.app.test_client()
        barrier.wait()
        response = test_client.open(path, method=method, json=body, headers={"Authorization": f"Bearer {key}"})
        results[index] = (response.status_code, response.get_json())

    threads = [threading.Thread(target=client, args=(i, *request)) for i, request in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(result is not None for result in results), "a client thread did not finish"
    return results


def check_invariants(live: Live, member_ids: list[str]) -> dict[str, int]:
    """Assert DESIGN.md's invariants for the members; return their available balances."""

    def read(session):
        totals = ledger_totals(session, member_ids)
        balances = {row.member_id: row for row in session.execute(
            select(MemberBalance.member_id, MemberBalance.available, MemberBalance.pending)
            .where(MemberBalance.member_id.in_(member_ids))).all()}
        bad_lots = session.execute(select(func.count()).select_from(PointLot).where(
            PointLot.member_id.in_(member_ids),
            (PointLot.remaining < 0) | (PointLot.remaining > PointLot.points))).scalar()
        allocated = dict(session.execute(
            select(Redemption.member_id, func.sum(LotAllocation.points))
            .join(LotAllocation, LotAllocation.entry_id == Redemption.entry_id)
            .where(Redemption.member_id.in_(member_ids), Redemption.status == "completed")
            .group_by(Redemption.member_id)).all())
        redeemed = dict(session.execute(
            select(Redemption.member_id, func.sum(Redemption.points))
            .where(Redemption.member_id.in_(member_ids), Redemption.status == "completed")
            .group_by(Redemption.member_id)).all())
        return totals, balances, bad_lots, allocated, redeemed

    totals, balances, bad_lots, allocated, redeemed = live.read(read)
    assert bad_lots == 0
    for member_id in member_ids:
        balance = balances[member_id]
        assert balance.available >= 0
        assert balance.available + balance.pending == totals[member_id]["ledger"]
        assert totals[member_id]["lots"] == balance.available
        # Every point of a standing redemption came out of a lot.
        assert allocated.get(member_id, 0) == redeemed.get(member_id, 0)
    return {member_id: balances[member_id].available for member_id in member_ids}


def test_fifty_concurrent_redemptions_never_overdraw_one_member(live):
    live.burn_rule()
    key = live.key("pos")
    member_id = live.member("concurrent-one", [300, 300, 250, 150])  # 1000 = exactly 10 × 100
    path = f"/v1/members/{member_id}/redemptions"
    results = run_concurrently(
        live, [("POST", path, {"redemption_id": f"c1-{i}", "points": 100}) for i in range(CLIENTS)], key)
    outcomes = Counter((status, body.get("code")) for status, body in results)
    assert outcomes == {(201, None): 10, (422, "insufficient_points"): 40}, outcomes
    assert check_invariants(live, [member_id]) == {member_id: 0}
    count = live.read(lambda s: s.execute(select(func.count()).select_from(Redemption)
                                           .where(Redemption.member_id == member_id)).scalar())
    assert count == 10


def test_twenty_concurrent_claims_never_take_reward_stock_below_zero(live):
    key = live.key("pos")
    reward_id = live.reward("concurrent-mug", cost_points=100, stock=5)
    members = [live.member(f"concurrent-claim-{i}", [1000]) for i in range(20)]
    results = run_concurrently(live, [
        ("POST", f"/v1/members/{member_id}/redemptions", {"redemption_id": f"c2-{i}", "reward_id": reward_id})
        for i, member_id in enumerate(members)], key)
    outcomes = Counter((status, body.get("code")) for status, body in results)
    assert outcomes == {(201, None): 5, (422, "reward_unavailable"): 15}, outcomes
    assert live.read(lambda s: s.execute(select(Reward.stock).where(Reward.id == reward_id)).scalar()) == 0
    balances = check_invariants(live, members)
    assert sorted(balances.values()) == [900] * 5 + [1000] * 15


def test_concurrent_retries_of_one_redemption_apply_it_once(live):
    live.burn_rule()
    key = live.key("pos")
    member_id = live.member("concurrent-retry", [1000])
    body = {"redemption_id": "c3-same", "points": 100}
    results = run_concurrently(live, [("POST", f"/v1/members/{member_id}/redemptions", body)] * 20, key)
    assert Counter(status for status, _ in results) == {201: 1, 200: 19}
    assert len({body["id"] for _, body in results}) == 1
    assert check_invariants(live, [member_id]) == {member_id: 900}


def test_concurrent_cancels_restore_once(live):
    live.burn_rule()
    key = live.key("pos")
    member_id = live.member("concurrent-cancel", [400, 600])
    with live.app.test_client() as client:
        created = client.post(f"/v1/members/{member_id}/redemptions", json={"redemption_id": "c4", "points": 700},
                              headers={"Authorization": f"Bearer {key}"})
    assert created.status_code == 201, created.json
    redemption_id = created.json["id"]
    results = run_concurrently(live, [("POST", f"/v1/redemptions/{redemption_id}/cancel", None)] * 20, key)
    assert Counter(status for status, _ in results) == {200: 20}
    assert all(body["points_restored"] == 700 for _, body in results)
    assert check_invariants(live, [member_id]) == {member_id: 1000}
    cancels = live.read(lambda s: s.execute(select(func.count()).select_from(LedgerEntry).where(
        LedgerEntry.member_id == member_id, LedgerEntry.type == "cancel")).scalar())
    assert cancels == 1
