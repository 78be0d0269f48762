from flask_smorest import Blueprint

from ..auth.decorators import require
from ..timeutil import utcnow
from ..transactions import run_read, run_write
from . import services
from .schemas import (
    RuleCreateSchema,
    RuleListQuerySchema,
    RulePageSchema,
    RuleSchema,
    RuleUpdateSchema,
    RuleVersionListSchema,
    SimulateSchema,
    SimulationSchema,
    ValidationResultSchema,
)

blp = Blueprint("rules", __name__, url_prefix="/v1/rules", description="Earn and burn rules")


@blp.route("", methods=["POST"])
@require("rules")
@blp.arguments(RuleCreateSchema())
@blp.response(201, RuleSchema)
def create_rule(data):
    now = utcnow()
    return run_write(lambda session: services.create_rule(session, data, now))


@blp.route("", methods=["GET"])
@require("rules")
@blp.arguments(RuleListQuerySchema(), location="query")
@blp.response(200, RulePageSchema)
def list_rules(query):
    page = run_read(lambda session: services.list_rules(session, query, query["limit"], query["cursor"]))
    return page


@blp.route("/validate", methods=["POST"])
@require("rules")
@blp.arguments(RuleCreateSchema())
@blp.response(200, ValidationResultSchema)
def validate_rule(data):
    return services.validate_rule(data)


@blp.route("/simulate", methods=["POST"])
@require("rules")
@blp.arguments(SimulateSchema())
@blp.response(200, SimulationSchema)
def simulate(data):
    now = utcnow()
    return run_read(lambda session: services.simulate(session, data, now))


@blp.route("/<rule_id>", methods=["GET"])
@require("rules")
@blp.response(200, RuleSchema)
def get_rule(rule_id):
    return run_read(lambda session: services.get_rule(session, rule_id))


@blp.route("/<rule_id>", methods=["PATCH"])
@require("rules")
@blp.arguments(RuleUpdateSchema())
@blp.response(200, RuleSchema)
def update_rule(changes, rule_id):
    now = utcnow()
    return run_write(lambda session: services.update_rule(session, rule_id, changes, now))


@blp.route("/<rule_id>/versions", methods=["GET"])
@require("rules")
@blp.response(200, RuleVersionListSchema)
def list_rule_versions(rule_id):
    return {"data": run_read(lambda session: services.list_rule_versions(session, rule_id))}
