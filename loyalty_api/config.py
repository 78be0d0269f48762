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
        "LOYALTY_MEMBER_TOKEN_TTL": int(env.get("LOYALTY_MEMBER_TOKEN_TTL", 900)),
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
