"""The scheduler process (`loyalty scheduler`): runs the jobs on their cron schedules.

One scheduler is active per database: it holds a PostgreSQL session advisory lock for its
whole life, and a second one waits, idle, until the first dies and the lock frees up. Web
workers never start a scheduler. APScheduler 3's BlockingScheduler runs the jobs with fixed
ids, `coalesce` (missed runs are done once), `max_instances=1` and a generous misfire grace
time; each job also takes its own advisory lock (see services.run_job), so a run started by
hand at the same moment is skipped rather than doubled. SIGTERM or SIGINT stops it cleanly:
no new run starts, a running job stops at its next chunk boundary, the lock is released.
"""

import logging
import signal
import threading
from datetime import UTC

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from flask import Flask
from sqlalchemy import text

from ..extensions import db
from ..timeutil import utcnow
from .services import JOBS, Pace, lock_key, run_job

log = logging.getLogger(__name__)

SCHEDULER_LOCK = "scheduler"
# config key of each job's schedule
SCHEDULE_KEYS = {name: f"LOYALTY_SCHEDULE_{name.upper().replace('-', '_')}" for name in JOBS}


def parse_schedule(expression: str) -> CronTrigger | None:
    """Return the UTC cron trigger of a schedule: 5 crontab fields, or 6 with seconds first.

    An empty value or `off` disables the job. Raises ValueError for anything else.
    """
    expression = (expression or "").strip()
    if not expression or expression.lower() == "off":
        return None
    fields = expression.split()
    if len(fields) == 5:
        return CronTrigger.from_crontab(expression, timezone=UTC)
    if len(fields) == 6:
        second, minute, hour, day, month, day_of_week = fields
        return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month, day_of_week=day_of_week,
                           timezone=UTC)
    raise ValueError(f"a schedule has 5 cron fields (or 6 with seconds first), not {expression!r}")


class Scheduler:
    """The scheduler process: wait for the scheduler lock, then run the jobs on schedule."""

    def __init__(self, app: Flask):
        self.app = app
        self.config = app.config
        self.stopping = threading.Event()
        self.exit_code = 0
        self.scheduler: BlockingScheduler | None = None
        self._lock_connection = None
        self._running = 0
        self._idle = threading.Condition()

    # signals -----------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        log.info("scheduler: %s received, stopping", signal.Signals(signum).name)
        self.stop()

    def stop(self) -> None:
        """Start no new run; let a running job stop at its next chunk; end `run`."""
        self.stopping.set()
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    # the lock ----------------------------------------------------------------------------

    def _acquire_lock(self) -> bool:
        """Wait until this process holds the scheduler lock; False when told to stop first."""
        with self.app.app_context():
            engine = db.engine
        if engine.dialect.name != "postgresql":
            log.warning("scheduler: %s has no advisory locks; run a single scheduler", engine.dialect.name)
            return not self.stopping.is_set()
        poll = float(self.config["LOYALTY_SCHEDULER_LOCK_POLL"])
        connection = engine.connect()
        waited = False
        while not self.stopping.is_set():
            held = connection.execute(text("SELECT pg_try_advisory_lock(:key)"),
                                      {"key": lock_key(SCHEDULER_LOCK)}).scalar()
            connection.commit()
            if held:
                self._lock_connection = connection
                return True
            if not waited:
                log.info("scheduler: another scheduler holds the lock; waiting (idle) until it stops")
                waited = True
            self.stopping.wait(poll)
        connection.close()
        return False

    def _watch(self) -> None:
        """Stop when told to, or when the lock's connection is gone (another scheduler may hold it now)."""
        if self.stopping.is_set():
            self.stop()
        if self._lock_connection is None:
            return
        try:
            self._lock_connection.execute(text("SELECT 1")).scalar()
            self._lock_connection.commit()
        except Exception:
            log.exception("scheduler: lost the connection holding the scheduler lock; stopping")
            self.exit_code = 1
            self.stop()

    def _release_lock(self) -> None:
        if self._lock_connection is None:
            return
        try:
            self._lock_connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": lock_key(SCHEDULER_LOCK)})
            self._lock_connection.commit()
        except Exception:
            log.warning("scheduler: could not release the lock (its connection is gone)")
        finally:
            self._lock_connection.close()
            self._lock_connection = None

    # the jobs ----------------------------------------------------------------------------

    def run_scheduled(self, name: str) -> None:
        """Run one job as the scheduler (called by APScheduler in its thread pool)."""
        if self.stopping.is_set():
            return
        with self._idle:
            self._running += 1
        try:
            with self.app.app_context():
                run = run_job(db.session, name, utcnow(), trigger="scheduler", should_stop=self.stopping.is_set,
                              pace=Pace.from_config(self.app.config))
            log.info("scheduler: job %s %s %s", name, run["status"], run["counts"])
        except Exception:
            log.exception("scheduler: job %s could not run", name)
        finally:
            with self._idle:
                self._running -= 1
                self._idle.notify_all()

    def build(self) -> BlockingScheduler:
        """Return the APScheduler with every scheduled job (fixed ids: the job names)."""
        scheduler = BlockingScheduler(timezone=UTC, job_defaults={
            "coalesce": True, "max_instances": 1,
            "misfire_grace_time": int(self.config["LOYALTY_SCHEDULER_MISFIRE_GRACE"])})
        for name, key in SCHEDULE_KEYS.items():
            trigger = parse_schedule(self.config[key])
            if trigger is None:
                log.info("scheduler: %s is off", name)
                continue
            scheduler.add_job(self.run_scheduled, trigger, args=[name], id=name, name=name, replace_existing=True)
            log.info("scheduler: %s on %s", name, self.config[key])
        scheduler.add_job(self._watch, "interval", seconds=float(self.config["LOYALTY_SCHEDULER_LOCK_POLL"]),
                          id="scheduler-watch", name="scheduler-watch")
        return scheduler

    def run(self) -> int:
        """Hold the lock and run the jobs until stopped; return the process exit code."""
        for key in SCHEDULE_KEYS.values():
            parse_schedule(self.config[key])  # refuse a bad schedule before waiting for the lock
        if not self._acquire_lock():
            return self.exit_code
        try:
            log.info("scheduler: holding the scheduler lock; starting")
            self.scheduler = self.build()
            if not self.stopping.is_set():
                self.scheduler.start()
            with self._idle:
                self._idle.wait_for(lambda: self._running == 0)
        finally:
            self._release_lock()
            log.info("scheduler: stopped")
        return self.exit_code
