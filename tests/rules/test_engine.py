"""Evaluation: worked examples, priority and exclusivity, windows, limits, multipliers, tiers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest

from rules import (
    TRIGGERS,
    Award,
    RuleError,
    RuleOutcome,
    Usage,
    compile_rule,
    compile_rules,
    evaluate,
    period_start,
)

from .builders import AT, BASKET, earn, item, per_amount, purchase_facts, rule_set

FACTS = purchase_facts()
NOT_000 = {"!=": [{"var": "item.sku"}, "000"]}
SKU_123 = {"==": [{"var": "item.sku"}, "123"]}


def points_of(*rules: dict, facts: dict = FACTS, **kwargs) -> int:
    return evaluate(rule_set(*rules), "purchase", facts, at=AT, **kwargs).points


# -- worked examples (API.md "Rules") ---------------------------------------------------------


def test_four_points_per_euro():
    assert points_of(per_amount(4)) == 608


def test_item_filter_excluding_sku_000():
    assert points_of(per_amount(4, item_filter=NOT_000)) == 208


def test_two_rules_add_up():
    assert points_of(per_amount(10), per_amount(4)) == 2128


def test_multiplier_on_one_item():
    multiplier = earn({"type": "multiplier", "factor": 3}, item_filter=SKU_123)
    result = evaluate(rule_set(per_amount(4), multiplier), "purchase", FACTS, at=AT)
    assert result.points == 704
    assert [award.points for award in result.awards] == [608, 96]


# -- results -------------------------------------------------------------------------------------


def test_results_name_rule_and_version():
    rules = compile_rules([compile_rule({**per_amount(4), "name": "Base"}, rule_id="base",
                                        version=3)])
    result = evaluate(rules, "purchase", FACTS, at=AT)
    assert result.awards == (Award("base", 3, "Base", 608, "rule"),)
    assert result.outcomes == (RuleOutcome("base", 3, "Base", True, 608, None),)
    assert result.consumed == {}
    assert isinstance(result.points, int)


def test_deterministic_order_priority_desc_then_id():
    rules = compile_rules([
        compile_rule(earn({"type": "fixed", "points": 1}, priority=1), rule_id="b"),
        compile_rule(earn({"type": "fixed", "points": 2}, priority=5), rule_id="z"),
        compile_rule(earn({"type": "fixed", "points": 3}, priority=1), rule_id="a"),
    ])
    assert [rule.id for rule in rules.for_trigger("purchase")] == ["z", "a", "b"]
    result = evaluate(rules, "purchase", FACTS, at=AT)
    assert [award.rule_id for award in result.awards] == ["z", "a", "b"]
    assert evaluate(rules, "purchase", FACTS, at=AT) == result


def test_rules_of_other_triggers_do_not_run():
    rules = rule_set(per_amount(4), earn({"type": "fixed", "points": 50},
                                         trigger="event:app_review"))
    assert evaluate(rules, "purchase", FACTS, at=AT).points == 608
    event = {"event": {"type": "app_review", "attributes": {"stars": 5}}}
    assert evaluate(rules, "event:app_review", event, at=AT).points == 50
    assert evaluate(rules, "enrollment", {}, at=AT).points == 0


def test_event_conditions_see_attributes():
    rules = rule_set(earn({"type": "fixed", "points": 50}, trigger="event:app_review",
                          conditions={">=": [{"var": "event.attributes.stars"}, 4]}))
    good = {"event": {"type": "app_review", "attributes": {"stars": 5}}}
    bad = {"event": {"type": "app_review", "attributes": {}}}
    assert evaluate(rules, "event:app_review", good, at=AT).points == 50
    assert evaluate(rules, "event:app_review", bad, at=AT).outcomes[0].reason == "condition_false"


def test_referral_role():
    rules = rule_set(earn({"type": "fixed", "points": 500}, trigger="referral_completed",
                          conditions={"==": [{"var": "referral.role"}, "referrer"]}))
    facts = {**FACTS, "referral": {"role": "referrer"}}
    assert evaluate(rules, "referral_completed", facts, at=AT).points == 500


def test_now_comes_from_at_when_absent():
    rule = earn({"type": "fixed", "points": 5},
                conditions={"<": ["2026-11-01T00:00:00Z", {"var": "now"}, "2026-12-01T00:00:00Z"]})
    assert points_of(rule) == 5
    assert evaluate(rule_set(rule), "purchase", FACTS,
                    at=datetime(2027, 1, 1, tzinfo=UTC)).points == 0
    assert evaluate(rule_set(rule), "purchase", {**FACTS, "now": "2026-11-05T00:00:00Z"},
                    at=datetime(2027, 1, 1, tzinfo=UTC)).points == 5


def test_facts_are_not_modified():
    facts = purchase_facts()
    before = repr(facts)
    points_of(per_amount(4, item_filter=NOT_000), facts=facts)
    assert repr(facts) == before


def test_naive_at_is_refused():
    with pytest.raises(ValueError):
        evaluate(rule_set(per_amount(1)), "purchase", FACTS, at=datetime(2026, 1, 1))


# -- effects ------------------------------------------------------------------------------------


def test_per_item_counts_units():
    facts = purchase_facts([item("1", "red", 3000, quantity=3), item("2", "blue", 500)])
    assert points_of(earn({"type": "per_item", "points": 10}), facts=facts) == 40
    assert points_of(earn({"type": "per_item", "points": 10},
                          item_filter={"==": [{"var": "item.category"}, "red"]}),
                     facts=facts) == 30


def test_fixed_with_item_filter_needs_a_matching_item():
    rule = earn({"type": "fixed", "points": 100},
                item_filter={"==": [{"var": "item.category"}, "green"]})
    result = evaluate(rule_set(rule), "purchase", FACTS, at=AT)
    assert result.points == 0 and result.outcomes[0].reason == "no_matching_items"


@pytest.mark.parametrize(("rounding", "expected"), [("floor", 3), ("round", 4), ("ceil", 4)])
def test_rounding(rounding, expected):
    facts = purchase_facts([item("1", None, 1050)])
    assert points_of(per_amount(1, 300, rounding), facts=facts) == expected


def test_fixed_bonus_is_never_multiplied():
    multiplier = earn({"type": "multiplier", "factor": 2})
    assert points_of(earn({"type": "fixed", "points": 100}), multiplier) == 100
    assert points_of(earn({"type": "fixed", "points": 100}), per_amount(4), multiplier) == 1316


def test_multipliers_add_their_extras():
    double = earn({"type": "multiplier", "factor": 2})
    triple = earn({"type": "multiplier", "factor": 3})
    # 608 × (1 + 1 + 2)
    assert points_of(per_amount(4), double, triple) == 608 * 4


def test_multiplier_applies_whatever_its_priority():
    assert points_of(per_amount(4, priority=0), earn({"type": "multiplier", "factor": 2},
                                                     priority=9)) == 1216
    assert points_of(per_amount(4, priority=9), earn({"type": "multiplier", "factor": 2},
                                                     priority=0)) == 1216


def test_multiplier_of_filtered_base_counts_only_common_items():
    # Base earned on red and delivery only (5200 → 208 points); the multiplier scales red.
    base = per_amount(4, item_filter=NOT_000)
    multiplier = earn({"type": "multiplier", "factor": 2}, item_filter=SKU_123)
    result = evaluate(rule_set(base, multiplier), "purchase", FACTS, at=AT)
    # red's share of 208 is 208 × 1200 / 5200 = 48
    assert [award.points for award in result.awards] == [208, 48]


def test_multiplier_scales_per_item_points_by_units():
    facts = purchase_facts([item("1", "red", 3000, quantity=3), item("2", "blue", 500)])
    base = earn({"type": "per_item", "points": 10})
    multiplier = earn({"type": "multiplier", "factor": Fraction(3, 2)},
                      item_filter={"==": [{"var": "item.category"}, "blue"]})
    assert evaluate(rule_set(base, multiplier), "purchase", facts, at=AT).awards[1].points == 5


def test_multiplier_extra_is_floored_once_per_rule():
    facts = purchase_facts([item("1", "red", 100), item("2", "red", 100), item("3", "x", 100)])
    base = per_amount(1, 100)  # 3 points, one per item
    multiplier = earn({"type": "multiplier", "factor": 1.5},
                      item_filter={"==": [{"var": "item.category"}, "red"]})
    # 2 points attributed to red × 0.5 = 1
    assert points_of(base, multiplier, facts=facts) == 4


def test_multiplier_with_nothing_to_scale_awards_nothing():
    result = evaluate(rule_set(earn({"type": "multiplier", "factor": 2})), "purchase", FACTS,
                      at=AT)
    assert result.points == 0 and result.awards == ()
    assert result.outcomes[0].matched and result.outcomes[0].reason is None


def test_tier_multiplier_is_one_more_multiplier_awarded_last():
    rules = rule_set(per_amount(4), earn({"type": "fixed", "points": 100}))
    result = evaluate(rules, "purchase", FACTS, at=AT, tier_multiplier=("gold", Fraction(3, 2)))
    assert result.awards[-1] == Award(None, None, "Tier gold multiplier", 304, "tier")
    assert result.points == 608 + 100 + 304
    for factor in (Decimal("1.5"), 2, Fraction(1)):
        evaluate(rules, "purchase", FACTS, at=AT, tier_multiplier=("gold", factor))
    one = evaluate(rules, "purchase", FACTS, at=AT, tier_multiplier=("silver", 1))
    assert all(award.kind == "rule" for award in one.awards)


# -- priority, exclusivity, status, window ---------------------------------------------------


def test_exclusive_rule_stops_lower_priorities_only():
    top = earn({"type": "fixed", "points": 1}, priority=10)
    promo = per_amount(10, priority=5, exclusive=True)
    same = earn({"type": "fixed", "points": 7}, priority=5)
    low = per_amount(4, priority=0)
    result = evaluate(rule_set(top, promo, same, low), "purchase", FACTS, at=AT)
    assert result.points == 1 + 1520 + 7
    assert [outcome.reason for outcome in result.outcomes] == [None, None, None, "excluded"]


def test_exclusive_rule_that_does_not_match_stops_nothing():
    promo = per_amount(10, priority=5, exclusive=True,
                       conditions={"==": [{"var": "purchase.channel"}, "web"]})
    assert points_of(promo, per_amount(4)) == 608


def test_excluded_rules_do_not_feed_multipliers():
    promo = earn({"type": "fixed", "points": 5}, priority=5, exclusive=True)
    double = earn({"type": "multiplier", "factor": 2}, priority=9)
    assert points_of(promo, per_amount(4), double) == 5


@pytest.mark.parametrize("status", ["draft", "paused", "archived"])
def test_only_active_rules_fire(status):
    result = evaluate(rule_set(per_amount(4, status=status)), "purchase", FACTS, at=AT)
    assert result.points == 0 and result.outcomes[0].reason == "inactive"


def test_simulator_evaluates_drafts_but_never_archived():
    rules = rule_set(per_amount(4, status="draft"), per_amount(1, status="archived"),
                     per_amount(10, status="paused"))
    result = evaluate(rules, "purchase", FACTS, at=AT, only_active=False)
    assert result.points == 608 + 1520
    assert [outcome.reason for outcome in result.outcomes] == [None, "inactive", None]


def test_window_includes_start_excludes_end():
    rule = per_amount(4, starts_at="2026-11-23T10:00:00Z", ends_at="2026-11-23T11:00:00Z")
    rules = rule_set(rule)
    assert evaluate(rules, "purchase", FACTS, at=AT).points == 608
    for moment in (AT - timedelta(microseconds=1), AT + timedelta(hours=1)):
        result = evaluate(rules, "purchase", FACTS, at=moment)
        assert result.outcomes[0].reason == "outside_window"


def test_reasons_explain_each_rule():
    rules = rule_set(
        per_amount(1, status="draft"),
        per_amount(1, conditions={"==": [{"var": "purchase.channel"}, "web"]}),
        per_amount(1, item_filter={"==": [{"var": "item.category"}, "green"]}),
        per_amount(1, ends_at="2020-01-01T00:00:00Z"),
        per_amount(1, limits={"per_member": {"count": 1, "period": "lifetime"}}),
    )
    result = evaluate(rules, "purchase", FACTS, at=AT, usage={"r4": Usage(1, 10)})
    assert [o.reason for o in result.outcomes] == [
        "inactive", "condition_false", "no_matching_items", "outside_window", "limit_reached"]
    assert not any(o.matched for o in result.outcomes)


# -- limits -------------------------------------------------------------------------------------


def test_per_event_caps_points():
    assert points_of(per_amount(4, limits={"per_event": 500})) == 500


def test_per_member_count_limit():
    rule = per_amount(4, limits={"per_member": {"count": 2, "period": "month"}})
    rules = rule_set(rule)
    first = evaluate(rules, "purchase", FACTS, at=AT)
    assert first.consumed == {"r0": Usage(1, 608)}
    second = evaluate(rules, "purchase", FACTS, at=AT, usage={"r0": Usage(1, 608)})
    assert second.points == 608
    third = evaluate(rules, "purchase", FACTS, at=AT, usage={"r0": Usage(2, 1216)})
    assert third.points == 0 and third.outcomes[0].reason == "limit_reached"
    assert third.consumed == {}


def test_per_member_points_limit_truncates():
    rule = per_amount(4, limits={"per_member": {"points": 1000, "period": "lifetime"}})
    rules = rule_set(rule)
    result = evaluate(rules, "purchase", FACTS, at=AT, usage={"r0": Usage(3, 700)})
    assert result.points == 300 and result.consumed == {"r0": Usage(1, 300)}
    exhausted = evaluate(rules, "purchase", FACTS, at=AT, usage={"r0": Usage(3, 1000)})
    assert exhausted.outcomes[0].reason == "limit_reached"


def test_fixed_bonus_limited_by_points():
    rule = earn({"type": "fixed", "points": 100},
                limits={"per_member": {"points": 150, "period": "year"}})
    rules = rule_set(rule)
    assert evaluate(rules, "purchase", FACTS, at=AT).consumed == {"r0": Usage(1, 100)}
    assert evaluate(rules, "purchase", FACTS, at=AT, usage={"r0": Usage(1, 100)}).points == 50


def test_limits_cap_a_multiplier_extra():
    double = earn({"type": "multiplier", "factor": 2}, limits={
        "per_event": 100, "per_member": {"count": 5, "points": 1000, "period": "day"}})
    result = evaluate(rule_set(per_amount(4), double), "purchase", FACTS, at=AT)
    assert result.points == 708 and result.consumed == {"r1": Usage(1, 100)}
    capped = evaluate(rule_set(per_amount(4), double), "purchase", FACTS, at=AT,
                      usage={"r1": Usage(1, 950)})
    assert capped.points == 658


def test_limited_rules_lists_active_rules_with_member_limits():
    rules = rule_set(
        per_amount(1, limits={"per_member": {"count": 1, "period": "week"}}),
        per_amount(1, limits={"per_event": 5}),
        per_amount(1, status="draft", limits={"per_member": {"count": 1, "period": "day"}}),
        earn({"type": "fixed", "points": 1}, trigger="enrollment",
             limits={"per_member": {"points": 1, "period": "lifetime"}}),
    )
    assert rules.limited_rules("purchase") == (("r0", "week"),)
    assert rules.limited_rules("enrollment") == (("r3", "lifetime"),)
    assert rules.limited_rules("event:x") == ()


@pytest.mark.parametrize(
    ("period", "expected"),
    [
        ("day", datetime(2026, 11, 25, tzinfo=UTC)),
        ("week", datetime(2026, 11, 23, tzinfo=UTC)),  # a Monday
        ("month", datetime(2026, 11, 1, tzinfo=UTC)),
        ("year", datetime(2026, 1, 1, tzinfo=UTC)),
        ("lifetime", None),
    ],
)
def test_period_start(period, expected):
    assert period_start(period, datetime(2026, 11, 25, 23, 30, tzinfo=UTC)) == expected


def test_period_start_is_utc():
    from datetime import timezone

    at = datetime(2026, 11, 23, 0, 30, tzinfo=timezone(timedelta(hours=2)))  # Sunday 22:30 UTC
    assert period_start("week", at) == datetime(2026, 11, 16, tzinfo=UTC)
    with pytest.raises(ValueError):
        period_start("decade", at)


# -- rule sets ------------------------------------------------------------------------------


def test_rule_set_refuses_duplicate_ids():
    rule = compile_rule(per_amount(1), rule_id="same")
    with pytest.raises(RuleError):
        compile_rules([rule, compile_rule(per_amount(2), rule_id="same", version=2)])


def test_rule_set_exposes_rules():
    rules = rule_set(per_amount(1), per_amount(2, priority=3))
    assert [rule.id for rule in rules.rules] == ["r1", "r0"]
    assert rules.for_trigger("nothing") == ()
    assert frozenset({"purchase", "enrollment", "referral_completed", "redemption"}) == TRIGGERS


def test_shared_filters_and_conditions_give_the_same_results():
    condition = {"==": [{"var": "purchase.channel"}, "pos"]}
    one = per_amount(4, conditions=condition, item_filter=NOT_000)
    two = earn({"type": "per_item", "points": 3}, conditions=condition, item_filter=NOT_000)
    result = evaluate(rule_set(one, two), "purchase", FACTS, at=AT)
    assert [award.points for award in result.awards] == [208, 6]


def test_items_without_amount_use_quantity_times_unit_price():
    facts = purchase_facts([{"sku": "1", "quantity": 2, "unit_price": 500}], total=1000)
    assert points_of(per_amount(1, item_filter={"==": [{"var": "item.sku"}, "1"]}),
                     facts=facts) == 10


def test_general_item_filters_work_per_item():
    rule = per_amount(4, item_filter={"and": [{">": [{"var": "item.amount"}, 1000]},
                                              {"!=": [{"var": "item.category"}, "blue"]}]})
    assert points_of(rule) == (1200 + 4000) * 4 // 100
    by_purchase = per_amount(4, item_filter={"==": [{"var": "purchase.channel"}, "pos"]})
    assert points_of(by_purchase) == 608
    assert BASKET[0]["sku"] == "123"
