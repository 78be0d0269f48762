"""Exact integer arithmetic of effects: earn rounding, multiplier extras, burn pricing.

Every fraction is carried as an integer numerator and denominator and rounded once, so no float
ever reaches a point or money amount.
"""

from __future__ import annotations

from fractions import Fraction

from .model import BurnLimits, Conversion


def divide(numerator: int, denominator: int, rounding: str = "floor") -> int:
    """Return numerator ÷ denominator (denominator > 0) rounded by floor, ceil or round half-up."""
    if rounding == "floor":
        return numerator // denominator
    if rounding == "ceil":
        return -(-numerator // denominator)
    return (2 * numerator + denominator) // (2 * denominator)


def per_amount_points(basis: int, points: int, per: int, rounding: str) -> int:
    """Return rounding(basis × points ÷ per)."""
    return divide(basis * points, per, rounding)


def multiplier_extra(base_numerator: int, base_denominator: int, factor: Fraction) -> int:
    """Return floor(base × (factor − 1)), the points a multiplier adds to a (fractional) base."""
    return (base_numerator * (factor.numerator - factor.denominator)) // (
        base_denominator * factor.denominator
    )


def cap_points(points: int, per_event: int | None, remaining: int | None) -> int:
    """Return `points` clipped to [0, per_event] and to what the member may still earn."""
    if per_event is not None and points > per_event:
        points = per_event
    if remaining is not None and points > remaining:
        points = remaining
    return points if points > 0 else 0


class Attribution:
    """Sum of points × part ÷ whole terms, kept as one exact fraction."""

    __slots__ = ("numerator", "denominator")

    def __init__(self) -> None:
        self.numerator = 0
        self.denominator = 1

    def add(self, points: int, part: int, whole: int) -> None:
        """Add the share part ÷ whole of `points`; nothing when whole is not positive."""
        if points and part and whole > 0:
            if part == whole:
                self.numerator += points * self.denominator
            else:
                self.numerator = self.numerator * whole + points * part * self.denominator
                self.denominator *= whole


def redemption_value(points: int, conversion: Conversion) -> int:
    """Return the minor units `points` are worth: floor(points × value ÷ points-per-value)."""
    return points * conversion.value // conversion.points


def order_share_cap(order_total: int, limits: BurnLimits) -> int:
    """Return the most an order of `order_total` may be paid with points, in minor units."""
    share = limits.max_order_share
    return max(order_total, 0) * share.numerator // share.denominator


def max_redeemable(
    available: int, conversion: Conversion, limits: BurnLimits, order_total: int | None
) -> int:
    """Return the largest allowed points ≤ available (a step multiple ≥ min_points), else 0."""
    most = available
    if order_total is not None:
        # value(p) ≤ cap ⇔ floor(p·v/q) < cap + 1 ⇔ p·v < (cap + 1)·q ⇔ p ≤ ((cap + 1)·q − 1) // v
        cap = order_share_cap(order_total, limits)
        most = min(most, ((cap + 1) * conversion.points - 1) // conversion.value)
    most -= most % limits.step
    if most <= 0 or most < limits.min_points:
        return 0
    return most
