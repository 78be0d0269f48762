from collections.abc import Mapping

from marshmallow import fields, validate

from ..schemas import ID_LENGTH, BalanceSchema, ListQuerySchema, StrictSchema, Timestamp
from ..timeutil import isoformat


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


def dump_member(view: Mapping) -> dict:
    """Return what `MemberSchema().dump(view)` returns, for a view of members.services, without marshmallow.

    The balance read (GET /v1/members/{id}) is the most frequent request, and the schema's dump
    visits every field, nested ones too, to change two: every other value of a view already has
    its JSON type.
    tests/test_members.py holds the two dumps equal, byte for byte once serialized.
    """
    birthdate = view["birthdate"]
    return {**view, "birthdate": birthdate.isoformat() if birthdate is not None else None,
            "enrolled_at": isoformat(view["enrolled_at"])}


class MemberPageSchema(StrictSchema):
    data = fields.List(fields.Nested(MemberSchema))
    next_cursor = fields.String(allow_none=True)
