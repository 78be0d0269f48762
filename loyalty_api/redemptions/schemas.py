from marshmallow import ValidationError, fields, validate, validates_schema

from ..schemas import MAX_POINTS, BalanceSchema, ClientId, Money, StrictSchema, Timestamp

CHANNEL = validate.Length(min=1, max=32)


class QuoteRequestSchema(StrictSchema):
    order_total = Money(required=True)
    channel = fields.String(allow_none=True, validate=CHANNEL)


class QuoteSchema(StrictSchema):
    max_points = fields.Integer(metadata={"description": "The most points this order may be paid with (0: none)"})
    value = fields.Integer(metadata={"description": "What max_points are worth, in minor units"})


class RedemptionCreateSchema(StrictSchema):
    redemption_id = ClientId(required=True)
    points = fields.Integer(strict=True, validate=validate.Range(1, MAX_POINTS),
                            metadata={"description": "Points to spend, priced by the burn rule"})
    reward_id = fields.String(validate=validate.Length(min=1, max=26),
                              metadata={"description": "A reward to take for its cost_points"})
    order_total = Money(allow_none=True)
    channel = fields.String(allow_none=True, validate=CHANNEL)

    @validates_schema
    def _points_or_reward(self, data, **kwargs):
        if ("points" in data) == ("reward_id" in data):
            raise ValidationError("give exactly one of points, reward_id", "points")


class RewardRefSchema(StrictSchema):
    id = fields.String()
    code = fields.String()
    name = fields.String()
    cost_points = fields.Integer()


class RedemptionSchema(StrictSchema):
    id = fields.String()
    redemption_id = fields.String()
    member_id = fields.String()
    status = fields.String(metadata={"description": "completed | cancelled"})
    points = fields.Integer()
    value = fields.Integer(metadata={"description": "Minor units the points paid (0 for a reward)"})
    reward = fields.Nested(RewardRefSchema, allow_none=True)
    rule_id = fields.String(allow_none=True)
    rule_version = fields.Integer(allow_none=True)
    created_at = Timestamp()
    balance = fields.Nested(BalanceSchema)


class CancellationSchema(RedemptionSchema):
    cancelled_at = Timestamp()
    points_restored = fields.Integer(metadata={"description": "Points back in the available balance"})
    points_expired = fields.Integer(metadata={"description": "Points given back to lots that had expired"})
