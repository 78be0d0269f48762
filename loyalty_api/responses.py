"""Shaping a write's outcome into an HTTP answer."""

from flask import jsonify

from .idempotency import Outcome

REPLAYED_HEADER = "Idempotent-Replayed"


def created(outcome: Outcome) -> tuple[dict, int, dict[str, str]]:
    """201 for a new write; 200 with `Idempotent-Replayed: true` for a replay."""
    if outcome.replayed:
        return outcome.body, 200, {REPLAYED_HEADER: "true"}
    return outcome.body, 201, {}


def created_as_is(outcome: Outcome):
    """As `created`, for a body already in its JSON form, written without the route's schema.

    A purchase's answer is built from JSON values (it is stored as it is, for replays), and
    its schema's dump visits every award to change nothing: ~5 % of a purchase's CPU in the
    web worker. The schema still documents the answer; a test holds its dump equal to the body.
    """
    body, status, headers = created(outcome)
    return jsonify(body), status, headers
