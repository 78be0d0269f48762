"""Every model of the service, imported in one place for Alembic and the drift check."""

from .auth.models import ApiKey
from .ledger.models import Adjustment, LedgerEntry, LotAllocation, PointLot, RuleUsage
from .members.models import Member, MemberBalance
from .program.models import Program
from .purchases.models import Event, Purchase, Refund
from .rules_admin.models import Rule, RuleVersion
from .tiers.models import Tier

__all__ = [
    "Adjustment", "ApiKey", "Event", "LedgerEntry", "LotAllocation", "Member", "MemberBalance",
    "PointLot", "Program", "Purchase", "Refund", "Rule", "RuleUsage", "RuleVersion", "Tier",
]
