"""Every refusal is problem+json with a stable code; bad input never gives a 500."""

import pytest
from sqlalchemy import func, select

from loyalty_api.ledger.models import LedgerEntry
from loyalty_api.purchases.models import Purchase

from .helpers import assert_problem, make_member, make_rule, purchase_body


@pytest.fixture
def member(api):
    return make_member(api)


def _raw(api, method, path, data, content_type="application/json"):
    return api.request(method, path, data=data, headers={"Content-Type": content_type})


def _purchase_text(member_id, total="100", extra=""):
    """A purchase body written by hand, for what json.dumps would never write."""
    return ('{"transaction_id": "t1", "member_id": "' + member_id + '", "occurred_at": "2026-03-10T11:00:00Z", '
            '"currency": "EUR", "total": ' + total + extra + "}")


@pytest.mark.parametrize("data", ["{", "not json", '{"transaction_id": "t1",}', "\xff\xfe", ""])
def test_malformed_json_is_validation_error(api, member, data):
    r = _raw(api, "POST", "/v1/purchases", data)
    assert_problem(r, 422, "validation_error")


@pytest.mark.parametrize("data", ["[1, 2]", '"text"', "42", "null"])
def test_json_that_is_not_an_object_is_validation_error(api, member, data):
    assert_problem(_raw(api, "POST", "/v1/purchases", data), 422, "validation_error")


def test_unknown_field_is_named(api, member):
    r = api.post("/v1/purchases", json=purchase_body(member["id"], colour="red"))
    assert_problem(r, 422, "validation_error", "colour")


def test_unknown_nested_field_is_named_with_its_path(api, member):
    items = [{"sku": "a", "quantity": 1, "unit_price": 10000, "colour": "red"}]
    r = api.post("/v1/purchases", json=purchase_body(member["id"], items=items))
    assert_problem(r, 422, "validation_error", "items.0.colour")


def test_missing_required_fields_are_each_named(api):
    body = assert_problem(api.post("/v1/purchases", json={}), 422, "validation_error")
    for field in ("transaction_id", "occurred_at", "currency", "total"):
        assert field in body["errors"]


@pytest.mark.parametrize("field, value", [
    ("total", "100"), ("total", 100.5), ("total", 1e2), ("total", True), ("total", None),
    ("transaction_id", 17), ("occurred_at", 1741600000), ("currency", "eur"), ("items", {"sku": "a"}),
    ("metadata", ["a"]),
])
def test_wrong_types_are_named(api, member, field, value):
    body = purchase_body(member["id"])
    body[field] = value
    assert_problem(api.post("/v1/purchases", json=body), 422, "validation_error", field)


@pytest.mark.parametrize("total", [-1, 10**13 + 1, 2**63, 2**64 + 1, 10**40, -(2**63) - 1])
def test_out_of_range_and_beyond_64_bit_money(api, member, total):
    r = api.post("/v1/purchases", json=purchase_body(member["id"], total=total))
    assert_problem(r, 422, "validation_error", "total")


def test_beyond_64_bit_number_written_in_the_raw_body(api, member):
    data = _purchase_text(member["id"], "123456789012345678901234567890")
    assert_problem(_raw(api, "POST", "/v1/purchases", data), 422, "validation_error", "total")


@pytest.mark.parametrize("points", [2**63, 10**12 + 1, -(10**12) - 1, 0, 1.5, "5"])
def test_adjustment_points_out_of_range_or_wrong_type(api, member, points):
    r = api.post(f"/v1/members/{member['id']}/adjustments",
                 json={"adjustment_id": "a1", "points": points, "reason": "x"})
    assert_problem(r, 422, "validation_error", "points")


@pytest.mark.parametrize("stamp", ["2026-03-10T11:00:00", "2026-03-10", "yesterday", "2026-13-40T00:00:00Z",
                                   "2026-03-10T11:00:00+05:00:30"])  # offsets have no seconds in RFC 3339
def test_naive_or_bad_timestamps_are_refused(api, member, stamp):
    r = api.post("/v1/purchases", json=purchase_body(member["id"], occurred_at=stamp))
    assert_problem(r, 422, "validation_error", "occurred_at")


@pytest.mark.parametrize("stamp", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00",
                                   "0001-01-01T00:00:00Z"])
def test_timestamps_at_the_edge_of_the_calendar_never_500(api, member, stamp):
    r = api.post("/v1/purchases", json=purchase_body(member["id"], occurred_at=stamp))
    assert_problem(r, 422, "validation_error", "occurred_at")


def test_event_timestamp_at_the_edge_of_the_calendar(api, member):
    r = api.post("/v1/events", json={"event_id": "e1", "type": "survey", "member_id": member["id"],
                                     "occurred_at": "9999-12-31T23:59:00-05:00"})
    assert_problem(r, 422, "validation_error", "occurred_at")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_json_numbers_are_refused(api, member, literal):
    data = _purchase_text(member["id"], "100", ', "metadata": {"score": ' + literal + "}")
    assert_problem(_raw(api, "POST", "/v1/purchases", data), 422, "validation_error")
    data = ('{"event_id": "e1", "type": "survey", "member_id": "' + member["id"] + '", '
            '"occurred_at": "2026-03-10T11:00:00Z", "attributes": {"score": ' + literal + "}}")
    assert_problem(_raw(api, "POST", "/v1/events", data), 422, "validation_error")


def test_huge_numbers_in_free_form_metadata_never_500(api, member):
    r = api.post("/v1/purchases", json=purchase_body(member["id"], metadata={"n": 10**30, "f": 1e308}))
    assert r.status_code in (201, 422), r.json
    if r.status_code == 422:
        assert_problem(r, 422, "validation_error")


def test_oversized_body_is_413(app, api, member, monkeypatch):
    monkeypatch.setitem(app.config, "MAX_CONTENT_LENGTH", 2048)
    r = api.post("/v1/purchases", json=purchase_body(member["id"], metadata={"pad": "x" * 4096}))
    assert_problem(r, 413, "payload_too_large")
    assert api.post("/v1/purchases", json=purchase_body(member["id"])).status_code == 201


def test_unknown_route_is_404_problem(api):
    assert_problem(api.get("/v1/nothing-here"), 404, "not_found")
    assert_problem(api.as_role(None).get("/nope"), 404, "not_found")


def test_wrong_method_is_405_problem(api):
    assert_problem(api.delete("/v1/program"), 405, "method_not_allowed")


def test_unknown_query_parameter_is_refused(api):
    assert_problem(api.get("/v1/members?colour=red"), 422, "validation_error", "colour")


def test_form_encoded_body_is_refused(api, member):
    r = _raw(api, "POST", "/v1/purchases", "transaction_id=t1", "application/x-www-form-urlencoded")
    assert r.status_code in (415, 422)
    assert r.mimetype == "application/problem+json"


def test_member_named_twice_or_not_at_all(api, member):
    body = purchase_body(member["id"], member_external_id="m1")
    assert_problem(api.post("/v1/purchases", json=body), 422, "validation_error", "member_id")
    body = purchase_body(None)
    del body["member_id"]
    assert_problem(api.post("/v1/purchases", json=body), 422, "validation_error", "member_id")


def test_refused_request_leaves_no_trace(api, session, member):
    make_rule(api)
    items = [{"sku": "a", "quantity": 1, "unit_price": 500}]
    r = api.post("/v1/purchases", json=purchase_body(member["id"], items=items))
    assert_problem(r, 422, "items_total_mismatch", "items")
    assert session.execute(select(func.count()).select_from(Purchase)).scalar() == 0
    assert session.execute(select(func.count()).select_from(LedgerEntry)).scalar() == 0


def test_far_future_occurred_at_is_refused(api, member):
    r = api.post("/v1/purchases", json=purchase_body(member["id"], occurred_at="2026-03-11T12:00:00Z"))
    assert_problem(r, 422, "validation_error", "occurred_at")


@pytest.mark.parametrize("query", ["limit=0", "limit=201", "limit=abc", "limit=-1", "limit=99999999999999999999999",
                                   "cursor=%25%25%25", "cursor=bm90IGFuIGlk"])
def test_bad_list_parameters(api, query):
    body = assert_problem(api.get(f"/v1/members?{query}"), 422, "validation_error")
    assert set(body["errors"]) <= {"limit", "cursor"}


def test_problem_type_is_a_uri_per_code(api):
    body = api.get("/v1/members/nope").json
    assert body["type"].endswith("/not-found")


def test_integer_with_more_digits_than_python_converts(api, member):
    data = _purchase_text(member["id"], "9" * 5000)
    assert_problem(_raw(api, "POST", "/v1/purchases", data), 422, "validation_error")


def test_deeply_nested_json_never_500(api, member):
    data = '{"transaction_id": "t1", "metadata": ' + "[" * 100000 + "1" + "]" * 100000 + "}"
    r = _raw(api, "POST", "/v1/purchases", data)
    assert r.status_code == 422 and r.mimetype == "application/problem+json"


def test_operations_endpoints(api):
    anonymous = api.as_role(None)
    assert anonymous.get("/healthz").json == {"status": "ok"}
    assert anonymous.get("/readyz").json == {"status": "ready"}
    spec = anonymous.get("/openapi.yaml")
    assert spec.status_code == 200 and spec.mimetype == "application/yaml"
    text = spec.get_data(as_text=True)
    for path in ("/v1/purchases:", "/v1/members/{member_id}/ledger:", "/v1/rules/simulate:", "/v1/program:"):
        assert path in text
    docs = anonymous.get("/docs")
    assert docs.status_code == 200 and docs.mimetype == "text/html"


def test_readyz_is_503_when_the_database_is_unreachable(api, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from loyalty_api.extensions import db

    def down(*args, **kwargs):
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(db.session, "execute", down)
    r = api.as_role(None).get("/readyz")
    assert_problem(r, 503, "service_unavailable")
    assert r.headers["Retry-After"] == "1"


def test_an_exhausted_connection_pool_is_503_with_retry_after(api, monkeypatch):
    """More requests than pooled connections, each held past the pool's timeout: overload, not a bug."""
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from loyalty_api.members import services

    def exhausted(*args, **kwargs):
        raise PoolTimeout("QueuePool limit of size 10 overflow 0 reached, connection timed out")

    monkeypatch.setattr(services, "get_member", exhausted)
    r = api.get("/v1/members/01J0000000000000000000000")
    assert_problem(r, 503, "service_unavailable")
    assert r.headers["Retry-After"] == "1"
