"""Jobs: activation, expiry, reconciliation; idempotence, chunk failures, the API and the CLI."""

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text, update

from loyalty_api.cli import main as cli
from loyalty_api.jobs import services as jobs
from loyalty_api.jobs.scheduler import parse_schedule
from loyalty_api.jobs.services import (
    activate_pending,
    advisory_lock,
    expire_points,
    reconcile_balances,
    run_job,
)
from loyalty_api.ledger.models import LedgerEntry, PointLot
from loyalty_api.members.models import Member, MemberBalance

from .helpers import adjust, assert_invariants, assert_problem, at, balance, buy, make_member, make_rule

T0 = datetime(2026, 3, 10, 12, tzinfo=UTC)


@pytest.fixture
def earning(api):
    make_rule(api)  # 4 points per 1.00


def lots_of(session, member_id):
    return session.execute(select(PointLot.status, PointLot.remaining, PointLot.points)
                           .where(PointLot.member_id == member_id).order_by(PointLot.id)).all()


def entries_of(session, member_id, entry_type):
    return list(session.execute(select(LedgerEntry.points).where(
        LedgerEntry.member_id == member_id, LedgerEntry.type == entry_type)).scalars())


# --- activate-pending --------------------------------------------------------------------------

def test_pending_points_activate_at_the_exact_boundary(api, session, earning):
    api.patch("/v1/program", json={"pending_days": 3})
    member = make_member(api)
    p = buy(api, member["id"], total=10000, occurred_at="2026-03-10T11:00:00Z")
    assert p["pending_until"] == "2026-03-13T11:00:00Z"
    boundary = datetime(2026, 3, 13, 11, tzinfo=UTC)
    run = activate_pending(session, boundary - timedelta(microseconds=1))
    assert run["status"] == "succeeded" and run["counts"] == {"members": 0, "lots": 0, "points": 0}
    assert balance(api, member["id"])["pending"] == 400
    run = activate_pending(session, boundary)
    assert run["counts"] == {"members": 1, "lots": 1, "points": 400}
    assert {k: v for k, v in balance(api, member["id"]).items() if k != "expiring"} == {
        "available": 400, "pending": 0, "lifetime_earned": 400}
    assert lots_of(session, member["id"]) == [("available", 400, 400)]
    ledger = api.get(f"/v1/members/{member['id']}/ledger").json["data"]
    assert [e["status"] for e in ledger] == ["available"]
    # Twice is once.
    assert activate_pending(session, boundary)["counts"]["lots"] == 0
    assert balance(api, member["id"])["available"] == 400
    assert_invariants(session)


def test_activation_pays_a_debt_first(api, session, earning):
    api.patch("/v1/program", json={"negative_balance": "allow"})
    member = make_member(api)
    buy(api, member["id"], "t1", total=10000)  # 400 available
    assert adjust(api, member["id"], -400).status_code == 201
    api.post("/v1/purchases/t1/refunds", json={"refund_id": "r1", "amount": 10000})
    assert balance(api, member["id"])["available"] == -400
    api.patch("/v1/program", json={"pending_days": 5})
    buy(api, member["id"], "t2", total=15000)  # 600 pending
    assert_invariants(session)
    run = activate_pending(session, T0 + timedelta(days=5))
    assert run["counts"]["points"] == 600
    assert balance(api, member["id"])["available"] == 200
    assert [lot for lot in lots_of(session, member["id"]) if lot.points == 600] == [("available", 200, 600)]
    assert_invariants(session)


# --- expire-points -----------------------------------------------------------------------------

def test_fixed_expiry_month_arithmetic_31_january_plus_one_month(api, session, earning):
    api.patch("/v1/program", json={"expiry": {"mode": "fixed", "months": 1}})
    at(datetime(2026, 1, 31, 12, tzinfo=UTC))
    member = make_member(api)
    buy(api, member["id"], total=10000, occurred_at="2026-01-31T10:00:00Z")
    expiring = balance(api, member["id"])["expiring"]
    assert expiring == [{"points": 400, "expires_at": "2026-02-28T10:00:00Z"}]
    end_of_february = datetime(2026, 2, 28, 10, tzinfo=UTC)
    assert expire_points(session, end_of_february - timedelta(seconds=1))["counts"]["points"] == 0
    run = expire_points(session, end_of_february)
    assert run["counts"] == {"members": 1, "lots": 1, "points": 400}
    assert balance(api, member["id"])["available"] == 0
    assert balance(api, member["id"])["lifetime_earned"] == 400
    assert lots_of(session, member["id"]) == [("expired", 0, 400)]
    assert entries_of(session, member["id"], "expire") == [-400]
    ledger = api.get(f"/v1/members/{member['id']}/ledger").json["data"]
    assert [(e["type"], e["points"]) for e in ledger] == [("expire", -400), ("earn", 400)]
    # Twice is once.
    assert expire_points(session, end_of_february + timedelta(days=1))["counts"]["points"] == 0
    assert entries_of(session, member["id"], "expire") == [-400]
    assert_invariants(session)


def test_only_what_is_left_of_a_lot_expires(api, session, earning):
    api.patch("/v1/program", json={"expiry": {"mode": "fixed", "months": 6}})
    member = make_member(api)
    buy(api, member["id"], total=10000)
    assert adjust(api, member["id"], -150).status_code == 201
    run = expire_points(session, datetime(2026, 9, 10, 11, tzinfo=UTC))
    assert run["counts"]["points"] == 250
    assert balance(api, member["id"])["available"] == 0
    assert_invariants(session)


def test_pending_lots_never_expire_before_they_are_available(api, session, earning):
    api.patch("/v1/program", json={"pending_days": 40, "expiry": {"mode": "fixed", "months": 1}})
    member = make_member(api)
    buy(api, member["id"], total=10000, occurred_at="2026-03-10T11:00:00Z")  # expires 10 April, pending to 19 April
    expiry_passed = datetime(2026, 4, 15, tzinfo=UTC)
    assert expire_points(session, expiry_passed)["counts"]["points"] == 0
    assert balance(api, member["id"])["pending"] == 400
    assert lots_of(session, member["id"]) == [("pending", 400, 400)]
    available = datetime(2026, 4, 19, 11, tzinfo=UTC)
    assert activate_pending(session, available)["counts"]["points"] == 400
    assert expire_points(session, available)["counts"]["points"] == 400
    assert balance(api, member["id"])["available"] == 0
    assert_invariants(session)


def test_inactivity_expiry_is_reset_by_activity(api, session, earning):
    api.patch("/v1/program", json={"expiry": {"mode": "inactivity", "months": 6}})
    quiet, active = make_member(api, "quiet"), make_member(api, "active")
    buy(api, quiet["id"], "q1", total=10000, occurred_at="2026-03-10T11:00:00Z")
    buy(api, active["id"], "a1", total=10000, occurred_at="2026-03-10T11:00:00Z")
    at(datetime(2026, 8, 1, 12, tzinfo=UTC))
    buy(api, active["id"], "a2", total=1000, occurred_at="2026-08-01T11:00:00Z")
    assert balance(api, active["id"])["expiring"] == [{"points": 440, "expires_at": "2027-02-01T11:00:00Z"}]
    six_months = datetime(2026, 9, 10, 11, tzinfo=UTC)
    assert expire_points(session, six_months - timedelta(seconds=1))["counts"]["points"] == 0
    run = expire_points(session, six_months)
    assert run["counts"] == {"members": 1, "lots": 1, "points": 400}
    assert balance(api, quiet["id"])["available"] == 0
    assert balance(api, active["id"])["available"] == 440
    assert expire_points(session, six_months)["counts"]["points"] == 0
    assert expire_points(session, datetime(2027, 2, 1, 11, tzinfo=UTC))["counts"]["points"] == 440
    assert entries_of(session, active["id"], "expire") == [-440]
    assert_invariants(session)


def test_inactivity_uses_calendar_months(api, session, earning):
    api.patch("/v1/program", json={"expiry": {"mode": "inactivity", "months": 1}})
    at(datetime(2026, 1, 31, 12, tzinfo=UTC))
    member = make_member(api)
    buy(api, member["id"], total=10000, occurred_at="2026-01-31T10:00:00Z")
    assert expire_points(session, datetime(2026, 2, 28, 9, 59, tzinfo=UTC))["counts"]["points"] == 0
    assert expire_points(session, datetime(2026, 2, 28, 10, tzinfo=UTC))["counts"]["points"] == 400


# --- chunks, failures, idempotence ---------------------------------------------------------------

def _seed_expiring(api):
    """Seven members with lots that all expire by 2026-05-01 (fixed expiry, 1 month)."""
    make_rule(api)
    api.patch("/v1/program", json={"expiry": {"mode": "fixed", "months": 1}})
    members = []
    for n in range(7):
        member = make_member(api, f"m{n}")
        for k in range(n % 3 + 1):
            buy(api, member["id"], f"t{n}-{k}", total=1000 * (n + 1) + 100 * k)
        members.append(member)
    return members


def _expected_end_state(members):
    """What one clean expiry run leaves: every lot expired, one expire entry per member, balances zero."""
    state = {}
    for n, member in enumerate(members):
        earned = sum((1000 * (n + 1) + 100 * k) * 4 // 100 for k in range(n % 3 + 1))
        state[member["external_id"]] = {"available": 0, "pending": 0, "lifetime_earned": earned,
                                        "expire_entries": [-earned], "lots": ["expired"] * (n % 3 + 1)}
    return state


def _end_state(session, members):
    state = {}
    for member in members:
        row = session.get(MemberBalance, member["id"])
        session.refresh(row)
        state[member["external_id"]] = {
            "available": row.available, "pending": row.pending, "lifetime_earned": row.lifetime_earned,
            "expire_entries": entries_of(session, member["id"], "expire"),
            "lots": [lot.status for lot in lots_of(session, member["id"])]}
    return state


AFTER_EXPIRY = datetime(2026, 5, 1, tzinfo=UTC)


def test_a_clean_chunked_run(api, session):
    members = _seed_expiring(api)
    run = expire_points(session, AFTER_EXPIRY, chunk_size=2)
    assert run["status"] == "succeeded" and run["counts"]["members"] == 7
    assert _end_state(session, members) == _expected_end_state(members)
    assert_invariants(session)


def test_a_run_killed_between_chunks_then_rerun_ends_as_one_clean_run(api, session, monkeypatch):
    members = _seed_expiring(api)
    job = jobs.JOBS["expire-points"]
    calls = []

    def dies_in_the_third_chunk(*args):
        calls.append(args)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return job.chunk(*args)

    monkeypatch.setitem(jobs.JOBS, "expire-points", replace(job, chunk=dies_in_the_third_chunk))
    failed = expire_points(session, AFTER_EXPIRY, chunk_size=2)
    assert failed["status"] == "failed" and "simulated crash" in failed["error"]
    assert failed["counts"]["members"] == 4  # two committed chunks; the third left no trace
    assert_invariants(session)
    done = [m for m in members if entries_of(session, m["id"], "expire")]
    assert len(done) == 4
    monkeypatch.setitem(jobs.JOBS, "expire-points", job)
    rerun = expire_points(session, AFTER_EXPIRY, chunk_size=2)
    assert rerun["status"] == "succeeded" and rerun["counts"]["members"] == 3
    assert _end_state(session, members) == _expected_end_state(members)
    assert_invariants(session)
    runs = api.get("/v1/jobs/expire-points/runs").json["data"]
    assert [r["status"] for r in runs] == ["succeeded", "failed"]


@pytest.mark.parametrize("job_name", ["expire-points", "activate-pending"])
def test_a_chunk_moves_only_the_members_it_locked(api, session, monkeypatch, job_name):
    """A member the chunk did not lock (as one whose lot comes due between the chunk's read of
    who is due and its lock) keeps the lot for the next run: nothing moves unlocked."""
    make_rule(api)
    api.patch("/v1/program", json={"pending_days": 3, "expiry": {"mode": "fixed", "months": 1}})
    members = [make_member(api, f"m{n}") for n in range(3)]
    for n, member in enumerate(members):
        buy(api, member["id"], f"t{n}", total=10000)
    when = {"activate-pending": T0 + timedelta(days=3), "expire-points": AFTER_EXPIRY}[job_name]
    if job_name == "expire-points":
        assert activate_pending(session, T0 + timedelta(days=3))["counts"]["members"] == 3
    read = jobs._members_owning
    first = sorted(m["id"] for m in members)[0]
    monkeypatch.setattr(jobs, "_members_owning", lambda s, lots: [i for i in read(s, lots) if i == first])
    run = run_job(session, job_name, when, chunk_size=10)
    assert run["counts"]["members"] == 1 and run["counts"]["lots"] == 1
    assert_invariants(session)
    moved = "expired" if job_name == "expire-points" else "available"
    assert {m["id"]: lots_of(session, m["id"])[0].status == moved for m in members} == {
        m["id"]: m["id"] == first for m in members}
    monkeypatch.setattr(jobs, "_members_owning", read)
    assert run_job(session, job_name, when, chunk_size=10)["counts"]["members"] == 2
    assert all(lots_of(session, m["id"])[0].status == moved for m in members)
    assert_invariants(session)


def test_beside_traffic_a_run_takes_small_chunks_and_rests_after_each(api, session, monkeypatch):
    members = _seed_expiring(api)
    job = jobs.JOBS["expire-points"]
    chunks, rests, busy = [], [], [True]

    def counted(*args):
        chunks.append(args[3:])
        return job.chunk(*args)

    clock = iter(range(0, 1000, 2))  # each chunk takes 2 s
    monkeypatch.setitem(jobs.JOBS, "expire-points", replace(job, chunk=counted))
    monkeypatch.setattr(jobs, "traffic", lambda s: busy[0])
    monkeypatch.setattr(jobs, "_monotonic", lambda: next(clock))
    monkeypatch.setattr(jobs, "_sleep", rests.append)
    run = expire_points(session, AFTER_EXPIRY, chunk_size=5, pace=jobs.Pace(chunk_size=2, rest=3))
    assert run["status"] == "succeeded" and run["counts"]["members"] == 7
    assert len(chunks) == 4 and rests == [6, 6, 6, 6]  # 7 members, 2 a chunk, 3 × 2 s after each
    assert _end_state(session, members) == _expected_end_state(members)
    chunks.clear()
    rests.clear()
    busy[0] = False  # alone on the database: the job's own chunks, no rest
    assert expire_points(session, AFTER_EXPIRY, chunk_size=5, pace=jobs.Pace(chunk_size=2, rest=3))["counts"] == {
        "members": 0, "lots": 0, "points": 0}
    assert len(chunks) == 2 and rests == []
    busy[0] = True  # no pace: never gives way
    chunks.clear()
    assert expire_points(session, AFTER_EXPIRY, chunk_size=5)["status"] == "succeeded"
    assert len(chunks) == 2 and rests == []


def test_pace_comes_from_configuration():
    config = {"LOYALTY_JOBS_PACE_CHUNK_SIZE": 50, "LOYALTY_JOBS_PACE_REST": 2.5}
    assert jobs.Pace.from_config(config) == jobs.Pace(chunk_size=50, rest=2.5)
    assert jobs.Pace.from_config({**config, "LOYALTY_JOBS_PACE_REST": 0}) is None
    assert jobs.Pace.from_config({**config, "LOYALTY_JOBS_PACE_CHUNK_SIZE": 0}).chunk_size == 1


def test_traffic_is_another_application_busy_within_the_last_second(app, session):
    if session.get_bind().dialect.name != "postgresql":
        assert not jobs.traffic(session)  # SQLite: no other sessions to see
        return
    from loyalty_api.extensions import db

    with db.engine.connect() as same_application:
        same_application.execute(text("SELECT 1"))
        assert not jobs.traffic(session)  # the job's own pool, its lock's connection
    with db.engine.connect() as other:
        other.execute(text("SET application_name = 'loyalty web test'"))
        other.execute(text("SELECT 1"))
        assert jobs.traffic(session)


def test_a_stop_request_ends_the_run_between_chunks(api, session):
    members = _seed_expiring(api)
    answers = iter([False, False, True])
    run = run_job(session, "expire-points", AFTER_EXPIRY, chunk_size=3, should_stop=lambda: next(answers))
    assert run["status"] == "failed" and "stopped between two chunks" in run["error"]
    assert run["counts"]["members"] == 6
    assert expire_points(session, AFTER_EXPIRY, chunk_size=3)["counts"]["members"] == 1
    assert _end_state(session, members) == _expected_end_state(members)


# --- reconcile-balances ------------------------------------------------------------------------

def test_reconcile_reports_mismatches_and_changes_nothing(api, session, earning):
    good, bad = make_member(api, "good"), make_member(api, "bad")
    buy(api, good["id"], "t1", total=1000)
    buy(api, bad["id"], "t2", total=1000)
    run = reconcile_balances(session, datetime(2026, 3, 11, tzinfo=UTC))
    assert run["status"] == "succeeded"
    assert run["counts"] == {"members": 2, "mismatches": 0, "negative_balances": 0} and run["findings"] == []
    session.execute(update(MemberBalance).where(MemberBalance.member_id == bad["id"])
                    .values(available=MemberBalance.available + 5))
    session.commit()
    run = reconcile_balances(session, datetime(2026, 3, 11, tzinfo=UTC), chunk_size=1)
    assert run["counts"]["mismatches"] == 1
    assert {(f["member_id"], f["check"], f["expected"], f["actual"]) for f in run["findings"]} == {
        (bad["id"], "ledger", 40, 45), (bad["id"], "lots", 40, 45)}
    assert session.get(MemberBalance, bad["id"]).available == 45  # reported, not repaired


# --- the API, the CLI, the lock ------------------------------------------------------------------

def test_jobs_over_the_api(api, session, earning):
    api.patch("/v1/program", json={"pending_days": 1})
    at(T0 - timedelta(days=1))
    member = make_member(api)
    buy(api, member["id"], total=10000, occurred_at="2026-03-09T12:00:00Z")
    at(T0)
    r = api.post("/v1/jobs/activate-pending/runs")
    assert r.status_code == 201, r.json
    run = r.json
    assert run["status"] == "succeeded" and run["counts"]["points"] == 400 and run["trigger"] == "api"
    assert run["as_of"] == "2026-03-10T12:00:00Z" and run["finished_at"]
    listed = api.get("/v1/jobs/activate-pending/runs").json
    assert [x["id"] for x in listed["data"]] == [run["id"]] and listed["next_cursor"] is None
    assert_problem(api.post("/v1/jobs/nope/runs"), 404, "not_found")
    assert_problem(api.get("/v1/jobs/nope/runs"), 404, "not_found")
    assert_problem(api.as_role("marketer").post("/v1/jobs/expire-points/runs"), 403, "forbidden")
    for name in ("expire-points", "review-tiers", "reconcile-balances"):
        assert api.post(f"/v1/jobs/{name}/runs").json["status"] == "succeeded"


def test_the_cli_runs_a_job(tmp_path, monkeypatch):
    monkeypatch.setenv("LOYALTY_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("LOYALTY_SECRET_KEY", "cli-test-secret")
    runner = CliRunner()
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(cli, ["jobs", "run", "reconcile-balances", "--chunk-size", "10"])
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert run["status"] == "succeeded" and run["trigger"] == "cli" and run["counts"] == {}
    result = runner.invoke(cli, ["jobs", "run", "nope"])
    assert result.exit_code == 2 and "unknown job" in result.output


@pytest.mark.postgres
def test_a_second_runner_is_skipped_while_the_first_holds_the_lock(api, session, earning):
    api.patch("/v1/program", json={"pending_days": 1})
    at(T0 - timedelta(days=1))
    member = make_member(api)
    buy(api, member["id"], total=10000, occurred_at="2026-03-09T12:00:00Z")
    at(T0)
    with advisory_lock(session, "job:activate-pending") as held:
        assert held
        run = activate_pending(session, T0)
        assert run["status"] == "skipped" and run["counts"] == {}
        assert balance(api, member["id"])["pending"] == 400
        with advisory_lock(session, "job:activate-pending") as second:
            assert not second
    assert activate_pending(session, T0)["counts"]["points"] == 400
    # Advisory locks are per database; other databases on the server may hold their own.
    assert session.execute(text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")).scalar() == 0


@pytest.mark.parametrize("expression, fires", [
    ("30 0 * * *", datetime(2026, 3, 11, 0, 30, tzinfo=UTC)),
    ("*/15 * * * *", datetime(2026, 3, 10, 12, 15, tzinfo=UTC)),
    ("5 0 13 * * *", datetime(2026, 3, 10, 13, 0, 5, tzinfo=UTC)),
])
def test_schedules_are_utc_cron(expression, fires):
    assert parse_schedule(expression).get_next_fire_time(None, T0 + timedelta(seconds=1)) == fires


def test_a_bad_or_disabled_schedule(app):
    assert parse_schedule("off") is None and parse_schedule("") is None
    with pytest.raises(ValueError):
        parse_schedule("* * *")


def test_members_are_walked_in_id_order_in_chunks(api, session):
    ids = sorted(make_member(api, f"m{n}")["id"] for n in range(5))
    assert jobs.next_chunk_end(session, None, 2) == ids[1]
    assert jobs.next_chunk_end(session, ids[1], 2) == ids[3]
    assert jobs.next_chunk_end(session, ids[3], 2) == ids[4]
    assert jobs.next_chunk_end(session, ids[4], 2) is None
    assert session.execute(select(Member.id).order_by(Member.id)).scalars().all() == ids


def test_job_processes_yield_cpu_to_requests(monkeypatch):
    """`loyalty jobs run` and `loyalty scheduler` lower their own CPU priority (LOYALTY_JOBS_NICE)."""
    from loyalty_api import cli as cli_module

    increments = []
    monkeypatch.setattr(cli_module.os, "nice", increments.append)
    monkeypatch.delenv("LOYALTY_JOBS_NICE", raising=False)
    cli_module._yield_cpu_to_requests()
    monkeypatch.setenv("LOYALTY_JOBS_NICE", "0")
    cli_module._yield_cpu_to_requests()
    monkeypatch.setenv("LOYALTY_JOBS_NICE", "5")
    cli_module._yield_cpu_to_requests()
    assert increments == [10, 5]


def test_a_job_leading_its_own_session_lowers_the_session_too(monkeypatch, tmp_path):
    """With Linux autogrouping a niceness ranks a process only within its session: a job that
    leads its own session gives the session (its autogroup) the same niceness."""
    from loyalty_api import cli as cli_module

    autogroup = tmp_path / "autogroup"
    autogroup.write_text("/autogroup-7 nice 0\n")
    monkeypatch.setattr(cli_module, "AUTOGROUP", str(autogroup))
    monkeypatch.setattr(cli_module.os, "nice", lambda increment: 3 + increment)
    monkeypatch.delenv("LOYALTY_JOBS_NICE", raising=False)
    monkeypatch.setattr(cli_module.os, "getsid", lambda pid: cli_module.os.getpid() + 1)
    cli_module._yield_cpu_to_requests()
    assert autogroup.read_text() == "/autogroup-7 nice 0\n"  # not its session's leader: left alone
    monkeypatch.setattr(cli_module.os, "getsid", lambda pid: cli_module.os.getpid())
    cli_module._yield_cpu_to_requests()
    assert autogroup.read_text() == "13"
    monkeypatch.setattr(cli_module, "AUTOGROUP", str(tmp_path / "no such directory" / "autogroup"))
    cli_module._yield_cpu_to_requests()  # no autogrouping here: the niceness alone


def test_each_process_names_its_database_connections():
    """A paced job tells requests from its own work by the connections' application_name."""
    from loyalty_api import create_app

    def named(process, url="postgresql+psycopg://nobody@127.0.0.1:9/none"):
        app = create_app({"SQLALCHEMY_DATABASE_URI": url, "LOYALTY_PROCESS": process, "SECRET_KEY": "x"})
        return app.config["SQLALCHEMY_ENGINE_OPTIONS"].get("connect_args", {}).get("application_name")

    assert named("web") == "loyalty web" and named("jobs") == "loyalty jobs"
    assert named("jobs", "postgresql+psycopg://nobody@127.0.0.1:9/none?application_name=mine") is None  # the URL's
