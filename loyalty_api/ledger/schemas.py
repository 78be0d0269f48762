from marshmallow import fields, validate

from ..schemas import BalanceSchema, ClientId, Points, StrictSchema, Timestamp


class SourceSchema(StrictSchema):
    type = fields.String()
    id = fields.String()


class LedgerEntrySchema(StrictSchema):
    id = fields.String()
    type = fields.String()
    points = fields.Integer()
    status = fields.String()
    created_at = Timestamp()
    available_at = Timestamp(allow_none=True)
    expires_at = Timestamp(allow_none=True)
    source = fields.Nested(SourceSchema)
    rule_id = fields.String(allow_none=True)
    rule_version = fields.Integer(allow_none=True)
    description = fields.String()


class LedgerPageSchema(StrictSchema):
    data = fields.List(fields.Nested(LedgerEntrySchema))
    next_cursor = fields.String(allow_none=True)


class AdjustmentCreateSchema(StrictSchema):
    adjustment_id = ClientId(required=True)
    points = Points(nonzero=True, required=True)
    reason = fields.String(required=True, validate=validate.Length(min=1, max=500))


class AdjustmentResultSchema(StrictSchema):
    id = fields.String()
    adjustment_id = fields.String()
    member_id = fields.String()
    points = fields.Integer()
    reason = fields.String()
    balance = fields.Nested(BalanceSchema)
