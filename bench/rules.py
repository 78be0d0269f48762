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
from collections import Counter
from datetime import UTC, datetime

from json_logic import jsonLogic

from rules import Usage, compile_rule, compile_rules, evaluate, jsonlogic

AT = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
# The shop's catalogue; the benchmark basket holds the first eight categories.
CATEGORIES = ["red", "white", "rose", "sparkling", "spirits", "beer", "food", "delivery",
              "cider", "sake", "glassware", "gifts", "books", "tea", "coffee", "cheese",
              "chocolate", "olive-oil", "vinegar", "water", "juice", "cocktail", "tools", "events"]
IN_BASKET = CATEGORIES[:8]
CHANNELS = ["pos", "web", "app"]
TIERS = ["bronze", "silver", "gold", "platinum"]
CAMPAIGNS = ["autumn", "spring", "summer", "winter"]
MONTHS = [f"2026-{month:02d}-01T00:00:00Z" for month in range(1, 13)] + ["2027-01-01T00:00:00Z"]


def make_purchase() -> dict:
    """Return the facts of a 10-item purchase (total 218.75 EUR, at a store, gold member)."""
    items = []
    for index in range(10):
        quantity = 1 + index % 3
        unit_price = 350 + 175 * index
        items.append(
            {
                "sku": f"{1000 + index}",
                "category": IN_BASKET[index % len(IN_BASKET)],
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
    # The targeting of real promotions: most of them do not apply to a given purchase.
    def window() -> dict:
        month = rng.randrange(12)
        return {"<=": [MONTHS[month], {"var": "now"}, MONTHS[month + 1]]}

    shapes = [
        # channel-only promotion (holds for 1 in 3)
        lambda: {"==": [{"var": "purchase.channel"}, rng.choice(CHANNELS)]},
        # a few stores out of 40
        lambda: {"in": [{"var": "purchase.store_id"},
                        [f"s-{n}" for n in rng.sample(range(40), 3)]]},
        # basket size
        lambda: {">=": [{"var": "purchase.total"}, rng.randrange(5000, 60000, 2500)]},
        # one tier
        lambda: {"in": [{"var": "member.tier"}, rng.sample(TIERS, 1)]},
        # a campaign month
        lambda: {"and": [{"==": [{"var": "purchase.currency"}, "EUR"]}, window()]},
        # the basket holds a category of the catalogue
        lambda: {"some": [{"var": "purchase.items"},
                          {"==": [{"var": "category"}, rng.choice(CATEGORIES)]}]},
        # app purchases above a size
        lambda: {"and": [{"==": [{"var": "purchase.channel"}, "app"]},
                         {">": [{"var": "purchase.total"}, rng.randrange(1000, 20000, 1000)]}]},
        # a flagship store, or members who earned a lot
        lambda: {"or": [
            {"==": [{"var": "purchase.store_id"}, f"s-{rng.randrange(40)}"]},
            {">": [{"var": "member.lifetime_earned"}, rng.randrange(0, 50000, 1000)]},
        ]},
        # a marketing campaign tag
        lambda: {"==": [{"var": "purchase.metadata.campaign"}, rng.choice(CAMPAIGNS)]},
        # welcome offers: members who enrolled in the last 30 days
        lambda: {">=": [{"var": "member.enrolled_at"}, "2026-10-24T00:00:00Z"]},
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


def _interleaved_medians(runs: dict, rounds: int, numbers: dict) -> dict:
    """Return the median µs per call of each run, timing them in alternating rounds.

    Alternating keeps runs compared with each other under the same load: the machine is
    shared, and a busy spell then slows every run of the round rather than one of them.
    """
    samples: dict = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            number = numbers[name]
            started = time.perf_counter_ns()
            for _ in range(number):
                run()
            samples[name].append((time.perf_counter_ns() - started) / number / 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


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


def _workload(raw_rules: list[dict], evaluation) -> dict:
    reasons = Counter(outcome.reason or "matched" for outcome in evaluation.outcomes)
    return {
        "rules": len(raw_rules),
        "items": len(make_purchase()["purchase"]["items"]),
        "with_conditions": sum("conditions" in rule for rule in raw_rules),
        "with_item_filter": sum("item_filter" in rule for rule in raw_rules),
        "multipliers": sum(rule["effect"]["type"] == "multiplier" for rule in raw_rules),
        "with_limits": sum("limits" in rule for rule in raw_rules),
        "awards": len(evaluation.awards),
        "outcomes": dict(sorted(reasons.items())),
    }


def main() -> None:
    """Print the benchmark figures as one JSON document."""
    facts = make_purchase()
    raw_rules = make_rules(100)
    rule_set = compile_rules(
        compile_rule(rule, rule_id=f"r{index:03d}") for index, rule in enumerate(raw_rules)
    )
    usage = {"r001": Usage(1, 400)}

    def run_engine():
        return evaluate(rule_set, "purchase", facts, at=AT, usage=usage,
                        tier_multiplier=("gold", 2))

    def run_engine_and_read() -> None:
        # The results are built when first read: this is what a caller reading all pays.
        evaluation = run_engine()
        evaluation.awards, evaluation.outcomes, evaluation.consumed  # noqa: B018

    evaluation = run_engine()
    medians = _interleaved_medians(
        {"engine": run_engine, "engine_read": run_engine_and_read,
         "reference": _reference_run(raw_rules, facts)},
        rounds=25,
        numbers={"engine": 200, "engine_read": 100, "reference": 10},
    )
    engine_us, read_us, reference_us = (
        medians["engine"], medians["engine_read"], medians["reference"])

    many = make_rules(1000, seed=11)

    def compile_many() -> None:
        # A fresh process: no compiled expression shape cached yet.
        jsonlogic.clear_cache()
        compile_rules(compile_rule(rule, rule_id=f"c{i:04d}") for i, rule in enumerate(many))

    compile_ms = _interleaved_medians({"compile": compile_many}, rounds=7,
                                      numbers={"compile": 1})["compile"] / 1000
    ratio = reference_us / engine_us
    result = {
        "benchmark": "rules",
        "workload": _workload(raw_rules, evaluation),
        "figures": [
            _figure("evaluate_100_rules_10_items", engine_us, "us", "<= 100", engine_us <= 100),
            _figure("evaluate_and_read_all_results", read_us, "us", "-", True),
            _figure("reference_panzi_json_logic_same_logic", reference_us, "us", "-", True),
            _figure("speedup_vs_reference", ratio, "x", ">= 20", ratio >= 20),
            _figure("compile_1000_rules", compile_ms, "ms", "<= 200", compile_ms <= 200),
        ],
        "gc": "enabled",
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
