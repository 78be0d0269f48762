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
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

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


def figure(name: str, value: float, unit: str, target: float, met: bool) -> dict:
    return {"name": name, "value": round(value, 2), "unit": unit, "target": target, "met": met}


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

    with psycopg.connect(**libpq(url)) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
    expire, review, reconcile = results["expire-points"], results["review-tiers"], results["reconcile-balances"]
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
        ],
        "review_counts": review["run"]["counts"],
    }, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
