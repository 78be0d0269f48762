"""DirectLoadSchema loads exactly what marshmallow's own load gives, and refuses with its errors."""

from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load

from loyalty_api.purchases.schemas import PurchaseCreateSchema
from loyalty_api.schemas import DirectLoadSchema, _direct_loader, _Unsure

VALID = {
    "transaction_id": "t-1", "member_id": "m-1", "occurred_at": "2026-12-06T07:00:00+01:00", "currency": "EUR",
    "total": 1500, "channel": "pos", "store_id": "s-1", "metadata": {"lane": 3},
    "items": [{"sku": "a", "category": "tea", "quantity": 2, "unit_price": 500},
              {"sku": "b", "quantity": 1, "unit_price": 500}],
}


def outcome(load, body):
    try:
        return "loaded", repr(load(body))  # repr: same types, same key order, same offsets
    except ValidationError as err:
        return "refused", err.messages


def marshmallow_load(schema):
    """marshmallow's own load, nested schemas included (they are DirectLoadSchemas too)."""
    def load(body):
        with mock.patch.object(DirectLoadSchema, "load", Schema.load):
            return schema.load(body)

    return load


def direct_outcome(schema, body):
    try:
        return "loaded", repr(_direct_loader(schema)(body))
    except _Unsure:
        return None


def test_a_valid_purchase_is_loaded_directly():
    schema = PurchaseCreateSchema()
    assert direct_outcome(schema, VALID) == outcome(marshmallow_load(schema), VALID)
    assert direct_outcome(schema, VALID)[0] == "loaded"
    # A body without its optional fields too, and one with them null.
    bare = {k: VALID[k] for k in ("transaction_id", "member_external_id", "occurred_at", "currency", "total")
            if k in VALID}
    nulls = {**VALID, "channel": None, "store_id": None, "items": None, "metadata": None}
    for body in (bare, nulls):
        assert direct_outcome(schema, body) == outcome(marshmallow_load(schema), body)


LENGTHS = [0, 1, 3, 64, 65, 100, 101, 200, 201]
# Values of every JSON type, and lengths and integers at the schema's limits.
ODD = [None, True, False, 0, 1, -1, 2.0, 1.5, "", "1", "EUR", [], {}, [1], {"a": 1}, 10**13, 10**13 + 1,
       -(2**70), *("x" * n for n in LENGTHS)]
junk = st.one_of(st.sampled_from(ODD), st.integers(-2, 3), st.floats(allow_nan=False), st.text(max_size=4),
                 st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
timestamps = st.sampled_from(["2026-12-06T07:00:00Z", "2026-12-06T07:00:00+05:30", "2026-12-06T07:00:00",
                              "1969-12-31T23:59:59Z", "2026-12-06T07:00:00+05:00:30", "not a date", "2026-13-01"])


items = st.fixed_dictionaries(
    {"sku": st.sampled_from(["a", "x" * 100]), "quantity": st.integers(1, 1_000_000),
     "unit_price": st.integers(0, 10**13)},
    optional={"category": st.sampled_from([None, "tea", "x" * 100])},
)
valid_bodies = st.fixed_dictionaries(
    {"transaction_id": st.sampled_from(["t", "x" * 200]),
     "occurred_at": st.sampled_from(["2026-12-06T07:00:00Z", "2026-12-06T07:00:00+05:30"]),
     "currency": st.sampled_from(["EUR", "USD"]), "total": st.integers(0, 10**13)},
    optional={
        "member_id": st.sampled_from(["m", "x" * 200]),
        "member_external_id": st.sampled_from(["e", "x" * 200]),
        "channel": st.sampled_from([None, "pos", "x" * 64]),
        "store_id": st.sampled_from([None, "s", "x" * 200]),
        "items": st.one_of(st.none(), st.lists(items, max_size=4)),
        "metadata": st.one_of(st.none(), st.dictionaries(st.sampled_from(["k", "x" * 100]), junk, max_size=3)),
    },
)
FIELDS = ["transaction_id", "member_id", "member_external_id", "occurred_at", "currency", "total", "channel",
          "store_id", "items", "metadata", "unknown"]


@st.composite
def bodies(draw):
    """A body that is valid, or valid but for a few changes: a value replaced by another
    (of any type, or a length at a limit), a field removed, an unknown one added."""
    body = draw(valid_bodies)
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(FIELDS))
        change = draw(st.sampled_from(["replace", "remove", "item"]))
        if change == "remove":
            body.pop(name, None)
        elif change == "item" and isinstance(body.get("items"), list) and (
                items := [item for item in body["items"] if isinstance(item, dict)]):
            item = draw(st.sampled_from(items))
            item[draw(st.sampled_from(["sku", "category", "quantity", "unit_price", "extra"]))] = draw(junk)
        elif change == "item" and name == "metadata":
            body["metadata"] = {draw(st.sampled_from(["k", "x" * 101, ""])): draw(junk)}
        else:
            body[name] = draw(st.one_of(junk, timestamps))
    return body


@settings(max_examples=600, deadline=None)
@given(body=st.one_of(bodies(), junk))
def test_direct_load_is_marshmallow_load(body):
    schema = PurchaseCreateSchema()
    expected = outcome(marshmallow_load(schema), body)
    # The schema's load answers as marshmallow's, whichever path it took.
    assert outcome(schema.load, body) == expected
    # What the direct check vouches for, marshmallow loads to the same value.
    direct = direct_outcome(schema, body)
    if direct is not None:
        assert direct == expected


@pytest.mark.parametrize("field", FIELDS + [f"items.{key}" for key in ("sku", "category", "quantity", "unit_price",
                                                                      "extra")])
def test_each_odd_value_in_each_field_loads_as_marshmallow_loads(field):
    schema = PurchaseCreateSchema()
    for odd in ODD:
        if field.startswith("items."):
            body = {**VALID, "items": [{**VALID["items"][0], field.split(".")[1]: odd}]}
        else:
            body = {**VALID, field: odd}
        assert outcome(schema.load, body) == outcome(marshmallow_load(schema), body), (field, odd)


def test_other_load_options_go_through_marshmallow():
    schema = PurchaseCreateSchema()
    body = {**VALID, "unknown": 1}
    assert "unknown" not in schema.load(body, unknown=EXCLUDE)
    assert schema.load([VALID], many=True)[0]["total"] == 1500
    assert schema.load({"total": 5}, partial=True) == {"total": 5}
    with pytest.raises(ValidationError) as refused:
        schema.load(body)
    assert refused.value.messages == {"unknown": ["Unknown field."]}
    # A valid body the direct check would load, where `many` asks for a list.
    with pytest.raises(ValidationError):
        schema.load(VALID, many=True)
    with pytest.raises(ValidationError):
        PurchaseCreateSchema(many=True).load(VALID)


def test_defaults_and_field_processors_are_marshmallows():
    class Described(DirectLoadSchema):
        x = fields.String()
        attrs = fields.Dict(load_default=dict)
        code = fields.String(pre_load=str.strip)

    assert Described().load({"x": "1"}) == {"x": "1", "attrs": {}}
    assert Described().load({"code": " y "}) == {"code": "y", "attrs": {}}


def test_a_schema_with_hooks_is_loaded_by_marshmallow():
    class Doubled(DirectLoadSchema):
        n = fields.Integer(strict=True)

        @post_load
        def double(self, data, **kwargs):
            return {"n": data["n"] * 2}

    assert Doubled().load({"n": 2}) == {"n": 4}
