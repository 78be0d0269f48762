"""Single purchases (POST /v1/purchases) applied before Flask, in web workers.

Point-of-sale systems post purchases all day, and Flask's handling around the route (its
request and application contexts, URL matching, webargs' parsing machinery, the response
object, the hooks) cost about a quarter of the web-worker CPU of a purchase under load:
0.70-0.80 ms a purchase here against 1.01-1.2 ms through Flask, and 1,051-1,308 purchases/s
from 32 tills against 786-1,038/s in the same minutes (bench/README.md).

A purchase is applied here only as the route (`purchases.routes.create_purchase`) applies it:
a POST of a JSON body (application/json, with a Content-Length within the limit, to a Host
Flask routes) that `purchases.routes.purchase_schema` loads, by a credential verified
without the database (an API key this process remembers) that may post purchases. The body
is parsed and checked as Flask's parser does (`extensions.load_strict_json`,
`refuse_unstorable_body`), the purchase goes to the same group commit
(`purchases.routes.apply_purchase`), and the answer is `responses.created`'s, written by the
same JSON provider, with the same headers (`before_flask.answer`).

Anything else goes to Flask untouched (the body handed back as read), which answers it as
it always does: another path or method, a body to refuse, a credential to read or to refuse,
any failure to parse. A purchase the service refused, or whose transaction failed, goes to
Flask too, with the refusal or failure (`NOT_APPLIED`): the route raises it instead of
applying the purchase again, so Flask answers (and logs) it once, as problem+json.
tests/test_purchase_posts.py holds the answers equal.
"""

import io

from flask import Flask
from werkzeug.wsgi import get_content_length

from .before_flask import answer, may_answer
from .extensions import load_strict_json, refuse_unstorable_body
from .purchases.routes import NOT_APPLIED, apply_purchase, purchase_schema
from .responses import created

_PATH = "/v1/purchases"


class PurchasePosts:
    """WSGI middleware in front of the Flask application `app` (whose wsgi_app is `next_app`)."""

    def __init__(self, next_app, app: Flask) -> None:
        self.next_app, self.app, self.json = next_app, app, app.json
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
            data = self._purchase(environ)
        except Exception:  # a body to refuse, or a failure: Flask meets it again, and answers it
            data = None
        if data is None:
            return self.next_app(environ, start_response)
        with self.app.app_context():
            try:
                outcome = apply_purchase(data)
            except Exception as err:  # refused, or the transaction failed: nothing was written
                environ[NOT_APPLIED] = err
                outcome = None
        if outcome is None:
            return self.next_app(environ, start_response)
        body, status, headers = created(outcome)
        return answer(start_response, status, self.json.compact_body(body), self.json.mimetype, headers.items())

    def _purchase(self, environ) -> dict | None:
        """The purchase the body holds, loaded as the route loads it; None if Flask must read
        the request. Raises what refuses the body (Flask then refuses it the same way)."""
        if environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower() != "application/json":
            return None
        # As werkzeug reads it: none for a chunked body (Flask reads it to its end), a value
        # that is not plain digits read as 0.
        length = get_content_length(environ)
        if not length or (self.limit is not None and length > self.limit):
            return None
        if not may_answer(self.app, environ, "purchases"):
            return None
        raw = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(raw)  # read again by Flask if it answers
        if len(raw) != length:  # the client went away mid-body
            return None
        data = load_strict_json(raw)
        refuse_unstorable_body(raw, data)
        return purchase_schema.load(data)
