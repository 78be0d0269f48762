"""JsonLogic compiled to closures: reference semantics, static checks, no evaluation errors."""

from __future__ import annotations

import math

import pytest

from rules.jsonlogic import (
    FACT_SCHEMA,
    ITEM_FILTER_SCHEMA,
    apply_logic,
    column_test,
    compile_logic,
    compile_predicate,
    loose_equals,
    to_number,
    to_string,
    truthy,
)


def errors_of(expr, schema=FACT_SCHEMA, path="conditions"):
    errors: dict[str, list[str]] = {}
    compile_logic(expr, path, errors, schema)
    return errors


@pytest.mark.parametrize(
    ("expr", "data", "expected"),
    [
        ({"var": "a"}, {"a": 1}, 1),
        ({"var": "a.b"}, {"a": {"b": "x"}}, "x"),
        ({"var": ["a.c", "dflt"]}, {"a": {"b": 1}}, "dflt"),
        ({"var": 1}, ["apple", "banana"], "banana"),
        ({"var": "list.1"}, {"list": [5, 6]}, 6),
        ({"var": "list.5"}, {"list": [5, 6]}, None),
        ({"var": ""}, 7, 7),
        ({"var": "a.b.c"}, {"a": None}, None),
        ({"missing": ["a", "b"]}, {"a": 1}, ["b"]),
        ({"missing": "a"}, {"a": ""}, ["a"]),
        ({"missing_some": [1, ["a", "b"]]}, {"a": 1}, []),
        ({"missing_some": [2, ["a", "b"]]}, {"a": 1}, ["b"]),
        ({"if": [True, "yes", "no"]}, None, "yes"),
        ({"if": [False, 1, False, 2, 3]}, None, 3),
        ({"if": [False, 1, True, 2, 3]}, None, 2),
        ({"if": [False, 1]}, None, None),
        ({"==": [1, "1"]}, None, True),
        ({"==": [0, False]}, None, True),
        ({"==": [None, 0]}, None, False),
        ({"==": [None, None]}, None, True),
        ({"==": [[1], 1]}, None, True),
        ({"===": [1, "1"]}, None, False),
        ({"===": [True, 1]}, None, False),
        ({"!=": ["a", "b"]}, None, True),
        ({"!==": [1, 1.0]}, None, False),
        ({"!": [[]]}, None, True),
        ({"!": ["0"]}, None, False),
        ({"!!": ["0"]}, None, True),
        ({"!!": [[]]}, None, False),
        ({"!!": [0]}, None, False),
        ({"or": [0, "", "x", "y"]}, None, "x"),
        ({"or": [0, ""]}, None, ""),
        ({"and": [1, "", 2]}, None, ""),
        ({"and": [1, 2]}, None, 2),
        ({">": [2, 1]}, None, True),
        ({">=": ["2", 2]}, None, True),
        ({"<": [1, 2, 3]}, None, True),
        ({"<": [1, 3, 3]}, None, False),
        ({"<=": [1, 3, 3]}, None, True),
        ({"<": ["a", "b"]}, None, True),
        ({"<": ["2026-01-01T00:00:00Z", "2026-11-23T10:00:00Z"]}, None, True),
        ({"<": [None, 1]}, None, True),
        ({"<": ["abc", 1]}, None, False),
        ({"max": [1, 3, "2"]}, None, 3),
        ({"min": [1, 3, -2]}, None, -2),
        ({"+": [1, "2"]}, None, 3),
        ({"+": []}, None, 0),
        ({"-": [5, 2]}, None, 3),
        ({"-": [5]}, None, -5),
        ({"*": [2, "3", 4]}, None, 24),
        ({"/": [6, 4]}, None, 1.5),
        ({"/": [1, 0]}, None, None),
        ({"%": [7, 3]}, None, 1),
        ({"%": [-7, 3]}, None, -1),
        ({"%": [7, 0]}, None, None),
        ({"in": ["Spring", "Springfield"]}, None, True),
        ({"in": ["b", ["a", "b"]]}, None, True),
        ({"in": [1, [True]]}, None, False),
        ({"in": ["x", {"var": "nothing"}]}, {}, False),
        ({"cat": ["I love", " pie", 3, None]}, None, "I love pie3null"),
        ({"cat": [1.5, [1, 2]]}, None, "1.51,2"),
        ({"substr": ["jsonlogic", 4]}, None, "logic"),
        ({"substr": ["jsonlogic", -5]}, None, "logic"),
        ({"substr": ["jsonlogic", 1, 3]}, None, "son"),
        ({"substr": ["jsonlogic", 4, -2]}, None, "log"),
        ({"merge": [[1, 2], 3, [4]]}, None, [1, 2, 3, 4]),
        ({"some": [[1, 2], {">": [{"var": ""}, 1]}]}, None, True),
        ({"all": [[], {">": [{"var": ""}, 1]}]}, None, False),
        ({"all": [[2, 3], {">": [{"var": ""}, 1]}]}, None, True),
        ({"none": [[1], {">": [{"var": ""}, 1]}]}, None, True),
        ({"map": [[1, 2], {"*": [{"var": ""}, 2]}]}, None, [2, 4]),
        ({"filter": [[1, 2, 3], {"%": [{"var": ""}, 2]}]}, None, [1, 3]),
        (
            {"reduce": [[1, 2, 3], {"+": [{"var": "current"}, {"var": "accumulator"}]}, 10]},
            None,
            16,
        ),
        ({"reduce": [{"var": "x"}, {"var": "current"}, 0]}, {}, 0),
        ({"some": [{"var": "x"}, True]}, {"x": "not a list"}, False),
    ],
)
def test_operators_follow_the_reference(expr, data, expected):
    result = apply_logic(expr, data)
    assert result == expected
    assert type(result) is type(expected) or isinstance(expected, int | float)


def test_truthiness_is_jsonlogic():
    assert [truthy(v) for v in (0, 0.0, "", [], None, False, math.nan)] == [False] * 7
    assert [truthy(v) for v in ("0", [0], {}, 1, -1, "a", True)] == [True] * 7


def test_coercions_follow_javascript():
    assert to_number("") == 0
    assert to_number(" 12 ") == 12
    assert math.isnan(to_number("1_000"))
    assert math.isnan(to_number("inf"))
    assert to_number("0x10") == 16
    assert to_number([]) == 0
    assert to_string(2.0) == "2"
    assert to_string([1, None, "a"]) == "1,,a"
    assert to_string({"a": 1}) == "[object Object]"
    assert loose_equals("1", True)
    assert not loose_equals("true", True)
    assert loose_equals([1, 2], "1,2")


def test_an_item_list_is_checked_against_the_item_fields():
    expr = {"some": [{"var": "purchase.items"}, {"==": [{"var": "category"}, "red"]}]}
    assert errors_of(expr) == {}
    data = {"purchase": {"items": [{"category": "blue"}, {"category": "red"}]}}
    assert compile_predicate(expr, "c", {}, FACT_SCHEMA)(data) is True
    bad = {"some": [{"var": "purchase.items"}, {"==": [{"var": "colour"}, "red"]}]}
    assert errors_of(bad) == {"conditions.some[1].==[0]": ["unknown variable 'colour'"]}


def test_unknown_element_shapes_allow_any_variable():
    expr = {"some": [{"var": "purchase.metadata.tags"}, {"==": [{"var": "x.y"}, 1]}]}
    assert errors_of(expr) == {}


def test_reduce_scope_has_current_and_accumulator():
    expr = {"reduce": [{"var": "purchase.items"},
                       {"+": [{"var": "accumulator"}, {"var": "current.amount"}]}, 0]}
    assert errors_of(expr) == {}
    assert errors_of({"reduce": [{"var": "purchase.items"}, {"var": "current.nope"}, 0]}) == {
        "conditions.reduce[1]": ["unknown variable 'current.nope'"]
    }


@pytest.mark.parametrize(
    ("expr", "path", "message"),
    [
        ({"bogus": [1]}, "conditions", "unknown operator 'bogus'"),
        ({"and": [True, {">": [{"var": "purchase.totl"}, 1]}]}, "conditions.and[1].>[0]",
         "unknown variable 'purchase.totl'"),
        ({"==": [1]}, "conditions.==", "'==' takes 2 arguments, got 1"),
        ({"<": [1, 2, 3, 4]}, "conditions.<", "'<' takes 2..3 arguments, got 4"),
        ({">": [1, 2, 3]}, "conditions.>", "'>' takes 2 arguments, got 3"),
        ({"var": "item.sku"}, "conditions", "unknown variable 'item.sku'"),
        ({"var": {"cat": ["purchase", ".total"]}}, "conditions",
         "a variable name must be a literal string"),
        ({"in": [{"var": "member.tier"}, 5]}, "conditions.in[1]", "must be an array or a string"),
        ({"some": [5, True]}, "conditions.some[0]", "must be an array"),
        ({"+": ["abc", 1]}, "conditions.+[0]", "must be a number"),
        ({"a": 1, "b": 2}, "conditions", "an operation must be an object with exactly one key"),
        ({"missing": ["purchase.nope"]}, "conditions.missing[0]",
         "unknown variable 'purchase.nope'"),
        ({"substr": ["abc", "x"]}, "conditions.substr[1]", "must be a number"),
        ({"var": ["member.tier", {"var": "now"}]}, "conditions.var[1]",
         "a variable default must be a literal"),
    ],
)
def test_static_checks_report_the_path(expr, path, message):
    assert message in errors_of(expr).get(path, []), errors_of(expr)


def test_every_problem_is_reported_at_once():
    expr = {"and": [{"nope": []}, {"var": "member.x"}, {"==": [1]}]}
    assert set(errors_of(expr)) == {"conditions.and[0]", "conditions.and[1]", "conditions.and[2].=="}


def test_declared_variables_compile():
    for name in ("purchase.total", "purchase.metadata.anything.deep", "member.tier",
                 "member.metadata.x", "event.attributes.stars", "event.type", "referral.role",
                 "now", "purchase.items.0.sku", "purchase.items.length", "purchase"):
        assert errors_of({"var": name}) == {}, name
    assert errors_of({"var": "item.category"}, ITEM_FILTER_SCHEMA) == {}


@pytest.mark.parametrize(
    "data",
    [None, {}, [], 5, "x", {"purchase": None}, {"purchase": {"items": "x", "total": "abc"}},
     {"purchase": {"items": [None, 1, {"amount": "z"}]}, "member": []}],
)
def test_nothing_compiled_raises_on_odd_data(data):
    exprs = [
        {"/": [{"var": "purchase.total"}, {"var": "member.lifetime_earned"}]},
        {"%": [{"var": "purchase.total"}, 0]},
        {"some": [{"var": "purchase.items"}, {">": [{"var": "amount"}, 1]}]},
        {"all": [{"var": "purchase.items"}, {"in": ["a", {"var": "sku"}]}]},
        {"reduce": [{"var": "purchase.items"},
                    {"+": [{"var": "accumulator"}, {"var": "current.amount"}]}, 0]},
        {"substr": [{"var": "purchase.total"}, {"var": "member.tier"}]},
        {"==": [{"var": "purchase"}, {"var": "member"}]},
        {"<": [{"var": "purchase"}, {"var": "member"}, {"var": "now"}]},
        {"*": ["1e308", "1e308", {"var": "purchase.total"}]},
        {"max": [{"var": "purchase.items"}, "3"]},
    ]
    for expr in exprs:
        errors: dict = {}
        fn = compile_predicate(expr, "c", errors, FACT_SCHEMA)
        assert errors == {}, expr
        assert fn(data) in (True, False)


def test_closures_do_not_walk_json_per_call():
    expr = {"==": [{"var": "member.tier"}, "gold"]}
    fn = compile_predicate(expr, "c", {}, FACT_SCHEMA)
    expr["=="][1] = "silver"  # the compiled closure no longer depends on the tree
    assert fn({"member": {"tier": "gold"}}) is True


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ({"==": [{"var": "item.category"}, "red"]}, ("category", "==", "red")),
        ({"<": [100, {"var": "item.amount"}]}, ("amount", ">", 100)),
        ({"in": [{"var": "item.sku"}, ["1", "2"]]}, ("sku", "in", ("1", "2"))),
        ({"!==": [{"var": ["item.sku"]}, "x"]}, ("sku", "!==", "x")),
        ({"==": [{"var": "item.category"}, True]}, None),
        ({"in": [{"var": "item.sku"}, ["1", 2]]}, None),
        ({"==": [{"var": "purchase.channel"}, "web"]}, None),
        ({"and": [True]}, None),
    ],
)
def test_column_tests_are_recognised(expr, expected):
    assert column_test(expr) == expected
