from flask import current_app, request
from flask_smorest import Blueprint
from marshmallow import ValidationError

from ..auth.decorators import require
from ..errors import DomainError, ValidationFailed, flatten_messages
from ..idempotency import Outcome
from ..responses import created, created_as_is
from ..timeutil import utcnow
from ..transactions import GroupCommit, run_read, run_write
from . import services
from .schemas import (
    BatchResultSchema,
    BatchSchema,
    EventCreateSchema,
    EventResultSchema,
    PurchaseCreateSchema,
    PurchaseResultSchema,
    PurchaseSchema,
    RefundCreateSchema,
    RefundResultSchema,
)

blp = Blueprint("purchases", __name__, url_prefix="/v1", description="Purchases, refunds and events")
# The one instance every purchase body is loaded with: by the route, each entry of a batch,
# and the purchase posts answered before Flask (purchase_posts.py).
purchase_schema = PurchaseCreateSchema()
# Set on a request whose purchase was refused, or whose transaction failed, before Flask
# (purchase_posts.py): the route raises that error rather than apply the purchase again.
NOT_APPLIED = "loyalty.purchase_not_applied"


def _apply_purchases_together(requests: list[tuple[dict, object]]) -> list:
    """Apply concurrent single purchases in one transaction, each answered as if alone."""
    now = max(at for _, at in requests)
    entries = [services.BatchEntry(data["transaction_id"], data) for data, _ in requests]
    return run_write(lambda session: services.apply_purchases(session, entries, now))


@blp.record_once
def _set_up_group_commit(state):
    state.app.extensions["purchases_group_commit"] = GroupCommit(
        _apply_purchases_together, lambda: current_app.config["LOYALTY_GROUP_COMMIT_MAX"])


@blp.route("/purchases", methods=["POST"])
@require("purchases")
@blp.arguments(purchase_schema)
@blp.response(201, PurchaseResultSchema)
@blp.alt_response(200, schema=PurchaseResultSchema, description="A replay of an earlier identical request")
def create_purchase(data):
    not_applied = request.environ.get(NOT_APPLIED)
    if not_applied is not None:
        raise not_applied
    return created_as_is(apply_purchase(data))


def apply_purchase(data: dict) -> Outcome:
    """Apply a purchase with those posted meanwhile to this worker (group commit); raise its refusal."""
    result = current_app.extensions["purchases_group_commit"].submit((data, utcnow()))
    if isinstance(result, DomainError):
        raise result
    return result


@blp.route("/purchases/batch", methods=["POST"])
@require("purchases")
@blp.arguments(BatchSchema())
@blp.response(200, BatchResultSchema)
def create_purchases_batch(data):
    entries = []
    for raw in data["purchases"]:
        transaction_id = raw.get("transaction_id")
        transaction_id = transaction_id if isinstance(transaction_id, str) else None
        try:
            entries.append(services.BatchEntry(transaction_id, data=purchase_schema.load(raw)))
        except ValidationError as err:
            refusal = ValidationFailed("Some fields are not valid", flatten_messages(err.messages))
            entries.append(services.BatchEntry(transaction_id, refusal=refusal))
    now = utcnow()
    results = run_write(lambda session: services.create_purchases_batch(session, entries, now))
    return {"results": results}


@blp.route("/purchases/<transaction_id>", methods=["GET"])
@require("purchases")
@blp.response(200, PurchaseSchema)
def get_purchase(transaction_id):
    return run_read(lambda session: services.get_purchase(session, transaction_id))


@blp.route("/purchases/<transaction_id>/refunds", methods=["POST"])
@require("purchases")
@blp.arguments(RefundCreateSchema())
@blp.response(201, RefundResultSchema)
@blp.alt_response(200, schema=RefundResultSchema, description="A replay of an earlier identical request")
def create_refund(data, transaction_id):
    now = utcnow()
    return created(run_write(lambda session: services.create_refund(session, transaction_id, data, now)))


@blp.route("/events", methods=["POST"])
@require("events")
@blp.arguments(EventCreateSchema())
@blp.response(201, EventResultSchema)
@blp.alt_response(200, schema=EventResultSchema, description="A replay of an earlier identical request")
def create_event(data):
    now = utcnow()
    return created(run_write(lambda session: services.create_event(session, data, now)))
