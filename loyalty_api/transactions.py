"""Transaction boundaries: the request, CLI command or job commits; services only flush.

A write runs in one transaction that is committed at the end or rolled back whole, so a
failed request leaves no trace. Serialization failures and deadlocks are retried a few
times with the whole unit of work, so they never surface to clients.
"""

import contextvars
import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from .extensions import db

log = logging.getLogger(__name__)
T = TypeVar("T")

# Set while a write unit of work runs, so that SQLite begins it with BEGIN IMMEDIATE and
# takes the write lock up front instead of failing on a lock upgrade halfway through.
_write_intent: contextvars.ContextVar[bool] = contextvars.ContextVar("write_intent", default=False)

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
    """Run a read-only unit of work and end its transaction."""
    session = session or db.session
    try:
        return unit_of_work(session)
    finally:
        session.rollback()
