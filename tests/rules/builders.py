"""Shared builders for the rules engine tests: rules as clients send them, and facts."""

from __future__ import annotations

from datetime import UTC, datetime

from rules import compile_rule, compile_rules

AT = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def item(sku: str, category: str | None, amount: int, quantity: int = 1) -> dict:
    """Return an item of `quantity` units worth `amount` minor units in total."""
    return {
        "sku": sku,
        "category": category,
        "quantity": quantity,
        "unit_price": amount // quantity,
        "amount": amount,
    }


def purchase_facts(items: list[dict] | None = None, **purchase: object) -> dict:
    """Return purchase facts; total defaults to the items' sum."""
    items = BASKET if items is None else items
    body = {
        "total": sum(i.get("amount", 0) for i in items),
        "currency": "EUR",
        "channel": "pos",
        "store_id": None,
        "occurred_at": "2026-11-23T10:00:00Z",
        "items": items,
        "metadata": {},
    }
    body.update(purchase)
    return {
        "purchase": body,
        "member": {"tier": "gold", "enrolled_at": "2025-01-01T00:00:00Z",
                   "lifetime_earned": 0, "status": "active", "metadata": {}},
    }


# The basket of the worked examples: 12.00 red, 100.00 blue, 40.00 delivery.
BASKET = [item("123", "red", 1200), item("000", "blue", 10000), item("0001", "delivery", 4000)]


def earn(effect: dict, **fields: object) -> dict:
    """Return an active purchase earn rule as a client sends it."""
    rule = {"name": "rule", "kind": "earn", "trigger": "purchase", "status": "active",
            "effect": effect}
    rule.update(fields)
    return rule


def per_amount(points: int, per: int = 100, rounding: str = "floor", **fields: object) -> dict:
    return earn({"type": "per_amount", "points": points, "per": per, "rounding": rounding},
                **fields)


def rule_set(*rules: dict):
    """Compile rules named r0, r1, … into a RuleSet."""
    return compile_rules(compile_rule(rule, rule_id=f"r{i}") for i, rule in enumerate(rules))

