"""Shaping a write's outcome into an HTTP answer."""

from .idempotency import Outcome

REPLAYED_HEADER = "Idempotent-Replayed"


def created(outcome: Outcome):
    """201 for a new write; 200 with `Idempotent-Replayed: true` for a replay."""
    if outcome.replayed:
        return outcome.body, 200, {REPLAYED_HEADER: "true"}
    return outcome.body, 201
