"""Rules as clients send them: defaults, validation with every problem reported by path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction

import pytest

from rules import RuleError, compile_rule
from rules.model import BurnLimits, Conversion, EarnLimits, Multiplier, PerAmount, PerMember

from .builders import earn, per_amount


def problems(data: dict) -> dict[str, list[str]]:
    with pytest.raises(RuleError) as caught:
        compile_rule(data, rule_id="r1")
    return caught.value.errors


def test_defaults_of_a_minimal_rule():
    rule = compile_rule({"name": "Base", "kind": "earn", "trigger": "purchase",
                         "effect": {"type": "per_amount", "points": 4, "per": 100}},
                        rule_id="r1")
    assert (rule.id, rule.version, rule.status, rule.priority, rule.exclusive) == (
        "r1", 1, "draft", 0, False)
    assert rule.effect == PerAmount(4, 100, "floor")
    assert rule.limits is None and rule.condition_fn is None and rule.item_filter_fn is None


def test_id_and_version_in_the_body_are_ignored():
    rule = compile_rule({**per_amount(1), "id": "other", "version": 9}, rule_id="r7", version=3)
    assert (rule.id, rule.version) == ("r7", 3)


def test_a_full_earn_rule_compiles():
    rule = compile_rule(
        per_amount(
            4, 100, "round",
            conditions={">=": [{"var": "purchase.total"}, 1000]},
            item_filter={"!=": [{"var": "item.category"}, "delivery"]},
            priority=5, exclusive=True,
            limits={"per_event": 500, "per_member": {"count": 2, "points": 900, "period": "week"}},
            starts_at="2026-11-01T00:00:00+01:00", ends_at=datetime(2026, 12, 1, tzinfo=UTC),
        ),
        rule_id="r1", version=2,
    )
    assert rule.limits == EarnLimits(500, PerMember("week", 2, 900))
    assert rule.starts_at == datetime(2026, 10, 31, 23, tzinfo=UTC)
    assert rule.starts_at.tzinfo is UTC
    assert rule.condition_fn({"purchase": {"total": 1000}}) is True
    assert rule.item_filter_fn({"item": {"category": "delivery"}}) is False


@pytest.mark.parametrize(
    ("factor", "expected"),
    [(3, Fraction(3)), (1.5, Fraction(3, 2)), (1.1, Fraction(11, 10)),
     (Decimal("1.25"), Fraction(5, 4)), (1, Fraction(1))],
)
def test_multiplier_factor_is_taken_exactly(factor, expected):
    rule = compile_rule(earn({"type": "multiplier", "factor": factor}), rule_id="m")
    assert rule.effect == Multiplier(expected)


def test_burn_rule_with_limits():
    rule = compile_rule(
        {"name": "Burn", "kind": "burn", "trigger": "redemption", "status": "active",
         "effect": {"type": "conversion", "points": 100, "value": 100},
         "limits": {"min_points": 500, "step": 100, "max_order_share": 0.5}},
        rule_id="b",
    )
    assert rule.effect == Conversion(100, 100)
    assert rule.limits == BurnLimits(500, 100, Fraction(1, 2))


def test_burn_limits_default():
    rule = compile_rule({"name": "Burn", "kind": "burn", "trigger": "redemption",
                         "effect": {"type": "conversion", "points": 1, "value": 1}}, rule_id="b")
    assert rule.limits == BurnLimits(0, 1, Fraction(1))


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"effect": {"type": "per_amount", "points": 4, "per": 0}}, "effect.per"),
        ({"effect": {"type": "per_amount", "points": 4, "per": -5}}, "effect.per"),
        ({"effect": {"type": "per_amount", "points": -1, "per": 100}}, "effect.points"),
        ({"effect": {"type": "per_amount", "points": 1.5, "per": 100}}, "effect.points"),
        ({"effect": {"type": "per_amount", "points": True, "per": 100}}, "effect.points"),
        ({"effect": {"type": "per_amount", "points": 1, "per": 100, "rounding": "up"}},
         "effect.rounding"),
        ({"effect": {"type": "per_amount", "points": 1}}, "effect.per"),
        ({"effect": {"type": "per_amount", "points": 1, "per": 1, "extra": 1}}, "effect.extra"),
        ({"effect": {"type": "fixed", "points": "10"}}, "effect.points"),
        ({"effect": {"type": "multiplier", "factor": 0.5}}, "effect.factor"),
        ({"effect": {"type": "multiplier", "factor": True}}, "effect.factor"),
        ({"effect": {"type": "multiplier", "factor": float("nan")}}, "effect.factor"),
        ({"effect": {"type": "cashback", "points": 1}}, "effect.type"),
        ({"effect": {"type": "conversion", "points": 1, "value": 1}}, "effect.type"),
        ({"effect": "fixed"}, "effect"),
        ({"kind": "gift"}, "kind"),
        ({"trigger": "birthday"}, "trigger"),
        ({"trigger": "event:"}, "trigger"),
        ({"trigger": "event:app review"}, "trigger"),
        ({"trigger": "redemption"}, "trigger"),
        ({"status": "live"}, "status"),
        ({"priority": "1"}, "priority"),
        ({"priority": True}, "priority"),
        ({"exclusive": 1}, "exclusive"),
        ({"name": ""}, "name"),
        ({"name": 5}, "name"),
        ({"colour": "red"}, "colour"),
        ({"starts_at": "2026-11-01T00:00:00"}, "starts_at"),
        ({"starts_at": datetime(2026, 11, 1)}, "starts_at"),
        ({"ends_at": "yesterday"}, "ends_at"),
        ({"starts_at": "2026-12-01T00:00:00Z", "ends_at": "2026-12-01T00:00:00Z"}, "ends_at"),
        ({"limits": {"per_event": 0}}, "limits.per_event"),
        ({"limits": {"per_member": {"count": 1, "period": "decade"}}}, "limits.per_member.period"),
        ({"limits": {"per_member": {"count": 1}}}, "limits.per_member.period"),
        ({"limits": {"per_member": {"period": "day"}}}, "limits.per_member"),
        ({"limits": {"per_member": {"count": True, "period": "day"}}}, "limits.per_member.count"),
        ({"limits": {"per_day": 1}}, "limits.per_day"),
        ({"conditions": {"==": [{"var": "purchase.colour"}, 1]}}, "conditions.==[0]"),
        ({"item_filter": {"==": [{"var": "item.colour"}, 1]}}, "item_filter.==[0]"),
    ],
)
def test_validation_reports_the_path(change, path):
    found = problems({**per_amount(4), **change})
    assert path in found, found


@pytest.mark.parametrize("missing", ["name", "kind", "trigger", "effect"])
def test_required_fields(missing):
    data = per_amount(4)
    del data[missing]
    assert problems(data)[missing] == ["is required"]


def test_purchase_effects_need_a_purchase_trigger():
    found = problems(per_amount(4, trigger="event:app_review",
                                item_filter={"==": [{"var": "item.sku"}, "1"]}))
    assert "effect.type" in found and "item_filter" in found
    found = problems(earn({"type": "per_item", "points": 1}, trigger="enrollment"))
    assert "effect.type" in found
    rule = compile_rule(per_amount(4, trigger="referral_completed"), rule_id="r")
    assert rule.trigger == "referral_completed"
    rule = compile_rule(earn({"type": "fixed", "points": 50}, trigger="event:app.review-2_x"),
                        rule_id="e")
    assert rule.trigger == "event:app.review-2_x"


def test_burn_rules_are_checked():
    base = {"name": "Burn", "kind": "burn", "trigger": "redemption",
            "effect": {"type": "conversion", "points": 100, "value": 0}}
    found = problems({**base, "limits": {"min_points": -1, "step": 0, "max_order_share": 1.5}})
    assert set(found) >= {"effect.value", "limits.min_points", "limits.step",
                          "limits.max_order_share"}
    assert "trigger" in problems({**base, "trigger": "purchase"})
    assert "effect.type" in problems({**base, "effect": {"type": "fixed", "points": 1}})
    assert "limits.max_order_share" in problems({**base, "limits": {"max_order_share": 0}})


def test_every_problem_is_listed_and_readable():
    with pytest.raises(RuleError) as caught:
        compile_rule(
            {"name": "", "kind": "earn", "trigger": "purchase", "foo": 1,
             "effect": {"type": "per_amount", "points": -1, "per": 0},
             "conditions": {"and": [True, {">": [{"var": "purchase.totl"}, 1]}]},
             "limits": {"per_member": {"count": 1, "period": "decade"}}},
            rule_id="x",
        )
    error = caught.value
    assert set(error.errors) == {"foo", "name", "effect.points", "effect.per",
                                 "conditions.and[1].>[0]", "limits.per_member.period"}
    assert "effect.per: must be greater than 0" in str(error)
    assert isinstance(error, ValueError)


def test_a_rule_must_be_an_object():
    with pytest.raises(RuleError):
        compile_rule(["not", "a", "rule"], rule_id="x")  # type: ignore[arg-type]


def test_rule_keeps_its_own_copy_of_the_logic():
    conditions = {"==": [{"var": "member.tier"}, "gold"]}
    rule = compile_rule(per_amount(1, conditions=conditions), rule_id="r")
    conditions["=="][1] = "silver"
    assert rule.conditions == {"==": [{"var": "member.tier"}, "gold"]}


def test_rules_are_immutable_and_compare_by_id_and_version():
    one = compile_rule(per_amount(1), rule_id="r", version=1)
    again = compile_rule(per_amount(2), rule_id="r", version=1)
    assert one == again and hash(one) == hash(again)
    assert one != compile_rule(per_amount(1), rule_id="r", version=2)
    with pytest.raises(AttributeError):
        one.priority = 3  # type: ignore[misc]


def test_offsets_are_normalised_to_utc():
    rule = compile_rule(per_amount(1, ends_at=datetime(2026, 1, 1, 12, tzinfo=timezone(
        timedelta(hours=2)))), rule_id="r")
    assert rule.ends_at == datetime(2026, 1, 1, 10, tzinfo=UTC)
