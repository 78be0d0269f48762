"""Measure purchase ingestion over HTTP against PostgreSQL, and the same writes under pgbench.

Run from the repository root: `python -m bench.ingest`. It builds a fresh database
(`loyalty_bench`, or LOYALTY_BENCH_DATABASE_URL), migrates it, sets a program up over the API
(20 active earn rules of mixed shapes, a tier, a few thousand members), starts `loyalty serve`
and drives single `POST /v1/purchases` with wrk from a separate process; then it replays the
same transaction shape (member lock, purchase insert, lot and ledger inserts, balance update)
with pgbench, with as many clients for as long. Prints one JSON document on stdout; progress
goes to stderr. Everything it starts is stopped before it exits; all traffic stays on 127.0.0.1.

Knobs (environment): LOYALTY_BENCH_DATABASE_URL, BENCH_MEMBERS (3000), BENCH_DURATION (20 s),
BENCH_WARMUP (5 s), BENCH_CONNECTIONS (32: tills posting at once, and pgbench's clients; the
sustained rate and the CPU figures), BENCH_FEW_CONNECTIONS (8: a second closed-loop run, whose
rate and latency are the ingest_* figures),
BENCH_WORKERS (2), BENCH_THREADS (`loyalty serve`'s default, 16),
BENCH_RATE (500: a second, fixed-rate run at that many purchases/s; 0: off).
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from loyalty_api.cli import DEFAULT_THREADS

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/loyalty_bench"
HOST = "127.0.0.1"
CURRENCY = "EUR"
CATEGORIES = ["coffee", "tea", "pastry", "sandwich", "merch", "beans", "delivery"]
CHANNELS = ["pos", "pos", "pos", "app", "web"]
ITEMS_PER_PURCHASE = 5
TIER_SHARE = 4  # every 4th member is in the tier


def log(message: str) -> None:
    print(f"[ingest {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


# --- the rules: 20 active purchase earn rules of mixed shapes ---------------------------------

def bench_rules() -> list[dict]:
    """Return the 20 active earn rules every purchase is evaluated against."""
    cat = {"var": "item.category"}
    rules = [
        {"name": "1 point per 1.00", "priority": 100,
         "effect": {"type": "per_amount", "points": 1, "per": 100, "rounding": "floor"}},
        {"name": "App orders: 2 points per 1.00", "priority": 90,
         "conditions": {"==": [{"var": "purchase.channel"}, "app"]},
         "effect": {"type": "per_amount", "points": 2, "per": 100, "rounding": "round"}},
        {"name": "Coffee: 3 points per 1.00 of coffee", "priority": 80,
         "item_filter": {"==": [cat, "coffee"]},
         "effect": {"type": "per_amount", "points": 3, "per": 100, "rounding": "floor"}},
        {"name": "Beans and tea: 1 point per 2.00", "priority": 80,
         "item_filter": {"in": [cat, ["beans", "tea"]]},
         "effect": {"type": "per_amount", "points": 1, "per": 200, "rounding": "ceil"}},
        {"name": "Pastry: 5 points a piece", "priority": 70,
         "item_filter": {"==": [cat, "pastry"]}, "effect": {"type": "per_item", "points": 5}},
        {"name": "Big items: 10 points a piece", "priority": 70,
         "item_filter": {">=": [{"var": "item.unit_price"}, 2000]}, "effect": {"type": "per_item", "points": 10}},
        {"name": "Sandwich lunch: 2 points a piece", "priority": 70,
         "conditions": {"in": [{"var": "purchase.channel"}, ["pos", "app"]]},
         "item_filter": {"==": [cat, "sandwich"]}, "effect": {"type": "per_item", "points": 2}},
        {"name": "Big basket bonus", "priority": 60,
         "conditions": {">=": [{"var": "purchase.total"}, 6000]},
         "effect": {"type": "fixed", "points": 50}},
        {"name": "Gold members' visit bonus", "priority": 60,
         "conditions": {"==": [{"var": "member.tier"}, "gold"]},
         "effect": {"type": "fixed", "points": 20}},
        {"name": "Flagship stores bonus", "priority": 60,
         "conditions": {"in": [{"var": "purchase.store_id"}, ["s-1", "s-2", "s-3"]]},
         "effect": {"type": "fixed", "points": 15}},
        {"name": "Merch and coffee together", "priority": 60,
         "conditions": {"and": [
             {"some": [{"var": "purchase.items"}, {"==": [{"var": "category"}, "merch"]}]},
             {"some": [{"var": "purchase.items"}, {"==": [{"var": "category"}, "coffee"]}]},
         ]},
         "effect": {"type": "fixed", "points": 25}},
        {"name": "Loyal members bonus", "priority": 60,
         "conditions": {">=": [{"var": "member.lifetime_earned"}, 5000]},
         "effect": {"type": "fixed", "points": 10}},
        {"name": "Web orders over 30.00", "priority": 60,
         "conditions": {"and": [{"==": [{"var": "purchase.channel"}, "web"]},
                                {">": [{"var": "purchase.total"}, 3000]}]},
         "effect": {"type": "fixed", "points": 30}},
        {"name": "First big basket of the month", "priority": 55,
         "conditions": {">=": [{"var": "purchase.total"}, 4000]},
         "effect": {"type": "fixed", "points": 40},
         "limits": {"per_member": {"count": 1, "period": "month"}}},
        {"name": "Double points on coffee", "priority": 50,
         "item_filter": {"==": [cat, "coffee"]}, "effect": {"type": "multiplier", "factor": 2}},
        {"name": "1.5x on beans", "priority": 50,
         "item_filter": {"==": [cat, "beans"]}, "effect": {"type": "multiplier", "factor": 1.5}},
        {"name": "Triple points on delivery (none of it earns)", "priority": 50,
         "item_filter": {"==": [cat, "delivery"]}, "effect": {"type": "multiplier", "factor": 3}},
        {"name": "Spring campaign", "priority": 40,
         "conditions": {"==": [{"var": "purchase.metadata.campaign"}, "spring"]},
         "effect": {"type": "fixed", "points": 100}},
        {"name": "Cap on tea points", "priority": 40,
         "item_filter": {"==": [cat, "tea"]}, "effect": {"type": "per_item", "points": 3},
         "limits": {"per_event": 9}},
        {"name": "Not delivery: 1 point per 5.00", "priority": 30,
         "item_filter": {"!=": [cat, "delivery"]},
         "effect": {"type": "per_amount", "points": 1, "per": 500, "rounding": "floor"}},
    ]
    return [{"kind": "earn", "trigger": "purchase", "status": "active", **rule} for rule in rules]


# --- HTTP plumbing ----------------------------------------------------------------------------

class Client:
    """A keep-alive HTTP/1.1 client to the bench server; one per thread."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.conn = http.client.HTTPConnection(HOST, port, timeout=30)

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        payload = json.dumps(body) if body is not None else None
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, payload, self.headers)
                response = self.conn.getresponse()
                data = response.read()
                return response.status, (json.loads(data) if data else {})
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def expect(self, method: str, path: str, body: dict | None, *statuses: int) -> dict:
        status, data = self.call(method, path, body)
        if status not in statuses:
            raise RuntimeError(f"{method} {path}: {status} {json.dumps(data)[:500]}")
        return data

    def close(self) -> None:
        self.conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_ready(port: int, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not become ready")


# --- the database -----------------------------------------------------------------------------

def libpq_params(url: str) -> dict:
    parsed = make_url(url)
    return {"host": parsed.host or HOST, "port": parsed.port or 5432, "user": parsed.username or "postgres",
            "password": parsed.password, "dbname": parsed.database}


def connect(url: str, **overrides) -> psycopg.Connection:
    params = {k: v for k, v in {**libpq_params(url), **overrides}.items() if v is not None}
    return psycopg.connect(**params, autocommit=True)


def recreate_database(url: str) -> None:
    """Drop and create the bench database (only a database whose name says it is the bench's)."""
    name = libpq_params(url)["dbname"]
    if not name or not name.startswith("loyalty_bench"):
        raise SystemExit(f"refusing to drop {name!r}: the bench database's name must start with loyalty_bench")
    with connect(url, dbname="postgres") as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def postgres_version(url: str) -> str:
    with connect(url) as conn:
        return conn.execute("SHOW server_version").fetchone()[0]


# --- processes --------------------------------------------------------------------------------

def loyalty_command() -> list[str]:
    script = Path(sys.executable).parent / "loyalty"
    return [str(script)] if script.exists() else [sys.executable, "-m", "loyalty_api.cli"]


def run_cli(args: list[str], env: dict) -> str:
    done = subprocess.run(loyalty_command() + args, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"loyalty {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip()


def stop(process: subprocess.Popen | None, grace: float = 15) -> None:
    """Stop a child we started (and its process group): SIGTERM, then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def cpu_seconds(pids) -> float:
    """Return the CPU time (user + system) the live processes `pids` used so far."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """Return the CPU time all processes used so far (from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def commits(url: str) -> int:
    """Transactions committed in the database so far (PostgreSQL's statistics, ~1 s behind)."""
    with connect(url) as conn:
        return conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]


def backend_pids(url: str) -> list[int]:
    with connect(url) as conn:
        return [row[0] for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]


@contextmanager
def profiled(server: subprocess.Popen, duration: int):
    """With BENCH_PROFILE=DIR, record each web worker with py-spy while the block runs: raw
    collapsed stacks in DIR/worker-PID.txt, of the samples holding the GIL unless
    BENCH_PROFILE_FLAGS says otherwise (`--idle --threads` shows where threads wait)."""
    directory = os.environ.get("BENCH_PROFILE")
    if not directory:
        yield
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    flags = os.environ.get("BENCH_PROFILE_FLAGS", "--gil").split()
    spies = [subprocess.Popen(["py-spy", "record", *flags, "--nonblocking", "-r", "200", "-f", "raw",
                               "-d", str(duration), "-o", str(Path(directory) / f"worker-{pid}.txt"),
                               "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for pid in child_pids(server.pid)]
    try:
        yield
    finally:
        for spy in spies:
            spy.wait(timeout=duration + 30)


class CpuMeter:
    """CPU used by the server, its PostgreSQL backends, the load generator and everything else."""

    def __init__(self, server: subprocess.Popen, url: str) -> None:
        self.server, self.url = server, url

    def _sample(self) -> dict:
        server = [self.server.pid, *child_pids(self.server.pid)]
        backends = backend_pids(self.url)
        children = os.times()
        return {"server": cpu_seconds(server), "backends": {pid: cpu_seconds([pid]) for pid in backends},
                "workers": {pid: cpu_seconds([pid]) for pid in server[1:]},
                "load": children.children_user + children.children_system, "commits": commits(self.url),
                "machine": machine_busy_seconds(), "at": time.monotonic()}

    def __enter__(self) -> CpuMeter:
        self.before = self._sample()
        return self

    def __exit__(self, *_exc) -> None:
        self.after = self._sample()

    def report(self, requests: int) -> dict:
        b, a = self.before, self.after
        elapsed = a["at"] - b["at"]
        server = a["server"] - b["server"]
        postgres = sum(cpu - b["backends"].get(pid, 0.0) for pid, cpu in a["backends"].items())
        load = a["load"] - b["load"]
        other = (a["machine"] - b["machine"]) - server - postgres - load
        per = 1000 / max(requests, 1)
        # Keep-alive connections stay with the worker that accepted them: with few of them,
        # one worker may hold most and cap the rate at one core (the GIL) while the other idles.
        workers = [cpu - b["workers"].get(pid, 0.0) for pid, cpu in a["workers"].items()]
        busiest = max(workers) / sum(workers) if sum(workers) > 0 else 1.0
        return {"server_ms": server * per, "postgres_ms": postgres * per, "load_ms": load * per,
                "busiest_worker_share": busiest,
                # Group commit: purchases per transaction (a few commits are the meter's own).
                "purchases_per_commit": requests / max(a["commits"] - b["commits"], 1),
                "server_cores": server / elapsed, "postgres_cores": postgres / elapsed,
                "load_cores": load / elapsed, "other_cores": max(other, 0.0) / elapsed}


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    log("wrk is missing: installing it from Debian packages")
    install = ["apt-get", "install", "-y", "wrk"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "timeout": 600}
    if subprocess.run(install, **quiet).returncode != 0:
        subprocess.run(["apt-get", "update"], **quiet)
        subprocess.run(install, check=True, **quiet)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk could not be installed")
    return found


# --- set-up over the API ----------------------------------------------------------------------

def set_up_program(port: int, key: str, url: str, members: int) -> tuple[list[str], int]:
    """Configure the program, create the rules, the tier and the members; return the member ids."""
    client = Client(port, key)
    client.expect("PATCH", "/v1/program", {
        "currency": CURRENCY, "pending_days": 0, "expiry": {"mode": "fixed", "months": 24},
        "negative_balance": "forbid"}, 200)
    rules = bench_rules()
    for rule in rules:
        client.expect("POST", "/v1/rules", rule, 201)
    active = client.expect("GET", "/v1/rules?status=active&kind=earn&trigger=purchase&limit=200", None, 200)
    # A threshold no member reaches during the run: every 4th member holds the tier (set
    # below), the others may still climb, so each of their purchases reads its figure.
    tier = client.expect("POST", "/v1/tiers", {"code": "gold", "name": "Gold", "rank": 1, "threshold": 1_000_000,
                                               "multiplier": 1.5}, 201)
    client.close()
    log(f"{len(active['data'])} active purchase rules")

    started = time.monotonic()
    local = threading.local()

    def create(n: int) -> str:
        if not hasattr(local, "client"):
            local.client = Client(port, key)
        body = {"external_id": f"bench-{n:06d}", "email": f"m{n}@bench.example", "name": f"Member {n}"}
        return local.client.expect("POST", "/v1/members", body, 201)["id"]

    with ThreadPoolExecutor(8) as pool:
        member_ids = list(pool.map(create, range(members)))
    log(f"{members} members created over the API in {time.monotonic() - started:.1f} s")

    with connect(url) as conn:
        # Members reach a tier by earning; the bench puts a share of them there directly.
        conn.execute("UPDATE members SET tier_id = %s WHERE id = ANY(%s)", (tier["id"], member_ids[::TIER_SHARE]))
        conn.execute("VACUUM ANALYZE")
    return member_ids, len(active["data"])


def analyze(url: str) -> None:
    """Refresh the planner's statistics, as autovacuum does on a live database.

    The tables were empty when the warm-up began, so the plans the server's connections
    prepared then (psycopg prepares a statement on its fifth run) assume empty tables, and
    autovacuum looks at a database only once a minute: without this, the measured run
    scans whole tables that grew under it (twice the PostgreSQL CPU per purchase).
    ANALYZE invalidates those plans; each connection plans again on its next run.
    """
    with connect(url) as conn:
        conn.execute("ANALYZE")


# --- load with wrk ----------------------------------------------------------------------------

WRK_SCRIPT = r"""
local members = {%(members)s}
local categories = {%(categories)s}
local channels = {%(channels)s}
local key = "%(key)s"
local threads = {}
local counter = 0
local prefix = "x"
local tid = 0

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  prefix = args[1] or "x"
  tid = tonumber(wrk.thread:get("tid")) or 0
  math.randomseed(os.time() * 1000 + tid)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. key
end

function request()
  counter = counter + 1
  local member = members[math.random(#members)]
  local items = {}
  local total = 0
  for i = 1, %(items)d do
    local quantity = math.random(3)
    local price = 50 * math.random(3, 50)
    total = total + quantity * price
    items[i] = string.format('{"sku":"sku-%%d","category":"%%s","quantity":%%d,"unit_price":%%d}',
      math.random(500), categories[math.random(#categories)], quantity, price)
  end
  local body = string.format(
    '{"transaction_id":"%%s-%%d-%%d","member_id":"%%s","occurred_at":"%%s","currency":"%(currency)s",' ..
    '"total":%%d,"channel":"%%s","store_id":"s-%%d","items":[%%s]}',
    prefix, tid, counter, member, os.date("!%%Y-%%m-%%dT%%H:%%M:%%SZ"), total,
    channels[math.random(#channels)], math.random(20), table.concat(items, ","))
  return wrk.format(nil, "/v1/purchases", nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%%d,"duration_us":%%d,"non_2xx_3xx":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"timeout":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"max_us":%%d,"mean_us":%%.1f}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def write_wrk_script(directory: Path, member_ids: list[str], key: str) -> Path:
    quote = lambda values: ",".join(f'"{v}"' for v in values)  # noqa: E731
    path = directory / "purchase.lua"
    path.write_text(WRK_SCRIPT % {
        "members": quote(member_ids), "categories": quote(CATEGORIES), "channels": quote(CHANNELS),
        "key": key, "items": ITEMS_PER_PURCHASE, "currency": CURRENCY})
    return path


def run_wrk(wrk: str, script: Path, port: int, *, connections: int, duration: int, prefix: str) -> dict:
    threads = min(2, connections)
    command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s",
               "-s", str(script), f"http://{HOST}:{port}/v1/purchases", "--", prefix]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr[-2000:]}")
    match = re.search(r"^WRK_JSON (\{.*\})$", done.stdout, re.MULTILINE)
    if not match:
        raise RuntimeError(f"no summary from wrk:\n{done.stdout[-2000:]}")
    result = json.loads(match.group(1))
    result["per_s"] = result["requests"] / (result["duration_us"] / 1e6)
    result["socket_errors"] = sum(result[k] for k in ("connect", "read", "write", "timeout"))
    return result


# --- a second load mode: fixed rate (open loop), from Python threads --------------------------

def run_fixed_rate(port: int, key: str, member_ids: list[str], *, rate: float, duration: int,
                   prefix: str, concurrency: int = 32) -> dict:
    """Send purchases on a fixed schedule; latency counts from the scheduled start (no omission)."""
    total = int(rate * duration)
    start = time.monotonic() + 0.5
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    counter = iter(range(total))
    local = threading.local()
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def worker() -> None:
        local.client = Client(port, key)
        rng = random.Random()
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                break
            due = start + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            items = []
            for _ in range(ITEMS_PER_PURCHASE):
                items.append({"sku": f"sku-{rng.randrange(500)}", "category": rng.choice(CATEGORIES),
                              "quantity": rng.randint(1, 3), "unit_price": 50 * rng.randint(3, 50)})
            body = {"transaction_id": f"{prefix}-{n}", "member_id": rng.choice(member_ids),
                    "occurred_at": stamp, "currency": CURRENCY,
                    "total": sum(i["quantity"] * i["unit_price"] for i in items),
                    "channel": rng.choice(CHANNELS), "store_id": f"s-{rng.randint(1, 20)}", "items": items}
            try:
                status, _ = local.client.call("POST", "/v1/purchases", body)
            except OSError:
                status = 0
            elapsed = time.monotonic() - due
            with lock:
                latencies.append(elapsed)
                statuses[status] = statuses.get(status, 0) + 1
        local.client.close()

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(duration + 60)
    latencies.sort()
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [0] * 99
    return {"rate": rate, "sent": len(latencies), "p50_ms": quantiles[49] * 1000, "p99_ms": quantiles[98] * 1000,
            "non_2xx": sum(c for s, c in statuses.items() if not 200 <= s < 300)}


# --- pgbench ----------------------------------------------------------------------------------

PGBENCH_SCRIPT = """\
\\set m random(1, {members})
\\set seq :seq + 1
\\set total random(500, 20000)
\\set points random(10, 400)
SELECT member_id AS mid FROM bench_member_ids WHERE n = :m \\gset
BEGIN;
SELECT available, pending, lifetime_earned FROM member_balances WHERE member_id = :mid FOR UPDATE;
INSERT INTO point_lots (id, member_id, source_type, source_id, points, remaining, status, occurred_at,
  available_at, expires_at, created_at)
VALUES ('L' || lpad(:client_id::text, 4, '0') || lpad(:seq::text, 21, '0'), :mid, 'purchase',
  'pgb-' || :client_id::text || '-' || :seq::text, :points, :points, 'available', now(), now(),
  now() + interval '24 months', now());
INSERT INTO ledger_entries (id, member_id, type, points, lot_id, source_type, source_id, rule_id,
  rule_version, description, created_at)
VALUES {ledger_values};
UPDATE member_balances SET available = available + :points, lifetime_earned = lifetime_earned + :points,
  version = version + 1 WHERE member_id = :mid;
INSERT INTO purchases (id, transaction_id, member_id, occurred_at, currency, total, channel, store_id,
  items, metadata, points, lot_id, refunded_amount, reversed_points, request_hash, response, created_at)
VALUES ('P' || lpad(:client_id::text, 4, '0') || lpad(:seq::text, 21, '0'),
  'pgb-' || :client_id::text || '-' || :seq::text, :mid, now(), 'EUR', :total, 'pos', 's-1',
  '{items}'::jsonb, NULL, :points, 'L' || lpad(:client_id::text, 4, '0') || lpad(:seq::text, 21, '0'), 0, 0,
  md5(:seq::text) || md5(:client_id::text), '{response}'::jsonb, now());
COMMIT;
"""


def write_pgbench_script(directory: Path, url: str, member_ids: list[str], ledger_entries: int) -> Path:
    """Write the pgbench script; load the members' ids into a helper table it picks from."""
    with connect(url) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_member_ids")
        conn.execute("CREATE TABLE bench_member_ids (n int PRIMARY KEY, member_id varchar(26) NOT NULL)")
        with conn.cursor().copy("COPY bench_member_ids (n, member_id) FROM STDIN") as copy:
            for n, member_id in enumerate(member_ids, 1):
                copy.write_row((n, member_id))
        conn.execute("ANALYZE bench_member_ids")
    ledger_values = ",\n  ".join(
        f"('E' || lpad(:client_id::text, 4, '0') || lpad(:seq::text, 19, '0') || '{k:02d}', :mid, 'earn', "
        f":points, 'L' || lpad(:client_id::text, 4, '0') || lpad(:seq::text, 21, '0'), 'purchase', "
        f"'pgb-' || :client_id::text || '-' || :seq::text, 'benchrule{k:017d}', 1, 'rule {k}', now())"
        for k in range(ledger_entries))
    items = json.dumps([{"sku": f"sku-{i}", "category": CATEGORIES[i], "quantity": 2, "unit_price": 450}
                        for i in range(ITEMS_PER_PURCHASE)])
    response = json.dumps({
        "id": "0" * 26, "transaction_id": "pgb", "member_id": "0" * 26, "points": 123, "pending_until": None,
        "awards": [{"rule_id": "0" * 26, "rule_version": 1, "rule_name": f"rule {k}", "points": 10}
                   for k in range(ledger_entries)],
        "balance": {"available": 1000, "pending": 0, "lifetime_earned": 1000,
                    "expiring": [{"points": 1000, "expires_at": "2028-11-23T10:00:00+00:00"}]}})
    path = directory / "purchase.sql"
    path.write_text(PGBENCH_SCRIPT.format(members=len(member_ids), ledger_values=ledger_values,
                                          items=items, response=response))
    return path


def run_pgbench(script: Path, url: str, *, clients: int, duration: int) -> dict:
    params = libpq_params(url)
    env = {**os.environ}
    if params["password"]:
        env["PGPASSWORD"] = params["password"]
    command = ["pgbench", "-n", "-M", "prepared", "-h", params["host"], "-p", str(params["port"]),
               "-U", params["user"], "-c", str(clients), "-j", str(min(2, clients)), "-T", str(duration),
               "-D", "seq=0", "-f", str(script), params["dbname"]]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=duration + 60)
    if done.returncode != 0:
        raise RuntimeError(f"pgbench failed:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    tps = re.search(r"^tps = ([\d.]+)", done.stdout, re.MULTILINE)
    latency = re.search(r"^latency average = ([\d.]+) ms", done.stdout, re.MULTILINE)
    failed = re.search(r"^number of failed transactions: (\d+)", done.stdout, re.MULTILINE)
    return {"tps": float(tps.group(1)), "latency_ms": float(latency.group(1)) if latency else None,
            "failed": int(failed.group(1)) if failed else 0}


# --- what a purchase did ----------------------------------------------------------------------

def purchase_shape(url: str, prefix: str) -> dict:
    """Return the averages, over the measured run's purchases, of awards and ledger entries."""
    with connect(url) as conn:
        purchases, points, entries = conn.execute(
            "SELECT count(*), coalesce(avg(points), 0), "
            "(SELECT count(*) FROM ledger_entries e JOIN purchases q ON e.source_type = 'purchase' "
            " AND e.source_id = q.transaction_id WHERE q.transaction_id LIKE %s) "
            "FROM purchases WHERE transaction_id LIKE %s", (prefix + "-%", prefix + "-%")).fetchone()
        drift = conn.execute(
            "SELECT count(*) FROM member_balances b LEFT JOIN (SELECT member_id, sum(points) s FROM ledger_entries "
            "GROUP BY member_id) l USING (member_id) WHERE b.available + b.pending <> coalesce(l.s, 0)").fetchone()[0]
    return {"purchases": purchases, "avg_points": float(points),
            "ledger_entries_per_purchase": entries / purchases if purchases else 0.0, "balance_drift": drift}


# --- main -------------------------------------------------------------------------------------

def figure(name: str, value: float, unit: str, target: str = "-", met: bool = True) -> dict:
    return {"name": name, "value": round(value, 2), "unit": unit, "target": target, "met": bool(met)}


def main() -> None:
    url = os.environ.get("LOYALTY_BENCH_DATABASE_URL") or DEFAULT_URL
    members = env_int("BENCH_MEMBERS", 3000)
    duration = env_int("BENCH_DURATION", 20)
    warmup = env_int("BENCH_WARMUP", 5)
    # A busy Saturday: many tills post at once. Group commit carries what queued behind the
    # transaction in flight, so the rate depends on how many post at once (bench/README.md:
    # 8 connections gave ~630/s, 32 ~1,000/s); pgbench gets as many clients.
    connections = env_int("BENCH_CONNECTIONS", 32)
    # The ingestion figures of the first issue (>= 400/s, p99 < 50 ms) keep their load: 8 tills.
    few_connections = env_int("BENCH_FEW_CONNECTIONS", 8)
    workers = env_int("BENCH_WORKERS", 2)
    threads = env_int("BENCH_THREADS", DEFAULT_THREADS)
    rate = env_int("BENCH_RATE", 500)
    wrk = ensure_wrk()
    if not shutil.which("pgbench"):
        raise SystemExit("pgbench is missing (Debian: postgresql-client)")

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-ingest-")))
        log(f"recreating {make_url(url).database} on {make_url(url).host}")
        recreate_database(url)
        env = {**os.environ, "LOYALTY_DATABASE_URL": url, "LOYALTY_SECRET_KEY": secrets.token_urlsafe(48),
               "LOYALTY_INSTANCE_DIR": str(tmp / "instance")}
        env.pop("LOYALTY_ACCESS_LOG", None)
        run_cli(["db", "upgrade"], env)
        admin_key = run_cli(["keys", "create", "--role", "admin", "--name", "bench admin"], env).splitlines()[-1]
        pos_key = run_cli(["keys", "create", "--role", "pos", "--name", "bench till"], env).splitlines()[-1]

        port = free_port()
        server_log = (tmp / "server.log").open("w")
        server: subprocess.Popen | None = None

        def start_server() -> subprocess.Popen:
            command = loyalty_command() + ["serve", "--host", HOST, "--port", str(port),
                                           "--workers", str(workers), "--threads", str(threads)]
            log(f"starting: loyalty serve --port {port} --workers {workers} --threads {threads}")
            process = subprocess.Popen(command, env=env, stdout=server_log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            wait_ready(port, process)
            return process

        stack.callback(lambda: stop(server))
        stack.callback(server_log.close)
        try:
            server = start_server()
            member_ids, active_rules = set_up_program(port, admin_key, url, members)
            script = write_wrk_script(tmp, member_ids, pos_key)
            log(f"warm-up: {warmup} s, {connections} connections")
            warm = run_wrk(wrk, script, port, connections=connections, duration=warmup, prefix="w")
            log(f"warm-up: {warm['per_s']:.0f}/s, p99 {warm['p99_us'] / 1000:.1f} ms")
            analyze(url)
            log(f"measured run: {duration} s, {connections} connections")
            with CpuMeter(server, url) as meter, profiled(server, duration):
                measured = run_wrk(wrk, script, port, connections=connections, duration=duration, prefix="m")
            cpu = meter.report(measured["requests"])
            log("CPU per purchase: server {server_ms:.1f} ms, postgres {postgres_ms:.1f} ms, wrk {load_ms:.1f} ms; "
                "{purchases_per_commit:.2f} purchases a commit; "
                "cores busy: server {server_cores:.2f}, postgres {postgres_cores:.2f}, wrk {load_cores:.2f}, "
                "other processes {other_cores:.2f}".format(**cpu))
            if cpu["busiest_worker_share"] > 0.65 and workers > 1:
                log(f"warning: one worker did {cpu['busiest_worker_share']:.0%} of the server's work "
                    "(the connections were not spread): the rate is capped by one core")
            if cpu["other_cores"] > 0.2:
                log(f"warning: other processes used {cpu['other_cores']:.2f} cores during the measured run")
            log(f"measured: {measured['per_s']:.0f}/s, p50 {measured['p50_us'] / 1000:.1f} ms, "
                f"p99 {measured['p99_us'] / 1000:.1f} ms, non-2xx {measured['non_2xx_3xx']}, "
                f"socket errors {measured['socket_errors']}")
            log(f"closed-loop run with fewer tills: {duration} s, {few_connections} connections")
            few = run_wrk(wrk, script, port, connections=few_connections, duration=duration, prefix="c")
            log(f"fewer tills: {few['per_s']:.0f}/s, p50 {few['p50_us'] / 1000:.1f} ms, "
                f"p99 {few['p99_us'] / 1000:.1f} ms, non-2xx {few['non_2xx_3xx']}, "
                f"socket errors {few['socket_errors']}")
            fixed = None
            if rate:
                log(f"fixed-rate run: {rate}/s for {duration} s")
                fixed = run_fixed_rate(port, pos_key, member_ids, rate=rate, duration=duration, prefix="f")
                log(f"fixed rate: p50 {fixed['p50_ms']:.1f} ms, p99 {fixed['p99_ms']:.1f} ms")
        except BaseException:
            server_log.flush()
            tail = (tmp / "server.log").read_text()[-3000:]
            log(f"server log (tail):\n{tail}")
            raise
        finally:
            stop(server)
            server = None
        log("server stopped")

        shape = purchase_shape(url, "m")
        entries = max(1, round(shape["ledger_entries_per_purchase"]))
        log(f"{shape['purchases']} purchases, {shape['ledger_entries_per_purchase']:.2f} ledger entries and "
            f"{shape['avg_points']:.0f} points each; members whose balance != ledger: {shape['balance_drift']}")
        pg_script = write_pgbench_script(tmp, url, member_ids, entries)
        log(f"pgbench: {connections} clients, {duration} s, {entries} ledger entries a transaction")
        pg = run_pgbench(pg_script, url, clients=connections, duration=duration)
        log(f"pgbench: {pg['tps']:.0f} tps, {pg['latency_ms']} ms average")
        pg_version = postgres_version(url)

    non_2xx = sum(run["non_2xx_3xx"] + run["socket_errors"] for run in (measured, few))
    ratio = measured["per_s"] / pg["tps"] if pg["tps"] else 0.0
    figures = [
        figure("ingest_purchases_per_s", few["per_s"], "purchases/s", ">= 400", few["per_s"] >= 400),
        figure("ingest_p50_ms", few["p50_us"] / 1000, "ms"),
        figure("ingest_p99_ms", few["p99_us"] / 1000, "ms", "< 50", few["p99_us"] / 1000 < 50),
        # The speed issue's target for a node, with as many tills as pgbench has clients.
        figure("sustained_purchases_per_s", measured["per_s"], "purchases/s", ">= 1000", measured["per_s"] >= 1000),
        figure("sustained_p99_ms", measured["p99_us"] / 1000, "ms"),
        figure("pgbench_tps", pg["tps"], "transactions/s"),
        figure("ingest_to_pgbench_ratio", ratio, "x", ">= 0.35", ratio >= 0.35),
        figure("non_2xx", non_2xx, "responses", "0", non_2xx == 0),
        figure("active_rules_per_purchase", active_rules, "rules", ">= 20", active_rules >= 20),
        figure("ledger_entries_per_purchase", shape["ledger_entries_per_purchase"], "entries"),
        figure("balance_drift_members", shape["balance_drift"], "members", "0", shape["balance_drift"] == 0),
        figure("server_cpu_ms_per_purchase", cpu["server_ms"], "ms"),
        figure("postgres_cpu_ms_per_purchase", cpu["postgres_ms"], "ms"),
        figure("purchases_per_commit", cpu["purchases_per_commit"], "purchases"),
        figure("busiest_worker_share", cpu["busiest_worker_share"], "x", "~ 1/workers (connections spread)",
               cpu["busiest_worker_share"] <= 0.65 or workers == 1),
        figure("other_processes_cpu_cores", cpu["other_cores"], "cores", "< 0.2 (a quiet machine)",
               cpu["other_cores"] < 0.2),
    ]
    if fixed is not None:
        figures += [
            figure("fixed_rate_p50_ms", fixed["p50_ms"], "ms"),
            figure("fixed_rate_p99_ms", fixed["p99_ms"], "ms", "< 25 at 500/s", fixed["p99_ms"] < 25 and rate >= 500),
            figure("fixed_rate_non_2xx", fixed["non_2xx"], "responses", "0", fixed["non_2xx"] == 0),
        ]
    result = {
        "benchmark": "ingest",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "postgres": pg_version},
        "config": {"workers": workers, "threads": threads, "connections": connections,
                   "few_connections": few_connections, "duration_s": duration,
                   "warmup_s": warmup, "members": members, "items_per_purchase": ITEMS_PER_PURCHASE,
                   "fixed_rate": rate or None, "pgbench_failed": pg["failed"],
                   "wrk_requests": measured["requests"]},
        "figures": figures,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
