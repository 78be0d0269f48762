"""Turn a rule as a client sends it into a compiled Rule, reporting every problem at once."""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from .jsonlogic import FACT_SCHEMA, ITEM_FILTER_SCHEMA, column_test, compile_predicate
from .model import (
    KINDS,
    PERIODS,
    PURCHASE_TRIGGERS,
    ROUNDINGS,
    STATUSES,
    TRIGGERS,
    BurnLimits,
    Conversion,
    EarnLimits,
    Fixed,
    Multiplier,
    PerAmount,
    PerItem,
    PerMember,
    Rule,
    RuleError,
)

Errors = dict[str, list[str]]

_EVENT_TRIGGER = re.compile(r"event:[A-Za-z0-9_.-]+")
_RULE_KEYS = frozenset(
    {
        "name",
        "kind",
        "trigger",
        "conditions",
        "item_filter",
        "effect",
        "priority",
        "exclusive",
        "limits",
        "starts_at",
        "ends_at",
        "status",
    }
)
_IGNORED_KEYS = frozenset({"id", "version"})
_EFFECT_KEYS = {
    "per_amount": ({"points", "per"}, {"rounding"}),
    "fixed": ({"points"}, set()),
    "per_item": ({"points"}, set()),
    "multiplier": ({"factor"}, set()),
    "conversion": ({"points", "value"}, set()),
}
_EARN_EFFECTS = ("per_amount", "fixed", "per_item", "multiplier")
_MAX_NAME = 200


def is_trigger(trigger: Any) -> bool:
    """Return whether `trigger` is a fixed trigger name or "event:<type>"."""
    return isinstance(trigger, str) and (
        trigger in TRIGGERS or _EVENT_TRIGGER.fullmatch(trigger) is not None
    )


def parse_timestamp(value: Any) -> datetime:
    """Return `value` (RFC 3339 with an offset, or an aware datetime) in UTC.

    Raises ValueError for anything else.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and "T" in value.upper():
        moment = datetime.fromisoformat(value)
    else:
        raise ValueError("must be an RFC 3339 timestamp with an offset")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("must carry a UTC offset")
    return moment.astimezone(UTC)


def exact_number(value: Any) -> Fraction:
    """Return `value` (int, Decimal, Fraction, finite float or numeric string) as a Fraction.

    Floats are taken by their shortest decimal form, so 1.1 means 11/10. Raises ValueError.
    """
    if isinstance(value, bool):
        raise ValueError("must be a number")
    if isinstance(value, int | Fraction):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return Fraction(repr(value))
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("must be a finite number")
        return Fraction(value)
    raise ValueError("must be a number")


class _Parser:
    def __init__(self) -> None:
        self.errors: Errors = {}

    def error(self, path: str, message: str) -> None:
        self.errors.setdefault(path, []).append(message)

    def integer(self, data: Mapping, key: str, path: str, *, minimum: int | None = 0) -> Any:
        value = data.get(key)
        where = f"{path}.{key}" if path else key
        if not isinstance(value, int) or isinstance(value, bool):
            self.error(where, "must be an integer")
            return None
        if minimum is not None and value < minimum:
            self.error(where, f"must be at least {minimum}" if minimum else "must not be negative")
            return None
        return value

    def mapping(self, value: Any, path: str) -> Mapping | None:
        if not isinstance(value, Mapping):
            self.error(path, "must be an object")
            return None
        return value

    def keys(self, data: Mapping, path: str, required: set[str], optional: set[str]) -> None:
        for key in sorted(required - data.keys()):
            self.error(f"{path}.{key}" if path else key, "is required")
        for key in sorted(set(data) - required - optional, key=str):
            self.error(f"{path}.{key}" if path else str(key), "unknown field")

    def effect(self, data: Any, kind: Any, trigger: Any) -> Any:
        effect = self.mapping(data, "effect")
        if effect is None:
            return None
        kind_type = effect.get("type")
        if kind_type not in _EFFECT_KEYS:
            self.error("effect.type", f"must be one of {', '.join(_EFFECT_KEYS)}")
            return None
        required, optional = _EFFECT_KEYS[kind_type]
        self.keys(effect, "effect", required | {"type"}, optional)
        if kind == "burn" and kind_type != "conversion":
            self.error("effect.type", "a burn rule's effect must be conversion")
        if kind == "earn" and kind_type == "conversion":
            self.error("effect.type", "conversion is only for burn rules")
        if kind_type in ("per_amount", "per_item") and is_trigger(trigger) and (
            trigger not in PURCHASE_TRIGGERS
        ):
            self.error("effect.type", f"{kind_type} needs a trigger that carries a purchase")
        if kind_type == "per_amount":
            points = self.integer(effect, "points", "effect")
            per = self.integer(effect, "per", "effect", minimum=None)
            if per is not None and per <= 0:
                self.error("effect.per", "must be greater than 0")
                per = None
            rounding = effect.get("rounding", "floor")
            if rounding not in ROUNDINGS:
                self.error("effect.rounding", f"must be one of {', '.join(ROUNDINGS)}")
                return None
            if points is None or per is None:
                return None
            return PerAmount(points, per, rounding)
        if kind_type in ("fixed", "per_item"):
            points = self.integer(effect, "points", "effect")
            if points is None:
                return None
            return Fixed(points) if kind_type == "fixed" else PerItem(points)
        if kind_type == "multiplier":
            try:
                factor = exact_number(effect.get("factor"))
            except ValueError as exc:
                self.error("effect.factor", str(exc))
                return None
            if factor < 1:
                self.error("effect.factor", "must be at least 1")
                return None
            return Multiplier(factor)
        points = self.integer(effect, "points", "effect", minimum=1)
        value = self.integer(effect, "value", "effect", minimum=1)
        if points is None or value is None:
            return None
        return Conversion(points, value)

    def earn_limits(self, data: Any) -> EarnLimits | None:
        limits = self.mapping(data, "limits")
        if limits is None:
            return None
        self.keys(limits, "limits", set(), {"per_event", "per_member"})
        per_event = None
        if limits.get("per_event") is not None:
            per_event = self.integer(limits, "per_event", "limits", minimum=1)
        per_member = None
        if limits.get("per_member") is not None:
            raw = self.mapping(limits["per_member"], "limits.per_member")
            if raw is not None:
                path = "limits.per_member"
                self.keys(raw, path, {"period"}, {"count", "points"})
                count = points = None
                if raw.get("count") is not None:
                    count = self.integer(raw, "count", path, minimum=1)
                if raw.get("points") is not None:
                    points = self.integer(raw, "points", path, minimum=1)
                if raw.get("count") is None and raw.get("points") is None:
                    self.error(path, "needs count or points")
                period = raw.get("period")
                if "period" in raw and period not in PERIODS:
                    self.error(f"{path}.period", f"must be one of {', '.join(PERIODS)}")
                elif count is not None or points is not None:
                    per_member = PerMember(period, count, points)
        return EarnLimits(per_event, per_member)

    def burn_limits(self, data: Any) -> BurnLimits | None:
        if data is None:
            return BurnLimits()
        limits = self.mapping(data, "limits")
        if limits is None:
            return None
        self.keys(limits, "limits", set(), {"min_points", "step", "max_order_share"})
        min_points = self.integer(limits, "min_points", "limits") if "min_points" in limits else 0
        step = self.integer(limits, "step", "limits", minimum=1) if "step" in limits else 1
        share = Fraction(1)
        if "max_order_share" in limits:
            try:
                share = exact_number(limits["max_order_share"])
            except ValueError as exc:
                self.error("limits.max_order_share", str(exc))
            else:
                if not 0 < share <= 1:
                    self.error("limits.max_order_share", "must be greater than 0 and at most 1")
        if min_points is None or step is None:
            return None
        return BurnLimits(min_points, step, share)

    def logic(self, data: Any, path: str, schema: Any) -> Any:
        errors: Errors = {}
        fn = compile_predicate(data, path, errors, schema)
        for where, messages in errors.items():
            for message in messages:
                self.error(where, message)
        return fn

    def window(self, data: Mapping) -> tuple[datetime | None, datetime | None]:
        bounds: list[datetime | None] = []
        for key in ("starts_at", "ends_at"):
            value = data.get(key)
            if value is None:
                bounds.append(None)
                continue
            try:
                bounds.append(parse_timestamp(value))
            except (ValueError, TypeError) as exc:
                self.error(key, str(exc) if isinstance(exc, ValueError) else "must be a timestamp")
                bounds.append(None)
        starts_at, ends_at = bounds
        if starts_at is not None and ends_at is not None and starts_at >= ends_at:
            self.error("ends_at", "must be after starts_at")
        return starts_at, ends_at


def _copy_json(value: Any) -> Any:
    """Return a deep copy of a JSON tree (what compiled JsonLogic holds), faster than deepcopy."""
    cls = value.__class__
    if cls is dict:
        return {key: _copy_json(item) for key, item in value.items()}
    if cls is list:
        return [_copy_json(item) for item in value]
    if cls in (str, int, float, bool) or value is None:
        return value
    return copy.deepcopy(value)


def _canonical(logic: Any) -> str:
    return json.dumps(logic, sort_keys=True, separators=(",", ":"), default=str)


def compile_rule(data: Mapping, *, rule_id: str, version: int = 1) -> Rule:
    """Validate `data` (a rule as API.md "Rules" describes it) and compile it.

    Raises RuleError listing every problem found, keyed by JSON path.
    """
    parser = _Parser()
    if not isinstance(data, Mapping):
        raise RuleError({"": ["a rule must be an object"]})
    parser.keys(data, "", {"name", "kind", "trigger", "effect"}, _RULE_KEYS | _IGNORED_KEYS)

    name = data.get("name")
    if "name" in data and (not isinstance(name, str) or not name.strip()):
        parser.error("name", "must be a non-empty string")
    elif isinstance(name, str) and len(name) > _MAX_NAME:
        parser.error("name", f"must be at most {_MAX_NAME} characters")
    kind = data.get("kind")
    if "kind" in data and kind not in KINDS:
        parser.error("kind", "must be earn or burn")
    trigger = data.get("trigger")
    if "trigger" in data:
        if not is_trigger(trigger):
            parser.error("trigger", "must be purchase, enrollment, referral_completed, "
                         "redemption or event:<type> ([A-Za-z0-9_.-]+)")
        elif kind == "burn" and trigger != "redemption":
            parser.error("trigger", "a burn rule's trigger must be redemption")
        elif kind == "earn" and trigger == "redemption":
            parser.error("trigger", "redemption is only for burn rules")
    status = data.get("status", "draft")
    if status not in STATUSES:
        parser.error("status", f"must be one of {', '.join(STATUSES)}")
    priority = data.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        parser.error("priority", "must be an integer")
    exclusive = data.get("exclusive", False)
    if not isinstance(exclusive, bool):
        parser.error("exclusive", "must be a boolean")

    effect = parser.effect(data.get("effect"), kind, trigger) if "effect" in data else None
    limits: Any = None
    if kind == "burn":
        limits = parser.burn_limits(data.get("limits"))
    elif data.get("limits") is not None:
        limits = parser.earn_limits(data["limits"])
    starts_at, ends_at = parser.window(data)

    conditions = data.get("conditions")
    condition_fn = None
    if conditions is not None:
        condition_fn = parser.logic(conditions, "conditions", FACT_SCHEMA)
    item_filter = data.get("item_filter")
    item_filter_fn = item_filter_key = None
    if item_filter is not None:
        if kind == "burn" or (is_trigger(trigger) and trigger not in PURCHASE_TRIGGERS):
            parser.error("item_filter", "needs a trigger that carries a purchase")
        item_filter_fn = parser.logic(item_filter, "item_filter", ITEM_FILTER_SCHEMA)
        item_filter_key = _canonical(item_filter)

    if not isinstance(rule_id, str) or not rule_id:
        parser.error("id", "must be a non-empty string")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        parser.error("version", "must be a positive integer")
    if parser.errors:
        raise RuleError(parser.errors)
    return Rule(
        id=rule_id,
        version=version,
        name=name,
        kind=kind,
        trigger=trigger,
        effect=effect,
        priority=priority,
        exclusive=exclusive,
        status=status,
        limits=limits,
        starts_at=starts_at,
        ends_at=ends_at,
        # Copies: the compiled closures must keep describing what the rule shows.
        conditions=_copy_json(conditions),
        item_filter=_copy_json(item_filter),
        condition_fn=condition_fn,
        condition_key=None if conditions is None else _canonical(conditions),
        item_filter_fn=item_filter_fn,
        item_filter_key=item_filter_key,
        item_filter_column=None if item_filter is None else column_test(item_filter),
    )
