"""Client ids make writes safe to retry: same id and body replay, another body conflicts."""

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from .errors import IdempotencyConflict


@dataclass(frozen=True)
class Outcome:
    """A write's response body, and whether it replays an earlier identical request."""

    body: dict
    replayed: bool = False


def _default(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()  # the same instant in any offset hashes alike
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"cannot hash {type(value).__name__}")


def request_hash(body: Mapping) -> str:
    """Return a stable hash of a parsed request body (key order does not matter)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=_default)
    return hashlib.sha256(canonical.encode()).hexdigest()


def replay(stored_hash: str, stored_response: dict, new_hash: str, client_id: str) -> Outcome:
    """Replay a stored result for the same body; raise IdempotencyConflict for another body."""
    if stored_hash != new_hash:
        raise IdempotencyConflict(f"{client_id!r} was already used with a different body")
    return Outcome(stored_response, replayed=True)
