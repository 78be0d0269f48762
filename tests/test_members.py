"""Members: enrolment, lookup, status, erasure."""

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from flask import jsonify
from sqlalchemy import delete, event, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from loyalty_api import _statement_engine, create_app
from loyalty_api.auth.models import ApiKey
from loyalty_api.auth.services import create_api_key
from loyalty_api.errors import NotFound
from loyalty_api.extensions import db
from loyalty_api.ledger.models import LedgerEntry
from loyalty_api.members import services as member_services
from loyalty_api.members.models import Member, MemberBalance
from loyalty_api.members.schemas import MemberSchema, dump_member
from loyalty_api.members.services import member_views
from loyalty_api.program.services import get_program
from loyalty_api.transactions import STATEMENT_ENGINE, run_statement, run_write

from .conftest import NOW
from .helpers import (
    adjust,
    assert_invariants,
    assert_problem,
    balance,
    buy,
    make_member,
    make_rule,
    purchase_body,
)


def test_create_returns_the_member(api):
    r = api.as_role("pos").post("/v1/members", json={
        "external_id": "crm-1", "email": "ana@example.com", "name": "Ana", "birthdate": "1990-05-17",
        "metadata": {"store": "north"}})
    assert r.status_code == 201, r.json
    m = r.json
    assert m["external_id"] == "crm-1" and m["email"] == "ana@example.com" and m["name"] == "Ana"
    assert m["status"] == "active" and m["tier"] is None
    assert m["enrolled_at"] == "2026-03-10T12:00:00Z"
    assert m["balance"] == {"available": 0, "pending": 0, "lifetime_earned": 0, "expiring": []}
    assert m["id"] and m["referral_code"]
    assert api.get(f"/v1/members/{m['id']}").json == m


def test_minimal_member(api):
    m = make_member(api, "only-id")
    assert m["email"] is None and m["name"] is None


def test_ids_and_referral_codes_are_unique(api):
    a, b = make_member(api, "a"), make_member(api, "b")
    assert a["id"] != b["id"] and a["referral_code"] != b["referral_code"]


def test_duplicate_external_id_is_member_exists(api):
    make_member(api, "dup")
    assert_problem(api.post("/v1/members", json={"external_id": "dup"}), 409, "member_exists")
    assert len(api.get("/v1/members?external_id=dup").json["data"]) == 1


def test_referral_code(api):
    referrer = make_member(api, "referrer")
    r = api.post("/v1/members", json={"external_id": "friend", "referral_code": referrer["referral_code"]})
    assert r.status_code == 201, r.json
    r = api.post("/v1/members", json={"external_id": "friend2", "referral_code": referrer["referral_code"].lower()})
    assert r.status_code == 201, r.json


def test_unknown_referral_code_is_refused(api):
    r = api.post("/v1/members", json={"external_id": "x", "referral_code": "NOPE1234"})
    assert_problem(r, 422, "invalid_referral_code", "referral_code")
    assert api.get("/v1/members?external_id=x").json["data"] == []


def test_referral_code_of_a_suspended_member_is_refused(api):
    referrer = make_member(api, "referrer")
    api.patch(f"/v1/members/{referrer['id']}", json={"status": "suspended"})
    r = api.post("/v1/members", json={"external_id": "x", "referral_code": referrer["referral_code"]})
    assert_problem(r, 422, "invalid_referral_code", "referral_code")


@pytest.mark.parametrize("body, field", [
    ({}, "external_id"),
    ({"external_id": ""}, "external_id"),
    ({"external_id": "x" * 201}, "external_id"),
    ({"external_id": 5}, "external_id"),
    ({"external_id": "x", "email": "not-an-email"}, "email"),
    ({"external_id": "x", "birthdate": "17/05/1990"}, "birthdate"),
    ({"external_id": "x", "metadata": "x"}, "metadata"),
    ({"external_id": "x", "status": "active"}, "status"),
    ({"external_id": "x", "balance": 100}, "balance"),
])
def test_invalid_member_bodies(api, body, field):
    assert_problem(api.post("/v1/members", json=body), 422, "validation_error", field)


def test_enrollment_rule_awards_on_creation(api, session):
    make_rule(api, {"type": "fixed", "points": 100}, name="Welcome", trigger="enrollment")
    m = make_member(api)
    assert m["balance"]["available"] == 100 and m["balance"]["lifetime_earned"] == 100
    entries = api.get(f"/v1/members/{m['id']}/ledger").json["data"]
    assert [(e["type"], e["points"], e["source"]["type"]) for e in entries] == [("earn", 100, "enrollment")]
    assert_invariants(session)


def test_get_unknown_member_is_404(api):
    assert_problem(api.get("/v1/members/01nosuchmember0000000000000"), 404, "not_found")


def test_list_by_external_id(api):
    a = make_member(api, "a")
    make_member(api, "b")
    r = api.get("/v1/members?external_id=a")
    assert r.status_code == 200
    assert [m["id"] for m in r.json["data"]] == [a["id"]] and r.json["next_cursor"] is None
    assert api.get("/v1/members?external_id=zzz").json == {"data": [], "next_cursor": None}


def test_list_pages_newest_first(api):
    ids = [make_member(api, f"m{i}")["id"] for i in range(5)]
    seen, cursor = [], None
    while True:
        r = api.get("/v1/members?limit=2" + (f"&cursor={cursor}" if cursor else ""))
        assert r.status_code == 200, r.json
        assert len(r.json["data"]) <= 2
        seen += [m["id"] for m in r.json["data"]]
        cursor = r.json["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]


def test_list_default_limit_is_50(api):
    for i in range(51):
        make_member(api, f"m{i}")
    r = api.get("/v1/members")
    assert len(r.json["data"]) == 50 and r.json["next_cursor"]
    r = api.get(f"/v1/members?cursor={r.json['next_cursor']}")
    assert len(r.json["data"]) == 1 and r.json["next_cursor"] is None
    assert len(api.get("/v1/members?limit=200").json["data"]) == 51


def test_suspend_and_reactivate(api, session):
    make_rule(api)
    m = make_member(api)
    r = api.as_role("pos").patch(f"/v1/members/{m['id']}", json={"status": "suspended"})
    assert r.status_code == 200 and r.json["status"] == "suspended"
    assert_problem(api.post("/v1/purchases", json=purchase_body(m["id"])), 409, "member_not_active")
    r = api.post("/v1/events", json={"event_id": "e1", "type": "survey", "member_id": m["id"],
                                     "occurred_at": "2026-03-10T11:00:00Z"})
    assert_problem(r, 409, "member_not_active")
    r = api.patch(f"/v1/members/{m['id']}", json={"status": "active"})
    assert r.json["status"] == "active"
    assert buy(api, m["id"])["points"] == 400
    assert_invariants(session)


@pytest.mark.parametrize("body, field", [
    ({"status": "erased"}, "status"), ({"status": "gone"}, "status"), ({"external_id": "new"}, "external_id"),
    ({"referral_code": "ABC"}, "referral_code"), ({"email": "nope"}, "email"),
])
def test_invalid_patches(api, body, field):
    m = make_member(api)
    assert_problem(api.patch(f"/v1/members/{m['id']}", json=body), 422, "validation_error", field)


def test_patch_profile(api):
    m = make_member(api, email="a@example.com")
    r = api.patch(f"/v1/members/{m['id']}", json={"name": "Bo", "email": None, "metadata": {"k": "v"}})
    assert r.status_code == 200, r.json
    assert r.json["name"] == "Bo" and r.json["email"] is None
    assert api.get(f"/v1/members/{m['id']}").json["name"] == "Bo"


def test_patch_unknown_member_is_404(api):
    assert_problem(api.patch("/v1/members/nope", json={"status": "suspended"}), 404, "not_found")


def test_delete_erases_personal_data_and_keeps_the_ledger(api, session):
    make_rule(api)
    m = make_member(api, "crm-9", email="ana@example.com", name="Ana", birthdate="1990-05-17",
                    metadata={"phone": "555"})
    buy(api, m["id"])
    r = api.as_role("pos").delete(f"/v1/members/{m['id']}")
    assert r.status_code == 204 and r.get_data() == b""
    erased = api.get(f"/v1/members/{m['id']}").json
    assert erased["status"] == "erased"
    assert erased["email"] is None and erased["name"] is None and erased["external_id"] != "crm-9"
    assert not erased.get("metadata") and not erased.get("birthdate")
    assert erased["balance"]["available"] == 400
    assert api.get("/v1/members?external_id=crm-9").json["data"] == []
    ledger = api.get(f"/v1/members/{m['id']}/ledger").json["data"]
    assert [e["points"] for e in ledger] == [400]
    # The external id is free again for a new enrolment.
    assert make_member(api, "crm-9")["id"] != m["id"]
    assert_invariants(session)


def test_erased_member_earns_and_changes_nothing(api, session):
    make_rule(api)
    m = make_member(api)
    assert api.delete(f"/v1/members/{m['id']}").status_code == 204
    assert_problem(api.post("/v1/purchases", json=purchase_body(m["id"])), 409, "member_not_active")
    assert_problem(adjust(api, m["id"], 10), 409, "member_not_active")
    assert_problem(api.patch(f"/v1/members/{m['id']}", json={"status": "active"}), 409, "member_not_active")
    r = api.post("/v1/events", json={"event_id": "e1", "type": "survey", "member_id": m["id"],
                                     "occurred_at": "2026-03-10T11:00:00Z"})
    assert_problem(r, 409, "member_not_active")
    assert session.execute(select(func.count()).select_from(LedgerEntry)).scalar() == 0
    assert balance(api, m["id"])["available"] == 0


def test_delete_twice_and_unknown(api):
    m = make_member(api)
    assert api.delete(f"/v1/members/{m['id']}").status_code == 204
    assert api.delete(f"/v1/members/{m['id']}").status_code in (204, 409)
    assert_problem(api.delete("/v1/members/nope"), 404, "not_found")


def test_member_by_external_id_in_a_purchase(api, session):
    make_rule(api)
    m = make_member(api, "card-77")
    body = purchase_body(None, member_external_id="card-77")
    del body["member_id"]
    r = api.post("/v1/purchases", json=body)
    assert r.status_code == 201, r.json
    assert r.json["member_id"] == m["id"] and r.json["points"] == 400
    body["transaction_id"] = "t2"
    body["member_external_id"] = "card-78"
    assert_problem(api.post("/v1/purchases", json=body), 422, "validation_error", "member_external_id")
    assert_invariants(session)


# --- the balance read: one statement, answering what the schema would -------------------------

def _reference_body(app, session, member_id: str) -> bytes:
    """The body GET /v1/members/{id} gave before its read was folded into one statement: the
    views of the list and write routes, dumped by MemberSchema."""
    view = member_views(session, [member_id], get_program(session))[member_id]
    with app.test_request_context():
        return jsonify(MemberSchema().dump(view)).get_data()


def _members_of_every_shape(api, session) -> list[str]:
    """Members without and with tier and profile, with pending points, spent and several lots."""
    make_rule(api)
    bare = make_member(api, "bare")["id"]
    full = make_member(api, "full", email="ana@example.com", name="Ana", birthdate="1990-05-17",
                       metadata={"store": "north", "n": 3, "tags": ["a"]})["id"]
    assert api.patch(f"/v1/members/{full}", json={"stripe_customer_id": "cus_1"}).status_code == 200
    tier = api.post("/v1/tiers", json={"code": "gold", "name": "Gold", "rank": 1, "threshold": 10**9}).json
    session.execute(update(Member).where(Member.id == full).values(tier_id=tier["id"]))
    session.commit()
    # Seven purchase dates: the newest stays pending, the oldest lot is spent whole, and one
    # more date than the balance shows is left.
    earner = make_member(api, "earner")["id"]
    for n, day in enumerate(["2025-03-11", "2025-05-02", "2025-06-30", "2025-08-15", "2025-10-01",
                             "2025-12-24", "2026-01-20", "2026-03-05"]):
        buy(api, earner, f"t{n}", total=1000 + 100 * n, occurred_at=f"{day}T09:30:00.250000Z")
    assert adjust(api, earner, -40).status_code == 201  # the whole oldest lot (4 × 10.00)
    erased = make_member(api, "erased", email="x@example.com")["id"]
    buy(api, erased, "t-erased")
    assert api.delete(f"/v1/members/{erased}").status_code == 204
    return [bare, full, earner, erased]


@pytest.mark.parametrize("expiry", [{"mode": "none"}, {"mode": "fixed", "months": 24},
                                    {"mode": "inactivity", "months": 12}])
def test_get_answers_byte_for_byte_what_the_schema_dumps(app, api, session, expiry):
    # The lots are earned in fixed mode (so they carry expiry dates), then the mode changes.
    assert api.patch("/v1/program", json={"pending_days": 14, "expiry": {"mode": "fixed", "months": 24}}) \
        .status_code == 200
    members = _members_of_every_shape(api, session)
    assert api.patch("/v1/program", json={"expiry": expiry}).status_code == 200
    for member_id in members:
        r = api.get(f"/v1/members/{member_id}")
        assert r.status_code == 200 and r.mimetype == "application/json"
        assert r.get_data() == _reference_body(app, session, member_id), member_id
        assert [r.json] == api.get(f"/v1/members?external_id={r.json['external_id']}").json["data"]
    earner = api.get(f"/v1/members/{members[2]}").json["balance"]
    assert earner["pending"] == 4 * 17 and earner["available"] == 4 * (11 + 12 + 13 + 14 + 15 + 16)
    if expiry["mode"] == "fixed":
        assert [e["expires_at"] for e in earner["expiring"]] == [
            "2027-05-02T09:30:00.250000Z", "2027-06-30T09:30:00.250000Z", "2027-08-15T09:30:00.250000Z",
            "2027-10-01T09:30:00.250000Z", "2027-12-24T09:30:00.250000Z"]
        assert [e["points"] for e in earner["expiring"]] == [44, 48, 52, 56, 60]
    elif expiry["mode"] == "inactivity":
        assert earner["expiring"] == [{"points": earner["available"], "expires_at": "2027-03-05T09:30:00.250000Z"}]
    else:
        assert earner["expiring"] == []


def test_dump_member_is_the_schema_dump(api, session):
    assert api.patch("/v1/program", json={"expiry": {"mode": "fixed", "months": 24}}).status_code == 200
    members = _members_of_every_shape(api, session)
    views = member_views(session, members, get_program(session))
    for view in views.values():
        assert dump_member(view) == MemberSchema().dump(view)
    assert any(view["tier"] for view in views.values()) and any(view["birthdate"] for view in views.values())


def test_a_member_read_gives_its_metadata_back_exactly(api):
    # Beyond 64 bits orjson refuses the integer and the default provider writes the answer.
    for metadata in ({"tag": "Zoë ☕", "n": 1, "nested": {"b": [1, 2], "a": None}}, {"big": 10**30, "n": 1}):
        member = api.post("/v1/members", json={"external_id": f"meta-{len(metadata)}-{metadata['n']}",
                                                "metadata": metadata}).json
        answer = api.get(f"/v1/members/{member['id']}")
        assert answer.status_code == 200 and answer.mimetype == "application/json"
        assert answer.json["metadata"] == metadata
        assert json.loads(answer.data) == answer.json and answer.data.endswith(b"\n")


def test_responses_read_as_the_default_provider_writes_them(app):
    from flask.json.provider import DefaultJSONProvider

    body = {"b": [1, 2.5, None, True], "a": {"z": datetime(2026, 3, 10, 12, tzinfo=UTC), "y": date(2026, 3, 1)},
            "text": "Zoë ☕ \u2028", "decimal": Decimal("1.50")}
    with app.test_request_context():
        ours = app.json.response(body).get_data()
        default = DefaultJSONProvider(app).response(body).get_data()
    assert json.loads(ours) == json.loads(default)
    assert list(json.loads(ours)) == sorted(body) and ours.endswith(b"\n")


def test_a_balance_read_is_one_statement(app, api, session):
    make_rule(api)
    member = make_member(api)["id"]
    buy(api, member)
    api.get(f"/v1/members/{member}")  # the API key is read once, then cached
    statements = []
    with app.app_context():
        engine = db.engine

    def count(_conn, _cursor, statement, *_args):
        if not statement.startswith(("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")):  # the tests'
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        assert api.get(f"/v1/members/{member}").json["balance"]["available"] == 400
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == 1, statements


@pytest.mark.postgres
def test_the_statement_engine_keeps_the_connection_settings_and_makes_no_session(database_url):
    """Read-only is set on the session, so the deployment's own settings (here a startup
    option) still apply; a balance read on it makes no ORM session; options that would give
    it another pool or another way to connect leave the app without one."""
    options = {"pool_size": 2, "connect_args": {"options": "-c statement_timeout=1234"},
               "execution_options": {"isolation_level": "SERIALIZABLE"}}  # the main engine's, not its
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "SQLALCHEMY_ENGINE_OPTIONS": options,
                      "SECRET_KEY": "test-secret-key-that-is-long-enough-for-hs256", "LOYALTY_MIGRATIONS": False})
    engine = app.extensions[STATEMENT_ENGINE]
    try:
        with engine.connect() as connection:
            settings = connection.exec_driver_sql(
                "SELECT current_setting('statement_timeout'), current_setting('transaction_read_only')").one()
            autocommit = connection.connection.dbapi_connection.autocommit
        assert tuple(settings) == ("1234ms", "on") and autocommit is True
        with app.test_request_context():
            assert run_statement(lambda connection: connection.exec_driver_sql("SELECT 1").scalar()) == 1
            assert not db.session.registry.has()
    finally:
        engine.dispose()
        with app.app_context():
            db.engine.dispose()
    for given in ({"creator": lambda: None}, {"pool": object()}):
        assert _statement_engine(database_url, given) is None


def test_a_balance_read_of_its_own_runs_on_the_statement_engine_on_postgres(app):
    """Outside the tests' savepoints: on PostgreSQL the read runs on the statement engine's
    connections, in autocommit mode and read-only, and never switches the main pool's; inside
    a write it reads in the write's transaction, after the session's pending changes."""
    member_id = "01readnotransaction0000000"
    with app.app_context():
        engine = db.engine
        postgres = engine.dialect.name == "postgresql"
        statement_engine = app.extensions.get(STATEMENT_ENGINE)
        assert (statement_engine is not None) is postgres
        with Session(engine) as setup:
            setup.add(Member(id=member_id, external_id="read-no-transaction", status="active",
                             referral_code="READNOTX", metadata_={}, enrolled_at=NOW))
            setup.flush()
            setup.add(MemberBalance(member_id=member_id, available=7, pending=2, lifetime_earned=9))
            key = create_api_key(setup, "app", NOW, name="read-no-transaction")
            setup.commit()
        reads = []

        def record(conn, _cursor, statement, *_args):
            if statement.startswith("SELECT") and "expiry_mode" in statement:  # the member view's read
                dbapi_connection = conn.connection.dbapi_connection
                reads.append((conn.engine, dbapi_connection.autocommit if postgres else None))

        engines = [engine, statement_engine] if postgres else [engine]
        for listened in engines:
            event.listen(listened, "before_cursor_execute", record)
        try:
            view = run_statement(lambda connection: member_services.get_member(connection, member_id))
            assert view["balance"] == {"available": 7, "pending": 2, "lifetime_earned": 9, "expiring": []}
            with pytest.raises(NotFound):
                run_statement(lambda connection: member_services.get_member(connection, "nobody"))
            assert reads == ([(statement_engine, True)] * 2 if postgres else [(engine, None)] * 2)
            if postgres:
                # Read-only: a statement that tried to write fails instead of committing.
                with pytest.raises(DBAPIError) as refused:
                    run_statement(lambda connection: connection.exec_driver_sql(
                        f"UPDATE members SET name = 'x' WHERE id = '{member_id}'"))
                assert refused.value.orig.sqlstate == "25006"  # read_only_sql_transaction
            reads.clear()

            def rename_then_read(session):
                session.get(Member, member_id).name = "Renamed"  # pending: flushed before the read
                return run_statement(lambda connection: member_services.get_member(connection, member_id))

            assert run_write(rename_then_read)["name"] == "Renamed"
            assert reads == [(engine, False if postgres else None)]
            reads.clear()
            answer = app.test_client().get(f"/v1/members/{member_id}", headers={"Authorization": f"Bearer {key}"})
            assert answer.status_code == 200 and answer.json["balance"]["available"] == 7
            assert reads == [(statement_engine, True) if postgres else (engine, None)]
        finally:
            for listened in engines:
                event.remove(listened, "before_cursor_execute", record)
            with engine.begin() as conn:
                conn.execute(delete(MemberBalance).where(MemberBalance.member_id == member_id))
                conn.execute(delete(Member).where(Member.id == member_id))
                conn.execute(delete(ApiKey).where(ApiKey.name == "read-no-transaction"))
            db.session.remove()


def test_ids_are_ulids_in_crockford_base32():
    import random

    from loyalty_api.ids import encode_ulid, new_id

    def digit_by_digit(value: int, length: int) -> str:
        alphabet, chars = "0123456789abcdefghjkmnpqrstvwxyz", []
        for _ in range(length):
            value, digit = divmod(value, 32)
            chars.append(alphabet[digit])
        return "".join(reversed(chars))

    draw = random.Random(7)
    cases = [(0, 0), (2**48 - 1, 2**80 - 1), (1, 1), (2**48 - 1, 0), (0, 2**80 - 1)]
    cases += [(draw.getrandbits(48), draw.getrandbits(80)) for _ in range(500)]
    for milliseconds, randomness in cases:
        expected = digit_by_digit(milliseconds, 10) + digit_by_digit(randomness, 16)
        assert encode_ulid(milliseconds, randomness) == expected
    made = [new_id() for _ in range(1000)]
    assert made == sorted(made) and len(set(made)) == 1000 and all(len(i) == 26 for i in made)
