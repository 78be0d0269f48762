"""What a batch purchase's rows cost PostgreSQL, and what fewer of them would cost.

A batch of 1,000 purchases ends in one write statement (loyalty_api.bulk.Writes): its lots,
its ledger entries (one per rule that awarded points, 6–7 a purchase in this shape), the
balances and the purchases. This bench measures the CPU time of the PostgreSQL backend
running that statement, as the service builds it, against three variants of the same rows,
each in a transaction that is rolled back, alternating, in the same minutes:
- `no_keys`: the five foreign keys those rows are checked against dropped (in the
  transaction) – what checking them row by row costs;
- `one_entry`: one ledger entry per credit (per purchase) instead of one per rule, with the
  same lots, balances and purchases – what the ledger's granularity costs;
- `one_entry_no_keys`: both.
The variants are not the service's behaviour: they price two design decisions, the keys that
guard every row and an entry per rule that explains every point, against the batch target
(10,000 purchases/s on two cores that also run the web workers: ~0.1 ms of PostgreSQL CPU a
purchase at most).

Set-up as bench.purchase_cpu (in process, the Flask test client), with the batch shape of
bench.api_paths (2,000 members, a quarter in the tier, 1,000 purchases a batch) and
BENCH_WARMUP_BATCHES (20) batches posted first so that members have a history; the measured
batch is applied and rolled back BENCH_ROUNDS times (`batch_postgres_cpu_ms`: the backend's CPU
for the whole batch, its reads and its write), its write statement captured on the way.
Run: `python -m bench.batch_write` (LOYALTY_BENCH_BATCH_DATABASE_URL to use another database;
it is dropped and created again; BENCH_ROUNDS (7) rounds of the four). Prints one JSON document.
"""

import json
import os
import platform
import statistics
import sys
import time

from sqlalchemy import event, text

from bench.api_paths import batch_body
from bench.ingest import TIER_SHARE, connect, cpu_seconds
from bench.purchase_cpu import set_up_in_process
from loyalty_api.extensions import db
from loyalty_api.purchases.schemas import PurchaseCreateSchema
from loyalty_api.purchases.services import BatchEntry, create_purchases_batch
from loyalty_api.timeutil import utcnow

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/loyalty_bench_batch"
MEMBERS = 2000
BATCH = 1000
# The keys the rows of an earning are checked against, one by one.
KEYS = {
    "ledger_entries": ["fk_ledger_entries_lot_id_point_lots", "fk_ledger_entries_member_id_members"],
    "point_lots": ["fk_point_lots_member_id_members"],
    "purchases": ["fk_purchases_lot_id_point_lots", "fk_purchases_member_id_members"],
}
VARIANTS = ("as_written", "no_keys", "one_entry", "one_entry_no_keys")


def log(message: str) -> None:
    print(f"[batch_write {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def capture_write(app, body: dict, rounds: int) -> tuple[str, tuple, float]:
    """Apply one batch as the batch route does and roll it back, `rounds` times; return its
    write statement and the median CPU seconds of the backend for the whole batch (its reads
    and its write)."""
    schema, captured, spent = PurchaseCreateSchema(), [], []

    def keep(_conn, _cursor, statement, parameters, _context, _many):
        if statement.startswith("WITH w0 AS (INSERT INTO point_lots"):
            captured.append((statement, parameters))

    with app.app_context():
        entries = [BatchEntry(p["transaction_id"], schema.load(p)) for p in body["purchases"]]
        event.listen(db.engine, "before_cursor_execute", keep)
        try:
            for _ in range(rounds):
                backend = [db.session.execute(text("SELECT pg_backend_pid()")).scalar()]
                before = cpu_seconds(backend)
                results = create_purchases_batch(db.session, entries, utcnow())
                spent.append(cpu_seconds(backend) - before)
                db.session.rollback()
                assert all(r["status"] == 201 for r in results), results[:2]
        finally:
            event.remove(db.engine, "before_cursor_execute", keep)
            db.session.rollback()
    statement, parameters = captured[-1]
    return statement, parameters, statistics.median(spent)


def entries_parameter(statement: str) -> int:
    """The position of the ledger entries' JSON rows among the write statement's parameters."""
    return statement[:statement.index("INSERT INTO ledger_entries")].count("%s")


def one_entry_per_credit(statement: str, parameters: tuple) -> tuple:
    """The same rows with each credit's ledger entries merged into one."""
    position = entries_parameter(statement)
    merged: dict[str, dict] = {}
    for entry in json.loads(parameters[position]):
        if entry["lot_id"] in merged:
            merged[entry["lot_id"]]["points"] += entry["points"]
        else:
            merged[entry["lot_id"]] = {**entry, "rule_id": None, "rule_version": None, "description": "purchase"}
    return (*parameters[:position], json.dumps(list(merged.values())), *parameters[position + 1:])


def measure(url: str, statement: str, parameters: tuple, rounds: int) -> dict[str, list[float]]:
    """The backend's CPU seconds for the statement in each variant, `rounds` times, alternating."""
    variants = {"as_written": (parameters, False), "no_keys": (parameters, True),
                "one_entry": (one_entry_per_credit(statement, parameters), False)}
    variants["one_entry_no_keys"] = (variants["one_entry"][0], True)
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with connect(url) as conn:
        backend = [conn.info.backend_pid]
        for round_ in range(rounds + 1):
            for name in VARIANTS:
                rows, without_keys = variants[name]
                with conn.transaction(force_rollback=True):
                    if without_keys:
                        for table, keys in KEYS.items():
                            for key in keys:
                                conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {key}")
                    before = cpu_seconds(backend)
                    conn.execute(statement, rows, prepare=False)
                    spent = cpu_seconds(backend) - before
                if round_:  # the first round warms the caches
                    seconds[name].append(spent)
    return seconds


def main() -> None:
    url = os.environ.get("LOYALTY_BENCH_BATCH_DATABASE_URL") or DEFAULT_URL
    rounds = int(os.environ.get("BENCH_ROUNDS", 7))
    warmup = int(os.environ.get("BENCH_WARMUP_BATCHES", 20))
    app, client, headers, members = set_up_in_process(url, MEMBERS, "batch", {"pending_days": 0})
    tier = client.post("/v1/tiers", json={"code": "gold", "name": "Gold", "rank": 1, "threshold": 1_000_000,
                                           "multiplier": 1.5}, headers=headers).json
    with connect(url) as conn:
        conn.execute("UPDATE members SET tier_id = %s WHERE id = ANY(%s)", (tier["id"], members[::TIER_SHARE]))
    log(f"{warmup} batches of {BATCH} for the members' history")
    for call in range(warmup):
        assert client.post("/v1/purchases/batch", json=batch_body(call, members, BATCH),
                           headers=headers).status_code == 200
    with connect(url) as conn:
        conn.execute("VACUUM ANALYZE")
    statement, parameters, batch_seconds = capture_write(app, batch_body(warmup, members, BATCH), rounds)
    seconds = measure(url, statement, parameters, rounds)
    entries = len(json.loads(parameters[entries_parameter(statement)]))
    per_purchase = {name: statistics.median(values) / BATCH * 1000 for name, values in seconds.items()}
    log(", ".join(f"{name} {value:.3f} ms" for name, value in per_purchase.items()) + " of PostgreSQL CPU a purchase")
    figures = [{"name": "ledger_entries_per_purchase", "value": round(entries / BATCH, 2), "unit": "entries",
                "target": "-", "met": True},
               {"name": "batch_postgres_cpu_ms", "value": round(batch_seconds / BATCH * 1000, 3),
                "unit": "ms per purchase", "target": "-", "met": True}]
    for name in VARIANTS:
        figures.append({"name": f"write_postgres_cpu_ms_{name}", "value": round(per_purchase[name], 3),
                        "unit": "ms per purchase", "target": "-", "met": True})
    for name in VARIANTS[1:]:
        ratio = per_purchase[name] / per_purchase["as_written"]
        figures.append({"name": f"write_ratio_{name}", "value": round(ratio, 2), "unit": "x as written",
                        "target": "-", "met": True})
    print(json.dumps({"benchmark": "batch_write",
                      "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                      "figures": figures}))


if __name__ == "__main__":
    main()
