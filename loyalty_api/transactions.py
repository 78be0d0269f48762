"""Transaction boundaries: the request, CLI command or job commits; services only flush.

A write runs in one transaction that is committed at the end or rolled back whole, so a
failed request leaves no trace. Serialization failures and deadlocks are retried a few
times with the whole unit of work, so they never surface to clients.
"""

import contextvars
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from flask import current_app
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, scoped_session

from .extensions import db
from .slots import slot_given_up

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

# Set while a write unit of work runs, so that SQLite begins it with BEGIN IMMEDIATE and
# takes the write lock up front instead of failing on a lock upgrade halfway through.
_write_intent: contextvars.ContextVar[bool] = contextvars.ContextVar("write_intent", default=False)

def writing() -> bool:
    """Whether the current code runs inside a write unit of work (run_write)."""
    return _write_intent.get()


# app.extensions' key of the engine of one-statement reads (PostgreSQL only, see run_statement).
STATEMENT_ENGINE = "loyalty_statement_engine"

MAX_ATTEMPTS = 5
# serialization_failure, deadlock_detected, and unique_violation: two requests raced to
# insert the same client id; the retry finds the winner's row and replays or refuses.
_RETRYABLE_SQLSTATES = {"40001", "40P01", "23505"}


def configure_engine(engine: Engine) -> None:
    """Set SQLite up for concurrent use: WAL, a busy timeout, foreign keys, explicit BEGIN."""
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy emit BEGIN itself (pysqlite's own handling defers it).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE" if _write_intent.get() else "BEGIN")


def _is_retryable(err: DBAPIError) -> bool:
    sqlstate = getattr(err.orig, "sqlstate", None)
    if sqlstate in _RETRYABLE_SQLSTATES:
        return True
    # SQLite reports lock contention past the busy timeout as "database is locked".
    return isinstance(err, OperationalError) and "database is locked" in str(err.orig)


def run_write(unit_of_work: Callable[[Session], T], session: Session | None = None) -> T:
    """Run `unit_of_work(session)` in one write transaction and commit it; retry on conflicts."""
    session = session or db.session
    token = _write_intent.set(True)
    try:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            # A read earlier in the request may have begun a deferred transaction; end it
            # so the write transaction starts fresh (and on SQLite, takes the lock).
            session.rollback()
            try:
                result = unit_of_work(session)
                session.commit()
                return result
            except DBAPIError as err:
                session.rollback()
                if attempt == MAX_ATTEMPTS or not _is_retryable(err) or err.connection_invalidated:
                    raise
                log.info("retrying a write after %s (attempt %d)", type(err.orig).__name__, attempt)
                time.sleep(random.uniform(0.005, 0.02) * attempt)
            except BaseException:
                session.rollback()
                raise
    finally:
        _write_intent.reset(token)
    raise AssertionError("unreachable")


def run_read(unit_of_work: Callable[[Session], T], session: Session | None = None) -> T:
    """Run a read-only unit of work and end its transaction.

    A unit that never used the request's session (an API key found in the cache) leaves no
    session to end: none is made for it.
    """
    session = session or db.session
    try:
        return unit_of_work(session)
    finally:
        if not isinstance(session, scoped_session) or session.registry.has():
            session.rollback()


def run_statement(read: Callable[[Connection], T], session: Session | None = None) -> T:
    """Run a read made of one statement: `read(connection)`.

    One statement sees one snapshot by itself and needs no transaction. On PostgreSQL it runs
    on a connection of the application's statement engine, in autocommit mode: no BEGIN and
    ROLLBACK round trips; psycopg keeps the statement prepared (a ROLLBACK makes it forget
    every prepared statement), so PostgreSQL stops parsing and planning it on every read; and
    no ORM session to begin and end, nor a pooled connection to switch to autocommit and back
    (together half the client CPU of a balance read, bench/README.md). Inside a unit of work
    (a write, or a session already in a transaction or joined to a caller's connection: the
    tests' savepoints) the read runs in that transaction, after the session's pending changes;
    elsewhere (SQLite, in process) on the session's connection, as run_read does.
    """
    session = session or db.session
    if writing() or _in_transaction(session):
        session.flush()
        return read(session.connection())
    engine = current_app.extensions.get(STATEMENT_ENGINE)
    if engine is not None and _given_bind(session) in (None, db.engine):
        with engine.connect() as connection:
            return read(connection)
    return run_read(lambda unit_session: read(unit_session.connection()), session)


def _in_transaction(session: Session | scoped_session) -> bool:
    """Whether the session is in a transaction; a scoped session not made yet is not (and is
    not made by asking)."""
    if isinstance(session, scoped_session):
        if not session.registry.has():
            return False
        session = session.registry()
    return session.in_transaction()


def _given_bind(session: Session | scoped_session):
    """The bind the session was made with (the tests join a connection), without making it."""
    if isinstance(session, scoped_session):
        return session.session_factory.kw.get("bind")
    return session.bind


class GroupCommit(Generic[T, R]):
    """Concurrent requests of one kind share one write transaction (group commit).

    Point-of-sale systems post purchases in bursts, and most of a purchase's cost is fixed
    per transaction: reading the program, the rule set and the members, a dozen statements,
    a commit and its WAL flush. Applied together, a set of purchases shares nearly all of it
    (the batch endpoint does exactly that). Here a request that arrives while this worker's
    previous group is in flight waits for it, then goes with every request that queued
    meanwhile, in the next group: no request waits for a timer, a lone request runs at once,
    and under load each transaction carries what queued behind the last one.

    `run_group(items)` runs in the thread of the group's first request (its leader) and must
    return one result per item, as each would have been alone; the answers are handed out
    only after it returned, that is after the commit. When it raises instead (an error, not
    the refusal of an entry), every request of the group runs again alone, so one request's
    failure never becomes another's.
    """

    def __init__(self, run_group: Callable[[list[T]], list[R]], max_size: Callable[[], int]):
        self._run_group = run_group
        self._max_size = max_size
        self._lock = threading.Lock()
        self._queue: list[_Ticket] = []
        self._busy = False

    def submit(self, item: T) -> R:
        """Return `item`'s result once the group carrying it has committed."""
        ticket = _Ticket(item)
        with self._lock:
            self._queue.append(ticket)
            leading, self._busy = not self._busy, True
        if not leading:
            with slot_given_up():  # parked: the worker's other requests run meanwhile
                ticket.ready.wait()
            if ticket.role == _Ticket.DONE:
                return ticket.result
            if ticket.role == _Ticket.ALONE:
                return self._run_group([item])[0]
        return self._lead()

    def _lead(self) -> R:
        # Whatever run_group does, every follower is answered or sent alone and the lead passes
        # on (or the group commit goes idle): a request left waiting would wait forever.
        size = self._group_size()
        with self._lock:
            group, self._queue = self._queue[:size], self._queue[size:]
        try:
            results = self._run_group([ticket.item for ticket in group])
            if len(results) != len(group):
                raise RuntimeError(f"a group of {len(group)} gave {len(results)} results")
        except Exception:
            self._pass_on(group[1:], _Ticket.ALONE, [None] * (len(group) - 1))
            if len(group) == 1:
                raise
            return self._run_group([group[0].item])[0]
        except BaseException:  # the thread is being stopped: no rerun, the others go alone
            self._pass_on(group[1:], _Ticket.ALONE, [None] * (len(group) - 1))
            raise
        self._pass_on(group[1:], _Ticket.DONE, results[1:])
        return results[0]

    def _group_size(self) -> int:
        try:
            return max(1, int(self._max_size()))
        except Exception:  # a broken setting must not strand the queue: one request at a time
            log.exception("group commit: no group size; running requests one by one")
            return 1

    def _pass_on(self, followers: list["_Ticket"], role: str, results: list) -> None:
        """Hand the followers their results (or send them alone), and the lead to the next in line."""
        with self._lock:
            if self._queue:
                self._queue[0].role = _Ticket.LEAD
                self._queue[0].ready.set()
            else:
                self._busy = False
        for ticket, result in zip(followers, results, strict=True):
            ticket.role, ticket.result = role, result
            ticket.ready.set()


class _Ticket:
    """One request waiting in a GroupCommit."""

    WAITING, LEAD, DONE, ALONE = "waiting", "lead", "done", "alone"
    __slots__ = ("item", "ready", "result", "role")

    def __init__(self, item):
        self.item, self.ready, self.result, self.role = item, threading.Event(), None, self.WAITING
