"""POST /v1/purchases/batch: each purchase as if posted alone, with set-based statements."""

import json
from contextlib import contextmanager

import pytest
from sqlalchemy import event, select, text

from loyalty_api.extensions import db
from loyalty_api.ledger import services as ledger_services
from loyalty_api.members.models import MemberBalance
from loyalty_api.purchases import services as purchase_services

from .helpers import assert_invariants

RULE = {"name": "4 per 1.00", "kind": "earn", "trigger": "purchase", "status": "active",
        "effect": {"type": "per_amount", "points": 4, "per": 100, "rounding": "floor"}}
LIMITED = {"name": "first purchase of the day", "kind": "earn", "trigger": "purchase", "status": "active",
           "effect": {"type": "fixed", "points": 10}, "limits": {"per_member": {"count": 1, "period": "day"}}}


def purchase(transaction_id, member_id, total=1000, **extra):
    return {"transaction_id": transaction_id, "member_id": member_id, "occurred_at": "2026-03-10T11:00:00Z",
            "currency": "EUR", "total": total, **extra}


def make_members(api, count):
    ids = []
    for n in range(count):
        r = api.post("/v1/members", json={"external_id": f"batch-{n}"})
        assert r.status_code == 201, r.json
        ids.append(r.json["id"])
    return ids


@contextmanager
def counted_statements():
    statements = []

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(db.engine, "before_cursor_execute", count)


def test_each_entry_succeeds_or_fails_on_its_own(api, session):
    assert api.post("/v1/rules", json=RULE).status_code == 201
    (member,) = make_members(api, 1)
    r = api.post("/v1/purchases/batch", json={"purchases": [
        purchase("b1", member),
        purchase("b2", member, currency="USD"),
        purchase("b3", "no-such-member"),
        {"transaction_id": "b4", "member_id": member, "total": "12"},
        purchase("b5", member, total=500, items=[{"sku": "a", "quantity": 1, "unit_price": 400}]),
        purchase("b6", member, total=2500),
    ]})
    assert r.status_code == 200, r.json
    results = {x["transaction_id"]: x for x in r.json["results"]}
    assert [x["transaction_id"] for x in r.json["results"]] == ["b1", "b2", "b3", "b4", "b5", "b6"]
    assert results["b1"]["status"] == 201 and results["b1"]["body"]["points"] == 40
    assert results["b2"]["status"] == 422 and results["b2"]["body"]["code"] == "currency_mismatch"
    assert results["b3"]["status"] == 422 and "member_id" in results["b3"]["body"]["errors"]
    assert results["b4"]["status"] == 422 and results["b4"]["body"]["code"] == "validation_error"
    assert {"total", "occurred_at", "currency"} <= set(results["b4"]["body"]["errors"])
    assert results["b5"]["status"] == 422 and results["b5"]["body"]["code"] == "items_total_mismatch"
    assert results["b6"]["status"] == 201 and results["b6"]["body"]["balance"]["available"] == 140
    assert api.get(f"/v1/members/{member}").json["balance"]["available"] == 140
    assert api.get("/v1/purchases/b2").status_code == 404
    assert_invariants(session)


def test_batch_equals_the_same_purchases_posted_alone(api, session):
    """Same member twice, a per-member limit, replays: the batch answers what singles would."""
    for rule in (RULE, LIMITED):
        assert api.post("/v1/rules", json=rule).status_code == 201
    first, second = make_members(api, 2)
    bodies = [purchase("s1", first), purchase("s2", first, total=2000), purchase("s3", second, total=300),
              purchase("s1", first), purchase("s2", first, total=999)]
    batch = api.post("/v1/purchases/batch", json={"purchases": bodies}).json["results"]
    assert [x["status"] for x in batch] == [201, 201, 201, 200, 409]
    assert batch[0]["body"]["points"] == 50 and batch[1]["body"]["points"] == 80  # the day's bonus only once
    assert batch[1]["body"]["balance"]["available"] == 130
    assert batch[3]["body"] == batch[0]["body"]
    assert batch[4]["body"]["code"] == "idempotency_conflict"
    # The same bodies posted alone replay exactly what the batch stored.
    for body, result in zip(bodies[:3], batch[:3], strict=True):
        single = api.post("/v1/purchases", json=body)
        assert single.status_code == 200 and single.headers["Idempotent-Replayed"] == "true"
        assert single.json == result["body"]
    # A second batch with the same entries replays them all.
    again = api.post("/v1/purchases/batch", json={"purchases": bodies[:3]}).json["results"]
    assert [x["status"] for x in again] == [200, 200, 200]
    assert [x["body"] for x in again] == [x["body"] for x in batch[:3]]
    assert_invariants(session)


@pytest.mark.postgres
def test_a_purchase_reads_with_five_statements_and_writes_with_one(api, session):
    """The hot path on PostgreSQL: program, stored purchase, member lock, expiries, rule usage;
    then lots, entries, balance, activity, usage and the purchase in one statement."""
    assert api.patch("/v1/program", json={"expiry": {"mode": "fixed", "months": 12}}).status_code == 200
    assert api.post("/v1/rules", json=RULE).status_code == 201
    assert api.post("/v1/rules", json=LIMITED).status_code == 201
    (member,) = make_members(api, 1)
    with counted_statements() as statements:
        r = api.post("/v1/purchases", json=purchase("hot-1", member, total=1000))
    assert r.status_code == 201, r.json
    sql = [s for s in statements if not s.startswith("SAVEPOINT") and not s.startswith("RELEASE")]
    assert len(sql) == 6, sql
    assert sql[-1].startswith("WITH w0 AS (INSERT INTO point_lots") and "INSERT INTO purchases" in sql[-1]
    assert_invariants(session)


@pytest.mark.postgres
@pytest.mark.parametrize("sql, rows, table", [
    (ledger_services._PG_UPDATE_BALANCES,
     [{"b_member": "m00001", "b_available": 1, "b_pending": 0, "b_lifetime": 1}], "member_balances"),
    (ledger_services._PG_UPDATE_LAST_ACTIVITY, [{"b_member": "m00001", "b_at": "2026-11-23T10:00:00Z"}], "members"),
    (purchase_services._PG_UPDATE_USAGE, [{"b_member": "m00001", "b_rule": "r1", "b_start": "2026-11-01T00:00:00Z",
                                           "b_count": 1, "b_points": 5}], "rule_usage"),
], ids=["balances", "last_activity", "usage"])
def test_updates_from_json_rows_look_their_rows_up_by_index(session, sql, rows, table):
    """PostgreSQL guesses a JSON array holds 100 rows; joined plainly, it scanned and hashed
    the whole table for each purchase. Among thousands of members, each update must use an index."""
    session.execute(text(
        "INSERT INTO members (id, external_id, status, referral_code, metadata, enrolled_at) "
        "SELECT 'm' || lpad(n::text, 5, '0'), 'x' || n, 'active', 'R' || n, '{}', now() "
        "FROM generate_series(1, 5000) AS n"))
    session.execute(text("INSERT INTO member_balances (member_id, available, pending, lifetime_earned, version) "
                         "SELECT id, 0, 0, 0, 0 FROM members"))
    session.execute(text(
        "INSERT INTO rule_usage (id, member_id, rule_id, period_start, count, points) "
        "SELECT 'u' || id, id, 'r1', '2026-11-01T00:00:00Z', 0, 0 FROM members"))
    session.execute(text(f"ANALYZE {table}"))
    plan = "\n".join(row[0] for row in session.connection().exec_driver_sql("EXPLAIN " + sql, (json.dumps(rows),)))
    assert f"Seq Scan on {table}" not in plan and "Index" in plan, plan


def test_batch_uses_a_fixed_number_of_statements(api, session):
    """Set-based: 200 purchases for 200 members take about as many statements as one."""
    assert api.post("/v1/rules", json=RULE).status_code == 201
    assert api.post("/v1/rules", json=LIMITED).status_code == 201
    members = make_members(api, 200)
    bodies = [purchase(f"bulk-{n}", member, total=100 + n) for n, member in enumerate(members)]
    with counted_statements() as statements:
        r = api.post("/v1/purchases/batch", json={"purchases": bodies})
    assert r.status_code == 200
    assert {x["status"] for x in r.json["results"]} == {201}
    assert len(statements) <= 20, statements
    balances = dict(session.execute(select(MemberBalance.member_id, MemberBalance.available)).all())
    for n, member in enumerate(members):
        assert balances[member] == (100 + n) * 4 // 100 + 10 + 0
    assert_invariants(session)


def test_batch_size_is_limited(api):
    r = api.post("/v1/purchases/batch", json={"purchases": [purchase(f"x{n}", "m") for n in range(1001)]})
    assert r.status_code == 422
    assert "purchases" in r.json["errors"]
    assert api.post("/v1/purchases/batch", json={"purchases": []}).status_code == 422


def test_rows_travel_as_the_json_module_would_write_them():
    from datetime import UTC, date, datetime
    from decimal import Decimal

    from loyalty_api.bulk import _json_default, rows_json

    rows = [{"at": datetime(2026, 3, 10, 12, 0, tzinfo=UTC), "fine": datetime(2026, 3, 10, 12, 0, 0, 123, tzinfo=UTC),
             "day": date(2026, 1, 2), "factor": Decimal("1.5"), "none": None,
             "metadata": {"x": [1, 2.5, "é", True]}}]
    assert json.loads(rows_json(rows)) == json.loads(json.dumps(rows, default=_json_default))
    assert '"2026-03-10T12:00:00.000123+00:00"' in rows_json(rows)
    # What orjson refuses, the json module writes.
    for odd in (10**30, "\ud800"):
        assert json.loads(rows_json([{"metadata": {"odd": odd}}])) == [{"metadata": {"odd": odd}}]
