"""Single purchases applied before Flask (purchase_posts.PurchasePosts): the route's answers.

Each answer of the middleware is compared with Flask's own to the same request; a purchase
the middleware applied is replayed by Flask with the very same body.
"""

import io
import json

import pytest
from sqlalchemy.exc import OperationalError
from werkzeug.test import Client

from loyalty_api import purchase_posts
from loyalty_api.auth.services import create_api_key
from loyalty_api.purchase_posts import PurchasePosts
from loyalty_api.transactions import GroupCommit

from .conftest import NOW
from .helpers import balance, make_member, make_rule, purchase_body

JSON = "application/json"


@pytest.fixture
def posts(app, api, keys):
    """A client of PurchasePosts in front of Flask, a client of Flask alone, the requests Flask
    saw, and a member whose purchases earn; the pos key is remembered (Flask verified it)."""
    seen = []

    def flask_counted(environ, start_response):
        seen.append(environ["PATH_INFO"])
        return app.wsgi_app(environ, start_response)

    make_rule(api)
    member_id = make_member(api)["id"]
    front, flask_alone = Client(PurchasePosts(flask_counted, app)), Client(app.wsgi_app)
    assert _post(flask_alone, purchase_body(member_id, "warm-up"), keys["pos"])[0] == 201
    seen.clear()
    return front, flask_alone, seen, member_id


def _post(client, body, credential=None, content_type=JSON, path="/v1/purchases", method="POST", **kwargs):
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    response = client.open(path, method=method, headers=headers, data=data, content_type=content_type, **kwargs)
    return response.status_code, sorted(response.headers.items()), response.get_data()


def _without_length(headers):
    return [(name, value) for name, value in headers if name != "Content-Length"]


def test_a_purchase_is_applied_before_flask_as_the_route_applies_it(posts, keys):
    front, flask_alone, seen, member_id = posts
    extra = {"store_id": "Köln Süd", "channel": "pos", "metadata": {"note": "a \"quoted\" \\ line", "big": 2**70},
             "items": [{"sku": "latte", "category": "coffee", "quantity": 2, "unit_price": 2500},
                       {"sku": "brezel", "quantity": 1, "unit_price": 5000}]}
    for n, fields in enumerate(({}, extra)):
        body = purchase_body(member_id, f"front-{n}", **fields)
        status, headers, new = _post(front, body, keys["pos"])
        assert seen == [] and status == 201, new  # Flask did not see it
        assert ("Content-Length", str(len(new))) in headers
        # A new purchase through Flask alone has the same headers; its replay, the same body.
        flask_status, flask_headers, _ = _post(flask_alone, purchase_body(member_id, f"flask-{n}", **fields),
                                               keys["pos"])
        assert (flask_status, _without_length(flask_headers)) == (201, _without_length(headers))
        replay = _post(flask_alone, body, keys["pos"])
        assert replay[0] == 200 and replay[2] == new
        assert ("Idempotent-Replayed", "true") in replay[1]
        # The middleware replays it as Flask does.
        assert _post(front, body, keys["pos"]) == replay
        assert seen == []
    assert json.loads(new)["points"] > 0


def test_what_only_the_route_can_answer_goes_to_flask(posts, keys, api):
    front, flask_alone, seen, member_id = posts
    token = api.post(f"/v1/members/{member_id}/tokens").json["token"]
    good = purchase_body(member_id, "to-flask")
    cases = [
        (purchase_body("nobody", "unknown-member"), keys["pos"], JSON),
        (purchase_body(member_id, "bad-items", items=[{"sku": "a", "quantity": 1, "unit_price": 1}]), keys["pos"],
         JSON),
        ({**good, "total": "ten"}, keys["pos"], JSON),
        ({**good, "surprise": 1}, keys["pos"], JSON),
        ({**good, "store_id": "nul\u0000"}, keys["pos"], JSON),
        (b'{"transaction_id": "nan", "total": NaN}', keys["pos"], JSON),
        (b'{"transaction_id": ', keys["pos"], JSON),
        (b"[1, 2]", keys["pos"], JSON),
        (good, keys["pos"], "text/plain"),
        (good, None, JSON),
        (good, "not-a-key", JSON),
        (good, keys["marketer"], JSON),
        (good, token, JSON),
    ]
    for body, credential, content_type in cases:
        seen.clear()
        answer = _post(front, body, credential, content_type)
        assert seen == ["/v1/purchases"], body
        assert answer == _post(flask_alone, body, credential, content_type), body
        assert answer[0] >= 400, (body, answer)
    # Another path or method is Flask's at once.
    for path, method in (("/v1/purchases/", "POST"), ("/v1/purchases", "GET"), ("/v1/purchases/to-flask", "GET")):
        seen.clear()
        assert _post(front, good, keys["pos"], path=path, method=method) == \
            _post(flask_alone, good, keys["pos"], path=path, method=method)
        assert seen == [path]
    # A transaction id used again with another body: Flask answers the conflict.
    assert _post(front, good, keys["pos"])[0] == 201
    seen.clear()
    conflict = _post(front, {**good, "total": 20000}, keys["pos"])
    assert seen == ["/v1/purchases"] and conflict[0] == 409
    assert conflict == _post(flask_alone, {**good, "total": 20000}, keys["pos"])


def test_a_body_cut_short_or_of_no_plain_length_is_read_by_flask(posts, keys):
    front, flask_alone, seen, member_id = posts
    raw = json.dumps(purchase_body(member_id, "cut")).encode()
    # Whole JSON, but the client went away before the two spaces its length counts.
    cases = [{"input_stream": raw, "environ_overrides": {"CONTENT_LENGTH": str(len(raw) + 2)}},
             {"input_stream": raw, "environ_overrides": {"CONTENT_LENGTH": f"+{len(raw)}"}},
             {"input_stream": raw, "environ_overrides": {"CONTENT_LENGTH": "10" + "0" * 9}},
             {"input_stream": raw, "environ_overrides": {"HTTP_TRANSFER_ENCODING": "chunked"}},
             {"input_stream": raw, "environ_overrides": {"HTTP_HOST": "till..example"}}]
    for case in cases:
        def request(client, case=case):
            options = {**case, "input_stream": io.BytesIO(case["input_stream"])}
            return _post(client, b"", keys["pos"], **options)

        seen.clear()
        answer = request(front)
        assert seen == ["/v1/purchases"], case
        assert answer == request(flask_alone), case
    # A chunked body comes without a Content-Length (the server has ended the stream).
    chunked = {"input_stream": io.BytesIO(raw), "headers": {"Authorization": f"Bearer {keys['pos']}"},
               "environ_overrides": {"CONTENT_LENGTH": "", "wsgi.input_terminated": True}}
    seen.clear()
    response = front.open("/v1/purchases", method="POST", content_type=JSON, **chunked)
    assert seen == ["/v1/purchases"] and response.status_code == 201, response.get_data()


def test_a_refused_purchase_is_applied_once_and_answered_by_flask(posts, keys, monkeypatch):
    front, flask_alone, seen, member_id = posts
    applied = []
    submit = GroupCommit.submit

    def counted(self, item):
        applied.append(item[0]["transaction_id"])
        return submit(self, item)

    monkeypatch.setattr(GroupCommit, "submit", counted)
    body = purchase_body(member_id, "over", items=[{"sku": "a", "quantity": 1, "unit_price": 1}])
    answer = _post(front, body, keys["pos"])
    assert answer[0] == 422 and seen == ["/v1/purchases"] and applied == ["over"]
    assert answer == _post(flask_alone, body, keys["pos"])


def test_a_key_not_yet_remembered_is_left_to_flask_and_a_failure_answered_by_it_unapplied(
        posts, keys, api, session, monkeypatch):
    front, _flask_alone, seen, member_id = posts
    new_key = create_api_key(session, "pos", NOW)
    session.commit()
    before = balance(api, member_id)["available"]
    status, _, body = _post(front, purchase_body(member_id, "new-key"), new_key)
    assert status == 201 and seen == ["/v1/purchases"]
    earned = json.loads(body)["points"]
    assert balance(api, member_id)["available"] == before + earned

    def fail(_data):
        raise OperationalError("SELECT 1", {}, Exception("connection lost"))

    monkeypatch.setattr(purchase_posts, "apply_purchase", fail)
    seen.clear()
    status, headers, body = _post(front, purchase_body(member_id, "lost"), keys["pos"])
    assert status == 503 and seen == ["/v1/purchases"] and ("Retry-After", "1") in headers, body
    assert balance(api, member_id)["available"] == before + earned
    monkeypatch.undo()
    assert _post(front, purchase_body(member_id, "lost"), keys["pos"])[0] == 201
