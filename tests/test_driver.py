"""The purchase path's reads on the driver's cursor give what SQLAlchemy would, and fail as it would."""

import json
import math
from datetime import UTC, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Integer, bindparam, event, select
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from loyalty_api.driver import DriverQuery, Read, read_together, run_on_driver
from loyalty_api.extensions import db, read_json
from loyalty_api.ledger.services import _EXPIRY_GROUPS
from loyalty_api.members.models import Member
from loyalty_api.members.services import _LOCK_MEMBERS, _READ_MEMBER_VIEW, _READ_MEMBERS
from loyalty_api.program.models import Program
from loyalty_api.program.services import _READ_PROGRAM
from loyalty_api.purchases.services import _READ_USAGE, _STORED_PURCHASES
from loyalty_api.rules_admin.models import Rule
from loyalty_api.tiers.services import _FIGURE_STATEMENTS

from .conftest import IS_POSTGRES, NOW

RULE = {"name": "1 per 1.00", "kind": "earn", "trigger": "purchase", "status": "active",
        "effect": {"type": "per_amount", "points": 1, "per": 100, "rounding": "floor"}}


@pytest.fixture
def members(api):
    program = {"currency": "EUR", "expiry": {"mode": "fixed", "months": 12}}
    assert api.patch("/v1/program", json=program).status_code == 200
    assert api.post("/v1/tiers", json={"code": "gold", "name": "Gold", "rank": 1, "threshold": 100,
                                       "multiplier": 1.5}).status_code == 201
    assert api.post("/v1/rules", json=RULE).status_code == 201
    ids = [api.post("/v1/members", json={"external_id": f"drv-{n}", "metadata": {"n": n}}).json["id"]
           for n in range(3)]
    for n, member_id in enumerate(ids[:2]):
        for k in range(2):
            body = {"transaction_id": f"drv-{n}-{k}", "member_id": member_id, "currency": "EUR",
                    "total": 1000 * (k + 1), "occurred_at": (NOW - timedelta(days=40 * k)).isoformat()}
            assert api.post("/v1/purchases", json=body).status_code == 201
    return ids


def both_ways(query: DriverQuery, params: dict) -> tuple[list, list]:
    connection = db.session.connection()
    expected = [tuple(row) for row in connection.execute(query.statement, params)]
    return [tuple(row) for row in query.rows(connection, params)], expected


@pytest.mark.parametrize("member_ids, external_ids, found", [
    ([0], [], 1), ([], ["drv-2"], 1), ([0, 1, 2], ["drv-1", "nobody"], 3), ([], [], 0), (["unknown"], [], 0)])
def test_member_reads_match_sqlalchemy(members, member_ids, external_ids, found):
    ids = [members[n] if isinstance(n, int) else n for n in member_ids]
    for query in (_READ_MEMBERS, _LOCK_MEMBERS):
        got, expected = both_ways(query, {"member_ids": ids, "external_ids": external_ids})
        assert got == expected
        assert len(got) == found


def test_other_purchase_path_reads_match_sqlalchemy(members):
    got, expected = both_ways(_READ_PROGRAM, {})
    assert got == expected and len(got) == 1
    got, expected = both_ways(_EXPIRY_GROUPS, {"member_ids": members})
    assert got == expected and len(got) == 4
    # Datetimes come back in UTC, as the column type makes them.
    assert all(row[1].tzinfo is UTC for row in got)
    for metric, query in _FIGURE_STATEMENTS.items():
        got, expected = both_ways(query, {"member_ids": members, "start": NOW - timedelta(days=30),
                                          "now": NOW + timedelta(hours=1)})
        assert got == expected and len(got) == 2, metric
    got, expected = both_ways(_READ_MEMBER_VIEW, {"member_id": members[0]})
    assert got == expected and len(got) == 2  # one row per expiry group
    got, expected = both_ways(_STORED_PURCHASES, {"transaction_ids": ["drv-0-0", "drv-1-1", "nope"]})
    assert sorted(got) == sorted(expected) and len(got) == 2
    assert isinstance(got[0][2], dict)  # the stored response, as JSON


@pytest.mark.postgres
def test_the_purchase_paths_long_lists_match_sqlalchemy(members):
    """A batch's lists (past 64 items, passed as arrays) give the rows of SQLAlchemy's IN lists."""
    nobody = [f"nobody-{n}" for n in range(100)]
    for query in (_READ_MEMBERS, _LOCK_MEMBERS):
        got, expected = both_ways(query, {"member_ids": members + nobody, "external_ids": ["drv-2", *nobody]})
        assert got == expected and len(got) == 3
    got, expected = both_ways(_EXPIRY_GROUPS, {"member_ids": members + nobody})
    assert got == expected and len(got) == 4
    for metric, query in _FIGURE_STATEMENTS.items():
        got, expected = both_ways(query, {"member_ids": members + nobody, "start": NOW - timedelta(days=30),
                                          "now": NOW + timedelta(hours=1)})
        assert got == expected and len(got) == 2, metric
    got, expected = both_ways(_STORED_PURCHASES, {"transaction_ids": ["drv-0-0", "drv-1-1", *nobody]})
    assert sorted(got) == sorted(expected) and len(got) == 2
    rule_id = db.session.execute(select(Rule.id)).scalar()
    starts = [NOW - timedelta(days=n) for n in range(70)]  # a timestamptz array
    usage = {"member_ids": members + nobody, "rule_ids": [rule_id, *nobody], "starts": starts}
    got, expected = both_ways(_READ_USAGE, usage)
    assert got == expected
    assert any(sizes is None for sizes, _ in _READ_USAGE._state.shapes)  # it went as arrays


def test_rows_are_named(members):
    (row,) = _READ_MEMBERS.rows(db.session.connection(), {"member_ids": [members[0]], "external_ids": []})
    assert row.member_id == members[0] and row.external_id == "drv-0" and row.metadata == {"n": 0}
    assert row._asdict()["available"] == row.available > 0


@pytest.mark.postgres
def test_each_short_in_list_size_fills_the_statement_as_sqlalchemy_would(members):
    connection = db.session.connection()
    query = DriverQuery(select(Member.__table__.c.id).where(
        Member.__table__.c.id.in_(bindparam("ids", expanding=True)),
        Member.__table__.c.status == "active", Member.__table__.c.enrolled_at <= bindparam("at")))
    query.rows(connection, {"ids": members[:1], "at": NOW})  # compiles
    compiled = query.statement.compile(dialect=connection.dialect)
    for ids in ([], members[:1], members, members[1:], members[:1]):
        params = {"ids": ids, "at": NOW + timedelta(days=1)}
        assert sorted(row.id for row in query.rows(connection, params)) == sorted(ids)
        state = compiled.construct_expanded_state(dict(params))
        shape = query._state.shapes[((len(ids),), frozenset(params))]
        assert shape.sql == state.statement
        # SQLAlchemy's processors: the items' from the expanded state, the others' (`at`, a
        # UTC timestamp) from the statement.
        processors = {**compiled._bind_processors, **state.processors}
        assert shape.parameters(params) == {name: processors[name](value) if name in processors
                                            else value for name, value in state.parameters.items()}


@pytest.mark.postgres
def test_long_in_lists_go_as_one_array_with_sqlalchemys_rows(members):
    connection = db.session.connection()
    query = DriverQuery(select(Member.__table__.c.id).where(
        Member.__table__.c.id.in_(bindparam("ids", expanding=True)),
        Member.__table__.c.status == bindparam("status", "active")))
    nobody = [f"nobody-{n}" for n in range(100)]
    # A longer id starting with a member's matches nothing (no cast to the column's length).
    for ids in (members + nobody, nobody, [members[0] + "x", *nobody], members[1:] + nobody + nobody):
        expected = connection.execute(query.statement, {"ids": ids}).all()  # SQLAlchemy's own IN list
        assert sorted(query.rows(connection, {"ids": ids})) == sorted(expected)
        assert sorted(row.id for row in expected) == sorted(set(ids) & set(members))
    assert query.rows(connection, {"ids": members + nobody, "status": "suspended"}) == []
    # As SQLAlchemy takes them: any sequence for the array, a timestamp in any offset.
    assert len(query.rows(connection, {"ids": tuple(members + nobody)})) == 3
    assert len(query.rows(connection, {"ids": members})) == 3
    long_shapes = [shape.sql for (sizes, _), shape in query._state.shapes.items() if sizes is None]
    assert len(long_shapes) == 2  # one text for every long list, with the default given or not
    assert all("= ANY (%(ids)s::VARCHAR[])" in sql for sql in long_shapes)


@pytest.mark.postgres
@pytest.mark.parametrize("condition", [
    Member.__table__.c.status.in_(["active", "suspended"]),  # a literal IN list
    Member.__table__.c.id.not_in(bindparam("ids", expanding=True)),
    Member.__table__.c.status == bindparam("status", callable_=lambda: "active"),
])
def test_forms_the_cache_cannot_fill_are_refused(session, condition):
    with pytest.raises(ValueError):
        DriverQuery(select(Member.__table__.c.id).where(condition)).rows(session.connection())


@pytest.mark.postgres
def test_a_statement_on_a_fresh_connection_begins_its_transaction(app):
    with app.app_context(), db.engine.connect() as connection:
        run_on_driver(connection, "SELECT 1", fetch=True)
        assert connection.in_transaction()
        connection.rollback()


def test_statements_reach_cursor_listeners_and_only_postgresql_bypasses_the_execution_layer(members):
    contexts = []

    def listen(conn, cursor, statement, parameters, context, executemany):
        if "FROM program" in statement:
            contexts.append(context)

    event.listen(db.engine, "before_cursor_execute", listen)
    try:
        _READ_PROGRAM.rows(db.session.connection())
    finally:
        event.remove(db.engine, "before_cursor_execute", listen)
    # Seen once; with no execution context on PostgreSQL (psycopg ran it), elsewhere SQLAlchemy did.
    assert len(contexts) == 1 and (contexts[0] is None) == IS_POSTGRES


@pytest.mark.postgres
def test_driver_errors_are_sqlalchemy_errors_with_their_sqlstate(session):
    connection = session.connection()
    with pytest.raises(DataError) as caught:
        run_on_driver(connection, "SELECT 1 / %s", (0,), fetch=True)
    assert caught.value.orig.sqlstate == "22012"


@pytest.mark.postgres
def test_a_unique_violation_stays_retryable(session):
    connection = session.connection()
    run_on_driver(connection, "CREATE TEMPORARY TABLE driver_once (id int PRIMARY KEY)")
    run_on_driver(connection, "INSERT INTO driver_once VALUES (1)")
    with pytest.raises(IntegrityError) as caught:
        run_on_driver(connection, "INSERT INTO driver_once VALUES (%s)", (1,))
    assert caught.value.orig.sqlstate == "23505"


@pytest.mark.postgres
def test_a_lost_connection_is_invalidated(app):
    with app.app_context(), db.engine.connect() as connection:
        (pid,), = run_on_driver(connection, "SELECT pg_backend_pid()", fetch=True)
        with db.engine.connect() as other:
            run_on_driver(other, "SELECT pg_terminate_backend(%s)", (pid,), fetch=True)
        with pytest.raises(DBAPIError) as caught:
            _READ_PROGRAM.rows(connection)
        assert caught.value.connection_invalidated
        assert connection.invalidated


@pytest.mark.postgres
def test_a_connection_keeps_one_cursor_and_a_new_connection_gets_its_own(app):
    cursors = []

    def listen(conn, cursor, statement, *_args):
        cursors.append((conn.connection.driver_connection, cursor))

    with app.app_context(), db.engine.connect() as connection:
        event.listen(db.engine, "before_cursor_execute", listen)
        try:
            (pid,), = run_on_driver(connection, "SELECT pg_backend_pid()", fetch=True)
            assert _READ_PROGRAM.rows(connection)
            with db.engine.connect() as other:
                run_on_driver(other, "SELECT pg_terminate_backend(%s)", (pid,), fetch=True)
                other.rollback()
            with pytest.raises(DBAPIError) as caught:
                _READ_PROGRAM.rows(connection)
            assert caught.value.connection_invalidated
            connection.rollback()
            assert _READ_PROGRAM.rows(connection)  # on a new driver connection
        finally:
            event.remove(db.engine, "before_cursor_execute", listen)
    (first, cursor), (same, again), _, (lost, _), (fresh, new) = cursors
    assert same is first and again is cursor  # kept with the connection, across statements
    assert lost is first and fresh is not first and new is not cursor  # a new connection, a new cursor


def test_reads_together_give_what_each_gives_alone_in_order(members):
    connection = db.session.connection()
    reads = [Read(_READ_PROGRAM, {}, list), Read.known("nothing asked"),
             Read(_EXPIRY_GROUPS, {"member_ids": members}, list),
             Read(_STORED_PURCHASES, {"transaction_ids": ["drv-1-0", "nope"]}, lambda rows: rows[0].transaction_id),
             Read(_LOCK_MEMBERS, {"member_ids": members[:1], "external_ids": []}, len)]
    alone = [read.run(connection) for read in reads]
    assert read_together(connection, *reads) == alone
    assert alone[1:] == ["nothing asked", _EXPIRY_GROUPS.rows(connection, {"member_ids": members}), "drv-1-0", 1]
    assert read_together(connection) == []


@pytest.mark.postgres
def test_reads_together_go_in_one_pipeline_that_begins_the_transaction_and_reaches_listeners(app):
    seen = []

    def listen(conn, cursor, statement, *_args):
        seen.append((cursor, conn.connection.driver_connection.pgconn.pipeline_status))

    lock_program = DriverQuery(select(Program.id).with_for_update())
    with app.app_context(), db.engine.connect() as connection:
        event.listen(db.engine, "before_cursor_execute", listen)
        try:
            results = read_together(connection, Read(_READ_PROGRAM, {}, len), Read(lock_program, {}, len),
                                    Read(_READ_PROGRAM, {}, len))
        finally:
            event.remove(db.engine, "before_cursor_execute", listen)
        assert results == [1, 1, 1] and connection.in_transaction()
        # Each statement ran on a cursor of its own, in pipeline mode (psycopg's status is not OFF).
        assert len(seen) == 3 and len({id(cursor) for cursor, _ in seen}) == 3 and all(status for _, status in seen)
        # The lock taken in the pipeline is held by the transaction it began.
        with db.engine.connect() as other, pytest.raises(DBAPIError) as caught:
            run_on_driver(other, "SELECT 1 FROM program FOR UPDATE NOWAIT", fetch=True)
        assert caught.value.orig.sqlstate == "55P03"
        connection.rollback()
        with db.engine.connect() as other:
            assert run_on_driver(other, "SELECT 1 FROM program FOR UPDATE NOWAIT", fetch=True) == [(1,)]
            other.rollback()
        # Two reads would save no round trip (a pipeline ends with a Sync): they run one by one.
        seen.clear()
        event.listen(db.engine, "before_cursor_execute", listen)
        try:
            assert read_together(connection, Read(_READ_PROGRAM, {}, len), Read(_READ_PROGRAM, {}, len)) == [1, 1]
        finally:
            event.remove(db.engine, "before_cursor_execute", listen)
        assert len(seen) == 2 and not any(status for _, status in seen)
        connection.rollback()


@pytest.mark.postgres
def test_an_error_among_reads_together_is_sqlalchemys_with_its_sqlstate_and_the_later_reads_do_not_run(app):
    divide = DriverQuery(select((bindparam("n", type_=Integer) / bindparam("d", type_=Integer)).label("q")))
    meant = []
    with app.app_context(), db.engine.connect() as connection:
        with pytest.raises(DataError) as caught:
            read_together(connection, Read(_READ_PROGRAM, {}, meant.append),
                          Read(divide, {"n": 1, "d": 0}, meant.append), Read(_READ_PROGRAM, {}, meant.append))
        assert caught.value.orig.sqlstate == "22012" and meant == []
        connection.rollback()
        # The connection goes on, out of pipeline mode, with its cursors.
        assert read_together(connection, Read(divide, {"n": 6, "d": 3}, list), Read(_READ_PROGRAM, {}, len),
                             Read(_READ_PROGRAM, {}, len)) == [[(2,)], 1, 1]
        assert _READ_PROGRAM.rows(connection)
        connection.rollback()


def _same_json(ours, theirs) -> bool:
    """Equal, with the same types all the way down (1 is not 1.0, -0.0 is not 0.0)."""
    if type(ours) is not type(theirs):
        return False
    if isinstance(ours, dict):
        return ours.keys() == theirs.keys() and all(_same_json(ours[k], theirs[k]) for k in ours)
    if isinstance(ours, list):
        return len(ours) == len(theirs) and all(map(_same_json, ours, theirs))
    if isinstance(ours, float):
        return ours == theirs and math.copysign(1, ours) == math.copysign(1, theirs)
    return ours == theirs


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_json_from_the_database_reads_as_the_json_module_reads_it(value):
    text = json.dumps(value)
    assert _same_json(read_json(text.encode()), json.loads(text))
    assert _same_json(read_json(text), json.loads(text))


@pytest.mark.parametrize("text", ["1e400", "-1e400", "123456789012345678901234567890", "18446744073709551616",
                                  "-9223372036854775809", "0.1000000000000000055511151231257827", "-0", "-0.0"])
def test_numbers_orjson_would_read_otherwise_read_as_the_json_module_reads_them(text):
    assert _same_json(read_json(text.encode()), json.loads(text))


@pytest.mark.postgres
def test_parameters_go_through_their_types_as_sqlalchemy_sends_them(members):
    """A naive timestamp is refused by the UTC column type, on both paths; an aware one in
    any offset finds the same rows."""
    query = _FIGURE_STATEMENTS["points"]
    params = {"member_ids": members, "start": NOW - timedelta(days=30), "now": NOW + timedelta(hours=1)}
    elsewhere = {**params, "now": (NOW + timedelta(hours=1)).astimezone(timezone(timedelta(hours=-7)))}
    assert both_ways(query, elsewhere)[0] == both_ways(query, params)[0]
    naive = {**params, "now": NOW.replace(tzinfo=None)}
    for run in (lambda: query.rows(db.session.connection(), naive),
                lambda: db.session.connection().execute(query.statement, naive)):
        with pytest.raises(StatementError, match="naive datetime"):
            run()
        db.session.rollback()
