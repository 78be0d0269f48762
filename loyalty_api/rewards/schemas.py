from marshmallow import fields, validate

from ..schemas import MAX_POINTS, ListQuerySchema, StrictBoolean, StrictSchema, Timestamp

CODE = validate.Length(min=1, max=64)
TIER_CODES = fields.List(fields.String(validate=CODE), validate=validate.Length(max=50),
                         metadata={"description": "Tier codes that may redeem the reward; empty or absent: every tier"})


class _RewardFields(StrictSchema):
    code = fields.String(validate=CODE)
    name = fields.String(validate=validate.Length(min=1, max=200))
    cost_points = fields.Integer(strict=True, validate=validate.Range(1, MAX_POINTS))
    stock = fields.Integer(strict=True, allow_none=True, validate=validate.Range(0, MAX_POINTS),
                           metadata={"description": "Units left; null is unlimited"})
    tiers = TIER_CODES
    active = StrictBoolean()


class RewardCreateSchema(_RewardFields):
    code = fields.String(required=True, validate=CODE)
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    cost_points = fields.Integer(required=True, strict=True, validate=validate.Range(1, MAX_POINTS))


class RewardUpdateSchema(_RewardFields):
    pass


class RewardSchema(_RewardFields):
    id = fields.String()
    tiers = fields.List(fields.String())
    created_at = Timestamp()
    updated_at = Timestamp()


class RewardListQuerySchema(ListQuerySchema):
    active = fields.Boolean()
    tier = fields.String(validate=CODE, metadata={"description": "Rewards this tier may redeem"})


class RewardPageSchema(StrictSchema):
    data = fields.List(fields.Nested(RewardSchema))
    next_cursor = fields.String(allow_none=True)
