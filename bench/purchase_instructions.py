"""Instructions the service executes per purchase, counted by valgrind: the same on a busy machine.

CPU time on a shared 2-core VM moves by a third from one run to the next (bench/README.md),
which hides any change smaller than that. valgrind's callgrind counts the instructions the
service's process executes (Python: parsing, rules, the ledger plan, psycopg's client side),
the same count for the same code and inputs whatever else the machine does. PostgreSQL's
side is not in the count (bench.purchase_cpu and bench.ingest measure it).

Run: `python -m bench.purchase_instructions` (needs valgrind, from Debian's packages;
LOYALTY_BENCH_CPU_DATABASE_URL to use another database, dropped and created again). It sets
up the program of bench.ingest (20 rules) with 300 members, then, for groups of 1 and of 4
purchases (a single purchase, and a group commit of four), runs 30 groups to warm up and
counts the instructions of the next BENCH_PURCHASES (100) purchases. `BENCH_COMPARE=DIR`
counts the code of another checkout too (DIR on PYTHONPATH), in the same run, and prints the
ratio.
"""

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/loyalty_bench_cpu"
WARMUP_GROUPS = 30


def set_up(url: str) -> None:
    from bench.purchase_cpu import MEMBERS, set_up_in_process

    set_up_in_process(url, MEMBERS, "ins")


def count(url: str, group: int, purchases: int, first: int) -> None:
    """Run inside valgrind: warm up, then count `purchases` purchases in groups of `group`."""
    from sqlalchemy import text

    from bench.purchase_cpu import purchase
    from loyalty_api import create_app
    from loyalty_api.extensions import db
    from loyalty_api.purchases.routes import _apply_purchases_together
    from loyalty_api.purchases.schemas import PurchaseCreateSchema
    from loyalty_api.timeutil import utcnow

    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "SECRET_KEY": "bench-" * 8})
    with app.app_context():
        members = db.session.execute(text("SELECT member_id FROM member_balances ORDER BY member_id")).scalars().all()
        db.session.rollback()
    schema, sequence = PurchaseCreateSchema(), iter(range(first, first + 10**6))

    def one_group() -> None:
        # What a web worker does after parsing: validate the bodies, apply them as one group.
        with app.app_context():
            bodies = []
            for _ in range(group):
                n = next(sequence)
                bodies.append((schema.load(purchase(n, members[n % len(members)])), utcnow()))
            _apply_purchases_together(bodies)

    for _ in range(WARMUP_GROUPS):
        one_group()
    toggle(True)
    for _ in range(purchases // group):
        one_group()
    toggle(False)


def toggle(on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())], check=True,
                   capture_output=True)


def instructions_per_purchase(url: str, group: int, purchases: int, first: int, code: str | None) -> float:
    # Run from the checkout measured, so that its loyalty_api comes first on the path.
    runner = f"import runpy; runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__')"
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=/dev/null",
         sys.executable, "-c", runner, "--count", url, str(group), str(purchases), str(first)],
        capture_output=True, text=True, cwd=code or REPOSITORY, timeout=1800)
    match = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or not match:
        raise RuntimeError(f"valgrind run failed:\n{done.stderr[-3000:]}")
    return int(match.group(1).replace(",", "")) / (purchases // group * group)


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--count":
        count(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return
    if not shutil.which("valgrind"):
        sys.exit("valgrind is missing (Debian: apt-get install valgrind)")
    url = os.environ.get("LOYALTY_BENCH_CPU_DATABASE_URL") or DEFAULT_URL
    purchases = int(os.environ.get("BENCH_PURCHASES", 100))
    compare = os.environ.get("BENCH_COMPARE")
    set_up(url)
    figures, first = [], 0
    for group in (1, 4):
        first += 10**6
        mine = instructions_per_purchase(url, group, purchases, first, None)
        figures.append({"name": f"purchase_instructions_group_of_{group}", "value": round(mine / 1e6, 3),
                        "unit": "million instructions", "target": "-", "met": True})
        if compare:
            first += 10**6
            theirs = instructions_per_purchase(url, group, purchases, first, compare)
            figures.append({"name": f"compared_instructions_group_of_{group}", "value": round(theirs / 1e6, 3),
                            "unit": "million instructions", "target": "-", "met": True})
            figures.append({"name": f"ratio_to_compared_group_of_{group}", "value": round(mine / theirs, 3),
                            "unit": "x", "target": "-", "met": True})
    print(json.dumps({"benchmark": "purchase_instructions",
                      "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                      "compared_with": compare, "figures": figures}))


if __name__ == "__main__":
    main()
