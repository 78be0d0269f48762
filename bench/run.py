"""Run every benchmark of the project and print one JSON document of all their figures.

`bench/run` (or `python -m bench.run`) runs, one after the other: bench.rules,
bench.purchase_cpu, bench.purchase_instructions, bench.ingest, bench.api_paths, bench.batch_write,
bench.redeem and bench.jobs, each in its own process,
and prints {"machine": …, "figures": [{"name", "value", "unit", "target", "met",
"benchmark"}, …]}. BENCH_ONLY=rules,ingest runs a subset. A benchmark that fails is
reported as a figure with met=false, and the others still run.
"""

import json
import os
import platform
import subprocess
import sys
import time

BENCHMARKS = ["rules", "purchase_cpu", "purchase_instructions", "ingest", "api_paths", "batch_write", "redeem",
              "jobs"]


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    try:
        with open("/proc/meminfo") as meminfo:
            info["memory_kb"] = int(meminfo.readline().split()[1])
    except OSError:
        pass
    return info


def last_document(stdout: str) -> dict:
    """The JSON document a benchmark printed last: on one line, or indented over several."""
    lines = stdout.rstrip().splitlines()
    starts = [n for n, line in enumerate(lines) if line.startswith("{")]
    return json.loads("\n".join(lines[starts[-1]:]))


def run(name: str) -> tuple[list[dict], dict]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", f"bench.{name}"], capture_output=True, text=True)
    seconds = round(time.monotonic() - started, 1)
    sys.stderr.write(done.stderr[-2000:])
    try:
        document = last_document(done.stdout)
    except (IndexError, json.JSONDecodeError):
        return [{"name": f"{name}_ran", "value": done.returncode, "unit": "exit code", "target": "0",
                 "met": False, "benchmark": name}], {"seconds": seconds}
    figures = [{**figure, "benchmark": name} for figure in document.get("figures", [])]
    return figures, {"seconds": seconds, "machine": document.get("machine")}


def main() -> None:
    only = [n for n in os.environ.get("BENCH_ONLY", "").split(",") if n] or BENCHMARKS
    figures, runs = [], {}
    for name in only:
        sys.stderr.write(f"[bench] {name}\n")
        bench_figures, runs[name] = run(name)
        figures.extend(bench_figures)
    print(json.dumps({"machine": machine(), "runs": runs, "figures": figures}, indent=1))


if __name__ == "__main__":
    main()
