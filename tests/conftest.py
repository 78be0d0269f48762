"""Test harness: a schema built by the migrations, and a rolled-back savepoint per test.

The suite runs on SQLite by default and on PostgreSQL when LOYALTY_TEST_DATABASE_URL names
one (`postgresql+psycopg://…`). Tests marked `postgres` run only there; with
LOYALTY_REQUIRE_POSTGRES=1 (CI) a run without PostgreSQL is an error, never a skip.
"""

import os
from datetime import UTC, datetime

import pytest
from flask_migrate import upgrade
from hypothesis import settings
from sqlalchemy import create_engine, text

from loyalty_api import create_app
from loyalty_api.auth.services import create_api_key
from loyalty_api.extensions import Session, db
from loyalty_api.timeutil import freeze

from .helpers import ApiClient

# CI explores the same examples on every run, so that a red build is reproducible and a
# green one is not luck; developers' runs (and `make fuzz`) draw new examples each time.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

DATABASE_URL = os.environ.get("LOYALTY_TEST_DATABASE_URL", "")
IS_POSTGRES = DATABASE_URL.startswith("postgresql")
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def pytest_configure(config):
    config.addinivalue_line("markers", "postgres: needs PostgreSQL (real concurrency)")


def pytest_collection_modifyitems(config, items):
    if IS_POSTGRES:
        return
    if os.environ.get("LOYALTY_REQUIRE_POSTGRES") == "1":
        raise pytest.UsageError("LOYALTY_REQUIRE_POSTGRES=1 but LOYALTY_TEST_DATABASE_URL is not PostgreSQL")
    # Real-concurrency tests mean nothing on SQLite's single writer: they belong to the
    # PostgreSQL run (which CI requires), so the SQLite run deselects them openly.
    postgres_only = [item for item in items if "postgres" in item.keywords]
    if postgres_only:
        config.hook.pytest_deselected(items=postgres_only)
        items[:] = [item for item in items if "postgres" not in item.keywords]


def _reset_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    if IS_POSTGRES:
        _reset_postgres(DATABASE_URL)
        return DATABASE_URL
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"


@pytest.fixture(scope="session")
def app(database_url):
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "TESTING": True,
                      "SECRET_KEY": "test-secret-key-that-is-long-enough-for-hs256"})
    with app.app_context():
        upgrade()
        db.session.remove()
    return app


@pytest.fixture
def session(app):
    """A session whose commits only release savepoints of a transaction rolled back at the end."""
    with app.app_context():
        connection = db.engine.connect()
        outer = connection.begin()
        # The service's own Session class: Flask-SQLAlchemy's would ignore `bind` and commit for real.
        scoped = db._make_scoped_session({"class_": Session, "bind": connection,
                                          "join_transaction_mode": "create_savepoint"})
        original, db.session = db.session, scoped
        freeze(NOW)
        try:
            yield scoped()
        finally:
            freeze(None)
            scoped.remove()
            db.session = original
            outer.rollback()
            connection.close()


@pytest.fixture
def keys(session):
    """An API key per role."""
    created = {role: create_api_key(session, role, NOW) for role in ("pos", "app", "marketer", "admin")}
    session.commit()
    return created


@pytest.fixture
def api(app, session, keys):
    """An HTTP client with the admin key; `api.as_role("pos")` switches credentials."""
    return ApiClient(app.test_client(), keys, "admin")


def pytest_terminal_summary(terminalreporter):
    """Report how many cases the API fuzzing sent (RELIABILITY.md records the figure)."""
    import sys

    fuzz = sys.modules.get("tests.test_fuzz_api")
    if fuzz is not None and fuzz.CASES:
        statuses = ", ".join(f"{k // 100}xx: {v}" for k, v in sorted(fuzz.STATUSES.items()))
        terminalreporter.write_line(f"API fuzzing: {sum(fuzz.CASES.values())} cases over {len(fuzz.CASES)} "
                                    f"operations ({statuses}); {fuzz.EXAMPLES} examples per phase")
