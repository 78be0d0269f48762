"""The one check every protected route goes through."""

import functools

from flask import current_app, g, request

from ..timeutil import utcnow
from ..transactions import run_read
from .services import Principal, authenticate


def current_principal() -> Principal:
    return g.principal


def require(scope: str, *, member_route: bool = False):
    """Let the route run only for a credential holding `scope`.

    A member token may act only for its own member (`Principal.refusal`).
    """

    def decorate(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            # A read of the key (a cache miss) ends here, so the connection goes back to the
            # pool: a purchase may wait for its group to commit, and must not hold one meanwhile.
            principal = run_read(lambda session: authenticate(
                session, request.headers.get("Authorization"), current_app.config["SECRET_KEY"], utcnow()))
            refusal = principal.refusal(scope, kwargs.get("member_id"), member_route=member_route)
            if refusal is not None:
                raise refusal
            g.principal = principal
            return view(*args, **kwargs)

        return wrapper

    return decorate
