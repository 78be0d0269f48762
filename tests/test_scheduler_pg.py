"""Two `loyalty scheduler` processes against one PostgreSQL: each scheduled job runs once.

Real processes and real commits, in a database of their own (`<test database>_scheduler`),
created here and dropped at the end. The schedulers are told (LOYALTY_SCHEDULE_*, cron with
seconds) to run all four jobs at one moment a few seconds ahead; the test waits on their log
lines, never on the clock.
"""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from loyalty_api.jobs.services import JOBS

from .conftest import DATABASE_URL

pytestmark = pytest.mark.postgres

DEADLINE = 90  # seconds any one expected log line may take, at most


def _libpq(url: str, **overrides) -> dict:
    parsed = make_url(url)
    params = {"host": parsed.host or "127.0.0.1", "port": parsed.port or 5432, "user": parsed.username or "postgres",
              "password": parsed.password, "dbname": parsed.database, **overrides}
    return {k: v for k, v in params.items() if v is not None}


@pytest.fixture
def scheduler_database():
    """A fresh database for the schedulers, migrated with `loyalty db upgrade`; dropped afterwards."""
    name = f"{make_url(DATABASE_URL).database}_scheduler"
    url = make_url(DATABASE_URL).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(**_libpq(DATABASE_URL, dbname="postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    env = {**os.environ, "LOYALTY_DATABASE_URL": url, "LOYALTY_SECRET_KEY": "scheduler-test-secret"}
    done = subprocess.run(_loyalty() + ["db", "upgrade"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    try:
        yield url, env
    finally:
        with psycopg.connect(**_libpq(DATABASE_URL, dbname="postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _loyalty() -> list[str]:
    script = Path(sys.executable).parent / "loyalty"
    return [str(script)] if script.exists() else [sys.executable, "-m", "loyalty_api.cli"]


class Process:
    """A `loyalty scheduler` child whose log lines arrive on a queue."""

    def __init__(self, env: dict):
        self.popen = subprocess.Popen(_loyalty() + ["scheduler"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.popen.stderr:
            self.lines.put(line.rstrip())
        self.lines.put(None)

    def wait_for(self, pattern: str) -> re.Match:
        """Return the first next log line matching `pattern`; fail after DEADLINE seconds or at exit."""
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no log line matched {pattern!r} in time:\n" + "\n".join(self.log[-30:]))
            if line is None:
                pytest.fail(f"the scheduler exited before logging {pattern!r}:\n" + "\n".join(self.log[-30:]))
            self.log.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def terminate(self) -> int:
        os.killpg(self.popen.pid, signal.SIGTERM)
        return self.popen.wait(DEADLINE)

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)


def _runs(url: str) -> list[tuple]:
    with psycopg.connect(**_libpq(url)) as conn:
        return conn.execute("SELECT name, status, trigger, runner FROM job_runs ORDER BY name").fetchall()


def test_two_schedulers_run_each_job_once(scheduler_database):
    url, env = scheduler_database
    fire = (datetime.now(UTC) + timedelta(seconds=15)).replace(microsecond=0)
    schedule = f"{fire.second} {fire.minute} {fire.hour} {fire.day} {fire.month} *"
    env = {**env, "LOYALTY_SCHEDULER_LOCK_POLL": "0.5",
           **{f"LOYALTY_SCHEDULE_{name.upper().replace('-', '_')}": schedule for name in JOBS}}
    first = second = None
    try:
        first = Process(env)
        first.wait_for("holding the scheduler lock")
        second = Process(env)
        second.wait_for("another scheduler holds the lock; waiting")
        finished = {first.wait_for(r"scheduler: job (\S+) succeeded").group(1) for _ in JOBS}
        assert finished == set(JOBS)
        runs = _runs(url)
        assert sorted(name for name, *_ in runs) == sorted(JOBS)
        assert {(status, trigger, runner.rsplit(":", 1)[1]) for _, status, trigger, runner in runs} == {
            ("succeeded", "scheduler", str(first.popen.pid))}
        assert second.popen.poll() is None  # idle, not gone
        # The first stops cleanly on SIGTERM; the second takes over the lock, runs nothing already run.
        assert first.terminate() == 0
        second.wait_for("holding the scheduler lock")
        assert second.terminate() == 0
        assert len(_runs(url)) == len(JOBS)
    finally:
        for process in (first, second):
            if process is not None:
                process.kill()
