"""The one check every protected route goes through."""

import functools

from flask import current_app, g, request

from ..errors import Forbidden, NotFound
from ..timeutil import utcnow
from ..transactions import run_read
from .services import Principal, authenticate


def current_principal() -> Principal:
    return g.principal


def require(scope: str, *, member_route: bool = False):
    """Let the route run only for a credential holding `scope`.

    A member token may act only for its own member: a route with a `member_id` for
    another member answers 404, as if that member did not exist, and a route without one
    is refused unless it is marked `member_route` (it then checks ownership itself).
    """

    def decorate(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            # A read of the key (a cache miss) ends here, so the connection goes back to the
            # pool: a purchase may wait for its group to commit, and must not hold one meanwhile.
            principal = run_read(lambda session: authenticate(
                session, request.headers.get("Authorization"), current_app.config["SECRET_KEY"], utcnow()))
            if not principal.may(scope):
                raise Forbidden()
            if principal.member_id is not None:
                member_id = kwargs.get("member_id")
                if member_id is None and not member_route:
                    raise Forbidden()
                if member_id is not None and member_id != principal.member_id:
                    raise NotFound("No such member")
            g.principal = principal
            return view(*args, **kwargs)

        return wrapper

    return decorate
