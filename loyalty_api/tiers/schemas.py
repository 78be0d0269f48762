from decimal import Decimal

from marshmallow import ValidationError, fields, validate

from ..members.schemas import TierRefSchema
from ..schemas import MAX_MONEY, StrictSchema, Timestamp

CODE = validate.Length(min=1, max=64)
NAME = validate.Length(min=1, max=200)


class Multiplier(fields.Float):
    """A factor given as a JSON number, loaded as an exact Decimal of at most 4 places."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")  # a JSON number, never a numeric string
        number = super()._deserialize(value, attr, data, **kwargs)
        exact = Decimal(str(number))
        if abs(exact) > 10**6:  # out of range (the validator says so); quantize would overflow
            return exact
        places = exact.quantize(Decimal("0.0001"))
        # 3 × 0.0001 arrives as 0.00030000000000000003: tolerate binary float noise, not a 5th place.
        if abs(exact - places) > Decimal("1e-12"):
            raise ValidationError("must have at most 4 decimal places")
        return places


def _multiplier(**kwargs):
    """An exact decimal factor applied to base points; 1 means none."""
    return Multiplier(validate=validate.Range(1, 100), allow_nan=False,
                      metadata={"multipleOf": 0.0001,
                                "description": "Factor on the base points of the tier's members (1 to 100, "
                                               "at most 4 decimal places)"}, **kwargs)


class _TierFields(StrictSchema):
    code = fields.String(validate=CODE)
    name = fields.String(validate=NAME)
    rank = fields.Integer(strict=True, validate=validate.Range(0, 1000),
                          metadata={"description": "Higher ranks are better tiers; unique"})
    threshold = fields.Integer(strict=True, validate=validate.Range(0, MAX_MONEY),
                               metadata={"description": "The qualifying figure (program tier_metric over "
                                                        "tier_window_months) needed to reach the tier"})
    multiplier = _multiplier()
    benefits = fields.List(fields.String(validate=validate.Length(min=1, max=500)),
                           validate=validate.Length(max=50))


class TierCreateSchema(_TierFields):
    code = fields.String(required=True, validate=CODE)
    name = fields.String(required=True, validate=NAME)
    rank = fields.Integer(required=True, strict=True, validate=validate.Range(0, 1000))
    threshold = fields.Integer(required=True, strict=True, validate=validate.Range(0, MAX_MONEY))


class TierUpdateSchema(_TierFields):
    pass


class TierSchema(StrictSchema):
    id = fields.String()
    code = fields.String()
    name = fields.String()
    rank = fields.Integer()
    threshold = fields.Integer()
    multiplier = fields.Float()
    benefits = fields.List(fields.String())
    created_at = Timestamp()
    updated_at = Timestamp()


class TierPageSchema(StrictSchema):
    data = fields.List(fields.Nested(TierSchema))
    next_cursor = fields.String(allow_none=True)


class TierChangeSchema(StrictSchema):
    id = fields.String()
    from_ = fields.Nested(TierRefSchema, allow_none=True, data_key="from")
    to = fields.Nested(TierRefSchema, allow_none=True)
    reason = fields.String(metadata={"description": "upgrade (an earning crossed a threshold) or review"})
    metric = fields.String(metadata={"description": "points or spend"})
    qualifying = fields.Integer(metadata={"description": "The qualifying figure the change was decided on"})
    changed_at = Timestamp()


class TierChangePageSchema(StrictSchema):
    data = fields.List(fields.Nested(TierChangeSchema))
    next_cursor = fields.String(allow_none=True)
