"""What answering a request in WSGI middleware, before Flask, must share with Flask.

The balance read (balance_reads.py) and the single purchase (purchase_posts.py) are answered
in front of Flask when the answer is certain to be the route's. These are the parts of
Flask's own handling such an answer must keep: the Host check routing makes before any
route runs, the credential check of `require`, and the status line and headers of a JSON
answer.
"""

from collections.abc import Callable, Iterable

from flask import Flask
from werkzeug.http import HTTP_STATUS_CODES

from . import SECURITY_HEADERS
from .auth.services import authenticate_without_reading
from .timeutil import utcnow


def may_answer(app: Flask, environ, scope: str, member_id: str | None = None) -> bool:
    """Whether a request may be answered before Flask as the route would: Flask would reach
    the route, and the credential, verified without the database (an API key this process
    remembers, a member token), may act with `scope` on `member_id`. When it may not, or must
    be read, Flask decides, as it always does (`auth.decorators.require`)."""
    if not _reaches_routes(app, environ):
        return False
    principal = authenticate_without_reading(environ.get("HTTP_AUTHORIZATION"), app.config["SECRET_KEY"], utcnow())
    return principal is not None and principal.refusal(scope, member_id) is None


def _reaches_routes(app: Flask, environ) -> bool:
    # werkzeug refuses a Host it cannot encode (an empty label, one past 63 characters)
    # before any route runs; binding the URL map as Flask does tells.
    try:
        app.url_map.bind_to_environ(environ, server_name=app.config["SERVER_NAME"])
    except Exception:
        return False
    return True


def answer(start_response: Callable, status: int, body: bytes, mimetype: str,
           headers: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    """Send a JSON answer with the status line and headers Flask sends with the same body
    (the security headers its after_request adds)."""
    start_response(f"{status} {HTTP_STATUS_CODES[status].upper()}",
                   [("Content-Type", mimetype), ("Content-Length", str(len(body))), *headers, *SECURITY_HEADERS])
    return [body]
