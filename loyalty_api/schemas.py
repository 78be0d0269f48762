"""Fields and schemas shared by every domain package."""

from collections.abc import Callable
from datetime import UTC, datetime

from marshmallow import RAISE, Schema, ValidationError, fields, missing, validate

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


class _Unsure(Exception):
    """A value the direct load does not vouch for: marshmallow's own load decides."""


class DirectLoadSchema(StrictSchema):
    """A schema whose load of a plain, valid body checks each field directly.

    marshmallow's load goes through an error store, a closure and a `validate.And` built anew
    for every field on every call: ~75 µs for a 5-item purchase, ~5 % of a single purchase's
    server CPU and a third of a batch purchase's (bench/README.md). Here a body is checked
    against the very fields and validators the schema declares: a string must be a str, a
    strict integer an int (not a bool), a list of nested DirectLoadSchema bodies is checked
    by theirs, and any other field is loaded by its own `deserialize`. Whatever the direct
    check does not vouch for (a missing required field, an unknown key, a value of another
    type, any validator refusing it) sends the whole body through marshmallow's load, which
    returns or raises exactly what it always did: errors keep marshmallow's messages. A body
    loaded directly equals marshmallow's load of it, keys in the same order
    (tests/test_schemas.py holds this over generated bodies).
    """

    def load(self, data, *, many=None, partial=None, unknown=None):
        plain = not (many or self.many or partial or self.partial) and (unknown or self.unknown) == RAISE
        if plain:
            try:
                return _direct_loader_of(self)(data)
            except _Unsure:
                pass
        return super().load(data, many=many, partial=partial, unknown=unknown)


def _direct_loader_of(schema: "DirectLoadSchema") -> Callable:
    """The schema's direct loader, built once for its fields (a copy made with `only` has others)."""
    cached = schema.__dict__.get("_direct_loader")
    if cached is None or cached[0] is not schema.load_fields:
        cached = schema._direct_loader = (schema.load_fields, _direct_loader(schema))
    return cached[1]


def _direct_loader(schema: Schema) -> Callable:
    """Return a function loading a plain body of `schema` directly, or raising _Unsure."""
    # Pre- and post-load processors, @validates methods, keys renamed on the way in: marshmallow's.
    if any(schema._hooks.values()) or any(field.data_key is not None or field.attribute is not None
                                          for field in schema.load_fields.values()):
        return _always_unsure
    # An absent field marshmallow refuses (required) or fills in (a load_default) is its to load.
    checks = [(name, field.required or field.load_default is not missing, _direct_check(field))
              for name, field in schema.load_fields.items()]
    names = frozenset(schema.load_fields)

    def load(data):
        if type(data) is not dict or not names.issuperset(data):
            raise _Unsure
        result = {}
        for name, marshmallows_when_absent, check in checks:
            if name in data:
                result[name] = check(data[name], name, data)
            elif marshmallows_when_absent:
                raise _Unsure
        return result

    return load


def _always_unsure(data):
    raise _Unsure


def _direct_check(field: fields.Field) -> Callable:
    """Return check(value, name, data) -> the field's loaded value, or raising _Unsure."""
    if not _plain(field):
        return _check_with_field(field)
    validators = tuple(field.validators)
    kind = type(field)
    if kind is fields.String:
        check_type = _check_str
    elif kind is fields.Integer and field.strict and not field.as_string:
        check_type = _check_int
    elif kind is fields.List and _plain_nested(field.inner):
        check_type = _check_list_of(field.inner.schema)
    elif (kind is fields.Dict and field.value_field is None and type(field.key_field) is fields.String
          and not field.key_field.allow_none and _plain(field.key_field)):
        check_type = _check_dict_keys(tuple(field.key_field.validators))
    else:
        return _check_with_field(field)
    allow_none = field.allow_none

    def check(value, name, data):
        if value is None:
            if allow_none:
                return None
            raise _Unsure
        value = check_type(value)
        for validator in validators:  # marshmallow 4 ignores what a validator returns
            try:
                validator(value)
            except ValidationError:
                raise _Unsure from None
        return value

    return check


def _plain(field: fields.Field) -> bool:
    """Whether the field loads a value without processors of its own (marshmallow 4.3's
    per-field pre_load and post_load)."""
    return not field.pre_load and not field.post_load


def _plain_nested(field: fields.Field) -> bool:
    """Whether a list's items are nested bodies the nested schema's direct loader may load."""
    return (type(field) is fields.Nested and isinstance(field.schema, DirectLoadSchema) and not field.many
            and not field.schema.many and field.unknown is None and not field.allow_none
            and not field.validators and _plain(field))


def _check_str(value):
    if type(value) is not str:
        raise _Unsure
    return value


def _check_int(value):
    if type(value) is not int:
        raise _Unsure
    return value


def _check_list_of(schema: "DirectLoadSchema") -> Callable:
    def check(value):
        if type(value) is not list:
            raise _Unsure
        loader = _direct_loader_of(schema)
        return [loader(each) for each in value]

    return check


def _check_dict_keys(validators: tuple) -> Callable:
    def check(value):
        if type(value) is not dict:
            raise _Unsure
        for key in value:
            if type(key) is not str:
                raise _Unsure
            for validator in validators:
                try:
                    validator(key)
                except ValidationError:
                    raise _Unsure from None
        return dict(value)

    return check


def _check_with_field(field: fields.Field) -> Callable:
    """The field's own load (a timestamp, say), any refusal making the body unsure."""
    def check(value, name, data):
        try:
            return field.deserialize(value, name, data)
        except ValidationError:
            raise _Unsure from None

    return check


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
