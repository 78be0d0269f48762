"""The balance read (GET /v1/members/{id}) answered before Flask, in web workers.

It is the most frequent request (apps and tills ask for it all day), and Flask's handling of
a request (its request and application contexts, URL matching, the response object, the
hooks) cost as much CPU as the read itself: 0.37 ms in process where the read alone costs
0.19 ms; under wrk, 0.60 ms of a web worker's CPU per read against 0.32 ms here, and 2,450
against 4,050 reads/s (bench/README.md).

A request is answered here only when the answer is exactly the route's
(`members.routes.get_member`): a GET of one member id, by a credential verified without the
database (an API key remembered by this process, a member token) that may read it, of a
member that exists; the same body, status and headers. Anything else (another path or
method, a credential to read or to refuse, an unknown member, a database error) goes to
Flask untouched, which answers it as it always does. tests/test_balance_reads.py holds the
two answers equal.
"""

from collections.abc import Callable

from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

from . import SECURITY_HEADERS
from .auth.services import authenticate_without_reading
from .errors import DomainError
from .members.schemas import dump_member
from .members.services import get_member
from .timeutil import utcnow
from .transactions import STATEMENT_ENGINE

_PATH = "/v1/members/"


class BalanceReads:
    """WSGI middleware in front of the Flask application `app` (whose wsgi_app is `next_app`)."""

    def __init__(self, next_app: Callable, app: Flask) -> None:
        self.next_app = next_app
        self.engine = app.extensions.get(STATEMENT_ENGINE)
        self.json = app.json
        self.secret = app.config["SECRET_KEY"]

    @classmethod
    def install(cls, app: Flask) -> None:
        """Put the middleware in front of `app`, where it has the statement engine (PostgreSQL)
        and writes compact JSON (as the route does outside debug mode)."""
        if app.extensions.get(STATEMENT_ENGINE) is not None and app.json.writes_compact():
            app.wsgi_app = cls(app.wsgi_app, app)

    def __call__(self, environ, start_response):
        body = self._member(environ)
        if body is None:
            return self.next_app(environ, start_response)
        start_response("200 OK", [("Content-Type", self.json.mimetype), ("Content-Length", str(len(body))),
                                  *SECURITY_HEADERS])
        return [body]

    def _member(self, environ) -> bytes | None:
        """The body of the route's 200 answer, or None if Flask must answer."""
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "GET" or not path.startswith(_PATH):
            return None
        member_id = path[len(_PATH):]
        # Ids are ASCII letters and digits; anything else is Flask's to decode and refuse.
        if not (member_id.isascii() and member_id.isalnum()):
            return None
        principal = authenticate_without_reading(environ.get("HTTP_AUTHORIZATION"), self.secret, utcnow())
        if principal is None or not principal.may("members:read") or principal.member_id not in (None, member_id):
            return None
        try:
            with self.engine.connect() as connection:
                view = get_member(connection, member_id)
        except (DomainError, SQLAlchemyError):
            return None
        return self.json.compact_body(dump_member(view))
