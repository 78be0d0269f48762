from flask_smorest import Blueprint

from ..auth.decorators import require
from ..schemas import ListQuerySchema
from ..timeutil import utcnow
from ..transactions import run_read, run_write
from . import services
from .schemas import TierChangePageSchema, TierCreateSchema, TierPageSchema, TierSchema, TierUpdateSchema

blp = Blueprint("tiers", __name__, url_prefix="/v1", description="Tiers and members' tier history")


@blp.route("/tiers", methods=["POST"])
@require("tiers")
@blp.arguments(TierCreateSchema())
@blp.response(201, TierSchema)
def create_tier(data):
    now = utcnow()
    return run_write(lambda session: services.create_tier(session, data, now))


@blp.route("/tiers", methods=["GET"])
@require("tiers")
@blp.arguments(ListQuerySchema(), location="query")
@blp.response(200, TierPageSchema)
def list_tiers(query):
    page = run_read(lambda session: services.list_tiers(session, query["limit"], query["cursor"]))
    return page


@blp.route("/tiers/<tier_id>", methods=["GET"])
@require("tiers")
@blp.response(200, TierSchema)
def get_tier(tier_id):
    return run_read(lambda session: services.get_tier(session, tier_id))


@blp.route("/tiers/<tier_id>", methods=["PATCH"])
@require("tiers")
@blp.arguments(TierUpdateSchema())
@blp.response(200, TierSchema)
def update_tier(changes, tier_id):
    """Change a tier; members move to a changed ladder when they next earn or at the review."""
    now = utcnow()
    return run_write(lambda session: services.update_tier(session, tier_id, changes, now))


@blp.route("/tiers/<tier_id>", methods=["DELETE"])
@require("tiers")
@blp.response(204)
def delete_tier(tier_id):
    """Delete a tier that no member holds and no reward is restricted to."""
    run_write(lambda session: services.delete_tier(session, tier_id))


@blp.route("/members/<member_id>/tier-history", methods=["GET"])
@require("members:read")
@blp.arguments(ListQuerySchema(), location="query")
@blp.response(200, TierChangePageSchema)
def list_tier_history(query, member_id):
    """Return the member's tier changes, newest first, each with its reason."""
    page = run_read(lambda session: services.list_tier_history(session, member_id, query["limit"], query["cursor"]))
    return page
