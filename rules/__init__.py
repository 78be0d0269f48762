"""The loyalty rules engine: pure functions from rules and facts to awards and prices.

Rules are data (API.md "Rules"); `compile_rule` validates and compiles one, `compile_rules`
indexes them, `evaluate` returns the points a trigger earns and `price_redemption` prices a burn.
Nothing here performs I/O: the caller stores what the results say.
"""

from .engine import RuleSet, compile_rules, evaluate, period_start, price_redemption
from .model import (
    TRIGGERS,
    Award,
    BurnRefused,
    Evaluation,
    Quote,
    Rule,
    RuleError,
    RuleOutcome,
    Usage,
)
from .parse import compile_rule

__all__ = [
    "TRIGGERS",
    "Award",
    "BurnRefused",
    "Evaluation",
    "Quote",
    "Rule",
    "RuleError",
    "RuleOutcome",
    "RuleSet",
    "Usage",
    "compile_rule",
    "compile_rules",
    "evaluate",
    "period_start",
    "price_redemption",
]
