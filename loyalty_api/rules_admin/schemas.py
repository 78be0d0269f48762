from marshmallow import fields, validate

from ..purchases.schemas import EVENT_TYPE, MAX_ITEMS, AwardSchema, PurchaseItemSchema
from ..schemas import CURRENCY, ID_LENGTH, ListQuerySchema, Money, StrictBoolean, StrictSchema, Timestamp

STATUSES = ["draft", "active", "paused", "archived"]


class _RuleFields(StrictSchema):
    """The rule's outer shape; the engine checks everything inside and names the bad path."""

    name = fields.String(validate=validate.Length(min=1, max=200))
    kind = fields.String(validate=validate.OneOf(["earn", "burn"]))
    trigger = fields.String(validate=validate.Length(min=1, max=120))
    conditions = fields.Raw(allow_none=True)
    item_filter = fields.Raw(allow_none=True)
    effect = fields.Dict()
    priority = fields.Integer(strict=True, validate=validate.Range(-1_000_000, 1_000_000))
    exclusive = StrictBoolean()
    limits = fields.Dict(allow_none=True)
    starts_at = fields.String(allow_none=True, validate=validate.Length(max=64))
    ends_at = fields.String(allow_none=True, validate=validate.Length(max=64))
    status = fields.String(validate=validate.OneOf(STATUSES))


class RuleCreateSchema(_RuleFields):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    kind = fields.String(required=True, validate=validate.OneOf(["earn", "burn"]))
    trigger = fields.String(required=True, validate=validate.Length(min=1, max=120))
    effect = fields.Dict(required=True)


class RuleUpdateSchema(_RuleFields):
    pass


class RuleSchema(_RuleFields):
    id = fields.String()
    version = fields.Integer()
    created_at = Timestamp()
    updated_at = Timestamp()


class RulePageSchema(StrictSchema):
    data = fields.List(fields.Nested(RuleSchema))
    next_cursor = fields.String(allow_none=True)


class RuleListQuerySchema(ListQuerySchema):
    status = fields.String(validate=validate.OneOf(STATUSES))
    kind = fields.String(validate=validate.OneOf(["earn", "burn"]))
    trigger = fields.String(validate=validate.Length(min=1, max=120))


class RuleVersionSchema(_RuleFields):
    id = fields.String()
    version = fields.Integer()
    created_at = Timestamp()


class RuleVersionListSchema(StrictSchema):
    data = fields.List(fields.Nested(RuleVersionSchema))


class ValidationResultSchema(StrictSchema):
    valid = fields.Boolean()
    errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))


class SimulatedPurchaseSchema(StrictSchema):
    occurred_at = Timestamp()
    currency = fields.String(validate=CURRENCY)
    total = Money(required=True)
    channel = fields.String(allow_none=True, validate=validate.Length(max=64))
    store_id = fields.String(allow_none=True, validate=validate.Length(max=200))
    items = fields.List(fields.Nested(PurchaseItemSchema), allow_none=True, validate=validate.Length(max=MAX_ITEMS))
    metadata = fields.Dict(allow_none=True)


class SimulatedEventSchema(StrictSchema):
    type = fields.String(required=True, validate=EVENT_TYPE)
    occurred_at = Timestamp()
    attributes = fields.Dict(load_default=dict)


class SimulatedMemberSchema(StrictSchema):
    tier = fields.String(allow_none=True, validate=validate.Length(max=64))
    enrolled_at = Timestamp()
    lifetime_earned = fields.Integer(strict=True, validate=validate.Range(0, 10**12))
    status = fields.String(validate=validate.OneOf(["active", "suspended", "erased"]))
    metadata = fields.Dict(allow_none=True)


class SimulateSchema(StrictSchema):
    purchase = fields.Nested(SimulatedPurchaseSchema)
    event = fields.Nested(SimulatedEventSchema)
    member_id = fields.String(validate=ID_LENGTH)
    member = fields.Nested(SimulatedMemberSchema)
    rules = fields.List(fields.Dict(), validate=validate.Length(min=1, max=1000))


class OutcomeSchema(StrictSchema):
    rule_id = fields.String()
    rule_version = fields.Integer()
    rule_name = fields.String()
    matched = fields.Boolean()
    points = fields.Integer()
    reason = fields.String(allow_none=True)


class SimulationSchema(StrictSchema):
    points = fields.Integer()
    awards = fields.List(fields.Nested(AwardSchema))
    outcomes = fields.List(fields.Nested(OutcomeSchema))
