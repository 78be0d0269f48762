from flask_smorest import Blueprint

from ..auth.decorators import current_principal, require
from ..responses import REPLAYED_HEADER, created
from ..timeutil import utcnow
from ..transactions import run_read, run_write
from . import services
from .schemas import (
    CancellationSchema,
    QuoteRequestSchema,
    QuoteSchema,
    RedemptionCreateSchema,
    RedemptionSchema,
)

blp = Blueprint("redemptions", __name__, url_prefix="/v1", description="Redemptions (burning points)")


@blp.route("/members/<member_id>/redemptions/quote", methods=["POST"])
@require("redemptions")
@blp.arguments(QuoteRequestSchema())
@blp.response(200, QuoteSchema)
def quote_redemption(data, member_id):
    """Quote the most points the member may spend on an order; writes nothing."""
    now = utcnow()
    return run_read(lambda session: services.quote_redemption(session, member_id, data, now))


@blp.route("/members/<member_id>/redemptions", methods=["POST"])
@require("redemptions")
@blp.arguments(RedemptionCreateSchema())
@blp.response(201, RedemptionSchema)
@blp.alt_response(200, schema=RedemptionSchema, description="A replay of an earlier identical request")
def create_redemption(data, member_id):
    """Spend points (priced by the burn rule) or take a reward, once per redemption_id."""
    now = utcnow()
    return created(run_write(lambda session: services.create_redemption(session, member_id, data, now)))


@blp.route("/redemptions/<redemption_id>/cancel", methods=["POST"])
@require("redemptions", member_route=True)
@blp.response(200, CancellationSchema)
def cancel_redemption(redemption_id):
    """Cancel a redemption: its points go back to the lots they came from, once."""
    now = utcnow()
    member_id = current_principal().member_id
    outcome = run_write(lambda session: services.cancel_redemption(session, redemption_id, now,
                                                                   member_id=member_id))
    return outcome.body, 200, ({REPLAYED_HEADER: "true"} if outcome.replayed else {})
