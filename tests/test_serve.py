"""`loyalty serve`: each HTTP server it offers starts, answers the API over a socket, and stops
cleanly on SIGTERM. (The other tests call the application in process.)"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

LOYALTY = [str(Path(sys.executable).parent / "loyalty")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port: int, method: str, path: str, body: bytes | None = None, key: str | None = None, *,
             chunked: bool = False):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if chunked:  # no Content-Length: the body comes in 1 KiB chunks
        body = iter([body[i:i + 1024] for i in range(0, len(body), 1024)])
    conn.request(method, path, body=body, headers=headers, encode_chunked=chunked)
    response = conn.getresponse()
    answer = (response.status, response.getheader("Content-Type"), response.read())
    conn.close()
    return answer


@pytest.mark.parametrize("server_name", ["granian", "gunicorn"])
def test_serve_answers_over_http_and_stops_on_sigterm(tmp_path, server_name):
    env = {**os.environ, "LOYALTY_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
           "LOYALTY_SECRET_KEY": "serve-test-" * 4, "LOYALTY_MAX_BODY_BYTES": "4096",
           "LOYALTY_ACCESS_LOG": str(tmp_path / "access.log")}
    subprocess.run(LOYALTY + ["db", "upgrade"], env=env, check=True, capture_output=True, timeout=120)
    key = subprocess.run(LOYALTY + ["keys", "create", "--role", "admin"], env=env, check=True,
                         capture_output=True, text=True, timeout=60).stdout.split()[-1]
    port = _free_port()
    server = subprocess.Popen(LOYALTY + ["serve", "--server", server_name, "--port", str(port), "--workers", "1",
                                         "--threads", "2"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                if _request(port, "GET", "/readyz")[0] == 200:
                    break
            except OSError:
                assert time.monotonic() < deadline, "the server did not become ready"
                time.sleep(0.2)
        status, _, body = _request(port, "GET", "/v1/program", key=key)
        assert status == 200 and "currency" in json.loads(body)
        status, _, _ = _request(port, "GET", "/v1/program")
        assert status == 401
        member = {"external_id": "serve-1"}
        status, _, body = _request(port, "POST", "/v1/members", json.dumps(member).encode(), key)
        assert status == 201 and json.loads(body)["external_id"] == "serve-1"
        status, content_type, body = _request(port, "POST", "/v1/members", b"{not json", key)
        assert status == 422 and content_type == "application/problem+json", body
        # The body limit holds behind the real server too, before the application parses anything.
        oversized = json.dumps({"external_id": "serve-2", "metadata": {"note": "x" * 5000}}).encode()
        for chunked in (False, True):
            status, content_type, body = _request(port, "POST", "/v1/members", oversized, key, chunked=chunked)
            assert status == 413 and content_type == "application/problem+json", (chunked, body)
        # The webhook reads its raw body itself (no Stripe secret is set: the size is refused first).
        status, _, body = _request(port, "POST", "/v1/integrations/stripe/webhook", oversized, chunked=True)
        assert status == 413, body
        fitting = json.dumps({"external_id": "serve-3", "metadata": {"note": "x" * 3000}}).encode()
        status, _, body = _request(port, "POST", "/v1/members", fitting, key, chunked=True)
        assert status == 201, body
        status, _, body = _request(port, "GET", "/v1/members?external_id=serve-2", key=key)
        assert status == 200 and json.loads(body)["data"] == []
    finally:
        # As a container runtime does: the signal goes to the server's own process only.
        os.kill(server.pid, signal.SIGTERM)
        try:
            code = server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            raise
    assert code == 0, server.stderr.read().decode()[-2000:]
    deadline = time.monotonic() + 10
    while True:  # and it stopped its workers
        try:
            os.killpg(server.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "workers outlived the server"
        time.sleep(0.1)
    access_log = (tmp_path / "access.log").read_text()
    assert "/v1/program" in access_log and "/v1/members" in access_log, access_log[-500:]


def test_a_web_worker_freezes_what_start_up_built(tmp_path):
    """The cyclic collector of a worker leaves the application it built at start-up alone."""
    code = ("import gc; from loyalty_api.cli import web_app; app = web_app(); "
            "print(gc.get_freeze_count(), any(o is app for o in gc.get_objects()), type(app.wsgi_app.app).__name__, "
            "app.wsgi_app.app.next_app.__name__)")
    env = {**os.environ, "LOYALTY_DATABASE_URL": f"sqlite:///{tmp_path / 'frozen.db'}",
           "LOYALTY_SECRET_KEY": "k" * 48}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    frozen, app_collectable, behind_slots, behind_posts = done.stdout.split()[-4:]
    assert int(frozen) > 10_000 and app_collectable == "False"  # the app itself is frozen
    # On SQLite (no statement engine) balance reads go through Flask; purchases are applied
    # before it on either database.
    assert (behind_slots, behind_posts) == ("PurchasePosts", "wsgi_app")
