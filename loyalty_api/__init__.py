"""The loyalty service: create_app builds the Flask application."""

import logging
import secrets
import time
from pathlib import Path

from flask import Flask
from flask.sessions import SecureCookieSessionInterface
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DisconnectionError

from .config import INSTANCE_DIR, load_config
from .errors import NotFound, register_error_handlers
from .extensions import JSONProvider, LimitedBodyRequest, api, db, read_json, unstorable
from .transactions import STATEMENT_ENGINE, configure_engine

MIGRATIONS_DIR = str(Path(__file__).parent / "migrations")


def _secret_key(config: dict) -> str:
    """Return the configured secret, or one kept under instance/ for a local quick start."""
    if config.get("SECRET_KEY"):
        return config["SECRET_KEY"]
    path = INSTANCE_DIR / "secret_key"
    if not path.exists():
        INSTANCE_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def create_app(config: dict | None = None) -> Flask:
    """Build the application; `config` overrides settings read from the environment."""
    app = Flask(__name__, instance_path=str(INSTANCE_DIR))
    app.request_class = LimitedBodyRequest
    app.json = JSONProvider(app)
    app.config.update(load_config(config))
    app.config["SECRET_KEY"] = _secret_key(app.config)
    app.session_interface = _NoCookieSession()
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    if uri.startswith("sqlite:///") and ":memory:" not in uri:
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if uri.startswith("postgresql"):
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {
            # No pool_pre_ping: it pays a round trip on every checkout (two per request).
            # Connections idle for a while are pinged instead, see _ping_idle_connections.
            "pool_size": app.config["LOYALTY_POOL_SIZE"],
            "max_overflow": 0,
            "pool_timeout": 10,
        })
        app.config["SQLALCHEMY_ENGINE_OPTIONS"].setdefault("json_deserializer", read_json)
        if "application_name" not in make_url(uri).query:
            # Who is who in pg_stat_activity; a paced job tells requests from its own work by it.
            app.config["SQLALCHEMY_ENGINE_OPTIONS"].setdefault("connect_args", {}).setdefault(
                "application_name", f"loyalty {app.config['LOYALTY_PROCESS']}")
    logging.basicConfig(level=logging.INFO)

    db.init_app(app)
    if app.config["LOYALTY_MIGRATIONS"]:
        from flask_migrate import Migrate

        Migrate(app, db, directory=MIGRATIONS_DIR, render_as_batch=True, compare_type=True)
    with app.app_context():
        configure_engine(db.engine)
        engines = [db.engine]
        statement_engine = _statement_engine(uri, app.config["SQLALCHEMY_ENGINE_OPTIONS"])
        if statement_engine is not None:
            app.extensions[STATEMENT_ENGINE] = statement_engine
            engines.append(statement_engine)
        if uri.startswith("postgresql") and not app.config["SQLALCHEMY_ENGINE_OPTIONS"].get("pool_pre_ping"):
            for engine in engines:
                _ping_idle_connections(engine, app.config["LOYALTY_POOL_PING_IDLE"])

    api.init_app(app)
    # After flask-smorest, whose own HTTP error handler this replaces with problem+json.
    register_error_handlers(app)
    api.spec.components.security_scheme(
        "bearerAuth", {"type": "http", "scheme": "bearer", "description": "API key or member token"})
    _register_blueprints()
    _add_security_headers(app)
    _refuse_unstorable_path_values(app)
    return app


class _NoCookieSession(SecureCookieSessionInterface):
    """No cookie session: every request authenticates with its Authorization header.

    Flask would otherwise build a signing serializer and look for a session cookie on every
    request (4 % of a balance read's CPU). `flask.session` is a NullSession, which refuses writes.
    """

    def open_session(self, app, request):
        return self.make_null_session(app)


def _refuse_unstorable_path_values(app: Flask) -> None:
    @app.url_value_preprocessor
    def refuse(_endpoint, values):
        # No id can hold NUL or a lone surrogate; PostgreSQL would refuse the query itself.
        if values and any(isinstance(v, str) and unstorable(v) for v in values.values()):
            raise NotFound("No such resource")


def _statement_engine(uri: str, options: dict) -> Engine | None:
    """The engine of one-statement reads (`transactions.run_statement`), on PostgreSQL only.

    Its connections stay in autocommit mode (the main pool's would be switched there and back
    on every read) and are read-only: a statement that tried to write fails instead of
    committing. Engine options that would give it another pool or another way to connect
    (`pool`, `creator`) leave the application without one: its reads then go through the
    session, as on SQLite.
    """
    if not uri.startswith("postgresql") or "pool" in options or "creator" in options:
        return None
    # Autocommit is set once per connection; an isolation level among the engine's execution
    # options would be set again on every checkout. Nothing is left to roll back when a
    # connection returns to the pool: no reset.
    execution_options = {k: v for k, v in options.get("execution_options", {}).items() if k != "isolation_level"}
    engine = create_engine(uri, **{**options, "isolation_level": "AUTOCOMMIT", "pool_reset_on_return": None,
                                   "execution_options": execution_options})

    @event.listens_for(engine, "connect")
    def _read_only(dbapi_connection, _record):
        # A session setting, not a startup option: those would replace PGOPTIONS and a service
        # file's, and connection poolers refuse most of them. Behind a transaction-pooling
        # PgBouncer it may not follow the connection; the reads stay reads regardless. The
        # dialect's own listener has already put the connection in autocommit: nothing to commit.
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")

    return engine


def _ping_idle_connections(engine: Engine, idle_seconds: float) -> None:
    """Ping a pooled connection on checkout only when it sat idle longer than `idle_seconds`.

    A connection that broke while idle (a database restart, a firewall timeout) is replaced
    before a request sees it, as with pool_pre_ping, but busy connections skip the round trip.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection, record):
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection, record, _proxy):
        since = record.info.get("checked_in_at")
        if since is None or time.monotonic() - since <= idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as err:  # any failure: let the pool replace the connection
            raise DisconnectionError("the pooled connection is gone") from err


def _register_blueprints() -> None:
    from .auth.routes import blp as auth_blp
    from .integrations.stripe.routes import blp as stripe_blp
    from .jobs.routes import blp as jobs_blp
    from .ledger.routes import blp as ledger_blp
    from .members.routes import blp as members_blp
    from .ops.routes import blp as ops_blp
    from .program.routes import blp as program_blp
    from .purchases.routes import blp as purchases_blp
    from .redemptions.routes import blp as redemptions_blp
    from .referrals.routes import blp as referrals_blp
    from .rewards.routes import blp as rewards_blp
    from .rules_admin.routes import blp as rules_blp
    from .tiers.routes import blp as tiers_blp

    for blueprint in (ops_blp, program_blp, members_blp, purchases_blp, ledger_blp, rules_blp,
                      redemptions_blp, rewards_blp, auth_blp, stripe_blp, tiers_blp, referrals_blp, jobs_blp):
        api.register_blueprint(blueprint)


# Every response carries these unless its route set them otherwise.
SECURITY_HEADERS = (("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
                     ("Referrer-Policy", "no-referrer"), ("Cache-Control", "no-store"))


def _add_security_headers(app: Flask) -> None:
    @app.after_request
    def set_headers(response):
        headers = response.headers
        # One pass over the response's few headers, rather than a setdefault (a scan) for each.
        present = {name.lower() for name, _ in headers.items()}
        for name, value in SECURITY_HEADERS:
            if name.lower() not in present:
                headers.add(name, value)
        return response
