"""Keyset pagination: `?limit=&cursor=`, answered as `{data, next_cursor}`."""

import base64
import binascii
from dataclasses import dataclass

from .errors import ValidationFailed


@dataclass(frozen=True)
class Page:
    data: list
    next_cursor: str | None


def encode_cursor(last_id: str) -> str:
    """Return an opaque cursor that continues after `last_id`."""
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """Return the id a cursor continues after; raise ValidationFailed when it is not ours."""
    try:
        value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as err:
        raise ValidationFailed("invalid cursor", {"cursor": ["is not a cursor this API returned"]}) from err
    if not value or len(value) > 64 or not value.isalnum():
        raise ValidationFailed("invalid cursor", {"cursor": ["is not a cursor this API returned"]})
    return value
