"""The rewards catalogue: what members may take for points, for which tiers, in what stock."""

from collections.abc import Iterable, Mapping
from datetime import datetime

from sqlalchemy import delete, exists, insert, select, update
from sqlalchemy.orm import Session

from ..errors import NotFound, RewardExists, RewardUnavailable, ValidationFailed
from ..ids import new_id
from ..members.models import Member
from ..pagination import Page, decode_cursor, encode_cursor
from ..tiers.models import Tier
from .models import Reward, RewardTier


def reward_view(reward: Reward, tiers: Iterable[str]) -> dict:
    return {"id": reward.id, "code": reward.code, "name": reward.name, "cost_points": reward.cost_points,
            "stock": reward.stock, "tiers": sorted(tiers), "active": reward.active,
            "created_at": reward.created_at, "updated_at": reward.updated_at}


def _tiers_of(session: Session, reward_ids: list[str]) -> dict[str, list[str]]:
    tiers: dict[str, list[str]] = {reward_id: [] for reward_id in reward_ids}
    if reward_ids:
        rows = session.execute(select(RewardTier.reward_id, RewardTier.tier_code)
                               .where(RewardTier.reward_id.in_(reward_ids)))
        for reward_id, tier_code in rows:
            tiers[reward_id].append(tier_code)
    return tiers


def _check_tiers(session: Session, codes: list[str]) -> list[str]:
    codes = sorted(set(codes))
    known = set(session.execute(select(Tier.code).where(Tier.code.in_(codes))).scalars()) if codes else set()
    unknown = [code for code in codes if code not in known]
    if unknown:
        raise ValidationFailed("unknown tier", {"tiers": [f"no tier has the code {code!r}" for code in unknown]})
    return codes


def _check_code_free(session: Session, code: str, reward_id: str | None = None) -> None:
    query = select(Reward.id).where(Reward.code == code)
    if reward_id is not None:
        query = query.where(Reward.id != reward_id)
    if session.execute(query).first() is not None:
        raise RewardExists(f"code {code!r} is taken", {"code": ["another reward has this code"]})


def _set_tiers(session: Session, reward_id: str, codes: list[str]) -> None:
    session.execute(delete(RewardTier).where(RewardTier.reward_id == reward_id))
    if codes:
        session.execute(insert(RewardTier), [{"reward_id": reward_id, "tier_code": code} for code in codes])


def create_reward(session: Session, data: Mapping, now: datetime) -> dict:
    """Add a reward to the catalogue; raise RewardExists for a taken code."""
    _check_code_free(session, data["code"])
    tiers = _check_tiers(session, data.get("tiers") or [])
    reward = Reward(id=new_id(), code=data["code"], name=data["name"], cost_points=data["cost_points"],
                    stock=data.get("stock"), active=data.get("active", True), created_at=now, updated_at=now)
    session.add(reward)
    session.flush()
    _set_tiers(session, reward.id, tiers)
    return reward_view(reward, tiers)


def _load(session: Session, reward_id: str) -> Reward:
    reward = session.get(Reward, reward_id)
    if reward is None:
        raise NotFound("No such reward")
    return reward


def get_reward(session: Session, reward_id: str) -> dict:
    reward = _load(session, reward_id)
    return reward_view(reward, _tiers_of(session, [reward.id])[reward.id])


def update_reward(session: Session, reward_id: str, changes: Mapping, now: datetime) -> dict:
    """Change a reward; `tiers` replaces the restriction, `stock` sets what is left (null: unlimited)."""
    reward = _load(session, reward_id)
    if "code" in changes:
        _check_code_free(session, changes["code"], reward_id)
    for key in ("code", "name", "cost_points", "stock", "active"):
        if key in changes:
            setattr(reward, key, changes[key])
    if "tiers" in changes:
        _set_tiers(session, reward_id, _check_tiers(session, changes["tiers"] or []))
    reward.updated_at = now
    session.flush()
    return reward_view(reward, _tiers_of(session, [reward.id])[reward.id])


def deactivate_reward(session: Session, reward_id: str, now: datetime) -> None:
    """Take a reward out of the catalogue; it stays for the redemptions that name it."""
    _load(session, reward_id)
    session.execute(update(Reward).where(Reward.id == reward_id).values(active=False, updated_at=now))


def _open_to(tier_code: str | None):
    """The SQL condition: a reward without tier restriction, or one naming `tier_code`."""
    unrestricted = ~exists().where(RewardTier.reward_id == Reward.id)
    if tier_code is None:
        return unrestricted
    return unrestricted | exists().where(RewardTier.reward_id == Reward.id, RewardTier.tier_code == tier_code)


def _member_tier(session: Session, member_id: str) -> str | None:
    row = session.execute(select(Tier.code).select_from(Member).outerjoin(Tier, Tier.id == Member.tier_id)
                          .where(Member.id == member_id)).first()
    if row is None:
        raise NotFound("No such member")
    return row.code


def list_rewards(session: Session, filters: Mapping, limit: int, cursor: str | None, *,
                 member_id: str | None = None) -> Page:
    """Return rewards, newest first, by `active` and by the `tier` that may redeem them.

    For a member (`member_id`), only what that member may redeem now: active, open to its
    tier, and in stock, whatever the filters say.
    """
    query = select(Reward).order_by(Reward.id.desc()).limit(limit + 1)
    if member_id is not None:
        query = query.where(Reward.active.is_(True), _open_to(_member_tier(session, member_id)),
                            Reward.stock.is_(None) | (Reward.stock > 0))
    else:
        if filters.get("active") is not None:
            query = query.where(Reward.active.is_(filters["active"]))
        if filters.get("tier") is not None:
            query = query.where(_open_to(filters["tier"]))
    if cursor:
        query = query.where(Reward.id < decode_cursor(cursor))
    rewards = session.execute(query).scalars().all()
    page = rewards[:limit]
    tiers = _tiers_of(session, [r.id for r in page])
    return Page([reward_view(r, tiers[r.id]) for r in page],
                encode_cursor(page[-1].id) if len(rewards) > limit else None)


def offered_reward(session: Session, reward_id: str, tier_code: str | None) -> Reward:
    """Return a reward a member of `tier_code` may redeem.

    Raises RewardUnavailable when the reward is unknown, inactive or not open to the tier.
    Stock is not checked here: `take_stock` takes it, once the points are debited.
    """
    reward = session.execute(select(Reward).where(Reward.id == reward_id)).scalar_one_or_none()
    if reward is None or not reward.active:
        raise RewardUnavailable("The reward is not offered", {"reward_id": ["is not an active reward"]})
    allowed = session.execute(select(_open_to(tier_code)).select_from(Reward).where(Reward.id == reward_id)).scalar()
    if not allowed:
        raise RewardUnavailable("The reward is not offered to this member's tier",
                                {"reward_id": ["is not offered to this member's tier"]})
    return reward


def take_stock(session: Session, reward_id: str) -> None:
    """Take one unit of a reward; raise RewardUnavailable when none is left.

    One guarded UPDATE: concurrent claims queue on the row lock and each re-checks
    `stock > 0`, so the stock never goes below zero. Unlimited stock (null) is left alone.
    """
    taken = session.execute(
        update(Reward).where(Reward.id == reward_id, Reward.stock.is_(None) | (Reward.stock > 0))
        .values(stock=Reward.stock - 1).execution_options(synchronize_session=False)
    ).rowcount
    if taken != 1:
        raise RewardUnavailable("The reward is out of stock", {"reward_id": ["is out of stock"]})


def release_reward(session: Session, reward_id: str) -> None:
    """Put back the unit of a reward a cancelled redemption had taken (unlimited stock stays so)."""
    session.execute(update(Reward).where(Reward.id == reward_id, Reward.stock.is_not(None))
                    .values(stock=Reward.stock + 1).execution_options(synchronize_session=False))
