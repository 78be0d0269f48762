from marshmallow import fields

from ..schemas import StrictSchema, Timestamp


class FindingSchema(StrictSchema):
    member_id = fields.String()
    check = fields.String(metadata={"description": "ledger | lots | pending | lot_range"})
    expected = fields.Integer()
    actual = fields.Integer()


class JobRunSchema(StrictSchema):
    id = fields.String()
    name = fields.String()
    status = fields.String(metadata={"description": "running | succeeded | failed | skipped (another run held "
                                                    "the job's lock)"})
    trigger = fields.String(metadata={"description": "cli | api | scheduler"})
    runner = fields.String(metadata={"description": "host:pid of the process that ran it"})
    as_of = Timestamp(metadata={"description": "The moment the job evaluated"})
    started_at = Timestamp()
    finished_at = Timestamp(allow_none=True)
    counts = fields.Dict(keys=fields.String(), values=fields.Integer(),
                         metadata={"description": "What committed chunks did: members, lots, points, upgrades, "
                                                  "downgrades, mismatches…"})
    findings = fields.List(fields.Nested(FindingSchema),
                           metadata={"description": "reconcile-balances' mismatches (at most 1,000)"})
    error = fields.String(allow_none=True)


class JobRunPageSchema(StrictSchema):
    data = fields.List(fields.Nested(JobRunSchema))
    next_cursor = fields.String(allow_none=True)
