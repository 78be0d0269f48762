"""Jobs: activate pending points, expire points, review tiers, reconcile balances.

Each job walks the members in id order, a chunk at a time, and does its work for a chunk
with a handful of set-based statements in one transaction of its own. A
crash loses only the chunk in flight; a rerun finds the finished chunks' work done (every
statement selects only what is still due), so running twice never activates or expires
anything twice. On PostgreSQL a session advisory lock keeps one runner per job (a second
one records a `skipped` run); on SQLite the single writer serialises the chunks, which are
idempotent all the same. Members' balances are locked (`FOR UPDATE`, id order) before a
chunk moves them, exactly as an earning or a redemption does, and stay locked until the
chunk commits: a purchase for one of them waits for the rest of the chunk. Alone on the
database a run takes chunks of thousands, which spend least on each statement's fixed cost;
beside requests, a paced run (the scheduler's, the CLI's; see Pace) takes chunks of a hundred
or so, holding each lock for a few milliseconds, and rests between them.
"""

import hashlib
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, any_, bindparam, case, func, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from ..bulk import insert_rows
from ..errors import NotFound
from ..ids import new_id
from ..ledger.models import LedgerEntry, PointLot
from ..members.models import Member, MemberBalance
from ..pagination import Page, decode_cursor, encode_cursor
from ..program.services import ProgramSettings, get_program
from ..referrals.services import expire_referrals
from ..tiers.services import REVIEW, TierLadder, qualifying_figures, tier_change_row, write_tier_changes
from ..timeutil import add_months, isoformat, utcnow
from ..transactions import run_read, run_write
from .models import JobRun

log = logging.getLogger(__name__)

# Members per chunk when nothing else runs (see Pace for a run beside requests): expire-points
# over 1,000,000 lots took twice as long in chunks of 500 as in chunks of 5,000.
CHUNK_SIZE = 5000
FINDINGS_KEPT = 1000

LOTS = PointLot.__table__
BALANCES = MemberBalance.__table__


@dataclass
class ChunkResult:
    counts: dict[str, int]
    findings: list[dict] = field(default_factory=list)


ChunkFunction = Callable[[Session, ProgramSettings, datetime, str | None, str], ChunkResult]


@dataclass(frozen=True)
class Job:
    name: str
    chunk: ChunkFunction
    writes: bool
    description: str


def _in_range(column, after: str | None, upto: str):
    """Members of one chunk: ids in (after, upto]."""
    return and_(column > after, column <= upto) if after is not None else column <= upto


def _one_of(session: Session, column, member_ids: Sequence[str]):
    """`column IN member_ids`. On PostgreSQL `= ANY(array)`: one parameter however many ids,
    so the statement's text, and with it the compiled statement and the server's plan, stays
    the same from chunk to chunk, where an IN list is rendered, sent and parsed id by id."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, list(member_ids), type_=postgresql.ARRAY(column.type)))
    return column.in_(member_ids)


def _members_owning(session: Session, lots) -> list[str]:
    """Return the ids of the members who own any of `lots`, read without a lock."""
    return list(session.execute(select(LOTS.c.member_id).where(lots).distinct()).scalars())


def _lock_balances(session: Session, member_ids: Sequence[str]) -> list:
    """Lock the balance rows of `member_ids` in id order; return (id, available).

    Ids, not a subquery: PostgreSQL looks each up in the primary key. Given a subquery it
    guesses how many members that yields, and a guess off either way had it scan every
    balance, or the chunk's lots once per member, for each chunk.
    """
    if not member_ids:
        return []
    return session.execute(
        select(BALANCES.c.member_id, BALANCES.c.available)
        .where(_one_of(session, BALANCES.c.member_id, member_ids))
        .order_by(BALANCES.c.member_id)
        .with_for_update()
    ).all()


# --- activate-pending ----------------------------------------------------------------------

def activate_pending_chunk(session: Session, program: ProgramSettings, now: datetime, after: str | None,
                           upto: str) -> ChunkResult:
    """Make pending lots whose available_at has come available, for the members of one chunk.

    The balance moves from pending to available. A member who owes points (a negative
    available balance) has the debt paid first from the activating lots, soonest first,
    as a credit would (see `plan_credit`), so the lots never hold more than the balance.
    """
    due = and_(_in_range(LOTS.c.member_id, after, upto), LOTS.c.status == "pending", LOTS.c.available_at <= now)
    locked = _lock_balances(session, _members_owning(session, due))
    if not locked:
        return ChunkResult({"members": 0, "lots": 0, "points": 0})
    member_ids = [row.member_id for row in locked]
    # Lots of the locked members only: a member whose lot came due since they were read waits
    # for the next run. (Correlated subqueries below keep to `due`: they name their member.)
    lots_due = and_(due, _one_of(session, LOTS.c.member_id, member_ids))
    sums = session.execute(
        select(LOTS.c.member_id, func.sum(LOTS.c.remaining), func.count()).where(lots_due)
        .group_by(LOTS.c.member_id)
    ).all()
    debtors = {row.member_id: -row.available for row in locked if row.available < 0}
    paid: list[dict] = []
    if debtors:
        rows = session.execute(
            select(LOTS.c.id, LOTS.c.member_id, LOTS.c.remaining)
            .where(due, _one_of(session, LOTS.c.member_id, list(debtors)), LOTS.c.remaining > 0)
            .order_by(LOTS.c.member_id, LOTS.c.available_at, LOTS.c.id)).all()
        for row in rows:
            pay = min(debtors[row.member_id], row.remaining)
            if pay:
                debtors[row.member_id] -= pay
                paid.append({"b_lot": row.id, "b_remaining": row.remaining - pay})
    # The balance moves by what the lots held while pending; the debt is paid from the lots.
    moving = (select(func.coalesce(func.sum(LOTS.c.remaining), 0))
              .where(due, LOTS.c.member_id == BALANCES.c.member_id).scalar_subquery())
    session.execute(
        update(BALANCES).where(_one_of(session, BALANCES.c.member_id, member_ids))
        .values(pending=BALANCES.c.pending - moving, available=BALANCES.c.available + moving,
                version=BALANCES.c.version + 1))
    if paid:
        session.execute(update(LOTS).where(LOTS.c.id == bindparam("b_lot"))
                        .values(remaining=bindparam("b_remaining")), paid)
    session.execute(update(LOTS).where(lots_due).values(status="available"))
    return ChunkResult({"members": len(sums), "lots": sum(int(r[2]) for r in sums),
                        "points": sum(int(r[1] or 0) for r in sums)})


# --- expire-points -------------------------------------------------------------------------

def _expire(session: Session, due, member_ids: list[str], now: datetime, description: str) -> ChunkResult:
    """Expire the `due` available lots of `member_ids` (their balances locked): an `expire` entry
    per member, balance and lots to match."""
    lots_due = and_(due, _one_of(session, LOTS.c.member_id, member_ids))
    sums = session.execute(
        select(LOTS.c.member_id, func.sum(LOTS.c.remaining), func.count())
        .where(lots_due).group_by(LOTS.c.member_id)).all()
    source_id = f"expiry:{isoformat(now)}"
    entries = [{"id": new_id(), "member_id": row[0], "type": "expire", "points": -int(row[1]),
                "source_type": "expiry", "source_id": source_id, "rule_id": None, "rule_version": None,
                "lot_id": None, "description": description, "created_at": now}
               for row in sums if row[1]]
    if entries:
        insert_rows(session.connection(), LedgerEntry.__table__, entries)
        # `due`, not `lots_due`: the subquery names its member, and the id list in it would make
        # PostgreSQL price the statement high enough to compile it (JIT), ~0.25 s a chunk.
        expiring = (select(func.coalesce(func.sum(LOTS.c.remaining), 0))
                    .where(due, LOTS.c.member_id == BALANCES.c.member_id).scalar_subquery())
        session.execute(
            update(BALANCES).where(_one_of(session, BALANCES.c.member_id, [e["member_id"] for e in entries]))
            .values(available=BALANCES.c.available - expiring, version=BALANCES.c.version + 1))
    session.execute(update(LOTS).where(lots_due).values(status="expired", remaining=0))
    return ChunkResult({"members": len(entries), "lots": sum(int(r[2]) for r in sums),
                        "points": -sum(e["points"] for e in entries)})


def expire_points_chunk(session: Session, program: ProgramSettings, now: datetime, after: str | None,
                        upto: str) -> ChunkResult:
    """Expire points for the members of one chunk, as the program's expiry mode says.

    `fixed`: available lots whose expires_at has come. `inactivity`: every available lot of
    a member whose last earn or redemption is `months` or more ago. Pending lots never
    expire: they wait until they are available.
    """
    in_chunk = _in_range(LOTS.c.member_id, after, upto)
    if program.expiry_mode == "fixed":
        due = and_(in_chunk, LOTS.c.status == "available", LOTS.c.expires_at.is_not(None),
                   LOTS.c.expires_at <= now)
        locked = _lock_balances(session, _members_owning(session, due))
        if not locked:
            return ChunkResult({"members": 0, "lots": 0, "points": 0})
        # The locked members' lots only: one whose lot came due since they were read waits for the next run.
        return _expire(session, due, [row.member_id for row in locked], now,
                       "Points expired: their expiry date passed")
    if program.expiry_mode == "inactivity":
        members = Member.__table__
        last_active = func.coalesce(members.c.last_activity_at, members.c.enrolled_at)
        # A superset in SQL (month lengths differ by at most 3 days), the exact month
        # arithmetic in Python on the few thousand candidates of the chunk.
        bound = add_months(now, -program.expiry_months) + timedelta(days=4)
        candidates = list(session.execute(
            select(members.c.id).join(BALANCES, BALANCES.c.member_id == members.c.id)
            .where(_in_range(members.c.id, after, upto), BALANCES.c.available > 0, last_active <= bound)).scalars())
        locked = _lock_balances(session, candidates)
        if not locked:
            return ChunkResult({"members": 0, "lots": 0, "points": 0})
        # Read again under the lock: activity committed since the candidates were read counts.
        rows = session.execute(select(members.c.id, last_active.label("last_active"))
                               .where(_one_of(session, members.c.id, [row.member_id for row in locked]))).all()
        inactive = [row.id for row in rows if add_months(row.last_active, program.expiry_months) <= now]
        if not inactive:
            return ChunkResult({"members": 0, "lots": 0, "points": 0})
        due = and_(LOTS.c.status == "available", LOTS.c.remaining > 0)
        return _expire(session, due, inactive, now, f"Points expired: no activity for {program.expiry_months} months")
    return ChunkResult({"members": 0, "lots": 0, "points": 0})


# --- review-tiers --------------------------------------------------------------------------

def _tier_targets(ladder: TierLadder, current: dict[str, str | None],
                  figures: dict[str, int]) -> list[tuple[str, int]]:
    """Return (member id, figure) for each member whose figure reaches another tier than its own."""
    changes = []
    for member_id, tier_id in current.items():
        figure = figures.get(member_id, 0)
        target = ladder.qualifies_for(figure)
        if (target.id if target else None) != tier_id:
            changes.append((member_id, figure))
    return changes


def review_tiers_chunk(session: Session, program: ProgramSettings, now: datetime, after: str | None,
                       upto: str) -> ChunkResult:
    """Set each member of one chunk to the tier its qualifying figure reaches as of `now`.

    The one place a member moves down. Members who would change are locked and their
    figures read again under the lock, so an upgrade committed meanwhile is not undone.
    Pending referrals whose window closed expire here too.
    """
    counts = Counter({"members": 0, "upgrades": 0, "downgrades": 0})
    counts["referrals_expired"] = expire_referrals(session, now, after=after, upto=upto)
    ladder = TierLadder.load(session)
    members = Member.__table__
    in_chunk = and_(_in_range(members.c.id, after, upto), members.c.status != "erased")
    current = dict(session.execute(select(members.c.id, members.c.tier_id).where(in_chunk)).all())
    counts["members"] = len(current)
    if not ladder and not any(current.values()):
        return ChunkResult(dict(counts))
    figures = qualifying_figures(session, program, now, after=after, upto=upto)
    changing = [member_id for member_id, _ in _tier_targets(ladder, current, figures)]
    if not changing:
        return ChunkResult(dict(counts))
    _lock_balances(session, changing)
    current = dict(session.execute(select(members.c.id, members.c.tier_id).where(members.c.id.in_(changing))).all())
    figures = qualifying_figures(session, program, now, member_ids=changing)
    rows = []
    for member_id, figure in _tier_targets(ladder, current, figures):
        old, new = ladder.by_id.get(current[member_id]), ladder.qualifies_for(figure)
        rows.append((tier_change_row(member_id, old, new, REVIEW, figure, program, now), new.id if new else None))
        moved_up = new is not None and (old is None or new.rank > old.rank)
        counts["upgrades" if moved_up else "downgrades"] += 1
    write_tier_changes(session, rows)
    return ChunkResult(dict(counts))


# --- reconcile-balances --------------------------------------------------------------------

def reconcile_balances_chunk(session: Session, program: ProgramSettings, now: datetime, after: str | None,
                             upto: str) -> ChunkResult:
    """Check DESIGN.md's invariants for the members of one chunk; change nothing.

    One statement, so that PostgreSQL answers it from one snapshot. Returns a finding per
    broken invariant: ledger (available + pending ≠ Σ entries), lots (available ≥ 0 and
    ≠ Σ available lots), pending (≠ Σ pending lots), lot_range (a lot outside 0..points).
    """
    entries = LedgerEntry.__table__
    ledger = (select(entries.c.member_id, func.sum(entries.c.points).label("points"))
              .where(_in_range(entries.c.member_id, after, upto)).group_by(entries.c.member_id).subquery())
    lots = (select(LOTS.c.member_id,
                   func.sum(case((LOTS.c.status == "available", LOTS.c.remaining), else_=0)).label("available"),
                   func.sum(case((LOTS.c.status == "pending", LOTS.c.remaining), else_=0)).label("pending"),
                   func.sum(case(((LOTS.c.remaining < 0) | (LOTS.c.remaining > LOTS.c.points), 1), else_=0))
                   .label("out_of_range"))
            .where(_in_range(LOTS.c.member_id, after, upto)).group_by(LOTS.c.member_id).subquery())
    rows = session.execute(
        select(BALANCES.c.member_id, BALANCES.c.available, BALANCES.c.pending,
               func.coalesce(ledger.c.points, 0).label("ledger"),
               func.coalesce(lots.c.available, 0).label("lots_available"),
               func.coalesce(lots.c.pending, 0).label("lots_pending"),
               func.coalesce(lots.c.out_of_range, 0).label("out_of_range"))
        .outerjoin(ledger, ledger.c.member_id == BALANCES.c.member_id)
        .outerjoin(lots, lots.c.member_id == BALANCES.c.member_id)
        .where(_in_range(BALANCES.c.member_id, after, upto))).all()
    findings, mismatched, negative = [], set(), 0
    for row in rows:
        checks = [("ledger", int(row.ledger), row.available + row.pending),
                  ("pending", int(row.lots_pending), row.pending)]
        if row.available >= 0:
            checks.append(("lots", int(row.lots_available), row.available))
        else:
            negative += 1
        if row.out_of_range:
            checks.append(("lot_range", 0, int(row.out_of_range)))
        for check, expected, actual in checks:
            if expected != actual:
                findings.append({"member_id": row.member_id, "check": check, "expected": expected, "actual": actual})
                mismatched.add(row.member_id)
    return ChunkResult({"members": len(rows), "mismatches": len(mismatched), "negative_balances": negative},
                       findings)


JOBS: dict[str, Job] = {
    "activate-pending": Job("activate-pending", activate_pending_chunk, True,
                            "Pending lots whose available_at has come become available"),
    "expire-points": Job("expire-points", expire_points_chunk, True,
                         "Lots past expires_at (fixed) or balances of inactive members (inactivity) expire"),
    "review-tiers": Job("review-tiers", review_tiers_chunk, True,
                        "Members move to the tier their qualifying figure reaches; stale referrals expire"),
    "reconcile-balances": Job("reconcile-balances", reconcile_balances_chunk, False,
                              "Balances, ledgers and lots are checked against each other; nothing changes"),
}


# --- the runner ----------------------------------------------------------------------------

def lock_key(name: str) -> int:
    """Return the PostgreSQL advisory lock key of a name (a stable signed 64-bit integer)."""
    return int.from_bytes(hashlib.sha256(f"loyalty:{name}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def advisory_lock(session: Session, name: str) -> Iterator[bool]:
    """Hold a PostgreSQL session advisory lock on its own connection; yield whether it was free.

    Other databases have no such lock: the context yields True (SQLite serialises writers).
    """
    bind = session.get_bind()
    engine = bind.engine if isinstance(bind, Connection) else bind
    if engine.dialect.name != "postgresql":
        yield True
        return
    connection = engine.connect()
    try:
        held = bool(connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": lock_key(name)}).scalar())
        connection.commit()  # a session lock outlives the transaction; hold no transaction open
        try:
            yield held
        finally:
            if held:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": lock_key(name)})
                connection.commit()
    finally:
        connection.close()


def next_chunk_end(session: Session, after: str | None, size: int) -> str | None:
    """Return the id of the last member of the chunk after `after`; None when no member is left."""
    query = select(Member.id).order_by(Member.id)
    if after is not None:
        query = query.where(Member.id > after)
    end = session.execute(query.offset(size - 1).limit(1)).scalar()
    if end is None:
        last = select(func.max(Member.id))
        end = session.execute(last.where(Member.id > after) if after is not None else last).scalar()
    return end


def run_view(run: JobRun) -> dict:
    return {"id": run.id, "name": run.name, "status": run.status, "trigger": run.trigger, "runner": run.runner,
            "as_of": run.as_of, "started_at": run.started_at, "finished_at": run.finished_at,
            "counts": dict(run.counts or {}), "findings": list(run.findings or []), "error": run.error}


def _finish(session: Session, run_id: str, status: str, counts: dict, findings: list, error: str | None) -> dict:
    run = session.get(JobRun, run_id)
    run.status, run.counts, run.findings, run.error = status, dict(counts), list(findings), error
    run.finished_at = utcnow()
    session.flush()
    return run_view(run)


def _start(session: Session, name: str, status: str, trigger: str, now: datetime, takes_over: bool) -> dict:
    if takes_over:
        # Holding the job's lock, no other run of it is alive: a run still marked running died.
        session.execute(update(JobRun).where(JobRun.name == name, JobRun.status == "running")
                        .values(status="failed", error="interrupted: its process stopped before it finished",
                                finished_at=utcnow()))
    started = utcnow()
    run = JobRun(id=new_id(), name=name, status=status, trigger=trigger,
                 runner=f"{socket.gethostname()}:{os.getpid()}"[:200], as_of=now, started_at=started,
                 finished_at=started if status != "running" else None, counts={}, findings=[],
                 error="another run of this job holds its lock" if status == "skipped" else None)
    session.add(run)
    session.flush()
    return run_view(run)


@dataclass(frozen=True)
class Pace:
    """How a run gives way to requests, as autovacuum's cost delay does: while `traffic` sees
    another application busy on the database, chunks of at most `chunk_size` members (each
    balance lock held briefly), each followed by a rest of `rest` times as long as the chunk
    took, so that the run and its database session take at most 1 / (1 + rest) of a core
    from the requests. Alone on the database, a run goes at full speed with its own chunks."""

    chunk_size: int = 100
    rest: float = 1.0

    @classmethod
    def from_config(cls, config) -> "Pace | None":
        """The pace of LOYALTY_JOBS_PACE_CHUNK_SIZE and LOYALTY_JOBS_PACE_REST; None when the rest is 0."""
        rest = float(config["LOYALTY_JOBS_PACE_REST"])
        return cls(max(1, int(config["LOYALTY_JOBS_PACE_CHUNK_SIZE"])), rest) if rest > 0 else None


# Another client of the database, not of this process's application, running a statement or
# holding a transaction now, or done with one within the last second.
_TRAFFIC = text(
    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
    "AND backend_type = 'client backend' AND pid <> pg_backend_pid() "
    "AND application_name IS DISTINCT FROM current_setting('application_name') "
    "AND (state IS DISTINCT FROM 'idle' OR state_change > clock_timestamp() - interval '1 second'))")


# The runner's clock and rest, apart from the time module so that tests can replace them alone.
_monotonic, _sleep = time.monotonic, time.sleep


def traffic(session: Session) -> bool:
    """Whether another application is using the database (PostgreSQL; SQLite: never, it has
    one writer and no view of other sessions).

    PostgreSQL shows other roles' sessions without their state unless the job's role may read
    all statistics (pg_read_all_stats, part of pg_monitor): where the web workers connect as
    another role, grant it to the jobs' role, or their traffic goes unseen."""
    if session.get_bind().dialect.name != "postgresql":
        return False
    # Activity is read once per transaction and kept: a caller inside one sees it afresh too.
    session.execute(text("SELECT pg_stat_clear_snapshot()"))
    return bool(session.execute(_TRAFFIC).scalar())


def run_job(session: Session, name: str, now: datetime, *, trigger: str = "cli",
            chunk_size: int = CHUNK_SIZE, should_stop: Callable[[], bool] | None = None,
            pace: Pace | None = None) -> dict:
    """Run job `name` as of `now`, chunk by chunk, each chunk committed on its own; return the run.

    `chunk_size` members per chunk; with a `pace` the run gives way to requests while there
    are any (see Pace).

    The runner owns its transactions (it is the one service that commits). A run that
    finds the job's lock taken is recorded as `skipped`; a chunk that fails ends the run as
    `failed` with the error, the chunks before it staying committed; so does `should_stop`
    answering True between two chunks (a rerun finishes the rest). Raises NotFound for an
    unknown job.
    """
    job = JOBS.get(name)
    if job is None:
        raise NotFound(f"No job named {name!r}; jobs: {', '.join(JOBS)}")
    with advisory_lock(session, f"job:{name}") as held:
        if not held:
            return run_write(lambda s: _start(s, name, "skipped", trigger, now, False), session)
        lockable = session.get_bind().dialect.name == "postgresql"
        run_id = run_write(lambda s: _start(s, name, "running", trigger, now, lockable), session)["id"]
        totals: Counter = Counter()
        findings: list[dict] = []
        after: str | None = None
        try:
            while True:
                if should_stop is not None and should_stop():
                    raise InterruptedError("stopped between two chunks; a rerun finishes the rest")
                size, rest = chunk_size, 0.0
                if pace is not None and run_read(traffic, session):
                    size, rest = min(chunk_size, pace.chunk_size), pace.rest
                started = _monotonic()
                outcome = (run_write if job.writes else run_read)(
                    lambda s, after=after, size=size: _run_chunk(s, job, run_id, now, after, size, totals), session)
                if outcome is None:
                    break
                if rest:
                    _sleep(rest * (_monotonic() - started))
                after, result = outcome
                totals.update(result.counts)
                findings.extend(result.findings[:FINDINGS_KEPT - len(findings)])
        except Exception as err:
            log.exception("job %s failed after member %s", name, after)
            error = f"{type(err).__name__}: {err}"[:2000]
            return run_write(lambda s: _finish(s, run_id, "failed", totals, findings, error), session)
        run = run_write(lambda s: _finish(s, run_id, "succeeded", totals, findings, None), session)
        log.info("job %s as of %s: %s", name, isoformat(now), run["counts"])
        return run


def _run_chunk(session: Session, job: Job, run_id: str, now: datetime, after: str | None, size: int,
               totals: Counter) -> tuple[str, ChunkResult] | None:
    end = next_chunk_end(session, after, size)
    if end is None:
        return None
    result = job.chunk(session, get_program(session), now, after, end)
    if job.writes:
        # The run's figures move in the chunk's own transaction: they count committed work only.
        progress = totals.copy()
        progress.update(result.counts)
        session.execute(update(JobRun).where(JobRun.id == run_id).values(counts=dict(progress)))
    return end, result


def list_runs(session: Session, name: str, limit: int, cursor: str | None) -> Page:
    """Return a job's runs, newest first."""
    if name not in JOBS:
        raise NotFound(f"No job named {name!r}")
    query = select(JobRun).where(JobRun.name == name).order_by(JobRun.id.desc()).limit(limit + 1)
    if cursor:
        query = query.where(JobRun.id < decode_cursor(cursor))
    runs = session.execute(query).scalars().all()
    return Page([run_view(r) for r in runs[:limit]], encode_cursor(runs[limit - 1].id) if len(runs) > limit else None)


# The four jobs as service functions taking `now` (the scheduler, the CLI and the API call these).

def activate_pending(session: Session, now: datetime, **options) -> dict:
    """Make pending points whose time has come available."""
    return run_job(session, "activate-pending", now, **options)


def expire_points(session: Session, now: datetime, **options) -> dict:
    """Expire points past their expiry (fixed) or of inactive members (inactivity)."""
    return run_job(session, "expire-points", now, **options)


def review_tiers(session: Session, now: datetime, **options) -> dict:
    """Move every member to the tier its qualifying figure reaches; expire stale referrals."""
    return run_job(session, "review-tiers", now, **options)


def reconcile_balances(session: Session, now: datetime, **options) -> dict:
    """Check every member's balance against its ledger and lots; report, change nothing."""
    return run_job(session, "reconcile-balances", now, **options)
