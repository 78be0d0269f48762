from marshmallow import fields, validate

from ...schemas import ListQuerySchema, StrictSchema, Timestamp

EVENT_STATUSES = ("applied", "ignored", "unmatched", "refused", "pending")


class StripeEventSchema(StrictSchema):
    id = fields.String()
    event_id = fields.String(metadata={"description": "Stripe's event id (evt_…)"})
    type = fields.String(metadata={"description": "Stripe's event type"})
    status = fields.String(validate=validate.OneOf(EVENT_STATUSES),
                           metadata={"description": "What the event did: applied, ignored, unmatched (no member "
                                                    "found; replayable), refused (with the reason) or pending "
                                                    "(a refund waiting for its payment)"})
    reason = fields.String(allow_none=True)
    member_id = fields.String(allow_none=True)
    payment_intent_id = fields.String(allow_none=True)
    refund_id = fields.String(allow_none=True)
    transaction_id = fields.String(allow_none=True, metadata={"description": "The purchase the payment became"})
    occurred_at = Timestamp(metadata={"description": "When Stripe created the event"})
    received_at = Timestamp()
    updated_at = Timestamp()


class StripeEventListQuerySchema(ListQuerySchema):
    status = fields.String(load_default=None, validate=validate.OneOf(EVENT_STATUSES))


class StripeEventPageSchema(StrictSchema):
    data = fields.List(fields.Nested(StripeEventSchema))
    next_cursor = fields.String(allow_none=True)
