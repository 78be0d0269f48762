from marshmallow import fields, validate

from ..schemas import (
    CURRENCY,
    ID_LENGTH,
    BalanceSchema,
    ClientId,
    DirectLoadSchema,
    Money,
    StrictSchema,
    Timestamp,
)

EVENT_TYPE = validate.Regexp(r"^[A-Za-z0-9_.-]{1,100}$", error="letters, digits, _ . - (at most 100)")
MAX_ITEMS = 1000
MAX_BATCH = 1000


class PurchaseItemSchema(DirectLoadSchema):
    sku = fields.String(required=True, validate=validate.Length(min=1, max=100))
    category = fields.String(allow_none=True, validate=validate.Length(max=100))
    quantity = fields.Integer(strict=True, required=True, validate=validate.Range(1, 1_000_000))
    unit_price = Money(required=True)


class PurchaseCreateSchema(DirectLoadSchema):
    transaction_id = ClientId(required=True)
    member_id = fields.String(validate=ID_LENGTH)
    member_external_id = fields.String(validate=ID_LENGTH)
    occurred_at = Timestamp(required=True)
    currency = fields.String(required=True, validate=CURRENCY)
    total = Money(required=True)
    channel = fields.String(allow_none=True, validate=validate.Length(max=64))
    store_id = fields.String(allow_none=True, validate=validate.Length(max=200))
    items = fields.List(fields.Nested(PurchaseItemSchema), allow_none=True,
                        validate=validate.Length(max=MAX_ITEMS))
    metadata = fields.Dict(keys=fields.String(validate=validate.Length(max=100)), allow_none=True)


class AwardSchema(StrictSchema):
    rule_id = fields.String(allow_none=True)
    rule_version = fields.Integer(allow_none=True)
    rule_name = fields.String()
    points = fields.Integer()


class PurchaseResultSchema(StrictSchema):
    id = fields.String()
    transaction_id = fields.String()
    member_id = fields.String()
    points = fields.Integer()
    pending_until = fields.String(allow_none=True)
    awards = fields.List(fields.Nested(AwardSchema))
    balance = fields.Nested(BalanceSchema)


class RefundSummarySchema(StrictSchema):
    refund_id = fields.String()
    amount = fields.Integer()
    points_reversed = fields.Integer()
    created_at = Timestamp()


class PurchaseSchema(StrictSchema):
    id = fields.String()
    transaction_id = fields.String()
    member_id = fields.String()
    occurred_at = Timestamp()
    currency = fields.String()
    total = fields.Integer()
    channel = fields.String(allow_none=True)
    store_id = fields.String(allow_none=True)
    items = fields.List(fields.Dict())
    metadata = fields.Dict()
    points = fields.Integer()
    pending_until = fields.String(allow_none=True)
    awards = fields.List(fields.Nested(AwardSchema))
    refunded_amount = fields.Integer()
    points_reversed = fields.Integer()
    refunds = fields.List(fields.Nested(RefundSummarySchema))
    created_at = Timestamp()


class BatchSchema(StrictSchema):
    # Each entry is validated on its own, so one malformed purchase fails alone.
    purchases = fields.List(fields.Dict(), required=True, validate=validate.Length(min=1, max=MAX_BATCH))


class BatchEntrySchema(StrictSchema):
    transaction_id = fields.String(allow_none=True)
    status = fields.Integer()
    body = fields.Dict()


class BatchResultSchema(StrictSchema):
    results = fields.List(fields.Nested(BatchEntrySchema))


class RefundCreateSchema(StrictSchema):
    refund_id = ClientId(required=True)
    amount = Money(minimum=1, required=True)


class RefundResultSchema(StrictSchema):
    id = fields.String()
    refund_id = fields.String()
    transaction_id = fields.String()
    amount = fields.Integer()
    points_reversed = fields.Integer()
    balance = fields.Nested(BalanceSchema)


class EventCreateSchema(StrictSchema):
    event_id = ClientId(required=True)
    type = fields.String(required=True, validate=EVENT_TYPE)
    member_id = fields.String(validate=ID_LENGTH)
    member_external_id = fields.String(validate=ID_LENGTH)
    occurred_at = Timestamp(required=True)
    attributes = fields.Dict(keys=fields.String(validate=validate.Length(max=100)), load_default=dict)


class EventResultSchema(StrictSchema):
    id = fields.String()
    event_id = fields.String()
    member_id = fields.String()
    points = fields.Integer()
    pending_until = fields.String(allow_none=True)
    awards = fields.List(fields.Nested(AwardSchema))
    balance = fields.Nested(BalanceSchema)
