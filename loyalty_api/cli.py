"""The `loyalty` command."""

import copy
import ctypes
import gc
import os
import sys

import click

from .slots import RequestSlots
from .timeutil import utcnow


def _app(process: str = "cli", **settings):
    from . import create_app

    return create_app({"LOYALTY_PROCESS": process, **settings})


# Threads per web worker: the requests it holds at once, of which LOYALTY_RUNNING_REQUESTS
# run (slots.RequestSlots). Single purchases that arrive while a worker's previous purchase
# transaction is in flight wait in a thread each and go together in the next transaction
# (transactions.GroupCommit): the more threads, the larger those groups under load, and the
# less each purchase costs. On 2 cores with 32 tills posting, 16 threads gave groups of ~8
# and ~1,000 purchases/s where 4 gave groups of ~2 and ~690/s (bench/README.md).
DEFAULT_THREADS = 16


@click.group()
def main():
    """Loyalty rewards backend."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--workers", default=lambda: int(os.environ.get("LOYALTY_WORKERS", os.cpu_count() or 1) or 1),
              type=int, help="worker processes (default: one per core)")
@click.option("--threads", default=lambda: int(os.environ.get("LOYALTY_THREADS", DEFAULT_THREADS)), type=int,
              help="threads per worker")
@click.option("--server", type=click.Choice(["granian", "gunicorn"]),
              default=lambda: os.environ.get("LOYALTY_SERVER", "granian"), show_default="granian",
              help="the HTTP server")
def serve(host, port, workers, threads, server):
    """Serve the API (granian, or gunicorn) in worker processes of `--threads` threads each."""
    click.echo(f"Serving on http://{host}:{port} (docs at http://{host}:{port}/docs)", err=True)
    if server == "granian":
        _serve_granian(host, port, workers, threads)
    else:
        _serve_gunicorn(host, port, workers, threads)


def web_app():
    """The application as a web worker builds it (the servers' factory)."""
    from .balance_reads import BalanceReads
    from .purchase_posts import PurchasePosts

    _return_freed_memory()
    app = _app("web", LOYALTY_MIGRATIONS=False)
    PurchasePosts.install(app)
    BalanceReads.install(app)
    app.wsgi_app = RequestSlots(app.wsgi_app, app.config["LOYALTY_RUNNING_REQUESTS"])
    # What start-up built (the app, SQLAlchemy's and marshmallow's metadata, the modules)
    # lives as long as the worker: frozen, the cyclic collector stops walking it on every
    # full collection, which a batch of 1,000 purchases triggers several times (11 % of a
    # batch's server CPU) and which stalled a worker's requests for 15-40 ms. Garbage left
    # by start-up is collected first, or it would be kept for good.
    gc.collect()
    gc.freeze()
    return app


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _return_freed_memory() -> None:
    """Have glibc give freed memory back to the system instead of keeping it.

    A batch of 1,000 purchases allocates tens of megabytes for a moment. glibc then raises its
    mmap threshold to the largest block freed so far (up to 32 MB), after which blocks that size
    come from the heap, and keeps up to twice that free at the heap's top: a worker stayed ~9 MB
    larger after a dozen batches. Fixed thresholds turn that adjustment off. Elsewhere than glibc
    there is no mallopt and nothing to do.
    """
    if not sys.platform.startswith("linux"):
        return
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
        mallopt(_M_TRIM_THRESHOLD, 256 * 1024)


def _serve_granian(host: str, port: int, workers: int, threads: int) -> None:
    # granian parses HTTP and manages connections in Rust: ~0.2 ms of CPU less per request than
    # gunicorn's Python HTTP stack (bench/README.md). WSGI calls run on `threads` blocking
    # threads per worker, as gunicorn's gthread does. granian copies the process environment
    # (secrets included) into every request's WSGI environ: nothing here logs or returns it.
    from granian.constants import Interfaces
    from granian.server import Server

    access_log = os.environ.get("LOYALTY_ACCESS_LOG")
    Server(
        "loyalty_api.cli:web_app", factory=True, interface=Interfaces.WSGI, address=host, port=port,
        workers=workers, blocking_threads=threads,
        log_access=bool(access_log), log_dictconfig=_granian_logging(access_log) if access_log else None,
        respawn_failed_workers=True, workers_kill_timeout=10,
    ).serve()


def _granian_logging(access_log: str) -> dict:
    """granian's logging with the access log going where LOYALTY_ACCESS_LOG says: a file, or
    standard output for "-" (as gunicorn's accesslog setting)."""
    from granian.log import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    if access_log != "-":
        config["handlers"]["access"] = {"formatter": "access", "class": "logging.FileHandler",
                                        "filename": access_log}
    return config


def _serve_gunicorn(host: str, port: int, workers: int, threads: int) -> None:
    from gunicorn.app.base import BaseApplication

    class Gunicorn(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set("worker_class", "gthread" if threads > 1 else "sync")
            self.cfg.set("accesslog", os.environ.get("LOYALTY_ACCESS_LOG") or None)
            self.cfg.set("graceful_timeout", 10)

        def load(self):
            return web_app()

    Gunicorn().run()


AUTOGROUP = "/proc/self/autogroup"


def _yield_cpu_to_requests() -> None:
    """Lower this process's CPU priority: jobs may take longer, requests beside them may not.

    LOYALTY_JOBS_NICE (default 10; 0 keeps the priority) is added to the process's niceness.
    On Linux with autogrouping (most distributions' default) the CPU is shared evenly between
    sessions first, and a niceness ranks a process only within its own session: a job that
    runs in a session of its own (a systemd service, `setsid loyalty jobs run …`) would still
    take as much CPU as the web server's session. So a session leader gives its session the
    same niceness. (Where a cgroup CPU controller places the process, autogrouping does not
    apply: give the job's unit a lower CPUWeight instead.)
    """
    increment = int(os.environ.get("LOYALTY_JOBS_NICE", 10))
    if increment <= 0 or not hasattr(os, "nice"):
        return
    niceness = os.nice(increment)
    if os.getsid(0) == os.getpid():
        try:
            with open(AUTOGROUP, "w") as autogroup:
                autogroup.write(str(niceness))
        except OSError:
            pass  # no autogrouping: the process's own niceness is the whole of it


@main.group()
def db():
    """Database schema."""


@db.command()
@click.argument("revision", default="head")
def upgrade(revision):
    """Apply the migrations up to REVISION (default: head)."""
    from flask_migrate import upgrade as alembic_upgrade

    app = _app()
    with app.app_context():
        alembic_upgrade(revision=revision)


@db.command()
@click.argument("revision")
def downgrade(revision):
    """Revert the migrations down to REVISION."""
    from flask_migrate import downgrade as alembic_downgrade

    app = _app()
    with app.app_context():
        alembic_downgrade(revision=revision)


@main.group()
def keys():
    """API keys."""


@keys.command("create")
@click.option("--role", required=True, type=click.Choice(["pos", "app", "marketer", "admin"]))
@click.option("--name", default=None, help="a label for the key")
def create_key(role, name):
    """Create an API key and print it (alone on stdout); it is shown only this once."""
    from .auth.services import create_api_key
    from .transactions import run_write

    app = _app()
    with app.app_context():
        key = run_write(lambda session: create_api_key(session, role, utcnow(), name))
    click.echo(key)


@main.group()
def jobs():
    """Periodic jobs."""


@jobs.command("run")
@click.argument("name")
@click.option("--chunk-size", default=None, type=click.IntRange(1, 100_000),
              help="members per chunk (each chunk is its own transaction); beside requests the pace's")
def run_job_command(name, chunk_size):
    """Run job NAME now (activate-pending, expire-points, review-tiers, reconcile-balances); print its run."""
    import json

    from .extensions import db as database
    from .jobs.services import CHUNK_SIZE, JOBS, Pace, run_job
    from .timeutil import isoformat

    if name not in JOBS:
        raise click.BadParameter(f"unknown job; one of: {', '.join(JOBS)}", param_hint="NAME")
    _yield_cpu_to_requests()
    app = _app("jobs")
    with app.app_context():
        run = run_job(database.session, name, utcnow(), trigger="cli", chunk_size=chunk_size or CHUNK_SIZE,
                      pace=Pace.from_config(app.config))
    click.echo(json.dumps(run, default=lambda value: isoformat(value), indent=2))
    if run["status"] == "failed":
        sys.exit(1)


@main.command()
def scheduler():
    """Run the jobs on their schedules (LOYALTY_SCHEDULE_*) until SIGTERM; one active per database."""
    from .jobs.scheduler import Scheduler

    _yield_cpu_to_requests()
    process = Scheduler(_app("scheduler"))
    process.install_signal_handlers()
    sys.exit(process.run())


@keys.command("revoke")
@click.argument("prefix")
def revoke_key(prefix):
    """Revoke the key whose public prefix (the part after `lk_`) is PREFIX."""
    from .auth.services import revoke_api_key
    from .transactions import run_write

    app = _app()
    with app.app_context():
        run_write(lambda session: revoke_api_key(session, prefix, utcnow()))
    click.echo(f"revoked {prefix}", err=True)


@main.command()
def demo():
    """Load a demo program (rules, tiers, members) into an empty database; print an admin key."""
    from .auth.services import create_api_key
    from .demo import load_demo
    from .transactions import run_write

    app = _app()
    with app.app_context():
        now = utcnow()
        loaded = run_write(lambda session: load_demo(session, now))
        key = run_write(lambda session: create_api_key(session, "admin", now, "demo admin"))
    click.echo("Demo program loaded." if loaded else "The database already holds a program; left as it is.",
               err=True)
    click.echo(key)


if __name__ == "__main__":
    sys.exit(main())
