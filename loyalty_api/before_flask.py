"""What answering a request in WSGI middleware, before Flask, must share with Flask.

The balance read (balance_reads.py) and the single purchase (purchase_posts.py) are answered
in front of Flask when the answer is certain to be the route's. These are the parts of
Flask's own handling such an answer must keep: the Host check routing makes before any
route runs, and the status line and headers of a JSON answer.
"""

from collections.abc import Callable, Iterable

from flask import Flask
from werkzeug.http import HTTP_STATUS_CODES

from . import SECURITY_HEADERS


def reaches_routes(app: Flask, environ) -> bool:
    """Whether Flask would get as far as a route: werkzeug refuses a Host it cannot encode
    (an empty label, one past 63 characters) before any route runs."""
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
