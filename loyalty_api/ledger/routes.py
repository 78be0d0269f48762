from flask_smorest import Blueprint

from ..auth.decorators import require
from ..responses import created
from ..schemas import ListQuerySchema
from ..timeutil import utcnow
from ..transactions import run_read, run_write
from . import services
from .schemas import AdjustmentCreateSchema, AdjustmentResultSchema, LedgerPageSchema

blp = Blueprint("ledger", __name__, url_prefix="/v1/members", description="Ledger and adjustments")


@blp.route("/<member_id>/ledger", methods=["GET"])
@require("members:read")
@blp.arguments(ListQuerySchema(), location="query")
@blp.response(200, LedgerPageSchema)
def list_ledger(query, member_id):
    page = run_read(lambda session: services.list_ledger(session, member_id, query["limit"], query["cursor"]))
    return page


@blp.route("/<member_id>/adjustments", methods=["POST"])
@require("adjustments")
@blp.arguments(AdjustmentCreateSchema())
@blp.response(201, AdjustmentResultSchema)
@blp.alt_response(200, schema=AdjustmentResultSchema, description="A replay of an earlier identical request")
def create_adjustment(data, member_id):
    now = utcnow()
    return created(run_write(lambda session: services.create_adjustment(session, member_id, data, now)))
