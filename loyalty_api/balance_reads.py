"""The balance read (GET /v1/members/{id}) answered before Flask, in web workers.

It is the most frequent request (apps and tills ask for it all day), and Flask's handling of
a request (its request and application contexts, URL matching, the response object, the
hooks) cost as much CPU as the read itself: 0.37 ms in process where the read alone costs
0.19 ms; under wrk, 0.60 ms of a web worker's CPU per read against 0.30 ms here (0.22 ms with
the connections kept open between reads), and 2,450 against 4,300 reads/s (5,700)
(bench/README.md).

A request is answered here only when the answer is exactly the route's
(`members.routes.get_member`): a GET of one member id, by a credential verified without the
database (an API key remembered by this process, a member token) that may read it, of a
member that exists; the same body, status and headers. Anything else (another path or
method, a Host Flask refuses, a credential to read or to refuse, an unknown member, a
database error, any failure) goes to Flask untouched, which answers it as it always does.
tests/test_balance_reads.py holds the two answers equal.
"""

import time
from collections.abc import Callable

from flask import Flask
from sqlalchemy.engine import Connection

from .before_flask import answer, may_answer
from .errors import NotFound
from .members.schemas import dump_member
from .members.services import get_member
from .transactions import STATEMENT_ENGINE

_PATH = "/v1/members/"


class BalanceReads:
    """WSGI middleware in front of the Flask application `app` (whose wsgi_app is `next_app`)."""

    def __init__(self, next_app: Callable, app: Flask) -> None:
        self.next_app, self.app = next_app, app
        self.engine = app.extensions.get(STATEMENT_ENGINE)
        self.json = app.json
        # Connections of the statement engine kept open between reads, each with when it was
        # last used: a checkout from the pool and back (SQLAlchemy's Connection, the pool's
        # bookkeeping) cost 16 % of a read's CPU here. In autocommit mode, each read sees the
        # data committed when it runs, as on a fresh connection. At most one per running
        # request is kept (the pool keeps the rest for Flask's reads), and one idle longer than
        # the pool would ping goes back to it, to be pinged on the next checkout.
        self._open: list[tuple[Connection, float]] = []
        self._keep = app.config["LOYALTY_RUNNING_REQUESTS"]
        self._idle_seconds = app.config["LOYALTY_POOL_PING_IDLE"]

    @classmethod
    def install(cls, app: Flask) -> None:
        """Put the middleware in front of `app`, where it has the statement engine (PostgreSQL)
        and writes compact JSON (as the route does outside debug mode)."""
        if app.extensions.get(STATEMENT_ENGINE) is not None and app.json.writes_compact():
            app.wsgi_app = cls(app.wsgi_app, app)

    def __call__(self, environ, start_response):
        try:
            body = self._member(environ)
        except Exception:  # Flask meets the same failure, and answers and logs it as any route's
            body = None
        if body is None:
            return self.next_app(environ, start_response)
        return answer(start_response, 200, body, self.json.mimetype)

    def _member(self, environ) -> bytes | None:
        """The body of the route's 200 answer, or None if Flask must answer."""
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "GET" or not path.startswith(_PATH):
            return None
        member_id = path[len(_PATH):]
        # Ids are ASCII letters and digits; anything else is Flask's to decode and refuse.
        if not (member_id.isascii() and member_id.isalnum()):
            return None
        if not may_answer(self.app, environ, "members:read", member_id):
            return None
        view = self._read(member_id)
        return None if view is None else self.json.compact_body(dump_member(view))

    def _read(self, member_id: str) -> dict | None:
        """The member's view, or None for an unknown member."""
        connection = self._connection()
        try:
            view = get_member(connection, member_id)
        except NotFound:
            view = None
        except BaseException:
            # A broken connection (the database restarted while it sat here) goes back to the
            # pool, which replaces it; Flask answers this request on another.
            connection.close()
            raise
        self._keep_open(connection)
        return view

    def _connection(self) -> Connection:
        while True:
            try:
                connection, used_at = self._open.pop()  # list.pop and append are atomic: no lock needed
            except IndexError:
                return self.engine.connect()
            if time.monotonic() - used_at <= self._idle_seconds:
                return connection
            connection.close()

    def _keep_open(self, connection: Connection) -> None:
        if len(self._open) < self._keep:
            self._open.append((connection, time.monotonic()))
        else:
            connection.close()

    def close(self) -> None:
        """Give the kept connections back to the pool."""
        while self._open:
            self._open.pop()[0].close()
