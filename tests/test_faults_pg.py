"""Faults: PostgreSQL stops and starts again under load; the service recovers by itself.

Clients post purchases from threads while the test stops the PostgreSQL cluster and starts it
again. Every answer is a success or a 503 problem+json with Retry-After (never a 500); every
client retries its refused requests with the same body until they land, and in the end each
transaction id is applied exactly once, with the ledger invariants intact. A Stripe webhook
delivered during the outage is refused with 503 and applied once on Stripe's retry; a job run
that failed on the outage finishes on the next run without expiring anything twice.

The test runs a separate app with real commits (like test_concurrency_pg.py) and deletes its
rows afterwards; the cluster is always started again, and the harness's pool is disposed so
that the tests after this one get fresh connections.
"""

import json
import os
import subprocess
import threading
import time
from collections import Counter
from datetime import timedelta

import psycopg
import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.engine import make_url

from loyalty_api import create_app
from loyalty_api.auth.models import ApiKey
from loyalty_api.auth.services import create_api_key
from loyalty_api.extensions import db
from loyalty_api.integrations.stripe.models import StripeEvent
from loyalty_api.jobs.models import JobRun
from loyalty_api.ledger.models import LedgerEntry
from loyalty_api.members.models import Member
from loyalty_api.program.models import Program
from loyalty_api.purchases.models import Purchase
from loyalty_api.rules_admin.models import Rule, RuleVersion
from loyalty_api.timeutil import freeze
from loyalty_api.transactions import run_write

from .conftest import NOW
from .helpers import PER_EURO_4, ApiClient, assert_invariants, purchase_body
from .test_concurrency_pg import MEMBER_TABLES
from .test_stripe import event, payment_intent, sign

pytestmark = pytest.mark.postgres

CLIENTS = 6
PER_CLIENT = 12
STRIPE_SECRET = "whsec_fault_0123456789abcdef"
# The local cluster the test database lives on (Debian's layout: /etc/postgresql/<version>/main).
CLUSTER = ["pg_ctlcluster", "--skip-systemctl-redirect",
           max(os.listdir("/etc/postgresql"), key=float) if os.path.isdir("/etc/postgresql") else "15", "main"]


def _wait_for_postgres(url: str, *, up: bool, timeout: float = 60.0) -> None:
    """Poll (bounded) until the server accepts connections, or refuses them when `up` is False."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            psycopg.connect(dsn, connect_timeout=2).close()
            if up:
                return
        except psycopg.OperationalError:
            if not up:
                return
        time.sleep(0.2)
    raise AssertionError(f"PostgreSQL did not {'come back' if up else 'stop'} within {timeout} s")


@pytest.fixture
def live(app, database_url):
    live_app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "TESTING": True,
                           "SECRET_KEY": app.config["SECRET_KEY"], "LOYALTY_POOL_SIZE": CLIENTS + 2,
                           "STRIPE_WEBHOOK_SECRET": STRIPE_SECRET})
    freeze(NOW)
    with live_app.app_context():
        program = db.session.execute(select(Program)).scalar_one()
        saved = {c.key: getattr(program, c.key) for c in Program.__table__.columns}
        keys = {role: run_write(lambda s, role=role: create_api_key(s, role, NOW, "fault test"))
                for role in ("pos", "admin")}
        db.session.remove()
    try:
        yield live_app, keys
    finally:
        freeze(None)
        with live_app.app_context():
            session = db.session
            member_ids = session.execute(select(Member.id).where(Member.external_id.like("fault-%"))).scalars().all()
            for model in MEMBER_TABLES:
                session.execute(delete(model).where(model.member_id.in_(member_ids)))
            session.execute(delete(StripeEvent).where(StripeEvent.event_id.like("evt_fault%")))
            session.execute(delete(Member).where(Member.id.in_(member_ids)))
            session.execute(delete(JobRun).where(JobRun.started_at >= NOW - timedelta(days=1)))
            rule_ids = session.execute(select(Rule.id).where(Rule.name.like("fault %"))).scalars().all()
            session.execute(delete(RuleVersion).where(RuleVersion.rule_id.in_(rule_ids)))
            session.execute(delete(Rule).where(Rule.id.in_(rule_ids)))
            session.execute(delete(ApiKey).where(ApiKey.name == "fault test"))
            program = session.execute(select(Program)).scalar_one()
            for key, value in saved.items():
                setattr(program, key, value)
            session.commit()
            db.session.remove()
            db.engine.dispose()


def _deliver(client, evt):
    payload = json.dumps(evt)
    return client.post("/v1/integrations/stripe/webhook", data=payload.encode(),
                       headers={"Content-Type": "application/json", "Stripe-Signature": sign(payload, STRIPE_SECRET)})


def test_the_service_survives_a_database_restart(app, database_url, live):
    live_app, keys = live
    admin = ApiClient(live_app.test_client(), keys, "admin")
    assert admin.post("/v1/rules", json={"name": "fault 4 per 1.00", "kind": "earn", "trigger": "purchase",
                                         "status": "active", "effect": PER_EURO_4}).status_code == 201
    assert admin.patch("/v1/program", json={"expiry": {"mode": "fixed", "months": 1}}).status_code == 200
    member_id = admin.post("/v1/members", json={"external_id": "fault-1"}).json["id"]
    assert admin.patch(f"/v1/members/{member_id}", json={"stripe_customer_id": "cus_fault1"}).status_code == 200
    # Old points, due to expire, for the job run that the outage interrupts.
    old = [admin.post("/v1/members", json={"external_id": f"fault-old-{i}"}).json["id"] for i in range(3)]
    for i, old_id in enumerate(old):
        body = purchase_body(old_id, f"fault-old-t{i}", total=1000, occurred_at="2026-01-05T10:00:00Z")
        assert admin.post("/v1/purchases", json=body).status_code == 201

    answers: Counter = Counter()
    refused: list = []
    started = threading.Barrier(CLIENTS + 1)
    some_landed = threading.Semaphore(0)
    db_back = threading.Event()
    errors: list = []

    def client(n):
        api = ApiClient(live_app.test_client(), keys, "pos")
        started.wait()
        for i in range(PER_CLIENT):
            body = purchase_body(member_id, f"fault-c{n}-{i}", total=1000 + 100 * n + i)
            for _attempt in range(50):
                r = api.post("/v1/purchases", json=body)
                answers[r.status_code] += 1
                if r.status_code in (200, 201):
                    some_landed.release()
                    break
                if r.status_code != 503 or r.mimetype != "application/problem+json" or \
                        r.headers.get("Retry-After") != "1" or r.json["code"] != "service_unavailable":
                    errors.append((r.status_code, dict(r.headers), r.get_data(as_text=True)))
                    return
                refused.append(body["transaction_id"])
                db_back.wait(timeout=90)  # as told by Retry-After: come back later, once it is up
            else:
                errors.append(("gave up", body["transaction_id"]))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    started.wait()
    for _ in range(CLIENTS):  # load is flowing
        assert some_landed.acquire(timeout=60)
    stripe_event = event("payment_intent.succeeded", payment_intent(pi="pi_fault_1", customer="cus_fault1"),
                         event_id="evt_fault_1")
    # Balance reads run on the statement engine's own pool: one of its connections is open now.
    assert admin.get(f"/v1/members/{member_id}").status_code == 200
    try:
        subprocess.run([*CLUSTER, "stop", "-m", "fast"], check=True, capture_output=True, timeout=60)
        _wait_for_postgres(database_url, up=False)
        read = admin.get(f"/v1/members/{member_id}")
        assert read.status_code == 503 and read.headers["Retry-After"] == "1", read.get_data(as_text=True)
        webhook = _deliver(live_app.test_client(), stripe_event)
        assert webhook.status_code == 503 and webhook.headers["Retry-After"] == "1", webhook.get_data(as_text=True)
        job = admin.post("/v1/jobs/expire-points/runs")
        assert job.status_code == 503 and job.mimetype == "application/problem+json", job.get_data(as_text=True)
        assert admin.get("/readyz").status_code == 503
    finally:
        subprocess.run([*CLUSTER, "start"], check=True, capture_output=True, timeout=60)
        _wait_for_postgres(database_url, up=True)
        with app.app_context():
            db.engine.dispose()  # the harness's pooled connections died with the server
        db_back.set()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:3]

    # Recovered by itself: no restart of the app, no pool reset by the test.
    assert admin.get("/readyz").status_code == 200
    for _attempt in range(3):  # a read may still meet a connection that died with the server: 503
        read = admin.get(f"/v1/members/{member_id}")
        if read.status_code != 503:
            break
    assert read.status_code == 200, read.get_data(as_text=True)
    webhook = _deliver(live_app.test_client(), stripe_event)  # Stripe retries
    assert webhook.status_code == 200 and webhook.json["status"] == "applied", webhook.json
    again = _deliver(live_app.test_client(), stripe_event)
    assert again.status_code == 200 and again.headers.get("Idempotent-Replayed") == "true"

    freeze(NOW + timedelta(days=40))
    run = admin.post("/v1/jobs/expire-points/runs")
    assert run.status_code == 201 and run.json["status"] == "succeeded", run.json
    rerun = admin.post("/v1/jobs/expire-points/runs")
    assert rerun.json["counts"]["points"] == 0  # never expires twice
    freeze(NOW)

    with live_app.app_context():
        session = db.session
        landed = session.execute(select(Purchase.transaction_id, Purchase.points)
                                 .where(Purchase.member_id == member_id)).all()
        ids = Counter(row.transaction_id for row in landed)
        expected = {f"fault-c{n}-{i}" for n in range(CLIENTS) for i in range(PER_CLIENT)} | {"stripe:pi_fault_1"}
        assert set(ids) == expected and set(ids.values()) == {1}  # nothing lost, nothing twice
        stored = session.execute(select(func.count()).select_from(StripeEvent)
                                 .where(StripeEvent.event_id == "evt_fault_1")).scalar()
        assert stored == 1
        expired = [session.execute(select(func.sum(LedgerEntry.points)).where(
            LedgerEntry.member_id == old_id, LedgerEntry.type == "expire")).scalar() for old_id in old]
        assert expired == [-40, -40, -40]
        assert_invariants(session)
        db.session.remove()
    assert answers[503] == len(refused)
    print(f"\nfault injection: 1 restart, {sum(answers.values())} purchase requests, {len(refused)} refused "
          f"with 503 and retried, {len(expected)} applied once each")
