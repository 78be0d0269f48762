"""Measure the rules engine: evaluation, the interpreting reference, compilation.

Run from the repository root: `python -m bench.rules`. Prints one JSON document.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import time
from datetime import UTC, datetime

from json_logic import jsonLogic

from rules import Usage, compile_rule, compile_rules, evaluate

AT = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
CATEGORIES = ["red", "white", "rose", "sparkling", "spirits", "beer", "food", "delivery"]
CHANNELS = ["pos", "web", "app"]
TIERS = ["silver", "gold", "platinum"]


def make_purchase() -> dict:
    """Return the facts of a 10-item purchase."""
    items = []
    for index in range(10):
        quantity = 1 + index % 3
        unit_price = 350 + 175 * index
        items.append(
            {
                "sku": f"{1000 + index}",
                "category": CATEGORIES[index % len(CATEGORIES)],
                "quantity": quantity,
                "unit_price": unit_price,
                "amount": quantity * unit_price,
            }
        )
    return {
        "purchase": {
            "total": sum(item["amount"] for item in items),
            "currency": "EUR",
            "channel": "pos",
            "store_id": "s-12",
            "occurred_at": "2026-11-23T10:00:00Z",
            "items": items,
            "metadata": {"campaign": "autumn"},
        },
        "member": {
            "tier": "gold",
            "enrolled_at": "2024-02-01T00:00:00Z",
            "lifetime_earned": 12500,
            "status": "active",
            "metadata": {},
        },
        "now": "2026-11-23T10:00:00Z",
    }


def _condition(rng: random.Random) -> dict:
    shapes = [
        lambda: {"==": [{"var": "purchase.channel"}, rng.choice(CHANNELS)]},
        lambda: {">=": [{"var": "purchase.total"}, rng.randrange(1000, 40000, 500)]},
        lambda: {"in": [{"var": "member.tier"}, rng.sample(TIERS, 2)]},
        lambda: {"and": [
            {"==": [{"var": "purchase.currency"}, "EUR"]},
            {"<": ["2026-11-01T00:00:00Z", {"var": "now"}, "2026-12-01T00:00:00Z"]},
        ]},
        lambda: {"some": [{"var": "purchase.items"},
                          {"==": [{"var": "category"}, rng.choice(CATEGORIES)]}]},
        lambda: {"or": [
            {"==": [{"var": "purchase.store_id"}, f"s-{rng.randrange(20)}"]},
            {">": [{"var": "member.lifetime_earned"}, rng.randrange(0, 20000, 1000)]},
        ]},
        lambda: {"!": {"in": [{"var": "purchase.metadata.campaign"}, ["spring", "summer"]]}},
    ]
    return rng.choice(shapes)()


def _item_filter(rng: random.Random) -> dict:
    shapes = [
        lambda: {"==": [{"var": "item.category"}, rng.choice(CATEGORIES)]},
        lambda: {"in": [{"var": "item.category"}, rng.sample(CATEGORIES, 3)]},
        lambda: {">=": [{"var": "item.amount"}, rng.randrange(500, 3000, 250)]},
        lambda: {"!=": [{"var": "item.category"}, "delivery"]},
    ]
    return rng.choice(shapes)()


def make_rules(count: int, seed: int = 7) -> list[dict]:
    """Return `count` active purchase earn rules of mixed shapes, as clients send them."""
    rng = random.Random(seed)
    rules = []
    for index in range(count):
        shape = index % 10
        rule: dict = {
            "name": f"rule {index}",
            "kind": "earn",
            "trigger": "purchase",
            "status": "active",
            "priority": rng.randrange(5),
        }
        if shape < 4:
            rule["effect"] = {"type": "per_amount", "points": rng.randrange(1, 10), "per": 100,
                              "rounding": rng.choice(["floor", "round", "ceil"])}
        elif shape < 6:
            rule["effect"] = {"type": "per_item", "points": rng.randrange(1, 20)}
        elif shape < 8:
            rule["effect"] = {"type": "fixed", "points": rng.randrange(10, 500)}
        else:
            rule["effect"] = {"type": "multiplier", "factor": rng.choice([1.5, 2, 3])}
        if rng.random() < 0.8:
            rule["conditions"] = _condition(rng)
        if shape in (1, 3, 5, 8) or rng.random() < 0.2:
            rule["item_filter"] = _item_filter(rng)
        if index % 7 == 0:
            rule["limits"] = {"per_event": rng.randrange(50, 500)}
        elif index % 7 == 1:
            rule["limits"] = {"per_member": {"count": 3, "points": 5000, "period": "month"}}
        rules.append(rule)
    return rules


def _median_us(run, repeat: int, number: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter_ns()
        for _ in range(number):
            run()
        samples.append((time.perf_counter_ns() - started) / number / 1000)
    return statistics.median(samples)


def _reference_run(raw_rules: list[dict], facts: dict):
    # The same conditions and item filters, interpreted: each filter runs per item when the
    # rule's conditions hold, as the engine does.
    item_contexts = [{**facts, "item": item} for item in facts["purchase"]["items"]]

    def run() -> None:
        for rule in raw_rules:
            conditions = rule.get("conditions")
            if conditions is not None and not jsonLogic(conditions, facts):
                continue
            item_filter = rule.get("item_filter")
            if item_filter is not None:
                for context in item_contexts:
                    jsonLogic(item_filter, context)

    return run


def _figure(name: str, value: float, unit: str, target: str, met: bool) -> dict:
    return {"name": name, "value": round(value, 2), "unit": unit, "target": target, "met": met}


def main() -> None:
    """Print the benchmark figures as one JSON document."""
    facts = make_purchase()
    raw_rules = make_rules(100)
    rule_set = compile_rules(
        compile_rule(rule, rule_id=f"r{index:03d}") for index, rule in enumerate(raw_rules)
    )
    usage = {"r001": Usage(1, 400)}

    def run_engine() -> None:
        evaluate(rule_set, "purchase", facts, at=AT, usage=usage, tier_multiplier=("gold", 2))

    run_engine()
    engine_us = _median_us(run_engine, repeat=15, number=200)
    reference_us = _median_us(_reference_run(raw_rules, facts), repeat=7, number=20)

    many = make_rules(1000, seed=11)

    def compile_many() -> None:
        compile_rules(compile_rule(rule, rule_id=f"c{i:04d}") for i, rule in enumerate(many))

    compile_ms = _median_us(compile_many, repeat=5, number=1) / 1000
    ratio = reference_us / engine_us
    result = {
        "benchmark": "rules",
        "figures": [
            _figure("evaluate_100_rules_10_items", engine_us, "us", "<= 100", engine_us <= 100),
            _figure("reference_panzi_json_logic_same_logic", reference_us, "us", "-", True),
            _figure("speedup_vs_reference", ratio, "x", ">= 20", ratio >= 20),
            _figure("compile_1000_rules", compile_ms, "ms", "<= 200", compile_ms <= 200),
        ],
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
