from flask_smorest import Blueprint

from ..auth.decorators import require
from ..schemas import ListQuerySchema
from ..transactions import run_read
from . import services
from .schemas import ReferralPageSchema

blp = Blueprint("referrals", __name__, url_prefix="/v1/members", description="Referrals")


@blp.route("/<member_id>/referrals", methods=["GET"])
@require("referrals:read")
@blp.arguments(ListQuerySchema(), location="query")
@blp.response(200, ReferralPageSchema)
def list_referrals(query, member_id):
    """Return the referrals the member made, newest first; a member token may read its own."""
    page = run_read(lambda session: services.list_referrals(session, member_id, query["limit"], query["cursor"]))
    return page
