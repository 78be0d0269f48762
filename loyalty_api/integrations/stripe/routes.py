from flask import current_app, request
from flask_smorest import Blueprint

from ...auth.decorators import require
from ...responses import REPLAYED_HEADER
from ...timeutil import utcnow
from ...transactions import run_read, run_write
from . import services
from .schemas import StripeEventListQuerySchema, StripeEventPageSchema, StripeEventSchema

blp = Blueprint("stripe", __name__, url_prefix="/v1/integrations/stripe",
                description="Stripe: payments and refunds become purchases and refunds")

_WEBHOOK_DOC = {
    "description": "Stripe's webhook endpoint, authenticated by the `Stripe-Signature` header alone (no bearer "
                   "token). The body is a Stripe event exactly as Stripe sends it. A bad, missing or stale "
                   "signature is 400 and stores nothing; every verified event is acknowledged with 200 and "
                   "applied at most once.",
    "parameters": [{"in": "header", "name": "Stripe-Signature", "required": True, "schema": {"type": "string"},
                    "description": "t=<timestamp>,v1=<HMAC-SHA256 of \"<timestamp>.<body>\"> (Stripe's scheme)"}],
    "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
}


@blp.route("/webhook", methods=["POST"])
@blp.doc(security=[], **_WEBHOOK_DOC)
@blp.response(200, StripeEventSchema)
def receive_webhook():
    config = current_app.config
    event = services.verify_event(
        request.get_data(cache=False), request.headers.get("Stripe-Signature"),
        services.webhook_secrets(config.get("STRIPE_WEBHOOK_SECRET")), api_key=config.get("STRIPE_API_KEY") or "",
        tolerance=int(config.get("STRIPE_WEBHOOK_TOLERANCE", services.DEFAULT_TOLERANCE)))
    now = utcnow()
    outcome = run_write(lambda session: services.receive_event(session, event, now))
    if outcome.replayed:
        return outcome.body, 200, {REPLAYED_HEADER: "true"}
    return outcome.body


@blp.route("/events", methods=["GET"])
@require("integrations")
@blp.arguments(StripeEventListQuerySchema(), location="query")
@blp.response(200, StripeEventPageSchema)
def list_events(query):
    page = run_read(lambda session: services.list_events(session, query["status"], query["limit"], query["cursor"]))
    return page


@blp.route("/unmatched/<event_id>/replay", methods=["POST"])
@require("integrations")
@blp.response(200, StripeEventSchema)
def replay_unmatched(event_id):
    now = utcnow()
    return run_write(lambda session: services.replay_unmatched(session, event_id, now))
