from flask_smorest import Blueprint

from ..auth.decorators import require
from ..extensions import db
from ..schemas import ListQuerySchema
from ..timeutil import utcnow
from ..transactions import run_read
from . import services
from .schemas import JobRunPageSchema, JobRunSchema

blp = Blueprint("jobs", __name__, url_prefix="/v1/jobs",
                description="Jobs: activate-pending, expire-points, review-tiers, reconcile-balances")


@blp.route("/<name>/runs", methods=["POST"])
@require("jobs")
@blp.response(201, JobRunSchema)
def run_job(name):
    """Run a job now and return its run: succeeded, failed (with its error) or skipped (already running)."""
    now = utcnow()
    # The job runner commits chunk by chunk itself (services.run_job).
    return services.run_job(db.session, name, now, trigger="api")


@blp.route("/<name>/runs", methods=["GET"])
@require("jobs")
@blp.arguments(ListQuerySchema, location="query")
@blp.response(200, JobRunPageSchema)
def list_runs(query, name):
    page = run_read(lambda session: services.list_runs(session, name, query["limit"], query["cursor"]))
    return page
