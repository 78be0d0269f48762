"""Redemptions: quotes and validation of requested points."""

from __future__ import annotations

from datetime import timedelta

import pytest

from rules import BurnRefused, Quote, compile_rule, compile_rules, price_redemption

from .builders import AT

MEMBER = {"member": {"tier": "gold", "status": "active"}}


def burn(priority: int = 0, *, points: int = 100, value: int = 100, limits=None, **fields):
    rule = {"name": "Burn", "kind": "burn", "trigger": "redemption", "status": "active",
            "priority": priority, "effect": {"type": "conversion", "points": points,
                                             "value": value}}
    if limits is not None:
        rule["limits"] = limits
    rule.update(fields)
    return rule


def burn_rules(*rules: dict):
    return compile_rules(compile_rule(rule, rule_id=f"b{i}") for i, rule in enumerate(rules))


STANDARD = burn_rules(burn(limits={"min_points": 500, "step": 100, "max_order_share": 0.5}))


def quote(rules=STANDARD, **kwargs) -> Quote:
    return price_redemption(rules, MEMBER, at=AT, **kwargs)


def refusal(rules=STANDARD, **kwargs) -> str:
    with pytest.raises(BurnRefused) as caught:
        price_redemption(rules, MEMBER, at=AT, **kwargs)
    assert caught.value.message
    return caught.value.code


def test_quote_takes_the_largest_allowed_points():
    assert quote(available=1234) == Quote(1200, 1200, "b0", 1)
    # half of a 20.00 order: 10.00 = 1000 points
    assert quote(available=5000, order_total=2000) == Quote(1000, 1000, "b0", 1)
    assert quote(available=5000, order_total=2150).points == 1000


def test_quote_is_zero_when_nothing_is_allowed():
    assert quote(available=499) == Quote(0, 0, "b0", 1)
    assert quote(available=5000, order_total=900) == Quote(0, 0, "b0", 1)
    assert quote(available=0) == Quote(0, 0, "b0", 1)


def test_value_is_floored():
    rules = burn_rules(burn(points=3, value=1))
    assert quote(rules, available=10) == Quote(10, 3, "b0", 1)
    assert price_redemption(rules, MEMBER, at=AT, available=10, points=5).value == 1


def test_order_share_uses_the_floored_value():
    # 3 points = 0.01; share cap 5 → any p with floor(p/3) <= 5, i.e. p <= 17
    rules = burn_rules(burn(points=3, value=1, limits={"max_order_share": 0.5}))
    assert quote(rules, available=100, order_total=10).points == 17
    assert price_redemption(rules, MEMBER, at=AT, available=100, order_total=10,
                            points=17).value == 5
    assert refusal(rules, available=100, order_total=10, points=18) == "exceeds_order_share"


def test_requested_points_are_validated_in_order():
    assert refusal(available=100, points=400) == "below_minimum"
    assert refusal(available=100, points=0) == "below_minimum"
    assert refusal(available=100, points=550) == "invalid_step"
    assert refusal(available=100, points=1100, order_total=2000) == "exceeds_order_share"
    assert refusal(available=100, points=600, order_total=2000) == "insufficient_points"
    assert quote(available=600, points=600, order_total=2000) == Quote(600, 600, "b0", 1)


def test_without_burn_rule():
    empty = compile_rules([])
    assert quote(empty, available=1000) == Quote(0, 0, None, None)
    assert refusal(empty, available=1000, points=100) == "no_burn_rule"


def test_highest_priority_matching_active_rule_prices():
    rules = burn_rules(
        burn(0, value=100),
        burn(5, value=200, conditions={"==": [{"var": "member.tier"}, "gold"]}),
        burn(9, value=300, conditions={"==": [{"var": "member.tier"}, "platinum"]}),
        burn(10, value=400, status="paused"),
        burn(11, value=500, ends_at=(AT - timedelta(days=1)).isoformat()),
    )
    assert quote(rules, available=100) == Quote(100, 200, "b1", 1)
    silver = price_redemption(rules, {"member": {"tier": "silver"}}, at=AT, available=100)
    assert silver == Quote(100, 100, "b0", 1)


def test_burn_refused_is_an_exception_with_code_and_message():
    error = BurnRefused("invalid_step", "points must be a multiple of 100")
    assert (error.code, error.message) == ("invalid_step", "points must be a multiple of 100")
    assert "invalid_step" in str(error)
