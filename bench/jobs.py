"""Measure the expire-points and review-tiers jobs over a large seeded PostgreSQL database.

Run from the repository root: `python -m bench.jobs`. It recreates its own database
(`loyalty_bench_jobs`, or LOYALTY_BENCH_JOBS_DATABASE_URL; the name must start with
loyalty_bench), migrates it with `loyalty db upgrade`, and seeds it with set-based SQL
(generate_series): BENCH_MEMBERS members (250,000) with BENCH_LOTS_PER_MEMBER (4) available
lots each, all past their fixed expiry date, with the earn entries and balances they make;
as many purchases spread over 500 days, and two tiers, a third of the members holding the
upper one. Each job runs in a child process of its own (`python -m bench.jobs --child NAME`)
so that its peak memory (ru_maxrss) is the job's alone; reconcile-balances then checks that
the expiry left every balance, ledger and lot in agreement. Prints one JSON document on
stdout; progress goes to stderr.

Then expire-points once more, under purchase load (BENCH_LOAD=0 skips this): the expired lots,
their balances and ledgers are put back as seeded (SQL), `loyalty serve` starts on a free
127.0.0.1 port with an admin key (`loyalty keys create`) and five active earn rules (over the
API); a short closed-loop wrk run gives a first guess, fixed rates offered open loop find the
highest rate the server sustains (p99 < 250 ms, 98 % answered in time), and Python threads send
purchases for random seeded members at half that rate on a fixed schedule: for
BENCH_IDLE_SECONDS (20) with nothing else running, then for as long as
`loyalty jobs run expire-points` runs in a process of its own. Every member the load picks has
lots that run is expiring, so the requests and the job's chunks lock the same balance rows.
Afterwards the counts are checked (every due lot expired, no purchase's lot touched, one
purchase per 2xx answer) and reconcile-balances runs again. Every process started is stopped
before the script exits; all traffic stays on 127.0.0.1.

Knobs (environment): LOYALTY_BENCH_JOBS_DATABASE_URL, BENCH_MEMBERS (250,000),
BENCH_LOTS_PER_MEMBER (4), BENCH_LOAD (1), BENCH_IDLE_SECONDS (20), BENCH_CALIBRATE_SECONDS (8),
BENCH_SEARCH_SECONDS (8, each fixed rate tried), BENCH_CONNECTIONS (8, of the wrk run),
BENCH_WORKERS (2), BENCH_THREADS (4), BENCH_LOAD_CHUNK_SIZE (the job's default, 5,000 members:
`--chunk-size` of the run under load, which the pace, LOYALTY_JOBS_PACE_*, caps while the load runs),
BENCH_LOAD_RATE (unset: half the sustainable rate found as above; a number of purchases/s skips
the search and loads at that rate, so that two versions of the code compare under one load).
"""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from bench.ingest import (
    CATEGORIES,
    CHANNELS,
    CURRENCY,
    HOST,
    ITEMS_PER_PURCHASE,
    Client,
    bench_rules,
    child_pids,
    cpu_seconds,
    ensure_wrk,
    free_port,
    machine_busy_seconds,
    run_wrk,
    stop,
    wait_ready,
    write_wrk_script,
)

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/loyalty_bench_jobs"


def log(message: str) -> None:
    print(f"[jobs {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def libpq(url: str, **overrides) -> dict:
    parsed = make_url(url)
    params = {"host": parsed.host or "127.0.0.1", "port": parsed.port or 5432, "user": parsed.username or "postgres",
              "password": parsed.password, "dbname": parsed.database, **overrides}
    return {k: v for k, v in params.items() if v is not None}


def recreate_database(url: str) -> None:
    name = make_url(url).database or ""
    if not name.startswith("loyalty_bench"):
        raise SystemExit(f"refusing to drop {name!r}: the bench database's name must start with loyalty_bench")
    with psycopg.connect(**libpq(url, dbname="postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def loyalty_command() -> list[str]:
    script = Path(sys.executable).parent / "loyalty"
    return [str(script)] if script.exists() else [sys.executable, "-m", "loyalty_api.cli"]


SEED = """
UPDATE program SET expiry_mode = 'fixed', expiry_months = 12, tier_metric = 'points', tier_window_months = 12;

INSERT INTO tiers (id, code, name, rank, threshold, multiplier, benefits, created_at, updated_at) VALUES
  ('tier-silver', 'silver', 'Silver', 1, 200, 1.25, '[]', now(), now()),
  ('tier-gold', 'gold', 'Gold', 2, 350, 1.5, '[]', now(), now());

INSERT INTO members (id, external_id, email, name, status, tier_id, referral_code, metadata, enrolled_at,
                     last_activity_at)
SELECT 'm' || lpad(g::text, 25, '0'), 'bench-' || g, NULL, NULL, 'active',
       CASE WHEN g %% 3 = 0 THEN 'tier-gold' END, 'R' || g, '{}', now() - interval '800 days',
       now() - interval '400 days'
FROM generate_series(1, %(members)s) AS g;

INSERT INTO point_lots (id, member_id, source_type, source_id, points, remaining, status, occurred_at,
                        available_at, expires_at, created_at)
SELECT 'l' || lpad(g::text, 25, '0'), 'm' || lpad(((g - 1) / %(lots)s + 1)::text, 25, '0'), 'purchase',
       'p' || g, 100, 100 - (g %% 7) * 10, 'available', now() - interval '400 days', now() - interval '400 days',
       now() - interval '35 days' + (g %% 30) * interval '1 day', now() - interval '400 days'
FROM generate_series(1, %(members)s * %(lots)s) AS g;

INSERT INTO ledger_entries (id, member_id, type, points, lot_id, source_type, source_id, description, created_at)
SELECT 'e' || substr(id, 2), member_id, 'earn', points, id, 'purchase', source_id, 'bench', created_at
FROM point_lots;

-- What was spent of the lots (remaining < points), as one redemption entry per member.
INSERT INTO ledger_entries (id, member_id, type, points, source_type, source_id, description, created_at)
SELECT 'r' || substr(member_id, 2), member_id, 'redeem', -sum(points - remaining), 'redemption',
       'bench-' || member_id, 'bench', now() - interval '300 days'
FROM point_lots GROUP BY member_id HAVING sum(points - remaining) > 0;

INSERT INTO member_balances (member_id, available, pending, lifetime_earned, version)
SELECT member_id, sum(remaining), 0, sum(points), 0 FROM point_lots GROUP BY member_id;

INSERT INTO purchases (id, transaction_id, member_id, occurred_at, currency, total, points, lot_id,
                       refunded_amount, reversed_points, request_hash, response, created_at)
SELECT 'p' || lpad(g::text, 25, '0'), 'bench-t' || g, 'm' || lpad(((g - 1) / %(lots)s + 1)::text, 25, '0'),
       now() - ((g * 37) %% 500) * interval '1 day', 'EUR', 2500, 100, 'l' || lpad(g::text, 25, '0'),
       0, 0, 'bench', '{}', now() - ((g * 37) %% 500) * interval '1 day'
FROM generate_series(1, %(members)s * %(lots)s) AS g;
"""


def seed(url: str, members: int, lots: int) -> None:
    started = time.monotonic()
    with psycopg.connect(**libpq(url)) as conn:
        for statement in filter(str.strip, SEED.split(";\n")):
            conn.execute(statement, {"members": members, "lots": lots})
        conn.commit()
    with psycopg.connect(**libpq(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    log(f"seeded {members:,} members, {members * lots:,} lots and purchases in {time.monotonic() - started:.1f} s")


def run_child(name: str, env: dict) -> dict:
    """Run one job in a child process; return its run, wall time and peak memory."""
    done = subprocess.run([sys.executable, "-m", "bench.jobs", "--child", name], env=env, capture_output=True,
                          text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def child(name: str) -> None:
    """The child: run job NAME now, print {run, seconds, peak_rss_mb}."""
    from loyalty_api import create_app
    from loyalty_api.extensions import db
    from loyalty_api.jobs.services import run_job
    from loyalty_api.timeutil import isoformat, utcnow

    app = create_app()
    with app.app_context():
        started = time.monotonic()
        run = run_job(db.session, name, utcnow(), trigger="cli")
        seconds = time.monotonic() - started
    # ru_maxrss is in kilobytes on Linux.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"run": run, "seconds": seconds, "peak_rss_mb": peak}, default=isoformat))


# --- expire-points under purchase load -------------------------------------------------------

# The expired seeded lots back to what the seed made them (remaining = points - (g % 7) * 10),
# without their expire entries, and the balances to match.
REARM = [
    "DELETE FROM ledger_entries WHERE type = 'expire'",
    "UPDATE point_lots SET status = 'available', remaining = points - (substr(id, 2)::bigint % 7) * 10 "
    "WHERE id LIKE 'l%' AND status = 'expired'",
    "UPDATE member_balances b SET available = s.remaining, version = b.version + 1 "
    "FROM (SELECT member_id, sum(remaining) AS remaining FROM point_lots WHERE status = 'available' "
    "GROUP BY member_id) s WHERE b.member_id = s.member_id",
]
LOAD_RULES = (0, 2, 4, 7, 14)  # of bench.ingest's rules: per amount, coffee, pastry, big basket, coffee x2
JOB_TIMEOUT = 1800  # beside the load the job is paced (small chunks, rests): several times longer


def member_id(g: int) -> str:
    return "m" + str(g).zfill(25)


def with_application_name(url: str, name: str) -> str:
    return make_url(url).update_query_dict({"application_name": name}).render_as_string(hide_password=False)


def rearm(url: str, members: int, lots: int) -> None:
    started = time.monotonic()
    with psycopg.connect(**libpq(url)) as conn:
        for statement in REARM:
            conn.execute(statement)
        conn.commit()
    with psycopg.connect(**libpq(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE point_lots, ledger_entries, member_balances")
        available = conn.execute("SELECT count(*) FROM point_lots WHERE status = 'available'").fetchone()[0]
    if available != members * lots:
        raise RuntimeError(f"re-arming left {available} available lots, not {members * lots}")
    log(f"put {available:,} lots back as seeded in {time.monotonic() - started:.1f} s")


def run_cli(args: list[str], env: dict) -> str:
    done = subprocess.run(loyalty_command() + args, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"loyalty {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip()


class FixedRateLoad:
    """Purchases for random seeded members on a fixed schedule (open loop) until stopped.

    Each request is recorded as (due, sent, done, status, g): latency counts from its
    scheduled start, so queueing behind a slow request is not hidden.
    """

    def __init__(self, port: int, key: str, members: int, rate: float, prefix: str, concurrency: int = 32) -> None:
        self.port, self.key, self.members, self.rate, self.prefix = port, key, members, rate, prefix
        self.records: list[tuple[float, float, float, int, int]] = []
        self.lock = threading.Lock()
        self.next = 0
        self.stop_at = float("inf")
        self.threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(concurrency)]

    def start(self) -> FixedRateLoad:
        self.stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.start_at = time.monotonic() + 0.2
        for thread in self.threads:
            thread.start()
        return self

    def _worker(self) -> None:
        client = Client(self.port, self.key)
        rng = random.Random()
        try:
            while True:
                with self.lock:
                    n, self.next = self.next, self.next + 1
                due = self.start_at + n / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if due >= self.stop_at:
                    return
                g = rng.randint(1, self.members)
                items = [{"sku": f"sku-{rng.randrange(500)}", "category": rng.choice(CATEGORIES),
                          "quantity": rng.randint(1, 3), "unit_price": 50 * rng.randint(3, 50)}
                         for _ in range(ITEMS_PER_PURCHASE)]
                body = {"transaction_id": f"{self.prefix}-{n}", "member_id": member_id(g),
                        "occurred_at": self.stamp, "currency": CURRENCY,
                        "total": sum(i["quantity"] * i["unit_price"] for i in items),
                        "channel": rng.choice(CHANNELS), "store_id": f"s-{rng.randint(1, 20)}", "items": items}
                sent = time.monotonic()
                try:
                    status, _ = client.call("POST", "/v1/purchases", body)
                except OSError:
                    status = 0
                done = time.monotonic()
                with self.lock:
                    self.records.append((due, sent, done, status, g))
        finally:
            client.close()

    def stop(self) -> list[tuple[float, float, float, int, int]]:
        self.stop_at = min(self.stop_at, time.monotonic())
        for thread in self.threads:
            if thread.ident is not None:
                thread.join(60)
        with self.lock:
            return sorted(self.records)


def window_stats(records, start: float, end: float) -> dict:
    """Latency and answers of the requests scheduled in [start, end)."""
    inside = [r for r in records if start <= r[0] < end]
    latencies = sorted(r[2] - r[0] for r in inside)
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [0.0] * 99
    return {"requests": len(inside), "seconds": round(end - start, 1), "p50_ms": round(q[49] * 1000, 1),
            "p99_ms": round(q[98] * 1000, 1), "max_ms": round(latencies[-1] * 1000 if latencies else 0.0, 1),
            "non_2xx": sum(1 for r in inside if not 200 <= r[3] < 300)}


# A rate is sustained when the server answers it, offered on a fixed schedule, with this p99
# (from each request's scheduled start) and at least this share of it answered 2xx in time.
SUSTAINED_P99_MS = 250
SUSTAINED_SHARE = 0.98


def rate_trial(port: int, key: str, members: int, rate: float, seconds: int, prefix: str) -> dict:
    """Offer `rate` purchases/s for 1 + `seconds` s (the first second is not counted); say whether
    the server sustained it: p99 under SUSTAINED_P99_MS, no error, and the 2xx answers completed
    within the window at least SUSTAINED_SHARE of the rate (a server falling behind completes fewer)."""
    load = FixedRateLoad(port, key, members, rate, prefix).start()
    time.sleep(0.2 + 1 + seconds)
    records = load.stop()
    start = load.start_at + 1
    end = start + seconds
    stats = window_stats(records, start, end)
    served = sum(1 for r in records if start <= r[2] < end and 200 <= r[3] < 300) / seconds
    stats.update(rate=rate, served_per_s=round(served, 1))
    stats["sustained"] = (stats["p99_ms"] < SUSTAINED_P99_MS and stats["non_2xx"] == 0
                          and served >= SUSTAINED_SHARE * rate)
    return stats


def sustainable_rate(port: int, key: str, members: int, first: float, seconds: int) -> tuple[float, list[dict]]:
    """The highest purchase rate the server sustains (see rate_trial), found open loop: from
    `first`, up by half while sustained, then halving the gap between the highest rate sustained
    and the lowest not, until they are within 10 % of each other. Returns it and the trials."""
    trials: list[dict] = []
    sustained, missed = 0.0, None
    rate = round(first, 1)
    while len(trials) < 12:
        trial = rate_trial(port, key, members, rate, seconds, f"bs{len(trials)}")
        trials.append(trial)
        log(f"  {rate}/s offered: {trial['served_per_s']}/s answered in time, p50 {trial['p50_ms']:.1f} ms, "
            f"p99 {trial['p99_ms']:.1f} ms, non-2xx {trial['non_2xx']}: "
            f"{'sustained' if trial['sustained'] else 'not sustained'}")
        if trial["non_2xx"] == trial["requests"]:
            raise RuntimeError(f"no purchase at {rate}/s was answered 2xx; see the server's log")
        if trial["sustained"]:
            sustained = max(sustained, rate)
        else:
            missed = rate if missed is None else min(missed, rate)
        if missed is None:
            rate = round(rate * 1.5, 1)
        elif not sustained:
            rate = round(rate / 2, 1)
            if rate < 1:
                break
        elif missed <= sustained * 1.1:
            break
        else:
            rate = round((sustained + missed) / 2, 1)
        time.sleep(1)  # what queued in the server drains before the next rate
    if not sustained:
        raise RuntimeError(f"the server sustained none of the rates tried: {[t['rate'] for t in trials]}")
    return sustained, trials


class Sampler:
    """Every 0.1 s: lock waits by application, the running expire-points run's progress and
    whether it is inside a chunk's transaction (rather than between chunks), and the CPU time
    of the database's backends (short-lived ones included), on a connection of its own."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(**libpq(url), autocommit=True)
        self.samples: list[tuple[float, dict, int | None, bool]] = []
        self.backend_cpu: dict[int, list[float]] = {}
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, first: bool) -> None:
        rows = self.conn.execute(
            "SELECT pid, application_name, wait_event_type, pid = pg_backend_pid(), "
            "state IN ('active', 'idle in transaction') FROM pg_stat_activity "
            "WHERE datname = current_database()").fetchall()
        progress = self.conn.execute(
            "SELECT (counts->>'members')::int FROM job_runs WHERE name = 'expire-points' AND status = 'running' "
            "ORDER BY started_at DESC LIMIT 1").fetchone()
        waiting: dict[str, int] = {}
        job_in_chunk = False
        for pid, application, wait, own, in_transaction in rows:
            job_in_chunk = job_in_chunk or (application == "bench_expire" and bool(in_transaction))
            if wait == "Lock" and not own:
                waiting[application or "?"] = waiting.get(application or "?", 0) + 1
            cpu = cpu_seconds([pid])
            if pid in self.backend_cpu:
                self.backend_cpu[pid][1] = cpu
            else:  # a backend first seen after the start began in the window
                self.backend_cpu[pid] = [cpu if first else 0.0, cpu]
        self.samples.append((time.monotonic(), waiting, (progress[0] or 0) if progress else None, job_in_chunk))

    def _run(self) -> None:
        while not self.halt.wait(0.1):
            self._sample(False)

    def start(self) -> Sampler:
        self._sample(True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if not self.halt.is_set():
            self.halt.set()
            if self.thread.ident is not None:
                self.thread.join(10)
            self.conn.close()

    def backends_seconds(self) -> float:
        return sum(last - first for first, last in self.backend_cpu.values())

    def lock_waits(self) -> dict:
        """Samples in which a backend of each application waited for a lock, and the most at once."""
        seen: dict[str, dict] = {}
        for _, waiting, *_ in self.samples:
            for application, n in waiting.items():
                entry = seen.setdefault(application, {"samples": 0, "most_at_once": 0})
                entry["samples"] += 1
                entry["most_at_once"] = max(entry["most_at_once"], n)
        return {"samples_taken": len(self.samples), "waiting": seen}


class CpuWindow:
    """Cores used, over a window, by the server, the database's backends, this process (the load
    threads), its children (the job) and everything else on the machine."""

    def __init__(self, server: subprocess.Popen, sampler: Sampler) -> None:
        self.server, self.sampler = server, sampler

    def _read(self) -> dict:
        own = os.times()
        return {"at": time.monotonic(), "machine": machine_busy_seconds(),
                "server": cpu_seconds([self.server.pid, *child_pids(self.server.pid)]),
                "self": own.user + own.system, "children": own.children_user + own.children_system}

    def begin(self) -> None:
        self.before = self._read()

    def end(self) -> dict:
        b, a = self.before, self._read()
        elapsed = a["at"] - b["at"]
        parts = {k: a[k] - b[k] for k in ("machine", "server", "self", "children")}
        parts["postgres"] = self.sampler.backends_seconds()
        other = parts["machine"] - parts["server"] - parts["self"] - parts["children"] - parts["postgres"]
        cores = {"server_cores": parts["server"], "postgres_cores": parts["postgres"], "load_cores": parts["self"],
                 "job_cores": parts["children"], "other_cores": max(other, 0.0)}
        return {k: round(v / elapsed, 2) for k, v in cores.items()}


def in_flight_hits(records, samples, chunk: int) -> list:
    """The requests sent while the job was inside the transaction of their member's chunk (by
    the last sample before each was sent)."""
    progress = [(t, done, in_chunk) for t, _, done, in_chunk in samples if done is not None]
    hits = []
    for record in records:
        sent, g = record[1], record[4]
        latest = None
        for t, done, in_chunk in progress:  # progress is short (one sample per 0.1 s)
            if t > sent:
                break
            latest = done if in_chunk else None
        if latest is not None and latest < g <= latest + chunk:
            hits.append(record)
    return hits


def expire_under_load(url: str, env: dict, members: int, lots: int, tmp: Path) -> dict:
    """expire-points while purchases arrive at half the sustainable rate; see the module's docstring."""
    from loyalty_api.config import load_config
    from loyalty_api.jobs.services import CHUNK_SIZE, Pace

    idle_seconds = env_int("BENCH_IDLE_SECONDS", 20)
    calibrate_seconds = env_int("BENCH_CALIBRATE_SECONDS", 8)
    search_seconds = env_int("BENCH_SEARCH_SECONDS", 8)
    connections = env_int("BENCH_CONNECTIONS", 8)
    workers = env_int("BENCH_WORKERS", 2)
    threads = env_int("BENCH_THREADS", 4)
    chunk = env_int("BENCH_LOAD_CHUNK_SIZE", CHUNK_SIZE)
    fixed_rate = float(os.environ.get("BENCH_LOAD_RATE") or 0)
    # The job gives way to the load as configured (LOYALTY_JOBS_PACE_*, read by the job process).
    pace = Pace.from_config(load_config())
    paced_chunk = min(chunk, pace.chunk_size) if pace else chunk
    wrk = ensure_wrk()

    log("putting the expired lots back as seeded, for expire-points under load")
    rearm(url, members, lots)
    env = {**env, "LOYALTY_INSTANCE_DIR": str(tmp / "instance")}
    env.pop("LOYALTY_ACCESS_LOG", None)
    admin_key = run_cli(["keys", "create", "--role", "admin", "--name", "bench jobs"], env).splitlines()[-1]
    server_env = {**env, "LOYALTY_DATABASE_URL": with_application_name(url, "bench_api")}
    job_env = {**env, "LOYALTY_DATABASE_URL": with_application_name(url, "bench_expire")}

    server_log_path = tmp / "server.log"
    server_log = server_log_path.open("w")
    server = job = None
    loads: list[FixedRateLoad] = []
    samplers: list[Sampler] = []
    try:
        port = free_port()
        log(f"starting: loyalty serve --host {HOST} --port {port} --workers {workers} --threads {threads}")
        server = subprocess.Popen(
            loyalty_command() + ["serve", "--host", HOST, "--port", str(port), "--workers", str(workers),
                                 "--threads", str(threads)],
            env=server_env, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_ready(port, server)
        client = Client(port, admin_key)
        rules = bench_rules()
        for index in LOAD_RULES:
            client.expect("POST", "/v1/rules", rules[index], 201)
        active = len(client.expect("GET", "/v1/rules?status=active&kind=earn&trigger=purchase&limit=200",
                                   None, 200)["data"])
        client.close()

        picked = [member_id(g) for g in random.sample(range(1, members + 1), min(members, 5000))]
        script = write_wrk_script(tmp, picked, admin_key)
        run_wrk(wrk, script, port, connections=connections, duration=3, prefix="bw")
        if fixed_rate > 0:
            # The search settles on rates that differ by a third from run to run, and the
            # ratio moves with the rate: a rate given by hand compares two codes under one load.
            closed, sustainable, trials, rate = None, None, [], fixed_rate
            log(f"the load runs at {rate}/s (BENCH_LOAD_RATE)")
        else:
            closed = run_wrk(wrk, script, port, connections=connections, duration=calibrate_seconds, prefix="bc")
            log(f"closed loop (wrk, {connections} connections, {calibrate_seconds} s): {closed['per_s']:.0f} "
                f"purchases/s, p99 {closed['p99_us'] / 1000:.0f} ms")
            if closed["per_s"] <= 0:
                raise RuntimeError("the closed-loop run completed no purchase")
            # A closed loop's burst overstates what the server sustains (its clients wait instead of
            # queueing); the load's rate comes from fixed rates offered open loop, from a third of it.
            log(f"finding the sustainable rate: fixed rates for {search_seconds} s each, "
                f"p99 < {SUSTAINED_P99_MS} ms and >= {SUSTAINED_SHARE:.0%} answered in time")
            sustainable, trials = sustainable_rate(port, admin_key, members, closed["per_s"] / 3, search_seconds)
            rate = round(sustainable / 2, 1)
            log(f"sustainable: {sustainable}/s; the load runs at {rate}/s")

        # Idle: the load alone; the first 2 s (connections opening) are not counted.
        log(f"idle window: {rate}/s for {idle_seconds} s")
        sampler = Sampler(url).start()
        samplers.append(sampler)
        meter = CpuWindow(server, sampler)
        meter.begin()
        load = FixedRateLoad(port, admin_key, members, rate, "bi").start()
        loads.append(load)
        time.sleep(2.2 + idle_seconds)
        idle_records = load.stop()
        idle_cpu = meter.end()
        sampler.stop()
        idle = window_stats(idle_records, load.start_at + 2, load.start_at + 2 + idle_seconds)
        idle.update(lock_waits=sampler.lock_waits(), cpu=idle_cpu)
        log(f"idle: {idle['requests']} purchases, p50 {idle['p50_ms']:.1f} ms, p99 {idle['p99_ms']:.1f} ms, "
            f"non-2xx {idle['non_2xx']}; other processes {idle_cpu['other_cores']:.2f} cores")

        # During: the same load; expire-points starts 2 s in and the window is its run.
        log(f"expiry window: {rate}/s while `loyalty jobs run expire-points --chunk-size {chunk}` runs, "
            f"pace {pace}")
        sampler = Sampler(url).start()
        samplers.append(sampler)
        meter = CpuWindow(server, sampler)
        meter.begin()
        load = FixedRateLoad(port, admin_key, members, rate, "bx").start()
        loads.append(load)
        time.sleep(2.2)
        job_out, job_err = (tmp / "job.out").open("w"), (tmp / "job.err").open("w")
        job_start = time.monotonic()
        job = subprocess.Popen(loyalty_command() + ["jobs", "run", "expire-points", "--chunk-size", str(chunk)],
                               env=job_env, stdout=job_out, stderr=job_err, start_new_session=True)
        while job.poll() is None:
            if time.monotonic() - job_start > JOB_TIMEOUT:
                raise RuntimeError(f"expire-points under load did not finish in {JOB_TIMEOUT} s")
            time.sleep(0.05)
        job_end = time.monotonic()
        during_records = load.stop()
        during_cpu = meter.end()
        sampler.stop()
        job_out.close()
        job_err.close()
        if job.returncode != 0:
            raise RuntimeError(f"expire-points under load failed:\n{(tmp / 'job.err').read_text()[-3000:]}")
        run = json.loads((tmp / "job.out").read_text())
        during = window_stats(during_records, job_start, job_end)
        inside = [r for r in during_records if job_start <= r[0] < job_end]
        hits = in_flight_hits(inside, sampler.samples, paced_chunk)
        during.update(lock_waits=sampler.lock_waits(), cpu=during_cpu, in_flight_chunk_hits=len(hits),
                      in_flight_chunk_hits_max_ms=round(max((r[2] - r[0] for r in hits), default=0.0) * 1000, 1))
        log(f"expire-points under load: {run['status']} in {job_end - job_start:.1f} s, {run['counts']}")
        log(f"during: {during['requests']} purchases, p50 {during['p50_ms']:.1f} ms, p99 {during['p99_ms']:.1f} ms, "
            f"max {during['max_ms']:.0f} ms, non-2xx {during['non_2xx']}; {len(hits)} sent while their member's "
            f"chunk was in flight; lock waits {during['lock_waits']['waiting']}; "
            f"other processes {during_cpu['other_cores']:.2f} cores")
    except BaseException:
        server_log.flush()
        log(f"server log (tail):\n{server_log_path.read_text()[-3000:]}")
        raise
    finally:
        for load in loads:
            load.stop()
        for sampler in samplers:
            sampler.stop()
        stop(job)
        stop(server)
        server_log.close()
    log("server stopped")

    # What the run left: every due lot expired, no lot of a purchase touched, a purchase per 2xx.
    as_of = datetime.fromisoformat(run["as_of"])
    hit = sorted({member_id(r[4]) for r in inside})
    with psycopg.connect(**libpq(url)) as conn:
        checks = {
            "due_lots_left": conn.execute(
                "SELECT count(*) FROM point_lots WHERE status = 'available' AND expires_at <= %s",
                (as_of,)).fetchone()[0],
            "seeded_lots_not_expired": conn.execute(
                "SELECT count(*) FROM point_lots WHERE id LIKE 'l%' AND status <> 'expired'").fetchone()[0],
            "purchase_lots_expired": conn.execute(
                "SELECT count(*) FROM point_lots WHERE id NOT LIKE 'l%' AND status = 'expired'").fetchone()[0],
            "purchases_recorded": conn.execute(
                "SELECT count(*) FROM purchases WHERE transaction_id LIKE 'bx-%'").fetchone()[0],
            "purchases_answered_2xx": sum(1 for r in during_records if 200 <= r[3] < 300),
            "members_hit_during_expiry": len(hit),
            "members_hit_balance_not_ledger": conn.execute(
                "SELECT count(*) FROM member_balances b LEFT JOIN (SELECT member_id, sum(points) AS s "
                "FROM ledger_entries WHERE member_id = ANY(%s) GROUP BY member_id) l USING (member_id) "
                "WHERE b.member_id = ANY(%s) AND b.available + b.pending <> coalesce(l.s, 0)",
                (hit, hit)).fetchone()[0],
        }
    log(f"after the run: {checks}")
    return {"rate": rate, "sustainable": sustainable, "trials": trials,
            "closed_loop": round(closed["per_s"], 1) if closed else None,
            "closed_loop_p99_ms": round(closed["p99_us"] / 1000, 1) if closed else None,
            "active_rules": active, "chunk_size": chunk,
            "pace": {"chunk_size": pace.chunk_size, "rest": pace.rest} if pace else None,
            "idle": idle, "during": during, "run": run, "seconds": job_end - job_start, "checks": checks}


def figure(name: str, value: float, unit: str, target: float | str = "-", met: bool = True) -> dict:
    return {"name": name, "value": round(value, 2), "unit": unit, "target": target, "met": bool(met)}


def main() -> None:
    url = os.environ.get("LOYALTY_BENCH_JOBS_DATABASE_URL") or DEFAULT_URL
    members = env_int("BENCH_MEMBERS", 250_000)
    lots = env_int("BENCH_LOTS_PER_MEMBER", 4)
    log(f"recreating {make_url(url).database}")
    recreate_database(url)
    env = {**os.environ, "LOYALTY_DATABASE_URL": url, "LOYALTY_SECRET_KEY": "bench-jobs-secret"}
    done = subprocess.run(loyalty_command() + ["db", "upgrade"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    seed(url, members, lots)

    results = {}
    for name in ("expire-points", "review-tiers", "reconcile-balances"):
        log(f"running {name}")
        results[name] = outcome = run_child(name, env)
        log(f"{name}: {outcome['run']['status']} in {outcome['seconds']:.1f} s, "
            f"peak {outcome['peak_rss_mb']:.0f} MB, {outcome['run']['counts']}")
        if outcome["run"]["status"] != "succeeded":
            raise SystemExit(f"{name} {outcome['run']['status']}: {outcome['run']['error']}")

    loaded = None
    if env_int("BENCH_LOAD", 1):
        with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
            loaded = expire_under_load(url, {**env, "LOYALTY_SECRET_KEY": secrets.token_urlsafe(48)}, members, lots,
                                       Path(tmp))
        log("running reconcile-balances after expire-points under load")
        loaded["reconcile"] = again = run_child("reconcile-balances", env)
        log(f"reconcile-balances: {again['run']['status']} in {again['seconds']:.1f} s, {again['run']['counts']}")

    with psycopg.connect(**libpq(url)) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
    expire, review, reconcile = results["expire-points"], results["review-tiers"], results["reconcile-balances"]
    extra, under_load = [], None
    if loaded is not None:
        idle, during, checks = loaded["idle"], loaded["during"], loaded["checks"]
        ratio = during["p99_ms"] / idle["p99_ms"] if idle["p99_ms"] else float("inf")
        expired = loaded["run"]["counts"].get("lots", 0)
        mismatches = loaded["reconcile"]["run"]["counts"].get("mismatches", 0)
        answered = checks["purchases_answered_2xx"]
        searched = loaded["sustainable"] is not None
        extra = [
            figure("purchase_closed_loop_per_s", loaded["closed_loop"], "purchases/s"),
            figure("purchase_sustainable_per_s", loaded["sustainable"], "purchases/s",
                   f"open loop, p99 < {SUSTAINED_P99_MS} ms"),
        ] if searched else []
        extra += [
            figure("purchase_rate_per_s", loaded["rate"], "purchases/s",
                   "half the sustainable rate" if searched else "BENCH_LOAD_RATE"),
            figure("purchase_p99_idle_ms", idle["p99_ms"], "ms"),
            figure("purchase_p99_during_expiry_ms", during["p99_ms"], "ms"),
            figure("purchase_p99_ratio", ratio, "x", 2, ratio <= 2),
            figure("purchase_non_2xx_during_expiry", during["non_2xx"], "responses", 0, during["non_2xx"] == 0),
            figure("expire_points_under_load_seconds", loaded["seconds"], "s"),
            figure("expire_points_under_load_lots_expired", expired, "lots", members * lots,
                   expired == members * lots and checks["due_lots_left"] == 0
                   and checks["seeded_lots_not_expired"] == 0 and checks["purchase_lots_expired"] == 0),
            figure("purchases_recorded_vs_2xx", checks["purchases_recorded"] - answered, "purchases", 0,
                   checks["purchases_recorded"] == answered),
            figure("reconcile_after_expiry_under_load_mismatches", mismatches, "members", 0,
                   mismatches == 0 and checks["members_hit_balance_not_ledger"] == 0),
        ]
        under_load = {
            "rate_per_s": loaded["rate"], "sustainable_per_s": loaded["sustainable"],
            "sustainable_trials": loaded["trials"], "closed_loop_per_s": loaded["closed_loop"],
            "closed_loop_p99_ms": loaded["closed_loop_p99_ms"], "active_rules": loaded["active_rules"],
            "job_chunk_size": loaded["chunk_size"], "job_pace": loaded["pace"],
            "idle": idle, "during_expiry": during, "run_counts": loaded["run"]["counts"], "checks": checks,
            "reconcile_counts": loaded["reconcile"]["run"]["counts"],
        }
    print(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "postgres": version,
                    "members": members, "lots": members * lots},
        "figures": [
            figure("expire_points_seconds", expire["seconds"], "s", 60, expire["seconds"] <= 60),
            figure("expire_points_peak_rss", expire["peak_rss_mb"], "MB", 300, expire["peak_rss_mb"] < 300),
            figure("expire_points_lots_expired", expire["run"]["counts"].get("lots", 0), "lots", members * lots,
                   expire["run"]["counts"].get("lots", 0) == members * lots),
            figure("review_tiers_seconds", review["seconds"], "s", 60, review["seconds"] <= 60),
            figure("review_tiers_peak_rss", review["peak_rss_mb"], "MB", 300, review["peak_rss_mb"] < 300),
            figure("review_tiers_members", review["run"]["counts"].get("members", 0), "members", members,
                   review["run"]["counts"].get("members", 0) == members),
            figure("reconcile_after_expiry_mismatches", reconcile["run"]["counts"].get("mismatches", 0),
                   "members", 0, reconcile["run"]["counts"].get("mismatches", 0) == 0),
            figure("reconcile_balances_seconds", reconcile["seconds"], "s", 60, reconcile["seconds"] <= 60),
            *extra,
        ],
        "review_counts": review["run"]["counts"],
        **({"expire_under_load": under_load} if under_load else {}),
    }, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
