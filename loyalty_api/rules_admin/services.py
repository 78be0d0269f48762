"""Rules administration: versions, lifecycle, validation, simulation, and the compiled cache."""

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

import rules as engine

from ..errors import DomainError, InvalidRule, NotFound, ValidationFailed
from ..ids import new_id
from ..pagination import Page, decode_cursor, encode_cursor
from ..program.services import ProgramSettings, bump_rules_revision, get_program
from .models import Rule, RuleVersion

# Keys that are the rule's identity or lifecycle rather than its content.
_NOT_CONTENT = ("id", "version", "status", "created_at", "updated_at")


class RuleArchived(DomainError):
    status, code, title = 409, "rule_archived", "An archived rule cannot change"


@dataclass(frozen=True)
class _CachedRuleSet:
    revision: str
    rule_set: engine.RuleSet


_cache: _CachedRuleSet | None = None
_cache_lock = threading.Lock()


# The engine takes integers of any size; these bounds keep every award far inside a 64-bit
# balance (a total is at most 10^13, a basket at most 1,000 items of 1,000,000 units).
_MAX_FIXED_POINTS = 10**9
_MAX_PER_UNIT_POINTS = 10**6
_MAX_POINTS_PER_MINOR_UNIT = 100
_MAX_FACTOR = 100
_MAX_LIMIT = 10**12


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def bound_errors(definition: Mapping) -> dict[str, list[str]]:
    """Return {json_path: [message]} for numbers too large to award safely."""
    errors: dict[str, list[str]] = {}

    def check(path: str, value, limit) -> None:
        if _is_number(value) and value > limit:
            errors.setdefault(path, []).append(f"must be at most {limit}")

    effect = definition.get("effect")
    if isinstance(effect, Mapping):
        points, kind = effect.get("points"), effect.get("type")
        check("effect.points", points, _MAX_PER_UNIT_POINTS if kind == "per_item" else _MAX_FIXED_POINTS)
        check("effect.per", effect.get("per"), _MAX_LIMIT)
        check("effect.value", effect.get("value"), _MAX_LIMIT)
        check("effect.factor", effect.get("factor"), _MAX_FACTOR)
        per = effect.get("per")
        if (kind == "per_amount" and _is_number(points) and _is_number(per) and per > 0
                and "effect.points" not in errors and points > per * _MAX_POINTS_PER_MINOR_UNIT):
            errors["effect.points"] = [f"must be at most {_MAX_POINTS_PER_MINOR_UNIT} per minor unit of `per`"]
    limits = definition.get("limits")
    if isinstance(limits, Mapping):
        for key in ("per_event", "min_points", "step"):
            check(f"limits.{key}", limits.get(key), _MAX_LIMIT)
        per_member = limits.get("per_member")
        if isinstance(per_member, Mapping):
            for key in ("count", "points"):
                check(f"limits.per_member.{key}", per_member.get(key), _MAX_LIMIT)
    return errors


def compile_definition(definition: Mapping, rule_id: str, version: int, status: str) -> engine.Rule:
    """Compile a stored or submitted definition; raise InvalidRule with the engine's paths."""
    try:
        compiled = engine.compile_rule({**definition, "status": status}, rule_id=rule_id, version=version)
    except engine.RuleError as err:
        raise InvalidRule(str(err), {**err.errors, **bound_errors(definition)}) from err
    errors = bound_errors(definition)
    if errors:
        raise InvalidRule("Some numbers are too large", errors)
    return compiled


def current_rule_set(session: Session, program: ProgramSettings) -> engine.RuleSet:
    """Return the compiled set of every non-archived rule, rebuilt only when a rule changed.

    The cache is per process; `program.rules_revision` changes with every rule change, so
    one read of the program settings is all a request pays to know the cache is current.
    """
    global _cache
    cached = _cache
    if cached is not None and cached.revision == program.rules_revision:
        return cached.rule_set
    with _cache_lock:
        rows = session.execute(
            select(Rule.id, Rule.version, Rule.status, RuleVersion.definition)
            .join(RuleVersion, (RuleVersion.rule_id == Rule.id) & (RuleVersion.version == Rule.version))
            .where(Rule.status != "archived")
        ).all()
        rule_set = engine.compile_rules(
            compile_definition(row.definition, row.id, row.version, row.status) for row in rows)
        _cache = _CachedRuleSet(program.rules_revision, rule_set)
        return rule_set


def _content(data: Mapping) -> dict:
    return {k: v for k, v in data.items() if k not in _NOT_CONTENT}


def rule_view(rule: Rule, definition: Mapping) -> dict:
    return {**definition, "id": rule.id, "version": rule.version, "status": rule.status,
            "created_at": rule.created_at, "updated_at": rule.updated_at}


def create_rule(session: Session, data: Mapping, now: datetime) -> dict:
    """Validate and store a new rule as version 1."""
    rule_id = new_id()
    status = data.get("status", "draft")
    definition = _content(data)
    compiled = compile_definition(definition, rule_id, 1, status)
    rule = Rule(id=rule_id, version=1, status=status, kind=compiled.kind, trigger=compiled.trigger,
                name=compiled.name, priority=compiled.priority, created_at=now, updated_at=now)
    session.add(rule)
    session.add(RuleVersion(rule_id=rule_id, version=1, definition=definition, created_at=now))
    session.flush()
    bump_rules_revision(session)
    return rule_view(rule, definition)


def _load(session: Session, rule_id: str, lock: bool = False) -> tuple[Rule, dict]:
    query = select(Rule).where(Rule.id == rule_id)
    rule = session.execute(query.with_for_update() if lock else query).scalar_one_or_none()
    if rule is None:
        raise NotFound("No such rule")
    definition = session.execute(select(RuleVersion.definition).where(
        RuleVersion.rule_id == rule_id, RuleVersion.version == rule.version)).scalar_one()
    return rule, definition


def get_rule(session: Session, rule_id: str) -> dict:
    rule, definition = _load(session, rule_id)
    return rule_view(rule, definition)


def update_rule(session: Session, rule_id: str, changes: Mapping, now: datetime) -> dict:
    """Change a rule: a new immutable version when its content changes, in place for status."""
    rule, definition = _load(session, rule_id, lock=True)
    if rule.status == "archived":
        raise RuleArchived()
    status = changes.get("status", rule.status)
    content_changes = _content(changes)
    new_definition = {**definition, **content_changes}
    for key, value in content_changes.items():
        if value is None:  # an explicit null removes an optional part (conditions, limits, …)
            new_definition.pop(key, None)
    content_changed = new_definition != definition
    version = rule.version + 1 if content_changed else rule.version
    compiled = compile_definition(new_definition, rule.id, version, status)
    if content_changed:
        session.add(RuleVersion(rule_id=rule.id, version=version, definition=new_definition, created_at=now))
    if content_changed or status != rule.status:
        rule.version, rule.status, rule.updated_at = version, status, now
        rule.kind, rule.trigger, rule.name, rule.priority = (
            compiled.kind, compiled.trigger, compiled.name, compiled.priority)
        session.flush()
        bump_rules_revision(session)
    return rule_view(rule, new_definition)


def list_rules(session: Session, filters: Mapping, limit: int, cursor: str | None) -> Page:
    query = (
        select(Rule, RuleVersion.definition)
        .join(RuleVersion, (RuleVersion.rule_id == Rule.id) & (RuleVersion.version == Rule.version))
        .order_by(Rule.id.desc()).limit(limit + 1)
    )
    for key in ("status", "kind", "trigger"):
        if filters.get(key):
            query = query.where(getattr(Rule, key) == filters[key])
    if cursor:
        query = query.where(Rule.id < decode_cursor(cursor))
    rows = session.execute(query).all()
    data = [rule_view(rule, definition) for rule, definition in rows[:limit]]
    return Page(data, encode_cursor(rows[limit - 1][0].id) if len(rows) > limit else None)


def list_rule_versions(session: Session, rule_id: str) -> list[dict]:
    rule, _ = _load(session, rule_id)
    rows = session.execute(select(RuleVersion).where(RuleVersion.rule_id == rule_id)
                           .order_by(RuleVersion.version.desc())).scalars()
    return [{**row.definition, "id": rule_id, "version": row.version, "created_at": row.created_at}
            for row in rows]


def validate_rule(data: Mapping) -> dict:
    """Compile a definition without storing it; return {valid, errors}."""
    try:
        engine.compile_rule({**_content(data), "status": data.get("status", "draft")}, rule_id="validate")
    except engine.RuleError as err:
        return {"valid": False, "errors": {**err.errors, **bound_errors(data)}}
    errors = bound_errors(data)
    return {"valid": not errors, "errors": errors}


def simulate(session: Session, data: Mapping, now: datetime) -> dict:
    """Evaluate a purchase or event against the rules (drafts included) and write nothing."""
    from ..purchases.services import (
        event_facts,
        member_facts_for,
        purchase_facts,
        validate_purchase_body,
    )

    if ("purchase" in data) == ("event" in data):
        raise ValidationFailed("give a purchase or an event", {"purchase": ["give exactly one of purchase, event"]})
    if ("member_id" in data) == ("member" in data):
        raise ValidationFailed("give a member", {"member_id": ["give exactly one of member_id, member"]})
    program = get_program(session)
    if data.get("rules") is not None:
        rule_set = engine.compile_rules(_compile_inline(data["rules"]))
    else:
        rule_set = current_rule_set(session, program)
    facts_member, tier_multiplier = member_facts_for(session, data.get("member_id"), data.get("member"))
    if "purchase" in data:
        purchase = data["purchase"]
        validate_purchase_body(purchase, program)
        trigger, at = "purchase", purchase.get("occurred_at") or now
        facts = purchase_facts(purchase, at)
    else:
        event = data["event"]
        trigger, at = f"event:{event['type']}", event.get("occurred_at") or now
        facts = event_facts(event, at)
    facts["member"] = facts_member
    evaluation = engine.evaluate(rule_set, trigger, facts, at=at, tier_multiplier=tier_multiplier,
                                 only_active=False)
    return {
        "points": evaluation.points,
        "awards": [award_view(a) for a in evaluation.awards],
        "outcomes": [
            {"rule_id": o.rule_id, "rule_version": o.rule_version, "rule_name": o.rule_name,
             "matched": o.matched, "points": o.points, "reason": o.reason}
            for o in evaluation.outcomes
        ],
    }


def _compile_inline(definitions) -> list[engine.Rule]:
    """Compile the rules a simulation brings along; errors name `rules.<i>.<path>`."""
    compiled, errors = [], {}
    for i, rule in enumerate(definitions):
        try:
            compiled.append(compile_definition(rule, f"draft-{i}", 1, rule.get("status", "active")))
        except InvalidRule as err:
            for path, messages in (err.errors or {}).items():
                errors[f"rules.{i}.{path}" if path else f"rules.{i}"] = messages
    if errors:
        raise InvalidRule("Some rules are not valid", errors)
    return compiled


def award_view(award: engine.Award) -> dict:
    return {"rule_id": award.rule_id, "rule_version": award.rule_version, "rule_name": award.rule_name,
            "points": award.points}
