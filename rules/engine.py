"""Evaluate compiled rules against facts: earn awards for a trigger, prices for redemptions."""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache
from itertools import compress
from math import lcm
from typing import Any

from .effects import (
    cap_points,
    max_redeemable,
    multiplier_extra,
    order_share_cap,
    redemption_value,
)
from .jsonlogic import (
    FACT_SCHEMA,
    compile_selector,
    less_equal,
    less_than,
    loose_equals,
    strict_equals,
)
from .model import (
    PERIODS,
    Award,
    BurnLimits,
    BurnRefused,
    Conversion,
    EarnLimits,
    Evaluation,
    Fixed,
    LazyEvaluation,
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

# The kinds of effect. The two that earn base points come first: their codes index the two
# totals of a group of base points (see evaluate).
_PER_AMOUNT, _PER_ITEM, _FIXED, _MULTIPLIER, _CONVERSION = range(5)
# One entry per rule of an evaluation's record: points ≥ 0 when the rule matched, else one
# of these codes (the index of its reason in _REASONS, negated).
_REASONS = (
    None,
    "inactive",
    "outside_window",
    "condition_false",
    "no_matching_items",
    "limit_reached",
    "excluded",
)
_INACTIVE, _OUTSIDE, _CONDITION_FALSE, _NO_MATCH, _LIMIT, _EXCLUDED = range(-1, -7, -1)
_NO_USAGE: Mapping[str, Usage] = {}


class _Plan:
    """What evaluating one rule needs, computed once when the rule set is built."""

    __slots__ = (
        "rule", "rule_id", "active", "archived", "priority", "exclusive", "starts_at", "ends_at",
        "condition", "item_filter", "filter_key", "code", "points", "per", "rounding", "factor",
        "per_event", "limit_count", "limit_points", "limited", "_outcomes",
        "version", "name", "column", "amount_mul", "amount_add", "amount_div", "cut",
        "gated", "mask_of", "outcome_fields", "award_fields",
    )

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.rule_id = rule.id
        self.version = rule.version
        self.name = rule.name
        self.column = rule.item_filter_column
        if self.column is not None and self.column[1] == "in":
            field, op, texts = self.column
            self.column = (field, op, tuple(dict.fromkeys(texts)))
        self.active = rule.status == "active"
        self.archived = rule.status == "archived"
        self.priority = rule.priority
        self.exclusive = rule.exclusive
        self.starts_at = rule.starts_at
        self.ends_at = rule.ends_at
        self.gated = not self.active or self.starts_at is not None or self.ends_at is not None
        self.condition = rule.condition_fn
        self.item_filter = rule.item_filter_fn
        self.filter_key = None
        if rule.item_filter_fn is not None:
            self.filter_key = rule.item_filter_key or f"#{rule.id}"
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
        limits = rule.limits
        self.per_event = self.limit_count = self.limit_points = None
        if isinstance(limits, EarnLimits):
            self.per_event = limits.per_event
            if limits.per_member is not None:
                self.limit_count = limits.per_member.count
                self.limit_points = limits.per_member.points
        self.limited = self.limit_count is not None or self.limit_points is not None
        # Outcomes that do not depend on the facts, built when first needed and then shared:
        # they are frozen.
        self._outcomes: tuple[RuleOutcome, ...] | None = None
        self.outcome_fields = {"rule_id": rule.id, "rule_version": rule.version,
                               "rule_name": rule.name, "matched": True, "points": 0,
                               "reason": None}
        self.award_fields = {"rule_id": rule.id, "rule_version": rule.version,
                             "rule_name": rule.name, "points": 0, "kind": "rule"}
        # Set by the RuleSet: the position of the first rule of lower priority.
        self.cut = 0
        self.mask_of = _mask_function(self) if self.filter_key is not None else None

    @property
    def outcomes(self) -> tuple[RuleOutcome, ...]:
        """Return the outcomes of this rule that carry no points, indexed like _REASONS."""
        outcomes = self._outcomes
        if outcomes is None:
            rule = self.rule
            outcomes = self._outcomes = tuple(
                RuleOutcome(rule.id, rule.version, rule.name, reason is None, 0, reason)
                for reason in _REASONS
            )
        return outcomes

    def outcome(self, entry: int) -> RuleOutcome:
        """Return the outcome a record entry stands for."""
        if entry <= 0:
            return (self._outcomes or self.outcomes)[-entry]
        # Frozen dataclasses filled through their __dict__: half the cost of __init__.
        outcome = _new(RuleOutcome)
        fields = outcome.__dict__
        fields.update(self.outcome_fields)
        fields["points"] = entry
        return outcome

    def award(self, points: int) -> Award:
        """Return the award of `points` (> 0) this rule gave."""
        award = _new(Award)
        fields = award.__dict__
        fields.update(self.award_fields)
        fields["points"] = points
        return award


def _order(rule: Rule) -> tuple[int, str]:
    return (-rule.priority, rule.id)


class _Trigger:
    """The rules of one trigger, compiled for evaluation.

    `select` computes, in one generated function, which rules must be looked at: those whose
    conditions hold, plus every rule with a status or window to check or a condition that is
    run on its own. The others keep "condition_false" without a step of the loop. `rows` are
    what the loop reads for each rule, in one unpacking.
    """

    __slots__ = ("plans", "rows", "select", "size", "scaled", "inactive", "inactive_archived",
                 "items", "indexed")

    def __init__(self, plans: tuple[_Plan, ...]) -> None:
        self.plans = plans
        self.size = len(plans)
        cut = len(plans)
        for index in range(len(plans) - 1, -1, -1):
            plan = plans[index]
            if index + 1 < len(plans) and plans[index + 1].priority < plan.priority:
                cut = index + 1
            plan.cut = cut
        entries: list[tuple[str, Any] | None] = []
        for index, plan in enumerate(plans):
            rule = plan.rule
            if plan.gated or rule.conditions is None or plan.condition is None:
                entries.append(None)
            else:
                entries.append((rule.condition_key or f"#{index}", rule.conditions))
        self.select, failed = compile_selector(entries, FACT_SCHEMA)
        rows = []
        for index, plan in enumerate(plans):
            # A rule whose conditions are not in `select` checks them in the loop.
            checked = plan.gated or (
                plan.condition is not None and (entries[index] is None or index in failed))
            if plan.code == _PER_AMOUNT:
                effect = (plan.amount_mul, plan.amount_add, plan.amount_div)
            else:
                effect = (plan.points, 0, 1)
            rows.append((index, plan, checked, plan.code, plan.filter_key,
                         plan.limited or plan.exclusive,
                         plan.per_event, *effect))
        self.rows = tuple(rows)
        # Only a multiplier with an item filter needs to know which items earned the base.
        self.scaled = any(p.code == _MULTIPLIER and p.filter_key is not None for p in plans)
        # Whether evaluations read the purchase's items (a filter, or points per amount, per
        # unit or, for a burn rule, its conversion).
        self.items = any(p.filter_key is not None
                         or p.code in (_PER_AMOUNT, _PER_ITEM, _CONVERSION) for p in plans)
        # The item field the filters test most for equality or membership: the basket indexes
        # it as it reads the items, since most evaluations run such a filter ("amount" is
        # read anyway).
        tested = Counter(p.column[0] for p in plans
                         if p.filter_key is not None and p.column is not None
                         and p.column[1] not in _RELATIONS and p.column[0] != "amount")
        self.indexed = tested.most_common(1)[0][0] if tested else None
        self.inactive = frozenset(i for i, plan in enumerate(plans) if not plan.active)
        self.inactive_archived = frozenset(i for i, plan in enumerate(plans) if plan.archived)


class RuleSet:
    """Compiled rules indexed by trigger, each trigger's rules by priority desc then id asc."""

    __slots__ = ("_rules", "_by_trigger", "_plans", "_triggers", "_limited")

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
        self._triggers = {
            trigger: _Trigger(plans)
            for trigger, plans in self._plans.items()
        }
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


def _add_to_column(index: dict[str, list[int]], others: list[tuple[int, Any]], value: Any, bit: int,
                   amount: int, units: int) -> None:
    """Add one item (its `bit`, amount and units) to a field's column (see _Basket._column)."""
    if value.__class__ is str:
        entry = index.get(value)
        if entry is None:
            index[value] = [bit, amount, units]
        else:
            entry[0] |= bit
            entry[1] += amount
            entry[2] += units
    elif value is not None:
        others.append((bit.bit_length() - 1, value))


class _Basket:
    """The purchase's items as effects see them; each item filter runs once per item."""

    __slots__ = ("context", "total", "items", "amounts", "units", "all", "masks", "known_sums",
                 "all_units", "_item_context", "_columns", "_numeric", "_field_values")

    def __init__(self, context: dict[str, Any], indexed: str | None = None) -> None:
        """Read the items, and index the item field `indexed` (see _column) in the same pass:
        most evaluations run a filter testing it, and one pass costs less than two."""
        self.context = context
        purchase = context.get("purchase")
        if purchase.__class__ is not dict and not isinstance(purchase, Mapping):
            purchase = {}
        total = purchase.get("total")
        self.total = total if total.__class__ is int else 0
        items = purchase.get("items")
        self.items = items if isinstance(items, list) else []
        amounts = []
        units = []
        # Whether every item is an object with an integer amount: the amounts are then the
        # items' values of "amount" too (_values reads them otherwise).
        amounts_given = True
        self._field_values: dict[str, list[Any]] = {}
        self._columns: dict[str, tuple[dict[str, list[int]], list[tuple[int, Any]]]] = {}
        if indexed is not None:
            # As _column builds it (_add_to_column), in the pass that reads the items.
            index: dict[str, list[int]] = {}
            others: list[tuple[int, Any]] = []
            self._columns[indexed] = (index, others)
        bit = 1
        for item in self.items:
            if item.__class__ is dict or isinstance(item, Mapping):
                quantity = item.get("quantity")
                if quantity.__class__ is not int:
                    quantity = 0
                amount = item.get("amount")
                if amount.__class__ is not int:
                    amount = quantity * _int(item.get("unit_price"))
                    amounts_given = False
                if indexed is not None:
                    _add_to_column(index, others, item.get(indexed), bit, amount, quantity)
            else:
                quantity = amount = 0
                amounts_given = False
            amounts.append(amount)
            units.append(quantity)
            bit <<= 1
        self.amounts = amounts
        self.units = units
        if amounts_given:
            self._field_values["amount"] = amounts
        self.all = bit - 1
        self.masks: dict[str, int] = {}
        self.all_units = sum(units)
        self.known_sums: dict[int, tuple[int, int]] = {self.all: (sum(amounts), self.all_units)}
        self._item_context: dict[str, Any] | None = None
        self._numeric: dict[str, Any] = {}  # field -> its ranking (see _ranked)

    def mask(self, plan: _Plan) -> int:
        """Return the bit mask of the items the plan's item filter accepts.

        Its (amount, units) are recorded on the way, so `sums` of it costs nothing.
        """
        amounts, units = self.amounts, self.units
        column = plan.column
        if column is not None:
            field, op, constant = column
            if op == "in":
                # Array membership is strict equality: only string values can equal the
                # constants (distinct ones: the plan removes repeated constants).
                index = (self._columns.get(field) or self._column(field))[0]
                mask = amount = count = 0
                for text in constant:
                    entry = index.get(text)
                    if entry is not None:
                        mask |= entry[0]
                        amount += entry[1]
                        count += entry[2]
            else:
                mask, amount, count = self._column_mask(field, op, constant)
        else:
            item_filter = plan.item_filter
            context = self._item_context
            if context is None:
                context = self._item_context = dict(self.context)
            mask = amount = count = 0
            for index, item in enumerate(self.items):
                context["item"] = item
                if item_filter(context):
                    mask |= 1 << index
                    amount += amounts[index]
                    count += units[index]
        if mask not in self.known_sums:
            self.known_sums[mask] = (amount, count)
        return mask

    def _values(self, field: str) -> list[Any]:
        """Return each item's value of `field` (None when absent or not an object)."""
        values = self._field_values.get(field)
        if values is None:
            values = self._field_values[field] = [
                item.get(field) if item.__class__ is dict or isinstance(item, Mapping) else None
                for item in self.items
            ]
        return values

    def _column(self, field: str) -> tuple[dict[str, list[int]], list[tuple[int, Any]]]:
        """Return [mask, amount, units] of each string value of the field, and the
        (position, value) of its other values."""
        found = self._columns.get(field)
        if found is None:
            values = self._values(field)
            index: dict[str, list[int]] = {}
            others = []
            count = len(values)
            bits = _BITS[:count] if count <= len(_BITS) else [1 << p for p in range(count)]
            for value, bit, amount, units in zip(values, bits, self.amounts, self.units,
                                                 strict=True):
                _add_to_column(index, others, value, bit, amount, units)
            found = self._columns[field] = (index, others)
        return found

    def _column_mask(self, field: str, op: str, constant: Any) -> tuple[int, int, int]:
        """Return (mask, amount, units) of the items whose `field` passes `op` `constant`."""
        amounts, units = self.amounts, self.units
        mask = amount = count = 0
        if op in _RELATIONS:
            mask = self.relation_mask(field, op, constant)
            return (mask, *self.known_sums[mask])
        index, others = self._columns.get(field) or self._column(field)
        if op == "in":
            # Array membership is strict equality: only string values can equal the constants
            # (distinct ones: the rule set removes repeated constants).
            for text in constant:
                entry = index.get(text)
                if entry is not None:
                    mask |= entry[0]
                    amount += entry[1]
                    count += entry[2]
            return mask, amount, count
        if op in _EQUALITY:
            compare = loose_equals if op in ("==", "!=") else strict_equals
            if constant.__class__ is str:
                entry = index.get(constant)
                if entry is not None:
                    mask, amount, count = entry
                candidates: Any = others
            else:
                candidates = enumerate(self._values(field))
            for position, value in candidates:
                if compare(value, constant):
                    mask |= 1 << position
                    amount += amounts[position]
                    count += units[position]
            if op in ("!=", "!=="):
                whole_amount, whole_units = self.known_sums[self.all]
                return self.all & ~mask, whole_amount - amount, whole_units - count
            return mask, amount, count
        raise ValueError(f"unknown column operator {op!r}")

    def relation_mask(self, field: str, op: str, constant: Any) -> int:
        """Return the mask of the items whose `field` is `op` (<, <=, >, >=) the number
        `constant`, recording its (amount, units) in known_sums."""
        ranked = self._numeric.get(field)
        if ranked is None:
            ranked = self._numeric[field] = self._ranked(field)
        mask = amount = count = 0
        if ranked and constant == constant:
            # Numbers without NaN are totally ordered: the items passing come first in the
            # ranking (>, >=) or last (<, <=), and the pass stops at the first that fails.
            if op == ">=":
                for value, bit, item_amount, item_units in ranked:
                    if value < constant:
                        break
                    mask |= bit
                    amount += item_amount
                    count += item_units
            elif op == ">":
                for value, bit, item_amount, item_units in ranked:
                    if value <= constant:
                        break
                    mask |= bit
                    amount += item_amount
                    count += item_units
            elif op == "<=":
                for value, bit, item_amount, item_units in reversed(ranked):
                    if value > constant:
                        break
                    mask |= bit
                    amount += item_amount
                    count += item_units
            else:
                for value, bit, item_amount, item_units in reversed(ranked):
                    if value >= constant:
                        break
                    mask |= bit
                    amount += item_amount
                    count += item_units
        else:
            test = _COMPARE[op]
            native = _NATIVE[op]
            amounts, units = self.amounts, self.units
            for position, value in enumerate(self._values(field)):
                if (native(value, constant) if value.__class__ in _NUMBERS
                        else test(value, constant)):
                    mask |= 1 << position
                    amount += amounts[position]
                    count += units[position]
        known = self.known_sums
        if mask not in known:
            known[mask] = (amount, count)
        return mask

    def _ranked(self, field: str) -> list[tuple[Any, int, int, int]] | tuple[()]:
        """Return (value, bit, amount, units) of each item by its value of `field`, greatest
        first; () unless every value is a number other than NaN (and there are no more items
        than _BITS has)."""
        values = self._values(field)
        if len(values) > len(_BITS):
            return ()
        kinds = set(map(type, values))
        if not _NUMBER_TYPES.issuperset(kinds) or (
                float in kinds and any(value != value for value in values)):
            return ()
        # Ties in value are ordered by bit, never by what follows. _BITS is the longer.
        return sorted(zip(values, _BITS, self.amounts, self.units, strict=False), reverse=True)

    def sums(self, mask: int) -> tuple[int, int]:
        """Return (amount, units) of the items in `mask`."""
        found = self.known_sums.get(mask)
        if found is None:
            amount = units = 0
            amounts, quantities = self.amounts, self.units
            for position in _positions(mask):
                amount += amounts[position]
                units += quantities[position]
            found = self.known_sums[mask] = (amount, units)
        return found


_POSITIONS: dict[int, tuple[int, ...]] = {}
_BITS = tuple(1 << position for position in range(4096))


def _positions(mask: int) -> tuple[int, ...]:
    """Return the positions of the set bits of `mask`, ascending (memoised: masks recur)."""
    found = _POSITIONS.get(mask)
    if found is None:
        found = tuple(i for i in range(mask.bit_length()) if mask >> i & 1)
        if len(_POSITIONS) >= 1 << 16:
            _POSITIONS.clear()
        _POSITIONS[mask] = found
    return found


_EQUALITY = frozenset({"==", "!=", "===", "!=="})
_RELATIONS = frozenset({"<", "<=", ">", ">="})
_NUMBER_TYPES = frozenset({int, float})


def _mask_function(plan: _Plan) -> Any:
    """Return a function of a basket giving the mask of the plan's item filter (and recording
    its sums), specialised to the filter's shape."""
    column = plan.column
    if column is None:
        return lambda basket: basket.mask(plan)
    field, op, constant = column
    if op == "in":
        # Array membership is strict equality: only string values can equal the constants
        # (distinct ones: the plan removes repeated constants).
        def in_mask(basket: _Basket) -> int:
            index = (basket._columns.get(field) or basket._column(field))[0]
            mask = amount = count = 0
            for text in constant:
                entry = index.get(text)
                if entry is not None:
                    mask |= entry[0]
                    amount += entry[1]
                    count += entry[2]
            known = basket.known_sums
            if mask not in known:
                known[mask] = (amount, count)
            return mask

        return in_mask
    if op in ("==", "!=") and constant.__class__ is str:
        negate = op == "!="

        def text_mask(basket: _Basket) -> int:
            index, others = basket._columns.get(field) or basket._column(field)
            if others:
                return basket.mask(plan)
            entry = index.get(constant)
            mask, amount, count = (0, 0, 0) if entry is None else entry
            if negate:
                whole_amount, whole_units = basket.known_sums[basket.all]
                mask, amount, count = (basket.all & ~mask, whole_amount - amount,
                                       whole_units - count)
            known = basket.known_sums
            if mask not in known:
                known[mask] = (amount, count)
            return mask

        return text_mask
    if op in _RELATIONS:
        # A method called from C: no frame of a closure around it.
        return operator.methodcaller("relation_mask", field, op, constant)
    return lambda basket: basket.mask(plan)
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


class Record:
    """What one evaluation found, compactly: the Evaluation's objects are derived from it.

    `entries` holds one int per rule of the trigger, in evaluation order: the points when the
    rule matched, else the negated index of its reason in _REASONS. Awards are the matched
    entries with points, then the tier's award.
    """

    __slots__ = ("plans", "entries", "tier")

    def __init__(self, plans: tuple[_Plan, ...], entries: list[int],
                 tier: tuple[str, int] | None) -> None:
        self.plans = plans
        self.entries = entries
        self.tier = tier

    def materialise(self) -> tuple[tuple[Award, ...], tuple[RuleOutcome, ...], dict[str, Usage]]:
        """Return (awards, outcomes, consumed) as the Evaluation shows them."""
        outcomes = []
        awards = []
        consumed: dict[str, Usage] = {}
        multiplied = []
        for plan, entry in zip(self.plans, self.entries, strict=True):
            if entry <= 0:
                outcomes.append((plan._outcomes or plan.outcomes)[-entry])
                continue
            outcomes.append(plan.outcome(entry))
            awards.append(plan.award(entry))
            if plan.limited:
                if plan.code == _MULTIPLIER:
                    multiplied.append((plan.rule_id, entry))
                else:
                    consumed[plan.rule_id] = Usage(1, entry)
        # Multipliers are settled after the other rules: their usage comes last.
        for rule_id, points in multiplied:
            consumed[rule_id] = Usage(1, points)
        if self.tier is not None:
            tier, extra = self.tier
            awards.append(Award(None, None, f"Tier {tier} multiplier", extra, "tier"))
        return tuple(awards), tuple(outcomes), consumed


_set_points = Evaluation.__dict__["points"].__set__
_set_record = LazyEvaluation.__dict__["_record"].__set__
_EMPTY_TRIGGER: Any = None


def _tier_fraction(value: Fraction | Decimal | int) -> Fraction:
    try:
        return _cached_tier_factor(value)
    except TypeError:  # unhashable, so not a number: _tier_factor says so
        return _tier_factor(value)


def _tier_factor(value: Fraction | Decimal | int) -> Fraction:
    try:
        return exact_number(value)
    except ValueError as exc:
        raise ValueError(f"tier multiplier {exc}") from None


_cached_tier_factor = lru_cache(maxsize=256, typed=True)(_tier_factor)


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

    The result's awards, outcomes and consumed usage are built when first read.
    Raises ValueError when `at` is naive or the tier multiplier is not a number.
    """
    context = _context(facts, at)
    compiled = rule_set._triggers.get(trigger)
    if compiled is None:
        compiled = _empty_trigger()
    size = compiled.size
    entries = [_CONDITION_FALSE] * size
    total = 0
    # Base points (per_amount, per_item) that multipliers scale, and, when a multiplier has an
    # item filter, grouped by the items that earned them: mask -> [per_amount, per_item points].
    base = 0
    groups: dict[int, list[int]] | None = {} if compiled.scaled else None
    deferred: list[tuple[int, _Plan, int | None, int | None]] = []
    # Rules from `cut` on are excluded by an exclusive rule of higher priority that matched.
    cut = size
    # Nearly every rule of a purchase needs the items: they are read once, up front. Without
    # rules that need them (fixed points, multipliers without a filter), nothing reads them.
    basket = _Basket(context, compiled.indexed) if compiled.items else None
    masks = basket.masks if basket is not None else {}
    sums = basket.known_sums if basket is not None else {}
    everything = basket.all if basket is not None else 0
    for index, plan, checked, code, filter_key, special, per_event, a, b, c in compress(
        compiled.rows, compiled.select(context)
    ):
        if index >= cut:
            break
        if checked:
            if not plan.active and (only_active or plan.archived):
                entries[index] = _INACTIVE
                continue
            if (plan.starts_at is not None and at < plan.starts_at) or (
                plan.ends_at is not None and at >= plan.ends_at
            ):
                entries[index] = _OUTSIDE
                continue
            if plan.condition is not None and not plan.condition(context):
                continue
        if filter_key is None:
            mask = everything
        else:
            mask = masks.get(filter_key)
            if mask is None:
                mask = masks[filter_key] = plan.mask_of(basket)
            if not mask:
                entries[index] = _NO_MATCH
                continue
        remaining = None
        if special:
            if plan.limited:
                remaining = plan.limit_points
                used = usage.get(plan.rule_id)
                if used is not None:
                    if plan.limit_count is not None and used.count >= plan.limit_count:
                        entries[index] = _LIMIT
                        continue
                    if remaining is not None:
                        remaining -= used.points
                        if remaining <= 0:
                            entries[index] = _LIMIT
                            continue
            if plan.exclusive:
                cut = plan.cut
        # a, b, c: per_amount (basis × a + b) // c; per_item and fixed a points.
        if code == _PER_AMOUNT:
            basis = basket.total if filter_key is None else sums[mask][0]
            points = (basis * a + b) // c
        elif code == _FIXED:
            points = a
        elif code != _MULTIPLIER:
            # per_item (and a burn rule's conversion, were a redemption evaluated: its
            # points per unit, as before).
            points = a * sums[mask][1]
        else:
            deferred.append((index, plan, None if filter_key is None else mask, remaining))
            continue
        if per_event is not None and points > per_event:
            points = per_event
        if remaining is not None and points > remaining:
            points = remaining
        if points <= 0:
            entries[index] = 0
            continue
        entries[index] = points
        total += points
        if code != _FIXED:
            base += points
            if groups is not None:
                group = groups.get(mask)
                if group is None:
                    group = groups[mask] = [0, 0]
                group[code] += points
    if cut < size:
        inactive = compiled.inactive if only_active else compiled.inactive_archived
        for index in range(cut, size):
            entries[index] = _INACTIVE if index in inactive else _EXCLUDED

    if deferred:
        shares: tuple[dict[int, int], int] | None = None
        for index, plan, mask, remaining in deferred:
            if mask is None:
                share, denominator = base, 1
            else:
                if shares is None:
                    shares = _multiplier_shares(basket, groups or {}, [
                        mask for _, _, mask, _ in deferred if mask is not None])
                numerators, denominator = shares
                share = numerators[mask]
            points = cap_points(multiplier_extra(share, denominator, plan.factor), plan.per_event, remaining)
            entries[index] = points
            total += points
    tier = None
    if tier_multiplier is not None:
        name, factor = tier_multiplier
        extra = multiplier_extra(base, 1, _tier_fraction(factor))
        if extra > 0:
            tier = (name, extra)
            total += extra
    result = _new(LazyEvaluation)
    _set_points(result, total)
    _set_record(result, Record(compiled.plans, entries, tier))
    return result


def _empty_trigger() -> _Trigger:
    global _EMPTY_TRIGGER
    if _EMPTY_TRIGGER is None:
        _EMPTY_TRIGGER = _Trigger(())
    return _EMPTY_TRIGGER


def _multiplier_shares(basket: _Basket, groups: dict[int, list[int]], masks: list[int]
                       ) -> tuple[dict[int, int], int]:
    """Return the base points the items of each mask earned: ({mask: numerator}, denominator).

    A group's per_amount points go to its items pro rata to their amounts, its per_item
    points to their units; the points of a group whose amounts (units) add up to nothing are
    not shared. Only the items of the masks are weighed, or, for a mask holding most items,
    those outside it: its share is then the whole less theirs.
    """
    known = basket.known_sums
    shared = []
    wholes = []
    whole = 0
    for earned, (amount_points, unit_points) in groups.items():
        whole_amount, whole_units = known.get(earned) or basket.sums(earned)
        if whole_amount <= 0:
            amount_points = 0
        elif amount_points:
            wholes.append(whole_amount)
        if whole_units <= 0:
            unit_points = 0
        elif unit_points:
            wholes.append(whole_units)
        if amount_points or unit_points:
            shared.append((earned, amount_points, whole_amount, unit_points, whole_units))
            whole += amount_points + unit_points
    # One denominator: each group's points per minor unit and per unit are then integers.
    denominator = lcm(*wholes)
    rates = []
    for earned, amount_points, whole_amount, unit_points, whole_units in shared:
        rates.append((earned, amount_points * denominator // whole_amount if amount_points else 0,
                      unit_points * denominator // whole_units if unit_points else 0))
    most = len(basket.items)
    everything = basket.all
    needed = 0
    for mask in masks:
        needed |= everything & ~mask if mask.bit_count() * 2 > most else mask
    amounts, units = basket.amounts, basket.units
    weights = {}
    for position in _positions(needed):
        bit = 1 << position
        amount_rate = unit_rate = 0
        for earned, group_amount_rate, group_unit_rate in rates:
            if earned & bit:
                amount_rate += group_amount_rate
                unit_rate += group_unit_rate
        weights[position] = amount_rate * amounts[position] + unit_rate * units[position]
    numerators = {}
    for mask in masks:
        if mask.bit_count() * 2 > most:
            share = whole * denominator
            for position in _positions(everything & ~mask):
                share -= weights[position]
        else:
            share = 0
            for position in _positions(mask):
                share += weights[position]
        numerators[mask] = share
    return numerators, denominator


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

