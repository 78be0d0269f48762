"""Generated code: rule content never becomes source; lazy results; exact multiplier shares."""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
from fractions import Fraction

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from rules import Evaluation, RuleError, Usage, compile_rule, compile_rules, evaluate, jsonlogic
from rules.jsonlogic import (
    FACT_SCHEMA,
    Compiler,
    compile_predicate,
    compile_selector,
)

from .builders import AT, earn, item, per_amount, purchase_facts, rule_set
from .test_properties import SETTINGS, facts_strategy, logic_data, logic_expr

HOSTILE = [
    "'); __import__('os').system('touch /tmp/pwned'); ('",
    '"); __import__("os").system("touch /tmp/pwned"); ("',
    '\n"""\nraise SystemExit(3)\n"""',
    "\\'; raise SystemExit(4) #",
    "{_k0}",
    "_k0",
    "data",
    "__import__",
    "x.__class__.__mro__",
]


def _source(expr, schema, *, precompute: bool = False) -> str:
    errors: dict = {}
    compiler = Compiler(errors, precompute=precompute)
    node = compiler.compile(expr, "$", schema)
    assert errors == {}, errors
    return "\n".join(compiler.prelude + [node.src])


def _assert_not_in_source(text: str, source: str) -> None:
    # No string reaches the source: no quote at all, so no text that could end a literal.
    assert "'" not in source and '"' not in source, source
    if any(char in text for char in "'\"\\\n("):
        assert text not in source


def _sentinel_untouched() -> None:
    assert not os.path.exists("/tmp/pwned")


def _nest(parts: list[str], value):
    for part in reversed(parts):
        value = {part: value}
    return value


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_strings_in_values_are_inert(text):
    conditions = {"and": [
        {"==": [{"var": "purchase.channel"}, text]},
        {"in": [{"var": "member.tier"}, [text, "gold"]]},
        {"<": [text, {"var": "now"}, text + "z"]},
        {"some": [{"var": "purchase.items"}, {"==": [{"var": "category"}, text]}]},
    ]}
    rule = compile_rule(earn({"type": "fixed", "points": 7}, conditions=conditions,
                             item_filter={"==": [{"var": "item.sku"}, text]}),
                        rule_id="hostile")
    facts = purchase_facts([item(text, text, 100)], channel=text)
    facts["member"]["tier"] = text
    facts["now"] = text + "m"
    result = evaluate(compile_rules([rule]), "purchase", facts, at=AT)
    assert result.points == 7
    assert evaluate(compile_rules([rule]), "purchase", purchase_facts(), at=AT).points == 0
    for source in (_source(conditions, FACT_SCHEMA, precompute=True),
                   _source(conditions, FACT_SCHEMA)):
        _assert_not_in_source(text, source)
    _sentinel_untouched()


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_variable_paths_and_keys_are_inert(text):
    # purchase.metadata and event.attributes take any key: paths are data, read through
    # constants, never written into the source.
    path = f"purchase.metadata.{text}"
    parts = text.split(".")
    equal = {"==": [{"var": path}, "yes"]}
    missing = {"missing": [path]}
    element = {"some": [{"var": "purchase.metadata.list"}, {"==": [{"var": text}, 1]}]}
    default = {"var": [f"event.attributes.{text}", text]}
    found = {"purchase": {"metadata": _nest(parts, "yes")}}
    listed = {"purchase": {"metadata": {"list": [_nest(parts, 1)]}}}
    assert compile_predicate(equal, "c", {}, FACT_SCHEMA)(found) is True
    assert compile_predicate(equal, "c", {}, FACT_SCHEMA)(listed) is False
    assert jsonlogic.compile_logic(missing, "c", {}, FACT_SCHEMA)(found) == []
    assert jsonlogic.compile_logic(missing, "c", {}, FACT_SCHEMA)(listed) == [path]
    assert compile_predicate(element, "c", {}, FACT_SCHEMA)(listed) is True
    assert jsonlogic.compile_logic(default, "c", {}, FACT_SCHEMA)({}) == text
    select, failed = compile_selector([("a", equal), ("b", element), None], FACT_SCHEMA)
    assert failed == set() and select(found) == (True, False, True)
    for expr in (equal, missing, element, default):
        for precompute in (False, True):
            _assert_not_in_source(text, _source(expr, FACT_SCHEMA, precompute=precompute))
    _sentinel_untouched()


def test_generated_source_holds_no_string_literal():
    exprs = [
        {"==": [{"var": "purchase.channel"}, "web"]},
        {"cat": ["a", {"var": "member.tier"}, 1.5, None, True]},
        {"in": ["x", ["a", "b"]]},
        {"substr": ["jsonlogic", 4, -2]},
        {"reduce": [{"var": "purchase.items"},
                    {"+": [{"var": "accumulator"}, {"var": "current.amount"}]}, 0]},
        {"missing_some": [1, ["purchase.total", "member.tier"]]},
        {"if": [{"var": "purchase.metadata.a.b.c"}, "then", "else"]},
    ]
    for expr in exprs:
        for precompute in (False, True):
            source = _source(expr, FACT_SCHEMA, precompute=precompute)
            assert "'" not in source and '"' not in source, source


def test_expressions_of_one_shape_share_compiled_code():
    jsonlogic.clear_cache()
    for channel in ("web", "app", "pos", "x" * 50):
        compile_predicate({"==": [{"var": "purchase.channel"}, channel]}, "c", {}, FACT_SCHEMA)
    assert len(jsonlogic._FACTORIES) == 1


@SETTINGS
@given(st.lists(logic_expr, min_size=1, max_size=6), logic_data)
def test_a_selector_agrees_with_each_predicate(exprs, data):
    entries = [(str(i % 3), expr) if i % 3 else (f"k{i}", expr) for i, expr in enumerate(exprs)]
    # Entries sharing a key must share the expression.
    by_key: dict = {}
    entries = [(key, by_key.setdefault(key, expr)) for key, expr in entries] + [None]
    for _, expr in entries[:-1]:
        errors: dict = {}
        compile_predicate(expr, "$", errors)
        assume(not errors)
    select, failed = compile_selector(entries)
    assert failed == set()
    expected = [compile_predicate(expr, "$", {})(data) for _, expr in entries[:-1]] + [True]
    assert list(select(data)) == expected


@SETTINGS
@given(logic_expr, facts_strategy)
def test_precomputed_variables_read_like_the_plain_getters(expr, facts):
    errors: dict = {}
    compile_predicate(expr, "$", errors)
    assume(not errors)
    select, _ = compile_selector([("k", expr)])
    assert select(facts) == (compile_predicate(expr, "$", {})(facts),)


def test_a_condition_the_selector_cannot_compile_runs_on_its_own():
    rule = compile_rule(per_amount(4, conditions={"==": [{"var": "purchase.channel"}, "pos"]}),
                        rule_id="odd")
    odd = dataclasses.replace(rule, conditions={"bogus": []})  # what the selector would read
    rules = compile_rules([odd])
    assert evaluate(rules, "purchase", purchase_facts(), at=AT).points == 608
    web = purchase_facts(channel="web")
    assert evaluate(rules, "purchase", web, at=AT).outcomes[0].reason == "condition_false"


# -- lazy results ---------------------------------------------------------------------------


def test_lazy_results_equal_and_show_as_plain_evaluations():
    rules = rule_set(per_amount(4, limits={"per_member": {"count": 5, "period": "day"}}),
                     earn({"type": "fixed", "points": 10}, status="draft"))
    result = evaluate(rules, "purchase", purchase_facts(), at=AT, usage={"r0": Usage(1, 1)})
    assert isinstance(result, Evaluation)
    plain = Evaluation(result.points, result.awards, result.outcomes, dict(result.consumed))
    assert result == plain and plain == result
    assert repr(result) == repr(plain)
    assert result.outcomes is result.outcomes
    assert dataclasses.asdict(result)["points"] == 608
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.points = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.awards = ()  # type: ignore[misc]
    assert result != Evaluation(0, (), (), {})
    assert pickle.loads(pickle.dumps(result)) == result
    assert copy.deepcopy(result) == result
    assert dataclasses.replace(result, points=1) == dataclasses.replace(plain, points=1)


def test_an_exclusive_rule_excludes_lower_rules_but_not_their_status():
    rules = rule_set(
        earn({"type": "fixed", "points": 5}, priority=3, exclusive=True),
        earn({"type": "fixed", "points": 6}, priority=3),
        earn({"type": "fixed", "points": 7}, priority=1, status="draft"),
        earn({"type": "fixed", "points": 8}, priority=1, status="archived"),
        earn({"type": "fixed", "points": 9}, priority=0,
             conditions={"==": [{"var": "purchase.channel"}, "web"]}),
    )
    strict = evaluate(rules, "purchase", purchase_facts(), at=AT)
    assert strict.points == 11
    assert [o.reason for o in strict.outcomes] == [None, None, "inactive", "inactive", "excluded"]
    loose = evaluate(rules, "purchase", purchase_facts(), at=AT, only_active=False)
    assert [o.reason for o in loose.outcomes] == [None, None, "excluded", "inactive", "excluded"]


# -- multiplier shares against a Fraction reference -----------------------------------------

CATEGORY = st.sampled_from(["red", "blue", "delivery", None])
FILTERS = st.one_of(
    st.none(),
    st.lists(st.sampled_from(["red", "blue", "delivery"]), min_size=1, max_size=2).map(
        lambda cs: {"in": [{"var": "item.category"}, cs]}),
    st.integers(0, 3000).map(lambda n: {">=": [{"var": "item.amount"}, n]}),
)
BASES = st.lists(st.tuples(st.sampled_from(["per_amount", "per_item"]), st.integers(1, 9),
                           FILTERS), min_size=1, max_size=6)
MULTIPLIERS = st.lists(st.tuples(st.sampled_from([Fraction(3, 2), 2, Fraction(5, 4)]),
                                 FILTERS), min_size=1, max_size=4)
ITEMS = st.lists(st.tuples(CATEGORY, st.integers(0, 3000), st.integers(0, 4)), max_size=8)


def _matches(item_filter, entry) -> bool:
    if item_filter is None:
        return True
    op, (_, constant) = next(iter(item_filter.items()))
    if op == "in":
        return entry["category"] in constant
    return entry["amount"] >= constant


@SETTINGS
@given(BASES, MULTIPLIERS, ITEMS)
def test_multiplier_shares_are_exact(bases, multipliers, raw_items):
    items = [{"sku": str(i), "category": c, "quantity": q, "unit_price": 0, "amount": a}
             for i, (c, a, q) in enumerate(raw_items)]
    facts = purchase_facts(items)
    rules = []
    for kind, points, item_filter in bases:
        effect = ({"type": "per_amount", "points": points, "per": 7} if kind == "per_amount"
                  else {"type": "per_item", "points": points})
        rules.append(earn(effect, **({"item_filter": item_filter} if item_filter else {})))
    for factor, item_filter in multipliers:
        rules.append(earn({"type": "multiplier", "factor": factor},
                          **({"item_filter": item_filter} if item_filter else {})))
    result = evaluate(rule_set(*rules), "purchase", facts, at=AT)
    by_rule = {award.rule_id: award.points for award in result.awards}
    # What each item earned: per_amount pro rata to amounts, per_item to units.
    earned = [Fraction(0)] * len(items)
    base = 0
    for index, (kind, _, item_filter) in enumerate(bases):
        points = by_rule.get(f"r{index}", 0)
        base += points
        chosen = [i for i, entry in enumerate(items) if _matches(item_filter, entry)]
        key = "amount" if kind == "per_amount" else "quantity"
        whole = sum(items[i][key] for i in chosen)
        if points and whole > 0:
            for i in chosen:
                earned[i] += Fraction(points * items[i][key], whole)
    for offset, (factor, item_filter) in enumerate(multipliers):
        rule_id = f"r{len(bases) + offset}"
        if item_filter is None:
            share = Fraction(base)
        else:
            chosen = [i for i, entry in enumerate(items) if _matches(item_filter, entry)]
            if not chosen:
                assert result.outcomes[len(bases) + offset].reason == "no_matching_items"
                continue
            share = sum((earned[i] for i in chosen), Fraction(0))
        expected = int(share * (Fraction(factor) - 1) // 1)
        assert by_rule.get(rule_id, 0) == expected, (rule_id, share)



@pytest.mark.parametrize("operator", ["!", "+"])
def test_too_deep_an_expression_is_a_rule_error(operator):
    expr: object = {"var": "purchase.total"}
    for _ in range(400):
        expr = {operator: [expr]} if operator == "!" else {operator: [expr, 1]}
    with pytest.raises(RuleError) as caught:
        compile_rule(per_amount(1, conditions={">": [expr, 0]}), rule_id="deep")
    assert any("too deeply nested" in message
               for messages in caught.value.errors.values() for message in messages)
    shallow = {"!": [{"!": [{"==": [{"var": "purchase.channel"}, "pos"]}]}]}
    assert evaluate(rule_set(per_amount(4, conditions=shallow)), "purchase", purchase_facts(),
                    at=AT).points == 608
