"""Immutable values of the rules engine: compiled rules, effects, limits and results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from typing import Any

TRIGGERS = frozenset({"purchase", "enrollment", "referral_completed", "redemption"})
PURCHASE_TRIGGERS = frozenset({"purchase", "referral_completed"})
KINDS = ("earn", "burn")
STATUSES = ("draft", "active", "paused", "archived")
ROUNDINGS = ("floor", "round", "ceil")
PERIODS = ("day", "week", "month", "year", "lifetime")


class RuleError(ValueError):
    """A rule that cannot be compiled; `errors` maps each bad part's JSON path to its messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = {path: list(messages) for path, messages in errors.items()}
        super().__init__(
            "; ".join(f"{path}: {text}" for path, texts in errors.items() for text in texts)
        )


class BurnRefused(Exception):
    """A redemption the burn rule does not allow; `code` is the API's error code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


# -- effects -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PerAmount:
    """Earn `points` per `per` minor units of the basis, rounded once."""

    points: int
    per: int
    rounding: str = "floor"
    type: str = field(default="per_amount", init=False)


@dataclass(frozen=True, slots=True)
class Fixed:
    """Earn a fixed bonus, never multiplied."""

    points: int
    type: str = field(default="fixed", init=False)


@dataclass(frozen=True, slots=True)
class PerItem:
    """Earn `points` per matching unit."""

    points: int
    type: str = field(default="per_item", init=False)


@dataclass(frozen=True, slots=True)
class Multiplier:
    """Scale the per_amount and per_item points of the matching items by `factor`."""

    factor: Fraction
    type: str = field(default="multiplier", init=False)


@dataclass(frozen=True, slots=True)
class Conversion:
    """Burn: `points` points are worth `value` minor units."""

    points: int
    value: int
    type: str = field(default="conversion", init=False)


Effect = PerAmount | Fixed | PerItem | Multiplier | Conversion


# -- limits --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PerMember:
    """Cap what one member gets from a rule in a period: a count of awards and/or points."""

    period: str
    count: int | None = None
    points: int | None = None


@dataclass(frozen=True, slots=True)
class EarnLimits:
    """Caps of an earn rule: points in one evaluation, and per member per period."""

    per_event: int | None = None
    per_member: PerMember | None = None


@dataclass(frozen=True, slots=True)
class BurnLimits:
    """Bounds of a redemption: minimum points, step, and the largest share of the order."""

    min_points: int = 0
    step: int = 1
    max_order_share: Fraction = Fraction(1)


# -- rules ---------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Rule:
    """A validated rule with its JsonLogic compiled; equal when id and version are equal."""

    id: str
    version: int
    name: str
    kind: str
    trigger: str
    effect: Effect
    priority: int = 0
    exclusive: bool = False
    status: str = "draft"
    limits: EarnLimits | BurnLimits | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    conditions: Any = None
    item_filter: Any = None
    # Compiled forms, derived from the two JSON trees above.
    condition_fn: Callable[[Any], bool] | None = field(default=None, repr=False)
    item_filter_fn: Callable[[Any], bool] | None = field(default=None, repr=False)
    # Canonical JSON of the conditions: rules sharing them evaluate them once per evaluation.
    condition_key: str | None = field(default=None, repr=False)
    # Canonical JSON of the item filter: rules sharing a filter evaluate it once per item.
    item_filter_key: str | None = field(default=None, repr=False)
    # (field, operator, constant) when the filter is one test of an item field: the engine then
    # answers it from a per-field index instead of running the closure per item.
    item_filter_column: tuple[str, str, Any] | None = field(default=None, repr=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Rule):
            return NotImplemented
        return (self.id, self.version) == (other.id, other.version)

    def __hash__(self) -> int:
        return hash((self.id, self.version))

    def in_window(self, at: datetime) -> bool:
        """Return whether `at` lies in starts_at <= at < ends_at."""
        return (self.starts_at is None or self.starts_at <= at) and (
            self.ends_at is None or at < self.ends_at
        )


# -- results -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    """What a rule already awarded one member in the current period."""

    count: int = 0
    points: int = 0


# Award and RuleOutcome keep a __dict__ (no slots): the engine builds many per evaluation and
# fills that dict directly, which costs half of what the frozen __init__ costs.
@dataclass(frozen=True)
class Award:
    """Points one rule (kind "rule") or the member's tier (kind "tier") awards."""

    rule_id: str | None
    rule_version: int | None
    rule_name: str
    points: int
    kind: str = "rule"


@dataclass(frozen=True)
class RuleOutcome:
    """Why one rule did or did not award: the explanation the simulator shows."""

    rule_id: str
    rule_version: int
    rule_name: str
    matched: bool
    points: int
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Everything one trigger earns a member, and why."""

    points: int
    awards: tuple[Award, ...]
    outcomes: tuple[RuleOutcome, ...]
    consumed: dict[str, Usage]


# The member descriptors of Evaluation's slots, where a LazyEvaluation keeps its values.
_POINTS = Evaluation.__dict__["points"]
_SLOTS = {name: Evaluation.__dict__[name] for name in ("awards", "outcomes", "consumed")}


class LazyEvaluation(Evaluation):
    """An Evaluation whose awards, outcomes and consumed usage are built on first access.

    The engine records one compact entry per rule while evaluating (see engine.Record); the
    objects the fields hold are derived from it when read, then kept. It compares equal to an
    Evaluation with the same fields and shows as one.
    """

    __slots__ = ("_record",)

    def __init__(self, points: int, awards: tuple[Award, ...],
                 outcomes: tuple[RuleOutcome, ...], consumed: dict[str, Usage]) -> None:
        # As Evaluation's (dataclasses.replace calls it): every field given, nothing to build.
        _POINTS.__set__(self, points)
        for slot, value in zip(_SLOTS.values(), (awards, outcomes, consumed), strict=True):
            slot.__set__(self, value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Evaluation, (self.points, self.awards, self.outcomes, self.consumed))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Evaluation):
            return NotImplemented
        return (self.points, self.awards, self.outcomes, self.consumed) == (
            other.points, other.awards, other.outcomes, other.consumed)

    __hash__ = Evaluation.__hash__

    def __repr__(self) -> str:
        return (f"Evaluation(points={self.points!r}, awards={self.awards!r}, "
                f"outcomes={self.outcomes!r}, consumed={self.consumed!r})")


def _lazy_field(name: str) -> property:
    slot = _SLOTS[name]

    def get(self: LazyEvaluation) -> Any:
        try:
            return slot.__get__(self, Evaluation)
        except AttributeError:
            values = self._record.materialise()
            for field_slot, value in zip(_SLOTS.values(), values, strict=True):
                field_slot.__set__(self, value)
            return slot.__get__(self, Evaluation)

    return property(get, doc=f"The evaluation's {name}, built on first access.")


for _name in ("awards", "outcomes", "consumed"):
    setattr(LazyEvaluation, _name, _lazy_field(_name))


@dataclass(frozen=True, slots=True)
class Quote:
    """Points a redemption spends and the minor units they are worth."""

    points: int
    value: int
    rule_id: str | None
    rule_version: int | None
