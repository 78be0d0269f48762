"""Single purchases (POST /v1/purchases) applied before Flask, in web workers.

Point-of-sale systems post purchases all day, and Flask's handling around the route (its
request and application contexts, URL matching, webargs' parsing machinery, the response
object, the hooks) cost ~0.3 ms of the ~1.1 ms of web-worker CPU a purchase took under load:
1,168-1,248 purchases/s from 32 tills against 786-917/s in the same minutes (bench/README.md).

A purchase is applied here only as the route (`purchases.routes.create_purchase`) applies it:
a POST of a JSON body (application/json, with a Content-Length within the limit) that
`purchases.routes.purchase_schema` loads, by a credential verified without the database (an
API key this process remembers) that may post purchases. The body is parsed and checked as
Flask's parser does (`extensions.load_strict_json`, `refuse_unstorable_body`), the purchase
goes to the same group commit (`apply_purchase`), and the answer is `responses.created`'s,
written by the same JSON provider, with the same headers.

Anything else goes to Flask untouched (the body handed back as read), which answers it as
it always does: another path or method, a body to refuse, a credential to read or to refuse,
any failure. So does a purchase the service refuses (an unknown or inactive member, items
that do not add up, a transaction id reused with another body): Flask applies it again and
answers the refusal. A refusal writes nothing, so applying it twice changes nothing, and
problem+json answers stay Flask's alone. tests/test_purchase_posts.py holds the answers equal.
"""

import io

from flask import Flask

from .auth.services import authenticate_without_reading
from .extensions import load_strict_json, refuse_unstorable_body
from .purchases.routes import apply_purchase, purchase_schema
from .responses import answer_before_flask, created
from .timeutil import utcnow

_PATH = "/v1/purchases"


class PurchasePosts:
    """WSGI middleware in front of the Flask application `app` (whose wsgi_app is `next_app`)."""

    def __init__(self, next_app, app: Flask) -> None:
        self.next_app, self.app, self.json = next_app, app, app.json
        self.secret = app.config["SECRET_KEY"]
        self.limit = app.config["MAX_CONTENT_LENGTH"]

    @classmethod
    def install(cls, app: Flask) -> None:
        """Put the middleware in front of `app` where it writes compact JSON (as the route does
        outside debug mode)."""
        if app.json.writes_compact():
            app.wsgi_app = cls(app.wsgi_app, app)

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("PATH_INFO") != _PATH:
            return self.next_app(environ, start_response)
        try:
            answer = self._apply(environ)
        except Exception:  # a refusal or a failure: Flask meets it again, and answers (and logs) it
            answer = None
        if answer is None:
            return self.next_app(environ, start_response)
        body, status, *headers = created(answer)
        return answer_before_flask(start_response, status, self.json.compact_body(body), self.json.mimetype,
                                   headers[0].items() if headers else ())

    def _apply(self, environ):
        """The purchase's Outcome, or None if Flask must answer."""
        if environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower() != "application/json":
            return None
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if not 0 < length <= self.limit:  # none (chunked): Flask reads it; too long: Flask refuses it
            return None
        principal = authenticate_without_reading(environ.get("HTTP_AUTHORIZATION"), self.secret, utcnow())
        if principal is None or principal.refusal("purchases", None) is not None:
            return None
        raw = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(raw)  # read again by Flask if it answers
        if len(raw) != length:  # the client went away mid-body
            return None
        data = load_strict_json(raw)
        refuse_unstorable_body(raw, data)
        data = purchase_schema.load(data)
        with self.app.app_context():
            return apply_purchase(data)
