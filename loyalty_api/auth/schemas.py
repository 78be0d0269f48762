from marshmallow import fields

from ..schemas import StrictSchema, Timestamp


class MemberTokenSchema(StrictSchema):
    token = fields.String(metadata={"description": "Send as `Authorization: Bearer <token>`"})
    expires_at = Timestamp()
