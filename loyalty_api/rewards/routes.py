from flask_smorest import Blueprint

from ..auth.decorators import current_principal, require
from ..timeutil import utcnow
from ..transactions import run_read, run_write
from . import services
from .schemas import RewardCreateSchema, RewardListQuerySchema, RewardPageSchema, RewardSchema, RewardUpdateSchema

blp = Blueprint("rewards", __name__, url_prefix="/v1/rewards", description="Rewards catalogue")


@blp.route("", methods=["POST"])
@require("rewards")
@blp.arguments(RewardCreateSchema())
@blp.response(201, RewardSchema)
def create_reward(data):
    now = utcnow()
    return run_write(lambda session: services.create_reward(session, data, now))


@blp.route("", methods=["GET"])
@require("rewards:read", member_route=True)
@blp.arguments(RewardListQuerySchema(), location="query")
@blp.response(200, RewardPageSchema)
def list_rewards(query):
    """List rewards; a member token sees only the active, in-stock rewards its tier may redeem."""
    member_id = current_principal().member_id
    page = run_read(lambda session: services.list_rewards(session, query, query["limit"], query["cursor"],
                                                          member_id=member_id))
    return page


@blp.route("/<reward_id>", methods=["GET"])
@require("rewards:read")
@blp.response(200, RewardSchema)
def get_reward(reward_id):
    return run_read(lambda session: services.get_reward(session, reward_id))


@blp.route("/<reward_id>", methods=["PATCH"])
@require("rewards")
@blp.arguments(RewardUpdateSchema())
@blp.response(200, RewardSchema)
def update_reward(changes, reward_id):
    now = utcnow()
    return run_write(lambda session: services.update_reward(session, reward_id, changes, now))


@blp.route("/<reward_id>", methods=["DELETE"])
@require("rewards")
@blp.response(204)
def deactivate_reward(reward_id):
    """Deactivate a reward (it stays, for the redemptions that name it)."""
    now = utcnow()
    run_write(lambda session: services.deactivate_reward(session, reward_id, now))
