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


def compile_definition(definition: Mapping, rule_id: str, version: int, status: str) -> engine.Rule:
    """Compile a stored or submitted definition; raise InvalidRule with the engine's paths."""
    try:
        return engine.compile_rule({**definition, "status": status}, rule_id=rule_id, version=version)
    except engine.RuleError as err:
        raise InvalidRule(str(err), err.errors) from err


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
        return {"valid": False, "errors": err.errors}
    return {"valid": True, "errors": {}}


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
        rule_set = engine.compile_rules(
            compile_definition(rule, f"draft-{i}", 1, rule.get("status", "active"))
            for i, rule in enumerate(data["rules"]))
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


def award_view(award: engine.Award) -> dict:
    return {"rule_id": award.rule_id, "rule_version": award.rule_version, "rule_name": award.rule_name,
            "points": award.points}


def reset_cache() -> None:
    """Forget the compiled rule set (tests that swap databases call this)."""
    global _cache
    _cache = None

