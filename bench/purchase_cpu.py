"""CPU per purchase of the service itself, in process, on PostgreSQL.

Posts purchases through the Flask test client, one at a time, to the application as a web
worker runs it (purchase_posts.PurchasePosts in front of Flask), and counts the CPU time of
this process (the service's Python: parsing, rules, SQLAlchemy, psycopg), the CPU
time of its PostgreSQL backends, and the SQL statements per purchase. Unlike bench.ingest
it measures no HTTP server nor load generator, so it stays meaningful on a busy machine:
the figure to watch when changing the purchase path. Run: `python -m bench.purchase_cpu`
(LOYALTY_BENCH_CPU_DATABASE_URL to use another database; it is dropped and created again).
"""

import json
import os
import platform
import sys
import time

from flask_migrate import upgrade
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url

from bench.ingest import CATEGORIES, backend_pids, bench_rules, cpu_seconds
from loyalty_api import create_app
from loyalty_api.auth.services import create_api_key
from loyalty_api.extensions import db
from loyalty_api.purchase_posts import PurchasePosts
from loyalty_api.timeutil import utcnow
from loyalty_api.transactions import run_write

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/loyalty_bench_cpu"
MEMBERS = 300
WARMUP = 100


def recreate(url: str) -> None:
    name = make_url(url).database
    if not name.startswith("loyalty_bench"):
        sys.exit(f"refusing to drop {name!r}: bench databases start with loyalty_bench")
    admin = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


def purchase(n: int, member_id: str) -> dict:
    items = [{"sku": f"sku-{k}", "category": CATEGORIES[(n + k) % len(CATEGORIES)], "quantity": 1 + k % 2,
              "unit_price": 250 + 50 * k} for k in range(5)]
    return {"transaction_id": f"cpu-{n}", "member_id": member_id, "occurred_at": "2026-11-23T10:00:00Z",
            "currency": "EUR", "total": sum(i["quantity"] * i["unit_price"] for i in items), "channel": "pos",
            "items": items}


def set_up_in_process(url: str, members: int, prefix: str, program: dict | None = None):
    """Recreate the database at `url` with bench.ingest's program (20 active rules, fixed
    expiry, and `program`'s settings) and `members` members, through the Flask test client;
    return (app, client, headers, member ids)."""
    recreate(url)
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "SECRET_KEY": "bench-" * 8})
    with app.app_context():
        upgrade()
        key = run_write(lambda session: create_api_key(session, "admin", utcnow()))
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    settings = {"currency": "EUR", "expiry": {"mode": "fixed", "months": 24}, **(program or {})}
    assert client.patch("/v1/program", json=settings, headers=headers).status_code == 200
    for rule in bench_rules():
        assert client.post("/v1/rules", json=rule, headers=headers).status_code == 201
    member_ids = [client.post("/v1/members", json={"external_id": f"{prefix}-{n}"}, headers=headers).json["id"]
                  for n in range(members)]
    return app, client, headers, member_ids


def main() -> None:
    url = os.environ.get("LOYALTY_BENCH_CPU_DATABASE_URL") or DEFAULT_URL
    count = int(os.environ.get("BENCH_PURCHASES", 1000))
    app, client, headers, members = set_up_in_process(url, MEMBERS, "cpu")
    PurchasePosts.install(app)  # the key is remembered now: Flask verified it above
    for n in range(WARMUP):
        assert client.post("/v1/purchases", json=purchase(10**6 + n, members[n % MEMBERS]),
                           headers=headers).status_code == 201
    statements = []
    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", lambda *args: statements.append(1))
    backends = backend_pids(url)  # the pool's connections, opened by the warm-up
    cpu, wall, postgres = time.process_time(), time.perf_counter(), cpu_seconds(backends)
    for n in range(count):
        response = client.post("/v1/purchases", json=purchase(n, members[n % MEMBERS]), headers=headers)
        assert response.status_code == 201, response.json
    cpu, wall = (time.process_time() - cpu) / count * 1000, (time.perf_counter() - wall) / count * 1000
    postgres = (cpu_seconds(backends) - postgres) / count * 1000
    if set(backend_pids(url)) - set(backends):
        sys.exit("the pool opened connections during the run: their backends' CPU is not counted")
    print(json.dumps({
        "benchmark": "purchase_cpu",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "figures": [
            {"name": "purchase_service_cpu_ms", "value": round(cpu, 2), "unit": "ms", "target": "-", "met": True},
            {"name": "purchase_postgres_cpu_ms", "value": round(postgres, 2), "unit": "ms", "target": "-",
             "met": True},
            {"name": "purchase_wall_ms_one_client", "value": round(wall, 2), "unit": "ms", "target": "-",
             "met": True},
            {"name": "statements_per_purchase", "value": round(len(statements) / count, 1), "unit": "statements",
             "target": "-", "met": True},
        ],
    }))


if __name__ == "__main__":
    main()
