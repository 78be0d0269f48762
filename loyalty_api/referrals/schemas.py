from marshmallow import fields

from ..schemas import StrictSchema, Timestamp


class ReferralSchema(StrictSchema):
    id = fields.String()
    referee_id = fields.String()
    status = fields.String(metadata={"description": "pending | completed | expired | rejected"})
    reason = fields.String(allow_none=True, metadata={"description": "Why a referral was rejected"})
    created_at = Timestamp()
    expires_at = Timestamp(metadata={"description": "The last moment a purchase can complete it"})
    completed_at = Timestamp(allow_none=True)


class ReferralPageSchema(StrictSchema):
    data = fields.List(fields.Nested(ReferralSchema))
    next_cursor = fields.String(allow_none=True)
