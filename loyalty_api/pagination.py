"""Keyset pagination: `?limit=&cursor=`, answered as `{data, next_cursor}`."""

import re
from dataclasses import dataclass

from .errors import ValidationFailed


@dataclass(frozen=True)
class Page:
    data: list
    next_cursor: str | None


# A cursor is the id of the last row of the previous page (ids are time-ordered ULIDs in
# lower-case Crockford base32). Opaque to clients, but the spec states its exact shape, so
# that any string of that shape is a valid position and anything else is refused.
CURSOR_PATTERN = r"^[0-9a-hjkmnp-tv-z]{26}$"


def encode_cursor(last_id: str) -> str:
    """Return an opaque cursor that continues after `last_id`."""
    return last_id


def decode_cursor(cursor: str) -> str:
    """Return the id a cursor continues after; raise ValidationFailed when it is not ours."""
    if not isinstance(cursor, str) or not re.fullmatch(CURSOR_PATTERN, cursor):
        raise ValidationFailed("invalid cursor", {"cursor": ["is not a cursor this API returned"]})
    return cursor
