"""Settings from the environment."""

import os
from pathlib import Path

INSTANCE_DIR = Path(os.environ.get("LOYALTY_INSTANCE_DIR", Path.cwd() / "instance"))


def default_database_url() -> str:
    """Return the embedded SQLite database under instance/."""
    return f"sqlite:///{INSTANCE_DIR / 'loyalty.db'}"


def load_config(overrides: dict | None = None) -> dict:
    """Read the service settings from the environment; `overrides` win (tests use them)."""
    env = os.environ
    config = {
        "SQLALCHEMY_DATABASE_URI": env.get("LOYALTY_DATABASE_URL") or default_database_url(),
        "SECRET_KEY": env.get("LOYALTY_SECRET_KEY") or "",
        "STRIPE_WEBHOOK_SECRET": env.get("STRIPE_WEBHOOK_SECRET", ""),
        "STRIPE_API_KEY": env.get("STRIPE_API_KEY", ""),
        # Bodies above this are refused with 413 before any parsing (a batch of 1,000
        # purchases with items fits comfortably).
        "MAX_CONTENT_LENGTH": int(env.get("LOYALTY_MAX_BODY_BYTES", 8 * 1024 * 1024)),
        "LOYALTY_POOL_SIZE": int(env.get("LOYALTY_POOL_SIZE", 10)),
        # A pooled connection idle longer than this is pinged before use (PostgreSQL).
        "LOYALTY_POOL_PING_IDLE": float(env.get("LOYALTY_POOL_PING_IDLE", 10)),
        # Single purchases arriving while a worker's previous purchase transaction is in flight
        # go together in the next one, up to this many (1: each alone). See GroupCommit.
        "LOYALTY_GROUP_COMMIT_MAX": int(env.get("LOYALTY_GROUP_COMMIT_MAX", 64)),
        # Of a web worker's threads (`loyalty serve --threads`), how many run requests at once;
        # the others wait for a slot, or for their purchase's group. See slots.RequestSlots.
        "LOYALTY_RUNNING_REQUESTS": int(env.get("LOYALTY_RUNNING_REQUESTS", 2)),
        # What this process is ("web", "jobs", "scheduler", "cli"): PostgreSQL sees it as the
        # connections' application_name, "loyalty <process>", unless the URL sets one.
        "LOYALTY_PROCESS": "web",
        # Whether the application carries the migrations (Flask-Migrate, Alembic) for `loyalty db`
        # and the tests; the server's web workers leave them out, ~11 MB less in each.
        "LOYALTY_MIGRATIONS": True,
        # Jobs run by `loyalty jobs run` and the scheduler give way to requests: while another
        # application's session is busy, chunks of this many members, each followed by a rest
        # this many times as long as the chunk took (0: no pacing). See jobs.services.Pace.
        "LOYALTY_JOBS_PACE_CHUNK_SIZE": int(env.get("LOYALTY_JOBS_PACE_CHUNK_SIZE", 100)),
        "LOYALTY_JOBS_PACE_REST": float(env.get("LOYALTY_JOBS_PACE_REST", 1)),
        "LOYALTY_MEMBER_TOKEN_TTL": int(env.get("LOYALTY_MEMBER_TOKEN_TTL", 900)),
        # The scheduler process (`loyalty scheduler`): a cron schedule per job, in UTC (5 fields,
        # or 6 with seconds first; empty or "off" disables the job).
        "LOYALTY_SCHEDULE_ACTIVATE_PENDING": env.get("LOYALTY_SCHEDULE_ACTIVATE_PENDING", "*/15 * * * *"),
        "LOYALTY_SCHEDULE_EXPIRE_POINTS": env.get("LOYALTY_SCHEDULE_EXPIRE_POINTS", "30 0 * * *"),
        "LOYALTY_SCHEDULE_REVIEW_TIERS": env.get("LOYALTY_SCHEDULE_REVIEW_TIERS", "0 2 * * *"),
        "LOYALTY_SCHEDULE_RECONCILE_BALANCES": env.get("LOYALTY_SCHEDULE_RECONCILE_BALANCES", "0 4 * * *"),
        # A run missed by up to this many seconds (the scheduler was down) still runs, once.
        "LOYALTY_SCHEDULER_MISFIRE_GRACE": int(env.get("LOYALTY_SCHEDULER_MISFIRE_GRACE", 6 * 3600)),
        # How often a waiting scheduler tries the lock, and a running one checks it still holds it.
        "LOYALTY_SCHEDULER_LOCK_POLL": float(env.get("LOYALTY_SCHEDULER_LOCK_POLL", 10)),
        "API_TITLE": "Loyalty API",
        "API_VERSION": "v1",
        "OPENAPI_VERSION": "3.0.3",
        "OPENAPI_URL_PREFIX": "/",
        "OPENAPI_JSON_PATH": "openapi.json",
        "OPENAPI_SWAGGER_UI_PATH": "docs",
        "OPENAPI_SWAGGER_UI_URL": "https://cdn.jsdelivr.net/npm/swagger-ui-dist/",
        "JSON_SORT_KEYS": False,
        "API_SPEC_OPTIONS": {"security": [{"bearerAuth": []}]},
    }
    config.update(overrides or {})
    return config
