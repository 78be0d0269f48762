"""Fields and schemas shared by every domain package."""

from datetime import UTC, datetime

from marshmallow import Schema, ValidationError, fields, validate

from .pagination import CURSOR_PATTERN
from .timeutil import isoformat

MAX_POINTS = 10**12  # far beyond any real balance, far below BIGINT
MAX_MONEY = 10**13   # 100 billion in major units
ID_LENGTH = validate.Length(min=1, max=200)
# ISO 4217 codes of currencies in use (not metals, fund units for testing or "no currency").
ISO_4217 = frozenset("""
AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD BTN BWP BYN BZD
CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL
GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD
KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO
NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS
SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND
VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG ZWL
""".split())  # noqa: SIM905 (a table reads better than 170 quoted strings)
CURRENCY = validate.OneOf(sorted(ISO_4217), error="must be an ISO 4217 currency code such as EUR")


def Points(nonzero: bool = False, **kwargs):
    """A signed integer number of points, never a float or a string."""
    validators = [validate.Range(-MAX_POINTS, MAX_POINTS)]
    if nonzero:
        validators.append(validate.NoneOf([0], error="must not be 0"))
    return fields.Integer(strict=True, validate=validators, **kwargs)


def Money(minimum: int = 0, **kwargs):
    """An amount in minor units (cents), at least `minimum`."""
    return fields.Integer(strict=True, validate=validate.Range(minimum, MAX_MONEY), **kwargs)


class StrictBoolean(fields.Boolean):
    """A JSON true or false; marshmallow's Boolean would also take "yes", 1 or "on"."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


def ClientId(**kwargs):
    """The client's own idempotency id."""
    return fields.String(validate=ID_LENGTH, **kwargs)


class _UTCTimestamp(fields.AwareDateTime):
    """Loads RFC 3339 with a required offset; dumps UTC with a `Z`, like every timestamp we return."""

    def _deserialize(self, value, attr, data, **kwargs):
        moment = super()._deserialize(value, attr, data, **kwargs)
        # RFC 3339 offsets are hours and minutes; Python also reads seconds (+05:00:30),
        # which JSON writers round away (orjson writes +05:01): refuse them, keep instants exact.
        if moment.utcoffset().total_seconds() % 60:
            raise ValidationError("the offset must be whole minutes (RFC 3339: +hh:mm)")
        return moment

    def _serialize(self, value, attr, obj, **kwargs):
        if isinstance(value, str):  # already formatted (stored responses)
            return value
        return isoformat(value)


# Instants a loyalty program can meet; beyond them UTC arithmetic (and the year 1) overflows.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def Timestamp(**kwargs):
    """An RFC 3339 timestamp that must carry an offset."""
    kwargs.setdefault("validate", validate.Range(EARLIEST, LATEST, error="must be between 1970 and 9000"))
    return _UTCTimestamp(format="iso", **kwargs)


class StrictSchema(Schema):
    """Unknown fields are refused (marshmallow's default, stated for the reader)."""

    class Meta:
        ordered = True


class ListQuerySchema(StrictSchema):
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 200))
    cursor = fields.String(load_default=None,
                           validate=validate.Regexp(CURSOR_PATTERN, error="is not a cursor this API returned"),
                           metadata={"description": "next_cursor of the previous page"})


class ProblemSchema(Schema):
    type = fields.String()
    title = fields.String()
    status = fields.Integer()
    detail = fields.String()
    code = fields.String()
    errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))


class BalanceExpiringSchema(Schema):
    points = fields.Integer()
    expires_at = fields.String()


class BalanceSchema(Schema):
    available = fields.Integer()
    pending = fields.Integer()
    lifetime_earned = fields.Integer()
    expiring = fields.List(fields.Nested(BalanceExpiringSchema))
