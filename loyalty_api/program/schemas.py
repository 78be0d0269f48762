from marshmallow import fields, validate

from ..schemas import CURRENCY, MAX_MONEY, StrictSchema


class ExpirySchema(StrictSchema):
    mode = fields.String(required=True, validate=validate.OneOf(["none", "fixed", "inactivity"]))
    months = fields.Integer(strict=True, load_default=0, validate=validate.Range(0, 1200))


class ReferralSettingsSchema(StrictSchema):
    min_purchase = fields.Integer(strict=True, validate=validate.Range(0, MAX_MONEY))
    window_days = fields.Integer(strict=True, validate=validate.Range(1, 3650))
    max_per_referrer = fields.Integer(strict=True, validate=validate.Range(0, 1_000_000))


class ProgramSchema(StrictSchema):
    currency = fields.String(validate=CURRENCY)
    pending_days = fields.Integer(strict=True, validate=validate.Range(0, 3650))
    expiry = fields.Nested(ExpirySchema)
    tier_window_months = fields.Integer(strict=True, validate=validate.Range(1, 120))
    tier_metric = fields.String(validate=validate.OneOf(["points", "spend"]))
    negative_balance = fields.String(validate=validate.OneOf(["allow", "forbid"]))
    referral = fields.Nested(ReferralSettingsSchema)
