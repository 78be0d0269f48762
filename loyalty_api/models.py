"""Every model of the service, imported in one place for Alembic and the drift check."""

from .auth.models import ApiKey
from .integrations.stripe.models import StripeEvent, StripeRefund
from .jobs.models import JobRun
from .ledger.models import Adjustment, LedgerEntry, LotAllocation, PointLot, RuleUsage
from .members.models import Member, MemberBalance
from .program.models import Program
from .purchases.models import Event, Purchase, Refund
from .redemptions.models import Redemption
from .referrals.models import Referral
from .rewards.models import Reward, RewardTier
from .rules_admin.models import Rule, RuleVersion
from .tiers.models import Tier, TierChange

__all__ = [
    "Adjustment", "ApiKey", "Event", "JobRun", "LedgerEntry", "LotAllocation", "Member", "MemberBalance",
    "PointLot", "Program", "Purchase", "Redemption", "Referral", "Refund", "Reward", "RewardTier", "Rule", "RuleUsage",
    "RuleVersion", "StripeEvent", "StripeRefund", "Tier", "TierChange",
]
