"""A small demo program: settings, earn and burn rules, tiers and a few members."""

from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .ids import new_id
from .members.models import Member
from .members.services import create_member
from .program.services import update_program
from .rewards.services import create_reward
from .rules_admin.models import Rule
from .rules_admin.services import create_rule
from .tiers.models import Tier

DEMO_RULES = [
    {"name": "1 point per 1.00", "kind": "earn", "trigger": "purchase", "status": "active", "priority": 10,
     "effect": {"type": "per_amount", "points": 1, "per": 100, "rounding": "floor"}},
    {"name": "Double points on coffee", "kind": "earn", "trigger": "purchase", "status": "active",
     "priority": 5, "item_filter": {"==": [{"var": "item.category"}, "coffee"]},
     "effect": {"type": "multiplier", "factor": 2}},
    {"name": "Big basket bonus", "kind": "earn", "trigger": "purchase", "status": "active", "priority": 5,
     "conditions": {">=": [{"var": "purchase.total"}, 10000]},
     "effect": {"type": "fixed", "points": 50},
     "limits": {"per_member": {"count": 1, "period": "week"}}},
    {"name": "Welcome bonus", "kind": "earn", "trigger": "enrollment", "status": "active", "priority": 0,
     "effect": {"type": "fixed", "points": 100}},
    {"name": "App review", "kind": "earn", "trigger": "event:app_review", "status": "active", "priority": 0,
     "effect": {"type": "fixed", "points": 25}, "limits": {"per_member": {"count": 1, "period": "lifetime"}}},
    {"name": "100 points = 1.00", "kind": "burn", "trigger": "redemption", "status": "active", "priority": 0,
     "effect": {"type": "conversion", "points": 100, "value": 100},
     "limits": {"min_points": 100, "step": 50, "max_order_share": 0.5}},
]

DEMO_TIERS = [
    ("silver", "Silver", 1, 500, Decimal("1.25")),
    ("gold", "Gold", 2, 2000, Decimal("1.5")),
]

DEMO_REWARDS = [
    {"code": "free-coffee", "name": "A free coffee", "cost_points": 300},
    {"code": "tote-bag", "name": "Tote bag", "cost_points": 1500, "stock": 100},
    {"code": "tasting", "name": "Private tasting", "cost_points": 5000, "stock": 10, "tiers": ["gold"]},
]

DEMO_MEMBERS = [
    ("demo-alice", "alice@example.com", "Alice Example"),
    ("demo-bob", "bob@example.com", "Bob Example"),
    ("demo-carol", "carol@example.com", "Carol Example"),
]


def load_demo(session: Session, now: datetime) -> bool:
    """Load the demo program into an empty database; return False when it was not empty."""
    has_members = session.execute(select(func.count()).select_from(Member)).scalar()
    has_rules = session.execute(select(func.count()).select_from(Rule)).scalar()
    if has_members or has_rules:
        return False
    update_program(session, {"currency": "EUR", "pending_days": 0, "expiry": {"mode": "fixed", "months": 24},
                             "negative_balance": "forbid"}, now)
    for code, name, rank, threshold, multiplier in DEMO_TIERS:
        session.add(Tier(id=new_id(), code=code, name=name, rank=rank, threshold=threshold,
                         multiplier=multiplier, benefits=[], created_at=now, updated_at=now))
    for rule in DEMO_RULES:
        create_rule(session, rule, now)
    for reward in DEMO_REWARDS:
        create_reward(session, reward, now)
    for external_id, email, name in DEMO_MEMBERS:
        create_member(session, {"external_id": external_id, "email": email, "name": name}, now)
    return True
