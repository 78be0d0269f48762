from marshmallow import fields, validate

from ..schemas import ID_LENGTH, BalanceSchema, ListQuerySchema, StrictSchema, Timestamp


class MemberCreateSchema(StrictSchema):
    external_id = fields.String(required=True, validate=ID_LENGTH)
    email = fields.Email(allow_none=True, validate=validate.Length(max=320))
    name = fields.String(allow_none=True, validate=validate.Length(max=200))
    birthdate = fields.Date(allow_none=True)
    referral_code = fields.String(allow_none=True, validate=validate.Length(min=1, max=32))
    metadata = fields.Dict(keys=fields.String(validate=validate.Length(max=100)), allow_none=True)


class MemberUpdateSchema(StrictSchema):
    email = fields.Email(allow_none=True, validate=validate.Length(max=320))
    name = fields.String(allow_none=True, validate=validate.Length(max=200))
    birthdate = fields.Date(allow_none=True)
    status = fields.String(validate=validate.OneOf(["active", "suspended"]))
    metadata = fields.Dict(keys=fields.String(validate=validate.Length(max=100)), allow_none=True)
    stripe_customer_id = fields.String(allow_none=True, validate=validate.Length(min=1, max=255))


class MemberListQuerySchema(ListQuerySchema):
    external_id = fields.String(validate=ID_LENGTH)
    email = fields.String(validate=validate.Length(min=1, max=320))


class TierRefSchema(StrictSchema):
    code = fields.String()
    name = fields.String()


class MemberSchema(StrictSchema):
    id = fields.String()
    external_id = fields.String()
    email = fields.String(allow_none=True)
    name = fields.String(allow_none=True)
    birthdate = fields.Date(allow_none=True)
    status = fields.String()
    tier = fields.Nested(TierRefSchema, allow_none=True)
    referral_code = fields.String()
    enrolled_at = Timestamp()
    metadata = fields.Dict()
    stripe_customer_id = fields.String(allow_none=True)
    balance = fields.Nested(BalanceSchema)


class MemberPageSchema(StrictSchema):
    data = fields.List(fields.Nested(MemberSchema))
    next_cursor = fields.String(allow_none=True)
