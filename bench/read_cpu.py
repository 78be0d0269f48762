"""CPU per balance read (GET /v1/members/{id}) of the service itself, in process, on PostgreSQL.

Reads members through the Flask test client, one at a time, as a web worker answers them
(balance_reads.BalanceReads in front of Flask), and counts the CPU time of this
process (authentication, the query, serialization) and of its PostgreSQL backends,
and the SQL statements and database transactions (a BEGIN and a ROLLBACK each) per read.
Like bench.purchase_cpu it measures no HTTP server nor load generator, so it stays
meaningful on a busy machine: the figure to watch when changing the read path. Members:
every 4th in a tier; each has lots of seven purchase dates, the newest still pending, so six
available expiry dates where the balance shows five. Reads are measured with the program in
`fixed` expiry mode, then in `inactivity` mode.
Run: `python -m bench.read_cpu` (LOYALTY_BENCH_READ_CPU_DATABASE_URL to use another database;
it is dropped and created again; BENCH_READS, default 5,000, reads per mode).
"""

import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime, timedelta

from flask_migrate import upgrade
from sqlalchemy import event, text

from bench.ingest import backend_pids, cpu_seconds, machine_busy_seconds
from bench.purchase_cpu import recreate
from loyalty_api import create_app
from loyalty_api.auth.services import create_api_key
from loyalty_api.balance_reads import BalanceReads
from loyalty_api.extensions import db
from loyalty_api.timeutil import isoformat, utcnow
from loyalty_api.transactions import STATEMENT_ENGINE, run_write

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/loyalty_bench_read_cpu"
MEMBERS = 300
TIER_SHARE = 4
LOT_DATES = 7  # one pending, and one more available than the balance shows
WARMUP = 300
ROUNDS = 5  # the median round is reported: a busy spell of the shared machine skews one round


def set_up(client, headers: dict) -> list[str]:
    """Configure the program, a tier, members and their purchases; return the member ids."""
    def expect(method: str, path: str, body, status: int) -> dict:
        response = client.open(path, method=method, json=body, headers=headers)
        assert response.status_code == status, (path, response.status_code, response.json)
        return response.json

    expect("PATCH", "/v1/program", {"currency": "EUR", "pending_days": 14,
                                    "expiry": {"mode": "fixed", "months": 24}}, 200)
    expect("POST", "/v1/rules", {"name": "4 per 1.00", "kind": "earn", "trigger": "purchase", "status": "active",
                                 "effect": {"type": "per_amount", "points": 4, "per": 100,
                                            "rounding": "floor"}}, 201)
    tier = expect("POST", "/v1/tiers", {"code": "gold", "name": "Gold", "rank": 1, "threshold": 10**9,
                                        "multiplier": 1.5}, 201)
    members = [expect("POST", "/v1/members", {"external_id": f"read-{n}", "email": f"m{n}@bench.example",
                                              "name": f"Member {n}"}, 201)["id"] for n in range(MEMBERS)]
    now = utcnow()
    # Lots 40 days apart, the newest 5 days ago: pending for 14 days, so it stays pending.
    dates = [isoformat(now - timedelta(days=5 + 40 * k)) for k in range(LOT_DATES)]
    purchases = [{"transaction_id": f"read-{m}-{k}", "member_id": member_id, "occurred_at": occurred_at,
                  "currency": "EUR", "total": 1000 + 100 * k, "channel": "pos"}
                 for m, member_id in enumerate(members) for k, occurred_at in enumerate(dates)]
    for start in range(0, len(purchases), 1000):
        results = expect("POST", "/v1/purchases/batch", {"purchases": purchases[start:start + 1000]}, 200)
        assert all(entry["status"] == 201 for entry in results["results"])
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE members SET tier_id = :tier WHERE id = ANY(:ids)"),
                     {"tier": tier["id"], "ids": members[::TIER_SHARE]})
        conn.execute(text("ANALYZE"))
    return members


def measure(client, headers: dict, members: list[str], count: int, counters: dict, url: str) -> dict:
    """Read members round robin in ROUNDS rounds; return the median round's figures per read:
    CPU ms of this process and of its PostgreSQL backends, wall ms, statements, transactions,
    and the cores other processes of the machine used meanwhile."""
    for n in range(WARMUP):
        assert client.get(f"/v1/members/{members[n % len(members)]}", headers=headers).status_code == 200
    backends = backend_pids(url)  # the pool's connections, all opened by the warm-up
    per_round = max(1, count // ROUNDS)
    rounds = []
    for _ in range(ROUNDS):
        counters.update(statements=0, transactions=0)
        cpu, postgres, machine = time.process_time(), cpu_seconds(backends), machine_busy_seconds()
        wall = time.perf_counter()
        for n in range(per_round):
            response = client.get(f"/v1/members/{members[n % len(members)]}", headers=headers)
            assert response.status_code == 200, response.json
        cpu, postgres = time.process_time() - cpu, cpu_seconds(backends) - postgres
        machine, wall = machine_busy_seconds() - machine, time.perf_counter() - wall
        rounds.append({"cpu_ms": cpu / per_round * 1000, "postgres_ms": postgres / per_round * 1000,
                       "wall_ms": wall / per_round * 1000, "statements": counters["statements"] / per_round,
                       "transactions": counters["transactions"] / per_round,
                       "other_cores": max(machine - cpu - postgres, 0.0) / wall})
    return {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}


def main() -> None:
    url = os.environ.get("LOYALTY_BENCH_READ_CPU_DATABASE_URL") or DEFAULT_URL
    count = int(os.environ.get("BENCH_READS") or 5000)
    recreate(url)
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "SECRET_KEY": "bench-" * 8})
    client = app.test_client()
    counters = {"statements": 0, "transactions": 0}
    with app.app_context():
        upgrade()
        key = run_write(lambda session: create_api_key(session, "admin", utcnow()))
        headers = {"Authorization": f"Bearer {key}"}
        members = set_up(client, headers)
        # As a web worker answers it (cli.web_app): before Flask, once the key is remembered.
        BalanceReads.install(app)

        def on_statement(*_args):
            counters["statements"] += 1

        def on_transaction_end(conn):
            # A statement run in autocommit mode had no BEGIN, and its ROLLBACK goes nowhere.
            if not conn.connection.dbapi_connection.autocommit:
                counters["transactions"] += 1

        # The balance read runs on the statement engine (transactions.run_statement).
        for engine in (db.engine, app.extensions[STATEMENT_ENGINE]):
            event.listen(engine, "before_cursor_execute", on_statement)
            event.listen(engine, "rollback", on_transaction_end)
            event.listen(engine, "commit", on_transaction_end)
    fixed = measure(client, headers, members, count, counters, url)
    assert client.patch("/v1/program", json={"expiry": {"mode": "inactivity", "months": 12}},
                        headers=headers).status_code == 200
    inactivity = measure(client, headers, members, count, counters, url)

    def figure(name, value, unit, digits=3) -> dict:
        return {"name": name, "value": round(value, digits), "unit": unit, "target": "-", "met": True}

    print(json.dumps({
        "benchmark": "read_cpu",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ")},
        "figures": [
            figure("balance_read_cpu_ms", fixed["cpu_ms"], "ms"),
            figure("postgres_cpu_ms_per_balance_read", fixed["postgres_ms"], "ms"),
            figure("balance_read_wall_ms_one_client", fixed["wall_ms"], "ms"),
            figure("statements_per_balance_read", fixed["statements"], "statements", 2),
            figure("transactions_per_balance_read", fixed["transactions"], "transactions", 2),
            figure("balance_read_cpu_ms_inactivity_mode", inactivity["cpu_ms"], "ms"),
            figure("postgres_cpu_ms_per_balance_read_inactivity_mode", inactivity["postgres_ms"], "ms"),
            figure("statements_per_balance_read_inactivity_mode", inactivity["statements"], "statements", 2),
            figure("other_processes_cores", max(fixed["other_cores"], inactivity["other_cores"]), "cores", 2),
        ],
    }))


if __name__ == "__main__":
    main()
