"""Batch ingestion, balance reads and worker memory over HTTP, on PostgreSQL.

Starts `loyalty serve` against a fresh database (LOYALTY_BENCH_PATHS_DATABASE_URL, default
`loyalty_bench_paths`), sets the program up as bench.ingest does (20 active rules, a tier),
then measures:
- batch_purchases_per_s: POST /v1/purchases/batch with 1,000 purchases per call from
  BENCH_BATCH_CLIENTS (2) clients, BENCH_BATCHES (100) calls in all: 100,000 purchases; with
  the server's and PostgreSQL's CPU per purchase and the busiest worker's share;
- worker_rss_mb_max: the largest resident size of a web worker after those purchases;
- balance_reads_per_s, balance_read_p99_ms: wrk GET /v1/members/{id} on random members, with
  the CPU per read of the server, its PostgreSQL backends and wrk, and the cores other
  processes used meanwhile (above ~0.2, the rate and latency are not about this code).
Run: `python -m bench.api_paths`. Prints one JSON document; progress goes to stderr. With
BENCH_PROFILE=DIR, py-spy records each web worker during the reads (as in bench.ingest).
"""

import json
import os
import platform
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.ingest import (
    HOST,
    Client,
    CpuMeter,
    child_pids,
    ensure_wrk,
    free_port,
    loyalty_command,
    profiled,
    recreate_database,
    run_cli,
    set_up_program,
    stop,
    wait_ready,
)

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/loyalty_bench_paths"
READ_SCRIPT = r"""
local ids = {%(ids)s}
request = function()
  return wrk.format("GET", "/v1/members/" .. ids[math.random(#ids)], {["Authorization"] = "Bearer %(key)s"})
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_JSON {"requests":%%d,"duration_us":%%d,"non_2xx_3xx":%%d,"p50_us":%%d,' ..
    '"p99_us":%%d,"errors":%%d}\n', summary.requests, summary.duration, e.status, latency:percentile(50),
    latency:percentile(99), e.connect + e.read + e.write + e.timeout))
end
"""


def log(message: str) -> None:
    print(f"[api_paths {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def figure(name, value, unit, target="-", met=True) -> dict:
    return {"name": name, "value": round(value, 2), "unit": unit, "target": target, "met": bool(met)}


def batch_body(call: int, member_ids: list[str], size: int) -> dict:
    purchases = []
    for n in range(size):
        price = 100 + (call * size + n) % 5000
        purchases.append({
            "transaction_id": f"batch-{call}-{n}", "member_id": member_ids[(call * size + n) % len(member_ids)],
            "occurred_at": "2026-11-23T10:00:00Z", "currency": "EUR", "total": 2 * price, "channel": "pos",
            "items": [{"sku": f"sku-{n % 50}", "category": "coffee", "quantity": 2, "unit_price": price}]})
    return {"purchases": purchases}


def run_batches(port: int, key: str, member_ids: list[str], *, clients: int, batches: int) -> tuple[float, int]:
    """Post `batches` batches of 1,000 from `clients` threads; return (purchases/s, refused entries)."""
    bodies = [batch_body(call, member_ids, 1000) for call in range(batches)]
    refused, lock, next_call = [0], threading.Lock(), iter(range(batches))

    def work() -> None:
        while True:
            with lock:
                call = next(next_call, None)
            if call is None:
                break
            # A connection per call, each accepted by whichever web worker is free: two kept
            # connections landed on one worker in about one run of three, whose one core then
            # capped the rate (busiest_worker_share 1.0).
            client = Client(port, key)
            result = client.expect("POST", "/v1/purchases/batch", bodies[call], 200)
            client.close()
            bad = sum(1 for entry in result["results"] if entry["status"] != 201)
            with lock:
                refused[0] += bad

    started = time.monotonic()
    threads = [threading.Thread(target=work) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return batches * 1000 / (time.monotonic() - started), refused[0]


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024


def run_reads(wrk: str, port: int, key: str, member_ids: list[str], seconds: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(READ_SCRIPT % {"ids": ",".join(f'"{m}"' for m in member_ids[:2000]), "key": key})
    done = subprocess.run([wrk, "-t2", "-c16", f"-d{seconds}s", "--latency", "-s", script.name,
                           f"http://{HOST}:{port}/"], capture_output=True, text=True, timeout=seconds + 60)
    os.unlink(script.name)
    result = json.loads(re.search(r"^WRK_JSON (\{.*\})$", done.stdout, re.MULTILINE).group(1))
    result["per_s"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def main() -> None:
    url = os.environ.get("LOYALTY_BENCH_PATHS_DATABASE_URL") or DEFAULT_URL
    batches = int(os.environ.get("BENCH_BATCHES") or 100)
    clients = int(os.environ.get("BENCH_BATCH_CLIENTS") or 2)
    wrk = ensure_wrk()
    recreate_database(url)
    env = {**os.environ, "LOYALTY_DATABASE_URL": url, "LOYALTY_SECRET_KEY": secrets.token_urlsafe(48)}
    run_cli(["db", "upgrade"], env)
    key = run_cli(["keys", "create", "--role", "admin"], env).splitlines()[-1]
    port = free_port()
    server = subprocess.Popen(loyalty_command() + ["serve", "--host", HOST, "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_ready(port, server)
        member_ids, active_rules = set_up_program(port, key, url, 2000)
        log(f"{batches} batches of 1,000 from {clients} clients")
        with CpuMeter(server, url) as batch_meter:
            batch_rate, refused = run_batches(port, key, member_ids, clients=clients, batches=batches)
        batch_cpu = batch_meter.report(batches * 1000)
        log(f"batches: {batch_rate:.0f} purchases/s, {refused} refused; CPU per purchase: server "
            f"{batch_cpu['server_ms']:.2f} ms, postgres {batch_cpu['postgres_ms']:.2f} ms; busiest worker "
            f"{batch_cpu['busiest_worker_share']:.2f} of the server's CPU")
        workers_rss = [rss_mb(pid) for pid in child_pids(server.pid)]
        with CpuMeter(server, url) as meter, profiled(server, 10):
            reads = run_reads(wrk, port, key, member_ids, 10)
        read_cpu = meter.report(reads["requests"])
        log(f"reads: {reads['per_s']:.0f}/s, p99 {reads['p99_us'] / 1000:.1f} ms, "
            f"other processes {read_cpu['other_cores']:.2f} cores")
    finally:
        stop(server)
    print(json.dumps({"benchmark": "api_paths",
                      "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                      "figures": [
                          figure("batch_purchases_per_s", batch_rate, "purchases/s", ">= 10000", batch_rate >= 10000),
                          figure("batch_refused_entries", refused, "entries", "0", refused == 0),
                          figure("batch_server_cpu_ms", batch_cpu["server_ms"], "ms per purchase"),
                          figure("batch_postgres_cpu_ms", batch_cpu["postgres_ms"], "ms per purchase"),
                          # Most of the batches on one worker would cap the rate at its one core
                          # (the GIL): see bench/README.md.
                          figure("batch_busiest_worker_share", batch_cpu["busiest_worker_share"], "x",
                                 "~ 1/workers (connections spread)", batch_cpu["busiest_worker_share"] <= 0.65),
                          figure("worker_rss_mb_max_after_batches", max(workers_rss), "MB", "< 150",
                                 max(workers_rss) < 150),
                          figure("balance_reads_per_s", reads["per_s"], "requests/s", ">= 3000",
                                 reads["per_s"] >= 3000),
                          figure("balance_read_p99_ms", reads["p99_us"] / 1000, "ms", "< 10",
                                 reads["p99_us"] / 1000 < 10),
                          figure("balance_read_errors", reads["non_2xx_3xx"] + reads["errors"], "responses", "0",
                                 reads["non_2xx_3xx"] + reads["errors"] == 0),
                          figure("balance_read_server_cpu_ms", read_cpu["server_ms"], "ms"),
                          figure("balance_read_postgres_cpu_ms", read_cpu["postgres_ms"], "ms"),
                          figure("balance_read_wrk_cpu_ms", read_cpu["load_ms"], "ms"),
                          figure("balance_read_other_processes_cores", read_cpu["other_cores"], "cores", "< 0.2",
                                 read_cpu["other_cores"] < 0.2),
                          figure("active_rules_per_purchase", active_rules, "rules", ">= 20", active_rules >= 20),
                      ]}))


if __name__ == "__main__":
    main()
