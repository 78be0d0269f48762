"""Referrals: recorded at enrolment, completed by the first qualifying purchase, refused, reversed, expired."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from loyalty_api.jobs.services import activate_pending, review_tiers
from loyalty_api.ledger.models import LedgerEntry

from .helpers import assert_invariants, assert_problem, at, balance, buy, make_member, make_rule

T0 = datetime(2026, 3, 10, 12, tzinfo=UTC)


def referral_rules(api):
    role = {"var": "referral.role"}
    make_rule(api, name="Referrer bonus", trigger="referral_completed", effect={"type": "fixed", "points": 500},
              conditions={"==": [role, "referrer"]})
    make_rule(api, name="Welcome bonus", trigger="referral_completed", effect={"type": "fixed", "points": 200},
              conditions={"==": [role, "referee"]})


def enrol(api, external_id, referrer, **fields):
    r = api.post("/v1/members", json={"external_id": external_id, "referral_code": referrer["referral_code"],
                                      **fields})
    assert r.status_code == 201, r.json
    return r.json


def referrals(api, member_id):
    r = api.get(f"/v1/members/{member_id}/referrals")
    assert r.status_code == 200, r.json
    return [(x["referee_id"], x["status"]) for x in r.json["data"]]


@pytest.fixture
def program(api):
    api.patch("/v1/program", json={"referral": {"min_purchase": 5000, "window_days": 30, "max_per_referrer": 3}})
    referral_rules(api)


def test_enrolment_with_a_code_records_a_pending_referral(api, program):
    referrer = make_member(api, "referrer", email="a@example.com")
    referee = enrol(api, "friend", referrer, email="b@example.com")
    assert referrals(api, referrer["id"]) == [(referee["id"], "pending")]
    page = api.get(f"/v1/members/{referrer['id']}/referrals").json["data"][0]
    assert page["expires_at"] == "2026-04-09T12:00:00Z" and page["completed_at"] is None
    assert referrals(api, referee["id"]) == []


def test_who_may_read_referrals(api, program):
    referrer, other = make_member(api, "referrer"), make_member(api, "other")
    enrol(api, "friend", referrer)
    token = api.as_role("app").post(f"/v1/members/{referrer['id']}/tokens").json["token"]
    assert len(api.as_token(token).get(f"/v1/members/{referrer['id']}/referrals").json["data"]) == 1
    assert_problem(api.as_token(token).get(f"/v1/members/{other['id']}/referrals"), 404, "not_found")
    assert_problem(api.as_role("pos").get(f"/v1/members/{referrer['id']}/referrals"), 403, "forbidden")
    assert_problem(api.get("/v1/members/nope/referrals"), 404, "not_found")


def test_the_first_qualifying_purchase_completes_it_and_awards_both_sides(api, session, program):
    make_rule(api)
    referrer = make_member(api, "referrer")
    referee = enrol(api, "friend", referrer)
    small = buy(api, referee["id"], "t1", total=4999)  # below min_purchase: still pending
    assert small["balance"]["available"] == 199
    assert referrals(api, referrer["id"]) == [(referee["id"], "pending")]
    big = buy(api, referee["id"], "t2", total=5000)
    assert big["points"] == 200
    assert big["balance"]["available"] == 199 + 200 + 200
    assert referrals(api, referrer["id"]) == [(referee["id"], "completed")]
    assert balance(api, referrer["id"])["available"] == 500
    assert balance(api, referrer["id"])["lifetime_earned"] == 500
    types = session.execute(select(LedgerEntry.member_id, LedgerEntry.type, LedgerEntry.points)
                            .where(LedgerEntry.type == "referral")).all()
    assert sorted((m, p) for m, _, p in types) == sorted([(referrer["id"], 500), (referee["id"], 200)])
    # Completed once: later purchases award nothing more.
    buy(api, referee["id"], "t3", total=9000)
    assert balance(api, referrer["id"])["available"] == 500
    ledger = api.get(f"/v1/members/{referrer['id']}/ledger").json["data"]
    assert [(e["type"], e["points"], e["source"]["type"]) for e in ledger] == [("referral", 500, "referral")]
    assert_invariants(session)


def test_completion_in_a_batch_with_the_referrer_buying_too(api, session, program):
    referrer = make_member(api, "referrer")
    referee = enrol(api, "friend", referrer)
    r = api.post("/v1/purchases/batch", json={"purchases": [
        {"transaction_id": "b1", "member_id": referrer["id"], "occurred_at": "2026-03-10T11:00:00Z",
         "currency": "EUR", "total": 100},
        {"transaction_id": "b2", "member_external_id": "friend", "occurred_at": "2026-03-10T11:00:00Z",
         "currency": "EUR", "total": 6000}]})
    assert [x["status"] for x in r.json["results"]] == [201, 201]
    assert balance(api, referrer["id"])["available"] == 500
    assert balance(api, referee["id"])["available"] == 200
    assert referrals(api, referrer["id"]) == [(referee["id"], "completed")]
    assert_invariants(session)


def test_self_referral_is_refused(api, program):
    referrer = make_member(api, "referrer", email="Same@Example.com")
    r = api.post("/v1/members", json={"external_id": "again", "email": "same@example.com",
                                      "referral_code": referrer["referral_code"]})
    assert_problem(r, 422, "self_referral", "referral_code")
    assert api.get("/v1/members?external_id=again").json["data"] == []
    assert referrals(api, referrer["id"]) == []


def test_a_referrer_past_max_per_referrer_is_refused(api, program):
    referrer = make_member(api, "referrer")
    for n in range(3):
        enrol(api, f"friend{n}", referrer)
    r = api.post("/v1/members", json={"external_id": "friend3", "referral_code": referrer["referral_code"]})
    assert_problem(r, 422, "referral_limit_reached", "referral_code")
    assert api.get("/v1/members?external_id=friend3").json["data"] == []
    assert len(referrals(api, referrer["id"])) == 3


def test_a_refund_within_pending_days_reverses_both_bonuses(api, session, program):
    api.patch("/v1/program", json={"pending_days": 14})
    referrer = make_member(api, "referrer")
    referee = enrol(api, "friend", referrer)
    buy(api, referee["id"], "t1", total=8000)
    assert balance(api, referee["id"])["pending"] == 200
    assert balance(api, referrer["id"])["pending"] == 500
    at(T0 + timedelta(days=3))
    r = api.post("/v1/purchases/t1/refunds", json={"refund_id": "r1", "amount": 8000})
    assert r.status_code == 201, r.json
    assert r.json["balance"]["pending"] == 0
    assert balance(api, referrer["id"]) == {"available": 0, "pending": 0, "lifetime_earned": 0, "expiring": []}
    assert balance(api, referee["id"])["pending"] == 0
    data = api.get(f"/v1/members/{referrer['id']}/referrals").json["data"]
    assert [(x["status"], x["reason"]) for x in data] == [("rejected", "purchase_refunded")]
    ledger = api.get(f"/v1/members/{referrer['id']}/ledger").json["data"]
    assert [(e["type"], e["points"]) for e in ledger] == [("reverse", -500), ("referral", 500)]
    assert_invariants(session)


def test_a_partial_refund_keeping_min_purchase_keeps_the_bonuses(api, session, program):
    api.patch("/v1/program", json={"pending_days": 14})
    referrer = make_member(api, "referrer")
    referee = enrol(api, "friend", referrer)
    buy(api, referee["id"], "t1", total=8000)
    api.post("/v1/purchases/t1/refunds", json={"refund_id": "r1", "amount": 3000})
    assert balance(api, referrer["id"])["pending"] == 500
    api.post("/v1/purchases/t1/refunds", json={"refund_id": "r2", "amount": 1})  # 4999 left: below 5000
    assert balance(api, referrer["id"])["pending"] == 0
    assert_invariants(session)


def test_a_refund_after_pending_days_keeps_the_bonuses(api, session, program):
    api.patch("/v1/program", json={"pending_days": 14})
    referrer = make_member(api, "referrer")
    referee = enrol(api, "friend", referrer)
    buy(api, referee["id"], "t1", total=8000, occurred_at="2026-03-10T12:00:00Z")
    later = T0 + timedelta(days=14)
    at(later)
    assert activate_pending(session, later)["counts"]["lots"] == 2
    api.post("/v1/purchases/t1/refunds", json={"refund_id": "r1", "amount": 8000})
    assert balance(api, referrer["id"])["available"] == 500
    assert referrals(api, referrer["id"]) == [(referee["id"], "completed")]
    assert_invariants(session)


def test_referrals_past_the_window_expire_at_review(api, session, program):
    referrer = make_member(api, "referrer")
    referee = enrol(api, "friend", referrer)
    day_30 = T0 + timedelta(days=30)
    run = review_tiers(session, day_30)
    assert run["counts"]["referrals_expired"] == 0  # the last moment still counts
    later = day_30 + timedelta(seconds=1)
    run = review_tiers(session, later)
    assert run["counts"]["referrals_expired"] == 1
    assert referrals(api, referrer["id"]) == [(referee["id"], "expired")]
    at(later)
    buy(api, referee["id"], "t1", total=9000, occurred_at="2026-04-09T12:00:01Z")
    assert balance(api, referrer["id"])["available"] == 0
    assert referrals(api, referrer["id"]) == [(referee["id"], "expired")]


def test_a_purchase_after_the_window_does_not_complete_even_before_the_review(api, session, program):
    referrer = make_member(api, "referrer")
    referee = enrol(api, "friend", referrer)
    at(T0 + timedelta(days=31))
    buy(api, referee["id"], "t1", total=9000, occurred_at="2026-04-10T12:00:00Z")
    assert referrals(api, referrer["id"]) == [(referee["id"], "pending")]
    assert balance(api, referrer["id"])["available"] == 0
