from flask import current_app
from flask_smorest import Blueprint

from ..timeutil import utcnow
from ..transactions import run_read
from . import services
from .decorators import require
from .schemas import MemberTokenSchema

blp = Blueprint("auth", __name__, url_prefix="/v1/members", description="Member tokens")


@blp.route("/<member_id>/tokens", methods=["POST"])
@require("member_tokens")
@blp.response(201, MemberTokenSchema)
def create_member_token(member_id):
    """Issue a short-lived token acting for this member only (its member, ledger, referrals,
    rewards list and its own redemptions)."""
    now = utcnow()
    secret, ttl = current_app.config["SECRET_KEY"], current_app.config["LOYALTY_MEMBER_TOKEN_TTL"]
    return run_read(lambda session: services.create_member_token(session, member_id, secret, ttl, now))
