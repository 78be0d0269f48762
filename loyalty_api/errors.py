"""Domain exceptions and their one mapping to application/problem+json (RFC 9457)."""

import logging
from collections.abc import Mapping
from http import HTTPStatus

from flask import Flask, Response, json
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class DomainError(Exception):
    """A refusal the client can act on; raised deep, turned into problem+json in one place."""

    status = 422
    code = "validation_error"
    title = "Request refused"

    def __init__(self, detail: str | None = None, errors: Mapping[str, list[str]] | None = None):
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = dict(errors) if errors else None

    def body(self) -> dict:
        """Return the problem+json document of this refusal."""
        return problem_body(self.status, self.code, self.title, self.detail, self.errors)


class ValidationFailed(DomainError):
    status, code, title = 422, "validation_error", "The request is not valid"


class Unauthorized(DomainError):
    status, code, title = 401, "unauthorized", "Missing or invalid credentials"


class Forbidden(DomainError):
    status, code, title = 403, "forbidden", "This credential may not do that"


class NotFound(DomainError):
    status, code, title = 404, "not_found", "No such resource"


class IdempotencyConflict(DomainError):
    status, code, title = 409, "idempotency_conflict", "This id was already used with another body"


class MemberExists(DomainError):
    status, code, title = 409, "member_exists", "A member with this external_id exists"


class MemberNotActive(DomainError):
    status, code, title = 409, "member_not_active", "The member is suspended or erased"


class CurrencyMismatch(DomainError):
    status, code, title = 422, "currency_mismatch", "The currency is not the program's"


class ItemsTotalMismatch(DomainError):
    status, code, title = 422, "items_total_mismatch", "The items do not add up to the total"


class InvalidReferralCode(DomainError):
    status, code, title = 422, "invalid_referral_code", "No member has this referral code"


class RefundExceedsPurchase(DomainError):
    status, code, title = 422, "refund_exceeds_purchase", "Refunds would exceed the purchase total"


class InvalidRule(DomainError):
    status, code, title = 422, "invalid_rule", "The rule is not valid"


class InsufficientPoints(DomainError):
    status, code, title = 422, "insufficient_points", "Not enough available points"


class BelowMinimum(DomainError):
    status, code, title = 422, "below_minimum", "Fewer points than the minimum redemption"


class InvalidStep(DomainError):
    status, code, title = 422, "invalid_step", "Points are not a multiple of the redemption step"


class ExceedsOrderShare(DomainError):
    status, code, title = 422, "exceeds_order_share", "The redemption exceeds the allowed share of the order"


class RewardUnavailable(DomainError):
    status, code, title = 422, "reward_unavailable", "The reward cannot be redeemed"


class NoBurnRule(DomainError):
    status, code, title = 422, "no_burn_rule", "No redemption rule applies to this order"


class RewardExists(DomainError):
    status, code, title = 409, "reward_exists", "A reward with this code exists"


class SelfReferral(DomainError):
    status, code, title = 422, "self_referral", "A member cannot refer itself"


class ReferralLimitReached(DomainError):
    status, code, title = 422, "referral_limit_reached", "The referrer has referred as many members as allowed"


class TierExists(DomainError):
    status, code, title = 409, "tier_exists", "A tier with this code or rank exists"


class TierInUse(DomainError):
    status, code, title = 409, "tier_in_use", "Members or rewards still use this tier"


class ServiceUnavailable(DomainError):
    status, code, title = 503, "service_unavailable", "The database is unavailable; retry shortly"


def problem_body(status: int, code: str, title: str, detail: str | None = None,
                 errors: Mapping | None = None) -> dict:
    body = {
        "type": f"https://loyalty.dev/problems/{code.replace('_', '-')}",
        "title": title,
        "status": status,
        "detail": detail or title,
        "code": code,
    }
    if errors:
        body["errors"] = dict(errors)
    return body


def problem(status: int, code: str, title: str, detail: str | None = None,
            errors: Mapping | None = None, headers: Mapping | None = None) -> Response:
    """Build an application/problem+json response."""
    body = problem_body(status, code, title, detail, errors)
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def flatten_messages(messages, prefix: str = "") -> dict[str, list[str]]:
    """Turn marshmallow's nested messages into {"items.0.sku": ["..."]}."""
    flat: dict[str, list[str]] = {}
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key == "_schema":
                path = prefix or "_schema"
            for sub, msgs in flatten_messages(value, path).items():
                flat.setdefault(sub, []).extend(msgs)
    elif isinstance(messages, list | tuple) and all(isinstance(m, str) for m in messages):
        flat[prefix or "_schema"] = [str(m) for m in messages]
    else:
        flat[prefix or "_schema"] = [str(messages)]
    return flat


# Codes for the HTTP errors Flask or webargs raise themselves.
_HTTP_CODES = {
    400: ("validation_error", 422),
    401: ("unauthorized", 401),
    403: ("forbidden", 403),
    404: ("not_found", 404),
    405: ("method_not_allowed", 405),
    413: ("payload_too_large", 413),
    415: ("unsupported_media_type", 415),
    422: ("validation_error", 422),
}


def register_error_handlers(app: Flask) -> None:
    """Map every exception the service can raise to problem+json."""

    @app.errorhandler(DomainError)
    def handle_domain_error(err: DomainError):
        headers = {"Retry-After": "1"} if err.status == 503 else None
        return problem(err.status, err.code, err.title, err.detail, err.errors, headers)

    @app.errorhandler(HTTPException)
    def handle_http_exception(err: HTTPException):
        code, status = _HTTP_CODES.get(err.code or 500, ("http_error", err.code or 500))
        errors = None
        data = getattr(err, "data", None) or {}
        messages = data.get("messages")
        if messages:
            # webargs nests messages under the location ("json", "query", ...).
            merged: dict = {}
            for location_messages in messages.values():
                if isinstance(location_messages, Mapping):
                    merged.update(location_messages)
            errors = flatten_messages(merged) if merged else None
        title = HTTPStatus(status).phrase
        detail = err.description if status != 422 or not errors else "Some fields are not valid"
        if err.code == 400:
            detail = "The body is not valid JSON" if not errors else detail
        # A 405 names the methods the resource has (RFC 9110 requires the Allow header).
        allow = {"Allow": ", ".join(err.valid_methods)} if getattr(err, "valid_methods", None) else None
        return problem(status, code, title, detail, errors, allow)

    @app.errorhandler(OperationalError)
    def handle_database_down(err: OperationalError):
        log.warning("database unavailable: %s", type(err.orig).__name__ if err.orig else err)
        return problem(503, "service_unavailable", "Service Unavailable",
                       "The database is unavailable; retry shortly", headers={"Retry-After": "1"})

    @app.errorhandler(PoolTimeout)
    def handle_pool_exhausted(_err: PoolTimeout):
        # Every pooled connection stayed busy for the pool's timeout: the node is overloaded
        # (more running requests than pooled connections, or long lock waits), not broken.
        log.warning("no database connection free within the pool's timeout")
        return handle_domain_error(ServiceUnavailable("The service is overloaded; retry shortly"))

    @app.errorhandler(DBAPIError)
    def handle_database_error(err: DBAPIError):
        if err.connection_invalidated:
            return handle_database_down(err)  # type: ignore[arg-type]
        log.exception("database error")
        return problem(500, "internal_error", "Internal Server Error", "An unexpected error occurred")

    @app.errorhandler(Exception)
    def handle_unexpected(err: Exception):
        log.exception("unhandled error")
        return problem(500, "internal_error", "Internal Server Error", "An unexpected error occurred")
