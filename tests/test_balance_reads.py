"""The balance read answered before Flask (balance_reads.BalanceReads): the route's answers.

On PostgreSQL, where web workers install it (it reads on the statement engine, outside the
savepoint harness): an app on the test database whose rows are committed and deleted after
(`live`). Each answer of the middleware is compared with Flask's own to the same request.
"""

import os
import subprocess
import sys

import pytest
from sqlalchemy.exc import OperationalError
from werkzeug.test import Client

from loyalty_api.auth.services import revoke_api_key
from loyalty_api.balance_reads import BalanceReads
from loyalty_api.transactions import run_write

from .conftest import NOW
from .helpers import ApiClient, purchase_body
from .test_concurrency_pg import _setup, live  # noqa: F401 (a fixture)

pytestmark = pytest.mark.postgres


@pytest.fixture
def reads(live):  # noqa: F811 (the fixture imported above)
    """The live app with BalanceReads in front, a client of Flask alone, and the paths Flask saw."""
    live_app, keys = live
    flask_app, seen = live_app.wsgi_app, []

    def flask_counted(environ, start_response):
        seen.append(environ["PATH_INFO"])
        return flask_app(environ, start_response)

    live_app.wsgi_app = flask_counted
    BalanceReads.install(live_app)
    assert isinstance(live_app.wsgi_app, BalanceReads)
    member_id = _setup(live)
    admin = ApiClient(live_app.test_client(), keys, "admin")
    assert admin.patch("/v1/program", json={"expiry": {"mode": "fixed", "months": 24}}).status_code == 200
    assert admin.patch(f"/v1/members/{member_id}", json={
        "name": "Zoë Ünal", "birthdate": "1990-02-03",
        "metadata": {"store": "Köln", "visits": [1, 2], "big": 2**70}}).status_code == 200
    for n, when in enumerate(("2026-01-05T10:00:00Z", "2026-02-05T10:00:00Z", "2026-03-10T11:00:00Z")):
        r = admin.post("/v1/purchases", json=purchase_body(member_id, f"conc-read-{n}", 2500 * (n + 1),
                                                           occurred_at=when))
        assert r.status_code == 201, r.json
    other_id = admin.post("/v1/members", json={"external_id": "conc-read-other"}).json["id"]
    token = admin.post(f"/v1/members/{member_id}/tokens").json["token"]
    yield live_app, keys, Client(flask_app), seen, member_id, other_id, token
    live_app.wsgi_app.close()


def _answer(client, path, credential=None, method="GET"):
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    response = client.open(path, method=method, headers=headers)
    return response.status_code, sorted(response.headers.items()), response.get_data()


def test_a_member_read_is_answered_before_flask_as_the_route_answers_it(reads):
    live_app, keys, flask_alone, seen, member_id, _other_id, token = reads
    client = live_app.test_client()
    for path, credential in ((f"/v1/members/{member_id}", keys["admin"]),
                             (f"/v1/members/{member_id}?unknown=1", keys["pos"]),
                             (f"/v1/members/{member_id}", token)):
        _answer(client, path, credential)  # a key is remembered once Flask has verified it
        seen.clear()
        answer = _answer(client, path, credential)
        assert seen == [], path  # Flask did not see it
        assert answer == _answer(flask_alone, path, credential)
        status, headers, body = answer
        assert status == 200 and b'"available":' in body and '"Zoë Ünal"'.encode() in body
        assert b'"expiring":[{' in body and str(2**70).encode() in body, body
        assert ("Cache-Control", "no-store") in headers


def test_what_only_the_route_can_answer_goes_to_flask(reads):
    live_app, keys, flask_alone, seen, member_id, other_id, token = reads
    client = live_app.test_client()
    for credential in (keys["admin"], keys["marketer"]):
        _answer(client, f"/v1/members/{member_id}", credential)
    cases = [
        ("GET", "/v1/members/01unknown0000000000000000", keys["admin"], 404),
        ("GET", f"/v1/members/{other_id}", token, 404),  # another member's token
        ("GET", f"/v1/members/{member_id}", keys["marketer"], 403),  # no members:read
        ("GET", f"/v1/members/{member_id}", None, 401),
        ("GET", f"/v1/members/{member_id}", "lk_000000000000_notakey", 401),
        ("GET", f"/v1/members/{member_id}", token + "x", 401),
        ("HEAD", f"/v1/members/{member_id}", keys["admin"], 200),
        ("GET", f"/v1/members/{member_id}/", keys["admin"], 404),
        ("GET", f"/v1/members/{member_id}/ledger", keys["admin"], 200),
        ("GET", "/v1/members/not-an-id", keys["admin"], 404),
        ("GET", "/v1/members/%00", keys["admin"], 404),
        ("DELETE", f"/v1/members/{other_id}", keys["marketer"], 403),
    ]
    for method, path, credential, status in cases:
        seen.clear()
        answer = _answer(client, path, credential, method)
        assert len(seen) == 1, (method, path)
        assert answer[0] == status, (method, path, answer)
        assert answer == _answer(flask_alone, path, credential, method), (method, path)
    # A scheme other than Bearer, as the route refuses it.
    seen.clear()
    response = client.get(f"/v1/members/{member_id}", headers={"Authorization": f"Basic {keys['admin']}"})
    assert response.status_code == 401 and len(seen) == 1


def test_a_revoked_key_is_refused_at_once(reads):
    live_app, keys, _flask_alone, seen, member_id, _other_id, _token = reads
    client = live_app.test_client()
    assert _answer(client, f"/v1/members/{member_id}", keys["pos"])[0] == 200
    with live_app.app_context():
        run_write(lambda session: revoke_api_key(session, keys["pos"].split("_")[1], NOW))
    seen.clear()
    assert _answer(client, f"/v1/members/{member_id}", keys["pos"])[0] == 401
    assert len(seen) == 1


def test_a_database_error_goes_to_flask(reads, monkeypatch):
    live_app, keys, _flask_alone, seen, member_id, _other_id, _token = reads
    client = live_app.test_client()
    _answer(client, f"/v1/members/{member_id}", keys["admin"])

    class LostDatabase:
        def connect(self):
            raise OperationalError("SELECT 1", {}, ConnectionError("connection lost"))

    monkeypatch.setattr(live_app.wsgi_app, "engine", LostDatabase())
    monkeypatch.setattr(live_app.wsgi_app, "_open", [])
    seen.clear()
    # Flask reads again on its own connection, and answers.
    assert _answer(client, f"/v1/members/{member_id}", keys["admin"])[0] == 200
    assert len(seen) == 1


def test_a_connection_kept_between_reads_sees_each_new_write(reads):
    live_app, keys, _flask_alone, seen, member_id, _other_id, _token = reads
    client = ApiClient(live_app.test_client(), keys, "admin")
    def points(balance):
        return balance["available"], balance["pending"], balance["lifetime_earned"]

    before = points(client.get(f"/v1/members/{member_id}").json["balance"])
    assert len(live_app.wsgi_app._open) == 1
    r = client.post("/v1/purchases", json=purchase_body(member_id, "conc-read-later", 10000))
    assert r.status_code == 201, r.json
    seen.clear()
    after = points(client.get(f"/v1/members/{member_id}").json["balance"])
    assert seen == [] and after == points(r.json["balance"]) != before


def test_a_kept_connection_that_broke_is_dropped_and_flask_answers(reads):
    live_app, keys, _flask_alone, seen, member_id, _other_id, _token = reads
    client = live_app.test_client()
    _answer(client, f"/v1/members/{member_id}", keys["admin"])
    [(kept, _)] = live_app.wsgi_app._open
    kept.connection.dbapi_connection.close()  # as a database restart leaves it
    seen.clear()
    assert _answer(client, f"/v1/members/{member_id}", keys["admin"])[0] == 200
    assert len(seen) == 1 and live_app.wsgi_app._open == []
    seen.clear()
    assert _answer(client, f"/v1/members/{member_id}", keys["admin"])[0] == 200
    assert seen == [] and len(live_app.wsgi_app._open) == 1


def test_no_more_connections_are_kept_than_requests_run_and_none_past_the_idle_ping(reads, monkeypatch):
    live_app, keys, _flask_alone, seen, member_id, _other_id, _token = reads
    client = live_app.test_client()
    middleware = live_app.wsgi_app
    _answer(client, f"/v1/members/{member_id}", keys["admin"])
    middleware.close()
    # As many reads as requests run at once (the slots), and one more, end together.
    connections = [middleware.engine.connect() for _ in range(middleware._keep + 1)]
    for connection in connections:
        middleware._keep_open(connection)
    assert [c for c, _ in middleware._open] == connections[:-1] and connections[-1].closed
    # A connection idle longer than the pool's ping interval goes back to the pool, and the
    # next read checks one out (which the pool pings).
    monkeypatch.setattr(middleware, "_idle_seconds", -1.0)
    kept = [c for c, _ in middleware._open]
    seen.clear()
    assert _answer(client, f"/v1/members/{member_id}", keys["admin"])[0] == 200
    assert seen == [] and all(c.closed for c in kept)
    [(fresh, _)] = middleware._open
    assert fresh not in kept


def test_web_workers_answer_balance_reads_and_purchases_before_flask_inside_their_slots(database_url):
    code = ("from loyalty_api.cli import web_app; app = web_app(); "
            "print(type(app.wsgi_app).__name__, type(app.wsgi_app.app).__name__, "
            "type(app.wsgi_app.app.next_app).__name__, app.wsgi_app.app.next_app.next_app.__name__)")
    env = {**os.environ, "LOYALTY_DATABASE_URL": database_url, "LOYALTY_SECRET_KEY": "k" * 48}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-4:] == ["RequestSlots", "BalanceReads", "PurchasePosts", "wsgi_app"]
