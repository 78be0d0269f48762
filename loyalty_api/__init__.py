"""The loyalty service: create_app builds the Flask application."""

import logging
import secrets
from pathlib import Path

from flask import Flask

from .config import INSTANCE_DIR, load_config
from .errors import register_error_handlers
from .extensions import api, db, migrate
from .transactions import configure_engine

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
    app.config.update(load_config(config))
    app.config["SECRET_KEY"] = _secret_key(app.config)
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    if uri.startswith("sqlite:///") and ":memory:" not in uri:
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if uri.startswith("postgresql"):
        app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {
            "pool_pre_ping": True,
            "pool_size": app.config["LOYALTY_POOL_SIZE"],
            "max_overflow": 0,
            "pool_timeout": 10,
        })
    logging.basicConfig(level=logging.INFO)

    db.init_app(app)
    migrate.init_app(app, db, directory=MIGRATIONS_DIR, render_as_batch=True, compare_type=True)
    with app.app_context():
        configure_engine(db.engine)

    api.init_app(app)
    # After flask-smorest, whose own HTTP error handler this replaces with problem+json.
    register_error_handlers(app)
    api.spec.components.security_scheme(
        "bearerAuth", {"type": "http", "scheme": "bearer", "description": "API key or member token"})
    _register_blueprints()
    _add_security_headers(app)
    return app


def _register_blueprints() -> None:
    from .ledger.routes import blp as ledger_blp
    from .members.routes import blp as members_blp
    from .ops.routes import blp as ops_blp
    from .program.routes import blp as program_blp
    from .purchases.routes import blp as purchases_blp
    from .rules_admin.routes import blp as rules_blp

    for blueprint in (ops_blp, program_blp, members_blp, purchases_blp, ledger_blp, rules_blp):
        api.register_blueprint(blueprint)


def _add_security_headers(app: Flask) -> None:
    @app.after_request
    def set_headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        return response
