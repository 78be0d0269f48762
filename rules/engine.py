"""Evaluate compiled rules against facts: earn awards for a trigger, prices for redemptions."""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from math import lcm
from typing import Any

from .effects import (
    cap_points,
    max_redeemable,
    multiplier_extra,
    order_share_cap,
    redemption_value,
)
from .jsonlogic import less_equal, less_than, loose_equals, strict_equals
from .model import (
    PERIODS,
    Award,
    BurnLimits,
    BurnRefused,
    Conversion,
    EarnLimits,
    Evaluation,
    Fixed,
    Multiplier,
    PerAmount,
    PerItem,
    Quote,
    Rule,
    RuleError,
    RuleOutcome,
    Usage,
)
from .parse import exact_number

_FIXED, _PER_AMOUNT, _PER_ITEM, _MULTIPLIER, _CONVERSION = range(5)
_REASONS = (
    "inactive",
    "outside_window",
    "condition_false",
    "no_matching_items",
    "limit_reached",
    "excluded",
)
_NO_USAGE: Mapping[str, Usage] = {}


class _Plan:
    """What evaluating one rule needs, computed once when the rule set is built."""

    __slots__ = (
        "rule", "rule_id", "active", "archived", "priority", "exclusive", "starts_at", "ends_at",
        "condition", "item_filter", "filter_key", "code", "points", "per", "rounding", "factor",
        "per_event", "limit_count", "limit_points", "limited", "outcomes", "matched_zero",
        "version", "name", "column", "fixed_award", "fixed_outcome", "fixed_usage",
        "amount_mul", "amount_add", "amount_div", "in_basket", "outcome_fields", "award_fields",
        "shared_condition",
    )

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.rule_id = rule.id
        self.version = rule.version
        self.name = rule.name
        self.column = rule.item_filter_column
        self.active = rule.status == "active"
        self.archived = rule.status == "archived"
        self.priority = rule.priority
        self.exclusive = rule.exclusive
        self.starts_at = rule.starts_at
        self.ends_at = rule.ends_at
        self.condition = rule.condition_fn
        self.item_filter = rule.item_filter_fn
        self.filter_key = rule.item_filter_key
        effect = rule.effect
        self.points = getattr(effect, "points", 0)
        self.per = self.rounding = self.factor = None
        if isinstance(effect, Fixed):
            self.code = _FIXED
        elif isinstance(effect, PerAmount):
            self.code = _PER_AMOUNT
            self.per, self.rounding = effect.per, effect.rounding
        elif isinstance(effect, PerItem):
            self.code = _PER_ITEM
        elif isinstance(effect, Multiplier):
            self.code = _MULTIPLIER
            self.factor = effect.factor
        else:
            self.code = _CONVERSION
        # per_amount as one integer expression: (basis × mul + add) // div rounds as asked
        # (floor: n // per; ceil: (n + per − 1) // per; half-up: (2n + per) // 2per).
        self.amount_mul = self.amount_add = 0
        self.amount_div = 1
        if self.code == _PER_AMOUNT:
            scale = 2 if self.rounding == "round" else 1
            self.amount_mul = self.points * scale
            self.amount_div = self.per * scale
            self.amount_add = {"floor": 0, "ceil": self.per - 1, "round": self.per}[self.rounding]
        self.in_basket = self.code in (_PER_AMOUNT, _PER_ITEM)
        limits = rule.limits
        self.per_event = self.limit_count = self.limit_points = None
        if isinstance(limits, EarnLimits):
            self.per_event = limits.per_event
            if limits.per_member is not None:
                self.limit_count = limits.per_member.count
                self.limit_points = limits.per_member.points
        self.limited = self.limit_count is not None or self.limit_points is not None
        # Outcomes that do not depend on the facts are built once and shared: they are frozen.
        self.outcomes = {
            reason: RuleOutcome(rule.id, rule.version, rule.name, False, 0, reason)
            for reason in _REASONS
        }
        self.matched_zero = RuleOutcome(rule.id, rule.version, rule.name, True, 0, None)
        self.outcome_fields = dict(self.matched_zero.__dict__)
        self.award_fields = {"rule_id": rule.id, "rule_version": rule.version,
                             "rule_name": rule.name, "points": 0, "kind": "rule"}
        # A fixed bonus is the same award every time it is not capped.
        self.fixed_award = self.fixed_outcome = self.fixed_usage = None
        if self.code == _FIXED and self.points and (
            self.per_event is None or self.per_event >= self.points
        ):
            self.fixed_award = Award(rule.id, rule.version, rule.name, self.points)
            self.fixed_outcome = RuleOutcome(rule.id, rule.version, rule.name, True, self.points)
            self.fixed_usage = Usage(1, self.points)
        # Set by the RuleSet when another rule of the trigger has the same conditions.
        self.shared_condition: str | None = None

    def make_row(self) -> tuple[Any, ...]:
        """Return what the evaluation loop reads for every rule, unpacked in one step."""
        gated = not self.active or self.starts_at is not None or self.ends_at is not None
        return (
            self, gated, self.priority, self.exclusive, self.condition, self.shared_condition,
            self.item_filter, self.limited, self.code, self.per_event,
            self.outcomes["condition_false"],
        )


def _order(rule: Rule) -> tuple[int, str]:
    return (-rule.priority, rule.id)


class RuleSet:
    """Compiled rules indexed by trigger, each trigger's rules by priority desc then id asc."""

    __slots__ = ("_rules", "_by_trigger", "_plans", "_rows", "_limited", "_filtered_multipliers")

    def __init__(self, rules: Iterable[Rule]) -> None:
        ordered = tuple(sorted(rules, key=_order))
        by_trigger: dict[str, list[Rule]] = {}
        for rule in ordered:
            by_trigger.setdefault(rule.trigger, []).append(rule)
        self._rules = ordered
        self._by_trigger = {trigger: tuple(rules) for trigger, rules in by_trigger.items()}
        self._plans = {
            trigger: tuple(_Plan(rule) for rule in rules)
            for trigger, rules in self._by_trigger.items()
        }
        for plans in self._plans.values():
            counts = Counter(plan.rule.condition_key for plan in plans)
            for plan in plans:
                if plan.rule.condition_key is not None and counts[plan.rule.condition_key] > 1:
                    plan.shared_condition = plan.rule.condition_key
        self._rows = {
            trigger: tuple(plan.make_row() for plan in plans)
            for trigger, plans in self._plans.items()
        }
        self._filtered_multipliers = frozenset(
            rule.trigger
            for rule in ordered
            if isinstance(rule.effect, Multiplier) and rule.item_filter is not None
        )
        self._limited = {
            trigger: tuple(
                (rule.id, rule.limits.per_member.period)
                for rule in rules
                if rule.status == "active"
                and isinstance(rule.limits, EarnLimits)
                and rule.limits.per_member is not None
            )
            for trigger, rules in self._by_trigger.items()
        }

    @property
    def rules(self) -> tuple[Rule, ...]:
        """Return every rule, in evaluation order."""
        return self._rules

    def for_trigger(self, trigger: str) -> tuple[Rule, ...]:
        """Return the rules of `trigger` in evaluation order."""
        return self._by_trigger.get(trigger, ())

    def limited_rules(self, trigger: str) -> tuple[tuple[str, str], ...]:
        """Return (rule_id, period) of the active rules of `trigger` with a per_member limit."""
        return self._limited.get(trigger, ())

    def __len__(self) -> int:
        return len(self._rules)

    def __repr__(self) -> str:
        return f"RuleSet({len(self._rules)} rules)"


def compile_rules(rules: Iterable[Rule]) -> RuleSet:
    """Index compiled rules for evaluation.

    Raises RuleError when two rules share an id.
    """
    rules = tuple(rules)
    seen: set[str] = set()
    errors: dict[str, list[str]] = {}
    for index, rule in enumerate(rules):
        if not isinstance(rule, Rule):
            errors.setdefault(f"[{index}]", []).append("must be a compiled Rule")
        elif rule.id in seen:
            errors.setdefault(f"[{index}]", []).append(f"duplicate rule id {rule.id!r}")
        else:
            seen.add(rule.id)
    if errors:
        raise RuleError(errors)
    return RuleSet(rules)


def period_start(period: str, at: datetime) -> datetime | None:
    """Return the UTC start of the day, ISO week, month or year containing `at`; None for lifetime.

    Raises ValueError for an unknown period or a naive `at`.
    """
    if period not in PERIODS:
        raise ValueError(f"unknown period {period!r}")
    if at.tzinfo is None:
        raise ValueError("at must be timezone-aware")
    if period == "lifetime":
        return None
    day = at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    return day.replace(month=1, day=1)


def _format_now(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _context(facts: Mapping, at: datetime) -> dict[str, Any]:
    if not isinstance(at, datetime):
        raise TypeError("at must be a timezone-aware datetime")
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("at must be timezone-aware")
    context = dict(facts) if facts else {}
    if context.get("now") is None:
        context["now"] = _format_now(at)
    return context


def _int(value: Any) -> int:
    return value if value.__class__ is int else 0


class _Basket:
    """The purchase's items as effects see them; each item filter runs once per item."""

    __slots__ = ("context", "total", "items", "amounts", "units", "all", "_masks", "_sums",
                 "_item_context", "_columns", "_indexes")

    def __init__(self, context: dict[str, Any]) -> None:
        self.context = context
        purchase = context.get("purchase")
        if not isinstance(purchase, Mapping):
            purchase = {}
        self.total = _int(purchase.get("total"))
        items = purchase.get("items")
        self.items = items if isinstance(items, list) else []
        amounts = []
        units = []
        for item in self.items:
            if isinstance(item, Mapping):
                quantity = _int(item.get("quantity"))
                amount = item.get("amount")
                if amount.__class__ is not int:
                    amount = quantity * _int(item.get("unit_price"))
            else:
                quantity = amount = 0
            amounts.append(amount)
            units.append(quantity)
        self.amounts = amounts
        self.units = units
        self.all = (1 << len(self.items)) - 1
        self._masks: dict[str, int] = {}
        self._sums: dict[int, tuple[int, int]] = {self.all: (sum(amounts), sum(units))}
        self._item_context: dict[str, Any] | None = None
        self._indexes: dict[int, list[int]] = {}
        self._columns: dict[str, tuple[list[Any], dict[str, int], list[tuple[int, Any]]]] = {}

    def mask(self, plan: _Plan) -> int:
        """Return the bit mask of the items the plan's item filter accepts."""
        mask = self._masks.get(plan.filter_key)
        if mask is None:
            if plan.column is not None:
                mask = self._column_mask(*plan.column)
            else:
                item_filter = plan.item_filter
                context = self._item_context
                if context is None:
                    context = self._item_context = dict(self.context)
                mask = 0
                bit = 1
                for item in self.items:
                    context["item"] = item
                    if item_filter(context):
                        mask |= bit
                    bit <<= 1
            self._masks[plan.filter_key] = mask
        return mask

    def _column(self, field: str) -> tuple[list[Any], dict[str, int], list[tuple[int, Any]]]:
        """Return the field's values, the mask of each string value, and the other values."""
        found = self._columns.get(field)
        if found is None:
            values = []
            index: dict[str, int] = {}
            others = []
            bit = 1
            for item in self.items:
                value = item.get(field) if isinstance(item, Mapping) else None
                values.append(value)
                if value.__class__ is str:
                    index[value] = index.get(value, 0) | bit
                elif value is not None:
                    others.append((bit, value))
                bit <<= 1
            found = self._columns[field] = (values, index, others)
        return found

    def _column_mask(self, field: str, op: str, constant: Any) -> int:
        values, index, others = self._column(field)
        if op == "in":
            # Array membership is strict equality: only string values can equal the constants.
            mask = 0
            for text in constant:
                mask |= index.get(text, 0)
            return mask
        if op in _EQUALITY:
            compare = loose_equals if op in ("==", "!=") else strict_equals
            if constant.__class__ is str:
                mask = index.get(constant, 0)
                for bit, value in others:
                    if compare(value, constant):
                        mask |= bit
            else:
                mask = 0
                bit = 1
                for value in values:
                    if compare(value, constant):
                        mask |= bit
                    bit <<= 1
            return self.all & ~mask if op in ("!=", "!==") else mask
        test = _COMPARE[op]
        mask = 0
        bit = 1
        for value in values:
            if value.__class__ in _NUMBERS:
                if _NATIVE[op](value, constant):
                    mask |= bit
            elif test(value, constant):
                mask |= bit
            bit <<= 1
        return mask

    def indexes(self, mask: int) -> list[int]:
        """Return the positions of the items in `mask`."""
        found = self._indexes.get(mask)
        if found is None:
            found = self._indexes[mask] = [i for i in range(len(self.items)) if mask >> i & 1]
        return found

    def sums(self, mask: int) -> tuple[int, int]:
        """Return (amount, units) of the items in `mask`."""
        found = self._sums.get(mask)
        if found is None:
            amount = units = 0
            index = 0
            rest = mask
            while rest:
                if rest & 1:
                    amount += self.amounts[index]
                    units += self.units[index]
                rest >>= 1
                index += 1
            found = self._sums[mask] = (amount, units)
        return found


_EQUALITY = frozenset({"==", "!=", "===", "!=="})
_NUMBERS = (int, float)
_COMPARE = {
    "<": less_than,
    "<=": less_equal,
    ">": lambda a, b: less_than(b, a),
    ">=": lambda a, b: less_equal(b, a),
}
_NATIVE = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_new = object.__new__


def _make_outcome(plan: _Plan, points: int) -> RuleOutcome:
    # Fills the frozen dataclass's __dict__ directly: same object, half the cost of __init__.
    outcome = _new(RuleOutcome)
    fields = outcome.__dict__
    fields["rule_id"] = plan.rule_id
    fields["rule_version"] = plan.version
    fields["rule_name"] = plan.name
    fields["matched"] = True
    fields["points"] = points
    fields["reason"] = None
    return outcome


def _make_award(plan: _Plan, points: int) -> Award:
    award = _new(Award)
    fields = award.__dict__
    fields["rule_id"] = plan.rule_id
    fields["rule_version"] = plan.version
    fields["rule_name"] = plan.name
    fields["points"] = points
    fields["kind"] = "rule"
    return award


def _tier_factor(value: Fraction | Decimal | int) -> Fraction:
    try:
        return exact_number(value)
    except ValueError as exc:
        raise ValueError(f"tier multiplier {exc}") from None


def evaluate(
    rule_set: RuleSet,
    trigger: str,
    facts: Mapping,
    *,
    at: datetime,
    usage: Mapping[str, Usage] = _NO_USAGE,
    tier_multiplier: tuple[str, Fraction | Decimal | int] | None = None,
    only_active: bool = True,
) -> Evaluation:
    """Return the points the rules of `trigger` award for `facts` at the moment `at`.

    Raises ValueError when `at` is naive or the tier multiplier is not a number.
    """
    context = _context(facts, at)
    basket: _Basket | None = None
    outcomes: list[RuleOutcome | None] = []
    awards: list[Award | None] = []
    consumed: dict[str, Usage] = {}
    # Base points (per_amount, per_item) that multipliers scale, grouped by the items that
    # earned them: items mask -> [per_amount points, per_item points].
    groups: dict[int, list[int]] = {}
    base = 0
    deferred: list[tuple[int, int, _Plan, int | None, int | None]] = []
    excluded_below: int | None = None
    # Only a multiplier with an item filter needs to know which items earned the base.
    scaled = trigger in rule_set._filtered_multipliers

    append_outcome = outcomes.append
    append_award = awards.append
    new = _new
    shared: dict[str, bool] = {}
    for (plan, gated, priority, exclusive, condition, shared_condition, item_filter, limited,
         code, per_event, condition_false) in rule_set._rows.get(trigger, ()):
        if gated and not plan.active and (only_active or plan.archived):
            append_outcome(plan.outcomes["inactive"])
            continue
        if excluded_below is not None and priority < excluded_below:
            append_outcome(plan.outcomes["excluded"])
            continue
        if gated and (
            (plan.starts_at is not None and at < plan.starts_at)
            or (plan.ends_at is not None and at >= plan.ends_at)
        ):
            append_outcome(plan.outcomes["outside_window"])
            continue
        if condition is not None:
            if shared_condition is None:
                holds = condition(context)
            else:
                holds = shared.get(shared_condition)
                if holds is None:
                    holds = shared[shared_condition] = condition(context)
            if not holds:
                append_outcome(condition_false)
                continue
        mask = None
        if item_filter is not None:
            if basket is None:
                basket = _Basket(context)
            mask = basket.mask(plan)
            if not mask:
                append_outcome(plan.outcomes["no_matching_items"])
                continue
        remaining = None
        if limited:
            remaining = plan.limit_points
            used = usage.get(plan.rule_id)
            if used is not None:
                if plan.limit_count is not None and used.count >= plan.limit_count:
                    append_outcome(plan.outcomes["limit_reached"])
                    continue
                if remaining is not None:
                    remaining -= used.points
                    if remaining <= 0:
                        append_outcome(plan.outcomes["limit_reached"])
                        continue
        if exclusive:
            excluded_below = priority
        if code == _FIXED:
            points = plan.points
            if plan.fixed_award is not None and (remaining is None or remaining >= points):
                append_outcome(plan.fixed_outcome)
                append_award(plan.fixed_award)
                if limited:
                    consumed[plan.rule_id] = plan.fixed_usage
                continue
        elif code == _MULTIPLIER:
            deferred.append((len(outcomes), len(awards), plan, mask, remaining))
            append_outcome(None)
            append_award(None)
            continue
        else:
            if basket is None:
                basket = _Basket(context)
            if mask is None:
                mask = basket.all
                basis = basket.total
            else:
                basis = basket.sums(mask)[0]
            if code == _PER_AMOUNT:
                points = (basis * plan.amount_mul + plan.amount_add) // plan.amount_div
            else:
                points = plan.points * basket.sums(mask)[1]
        if per_event is not None and points > per_event:
            points = per_event
        if remaining is not None and points > remaining:
            points = remaining
        if points <= 0:
            append_outcome(plan.matched_zero)
            continue
        if code != _FIXED:
            base += points
            if scaled:
                group = groups.get(mask)
                if group is None:
                    group = groups[mask] = [0, 0]
                group[0 if code == _PER_AMOUNT else 1] += points
        # Frozen dataclasses filled through their __dict__: half the cost of __init__.
        outcome = new(RuleOutcome)
        fields = outcome.__dict__
        fields.update(plan.outcome_fields)
        fields["points"] = points
        append_outcome(outcome)
        award = new(Award)
        fields = award.__dict__
        fields.update(plan.award_fields)
        fields["points"] = points
        append_award(award)
        if limited:
            consumed[plan.rule_id] = Usage(1, points)

    if deferred:
        weights: tuple[list[int], int] | None = None
        for outcome_at, award_at, plan, mask, remaining in deferred:
            if mask is None or basket is None:
                extra = multiplier_extra(base, 1, plan.factor)
            else:
                if weights is None:
                    weights = _item_weights(basket, groups)
                item_weights, denominator = weights
                share = sum([item_weights[index] for index in basket.indexes(mask)])
                extra = multiplier_extra(share, denominator, plan.factor)
            points = cap_points(extra, plan.per_event, remaining)
            if points:
                outcomes[outcome_at] = _make_outcome(plan, points)
                awards[award_at] = _make_award(plan, points)
                if plan.limited:
                    consumed[plan.rule_id] = Usage(1, points)
            else:
                outcomes[outcome_at] = plan.matched_zero
        awards = [award for award in awards if award is not None]
    if tier_multiplier is not None:
        tier, factor = tier_multiplier
        extra = multiplier_extra(base, 1, _tier_factor(factor))
        if extra > 0:
            awards.append(Award(None, None, f"Tier {tier} multiplier", extra, "tier"))
    total = 0
    for award in awards:
        total += award.points
    return Evaluation(total, tuple(awards), tuple(outcomes), consumed)


def _item_weights(basket: _Basket, groups: dict[int, list[int]]) -> tuple[list[int], int]:
    """Return each item's share of the base points as numerators over one common denominator.

    per_amount points go to the items that earned them pro rata to their amounts, per_item
    points to their units.
    """
    denominator = 1
    for earned, (amount_points, unit_points) in groups.items():
        whole_amount, whole_units = basket.sums(earned)
        if amount_points and whole_amount > 0:
            denominator = lcm(denominator, whole_amount)
        if unit_points and whole_units > 0:
            denominator = lcm(denominator, whole_units)
    weights = [0] * len(basket.items)
    amounts, units = basket.amounts, basket.units
    for earned, (amount_points, unit_points) in groups.items():
        whole_amount, whole_units = basket.sums(earned)
        per_amount = amount_points * denominator // whole_amount if whole_amount > 0 else 0
        per_unit = unit_points * denominator // whole_units if whole_units > 0 else 0
        for index in basket.indexes(earned):
            weights[index] += per_amount * amounts[index] + per_unit * units[index]
    return weights, denominator


def _burn_rule(rule_set: RuleSet, facts: Mapping, at: datetime) -> _Plan | None:
    context = _context(facts, at)
    for plan in rule_set._plans.get("redemption", ()):
        if not plan.active or not plan.rule.in_window(at):
            continue
        if plan.condition is None or plan.condition(context):
            return plan
    return None


def price_redemption(
    rule_set: RuleSet,
    facts: Mapping,
    *,
    at: datetime,
    available: int,
    order_total: int | None = None,
    points: int | None = None,
) -> Quote:
    """Quote the most points a member may redeem, or validate a request for `points`.

    The highest-priority active redemption rule whose window and conditions match prices it.
    Without `points`, returns the largest allowed points (0 when none, or without a burn rule).
    Raises BurnRefused (no_burn_rule, below_minimum, invalid_step, exceeds_order_share,
    insufficient_points, checked in that order) when the requested `points` are not allowed.
    """
    plan = _burn_rule(rule_set, facts, at)
    if plan is None:
        if points is None:
            return Quote(0, 0, None, None)
        raise BurnRefused("no_burn_rule", "no redemption rule applies")
    rule = plan.rule
    conversion: Conversion = rule.effect  # type: ignore[assignment]
    limits: BurnLimits = rule.limits  # type: ignore[assignment]
    if points is None:
        most = max_redeemable(available, conversion, limits, order_total)
        return Quote(most, redemption_value(most, conversion), rule.id, rule.version)
    if points <= 0 or points < limits.min_points:
        raise BurnRefused(
            "below_minimum", f"at least {max(limits.min_points, 1)} points must be redeemed"
        )
    if points % limits.step:
        raise BurnRefused("invalid_step", f"points must be a multiple of {limits.step}")
    value = redemption_value(points, conversion)
    if order_total is not None and value > order_share_cap(order_total, limits):
        raise BurnRefused(
            "exceeds_order_share",
            f"points may pay at most {order_share_cap(order_total, limits)} of this order",
        )
    if points > available:
        raise BurnRefused("insufficient_points", f"only {available} points are available")
    return Quote(points, value, rule.id, rule.version)

