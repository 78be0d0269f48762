"""Effect arithmetic: exact integers, one rounding per award."""

from __future__ import annotations

from fractions import Fraction

import pytest

from rules.effects import (
    Attribution,
    cap_points,
    divide,
    max_redeemable,
    multiplier_extra,
    order_share_cap,
    per_amount_points,
    redemption_value,
)
from rules.model import BurnLimits, Conversion


@pytest.mark.parametrize(
    ("numerator", "denominator", "floor", "round_", "ceil"),
    [(10, 4, 2, 3, 3), (9, 4, 2, 2, 3), (8, 4, 2, 2, 2), (-10, 4, -3, -2, -2), (0, 7, 0, 0, 0),
     (1, 3, 0, 0, 1), (2, 3, 0, 1, 1)],
)
def test_divide_rounds_once(numerator, denominator, floor, round_, ceil):
    assert divide(numerator, denominator, "floor") == floor
    assert divide(numerator, denominator, "round") == round_
    assert divide(numerator, denominator, "ceil") == ceil


def test_per_amount_points_of_the_worked_basket():
    assert per_amount_points(15200, 4, 100, "floor") == 608
    assert per_amount_points(5200, 4, 100, "floor") == 208
    assert per_amount_points(15200, 10, 100, "floor") == 1520
    # 1 point per 3.00: 10.00 gives 3.33…
    assert per_amount_points(1000, 1, 300, "round") == 3
    assert per_amount_points(1000, 1, 300, "ceil") == 4
    assert per_amount_points(1050, 1, 300, "round") == 4  # 3.5 rounds half up


def test_multiplier_extra_is_floored_once():
    assert multiplier_extra(48, 1, Fraction(3)) == 96
    assert multiplier_extra(5, 1, Fraction(3, 2)) == 2
    assert multiplier_extra(7, 3, Fraction(2)) == 2
    assert multiplier_extra(100, 1, Fraction(1)) == 0


def test_cap_points():
    assert cap_points(500, None, None) == 500
    assert cap_points(500, 200, None) == 200
    assert cap_points(500, 200, 150) == 150
    assert cap_points(-3, None, None) == 0


def test_attribution_sums_exactly():
    share = Attribution()
    share.add(608, 1200, 15200)
    share.add(10, 1, 3)
    share.add(5, 0, 3)
    share.add(7, 3, 0)
    assert Fraction(share.numerator, share.denominator) == Fraction(608 * 1200, 15200) + Fraction(
        10, 3)


def test_burn_arithmetic():
    conversion = Conversion(points=100, value=1)  # 100 points are worth 0.01
    assert redemption_value(250, conversion) == 2
    limits = BurnLimits(min_points=0, step=1, max_order_share=Fraction(1, 2))
    assert order_share_cap(1001, limits) == 500
    # value(p) <= 500 ⇔ floor(p / 100) <= 500 ⇔ p <= 50099
    assert max_redeemable(10**9, conversion, limits, 1001) == 50099
    assert redemption_value(50099, conversion) == 500
    assert redemption_value(50100, conversion) == 501
    assert max_redeemable(10**9, conversion, BurnLimits(0, 1000, Fraction(1, 2)), 1001) == 50000
    assert max_redeemable(400, conversion, BurnLimits(500, 100), None) == 0
    assert max_redeemable(550, conversion, BurnLimits(500, 100), None) == 500
    assert max_redeemable(0, conversion, BurnLimits(), 1000) == 0
