"""Extension objects, created unbound and initialised by create_app."""

import json
import re
from datetime import UTC, datetime
from typing import Any

import flask
import flask_smorest
import flask_sqlalchemy.session
import orjson
from flask.json.provider import DefaultJSONProvider
from flask_smorest import Api
from flask_sqlalchemy import SQLAlchemy
from marshmallow import ValidationError
from sqlalchemy import JSON, BigInteger, DateTime, Integer, MetaData, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, registry
from webargs.core import missing
from webargs.flaskparser import FlaskParser, is_json_request


class UTCDateTime(TypeDecorator):
    """A timestamp stored in UTC and always returned timezone-aware.

    SQLite keeps no offset, so values are normalised to UTC on the way in and tagged
    as UTC on the way out; PostgreSQL stores `timestamptz` natively.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments a column declared exactly INTEGER.
BigInt = BigInteger().with_variant(Integer(), "sqlite")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    # Points and money are 64-bit integers everywhere; JSON is JSONB on PostgreSQL.
    registry = registry(
        metadata=MetaData(naming_convention=NAMING_CONVENTION),
        type_annotation_map={int: BigInt, datetime: UTCDateTime, dict: JSONType, list: JSONType},
    )


class Session(flask_sqlalchemy.session.Session):
    """Flask-SQLAlchemy's session that honours an explicit `bind` (tests join one connection)."""

    def get_bind(self, mapper=None, clause=None, bind=None, **kwargs):
        if bind is None and self.bind is not None:
            return self.bind
        return super().get_bind(mapper=mapper, clause=clause, bind=bind, **kwargs)


class ProblemApi(Api):
    """flask-smorest's Api documenting errors as application/problem+json (RFC 9457)."""

    from .schemas import ProblemSchema as ERROR_SCHEMA

    def _register_responses(self):
        self.DEFAULT_RESPONSE_CONTENT_TYPE = "application/problem+json"
        try:
            super()._register_responses()
        finally:
            del self.DEFAULT_RESPONSE_CONTENT_TYPE


def _refuse_constant(name: str):
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


def load_strict_json(raw: bytes):
    """Parse a request body as strict JSON, raising JSONDecodeError for anything else.

    NaN and Infinity are not JSON (RFC 8259) and would break JSONB; an integer of more
    digits than Python converts (ValueError) or nesting deeper than the recursion limit
    would otherwise escape webargs as a 500.
    """
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except json.JSONDecodeError:
        raise
    except (ValueError, RecursionError) as err:
        raise json.JSONDecodeError(str(err), "", 0) from err


def refuse_unstorable_body(raw: bytes, data) -> None:
    """Refuse (ValidationError) text of the parsed body `data` that PostgreSQL cannot store.

    Walking the parsed body costs 9 µs a purchase, 9 ms a batch of 1,000. An ASCII body
    without a backslash needs none: a NUL could only be raw (which the parser refuses in a
    string and is not JSON elsewhere) and a surrogate needs a byte of 0x80 or more (as UTF-8,
    UTF-16 or UTF-32, which the parser reads as it finds them).
    """
    if not raw.isascii() or b"\\" in raw:
        _refuse_unstorable_text(data, "")


class StrictParser(FlaskParser):
    """webargs' parser, refusing what is not strict JSON (`load_strict_json`), text that
    cannot be stored (`refuse_unstorable_body`) and unknown query parameters too."""

    def _raw_load_json(self, req):
        if not is_json_request(req):
            return missing
        return load_strict_json(req.get_data(cache=True))

    def load_json(self, req, schema):
        data = super().load_json(req, schema)
        if data is missing:
            # Every body the API takes is documented as required: no body is not `{}`.
            raise ValidationError({"_schema": ["a JSON object body is required"]})
        refuse_unstorable_body(req.get_data(cache=True), data)
        return data

    def load_querystring(self, req, schema):
        data = super().load_querystring(req, schema)
        for name, value in req.args.items(multi=True):
            _refuse_unstorable_text(value, name)
        return data


class LimitedBodyRequest(flask.Request):
    """A request whose body past MAX_CONTENT_LENGTH is refused with 413 however it was sent.

    werkzeug refuses a too-long Content-Length up front, but a body without one (chunked) is
    read up to the limit and silently cut there: the cut then reads as invalid JSON (422) or a
    bad webhook signature (400). A body that filled the limit is read on by one byte, which
    makes werkzeug raise RequestEntityTooLarge; a chunked body of exactly the limit is refused
    with the longer ones, as it cannot be told from them.
    """

    def get_data(self, cache: bool = True, as_text: bool = False, parse_form_data: bool = False):
        data = super().get_data(cache=cache, parse_form_data=parse_form_data)
        limit = self.max_content_length
        if self.content_length is None and limit is not None and len(data) >= limit:
            self.stream.read(1)
        return data.decode(errors="replace") if as_text else data


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON responses, written by orjson.

    The default provider's encoder calls back into Python for every value: ~4 % of a balance
    read's CPU, more for a purchase's awards. The output means the same: keys sorted, dates
    and dataclasses as the default writes them (orjson hands them to the same `default`),
    compact unless in debug. Text is written as UTF-8, not as \\u escapes, by both paths.
    What orjson refuses (an integer beyond 64 bits in client metadata, a key that is not a
    string, a lone surrogate) goes through the default provider. A non-finite float, which
    the API never takes in, would be written null rather than the invalid NaN.
    """

    ensure_ascii = False
    _OPTIONS = (orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
                | orjson.OPT_APPEND_NEWLINE)

    def response(self, *args: Any, **kwargs: Any) -> flask.Response:
        if not self.writes_compact():
            return super().response(*args, **kwargs)
        return self._app.response_class(self.compact_body(self._prepare_response_obj(args, kwargs)),
                                        mimetype=self.mimetype)

    def writes_compact(self) -> bool:
        """Whether responses are compact (not indented for debugging), as `compact_body` writes them."""
        return not ((self.compact is None and self._app.debug) or self.compact is False)

    def compact_body(self, obj: Any) -> bytes:
        """Return the body of a compact JSON response of `obj`."""
        try:
            return orjson.dumps(obj, default=self.default, option=self._OPTIONS)
        except orjson.JSONEncodeError:
            # What the default provider's response writes.
            return f"{self.dumps(obj, separators=(',', ':'))}\n".encode()


# 19 digits in a row: a number orjson might not read exactly (see read_json).
_LONG_NUMBER = re.compile(rb"[0-9]{19}")


def read_json(data: bytes | str) -> Any:
    """Parse JSON that PostgreSQL returns (JSONB columns: member metadata, stored answers).

    orjson parses it several times faster than the json module, but reads an integer beyond
    64 bits as a float where the json module keeps it exact, and refuses numbers beyond a
    float's range: a text with a run of 19 digits, or one orjson refuses, goes to the json
    module, so every value reads back as the json module reads it.
    """
    if isinstance(data, str):
        data = data.encode()
    if _LONG_NUMBER.search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


# NUL cannot be stored in PostgreSQL text or JSONB; a lone surrogate (\ud800 written in JSON)
# is not Unicode and cannot be encoded to UTF-8 by any driver.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable(text: str) -> bool:
    """Return whether `text` holds a character no database column can store."""
    return _UNSTORABLE.search(text) is not None


def _refuse_unstorable_text(value, path: str) -> None:
    """Raise a ValidationError naming the first string (or key) under `value` that cannot be stored."""
    if isinstance(value, str):
        if unstorable(value):
            raise ValidationError({path or "_schema": ["must not contain NUL or unpaired surrogate characters"]})
    elif isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if unstorable(key):
                raise ValidationError({path or "_schema": ["keys must not contain NUL or unpaired surrogate "
                                                           "characters"]})
            _refuse_unstorable_text(item, child)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_unstorable_text(item, f"{path}.{index}" if path else str(index))


# Every blueprint's @arguments is built with this parser (set before any routes module loads);
# unknown=None lets each schema's own RAISE apply to the query string as well as the body.
flask_smorest.Blueprint.ARGUMENTS_PARSER = StrictParser(unknown=None)

db = SQLAlchemy(model_class=Base, session_options={"class_": Session})
api = ProblemApi()
