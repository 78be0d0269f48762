"""The migrations and the models agree, migrations go both ways, and openapi.yaml is current."""

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade

from loyalty_api import create_app
from loyalty_api.extensions import db
from loyalty_api.openapi import render_spec

ROOT = Path(__file__).resolve().parents[1]


def test_models_and_migrations_do_not_drift(app, session):
    """Everything the models declare is what `upgrade head` built."""
    context = MigrationContext.configure(session.connection(), opts={"compare_type": True})
    diffs = compare_metadata(context, db.metadata)
    assert diffs == [], "models and migrations differ; write a migration:\n" + "\n".join(map(str, diffs))


def test_migrations_downgrade_to_base_and_upgrade_again(tmp_path):
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'roundtrip.db'}", "SECRET_KEY": "x"})
    with app.app_context():
        upgrade()
        downgrade(revision="base")
        assert db.inspect(db.engine).get_table_names() == ["alembic_version"]
        upgrade()
        assert "ledger_entries" in db.inspect(db.engine).get_table_names()
        db.engine.dispose()


def test_openapi_yaml_is_current(app):
    committed = (ROOT / "openapi.yaml").read_text()
    assert render_spec(app) == committed, "openapi.yaml is stale: run `make openapi`"


def test_openapi_yaml_is_served(api):
    response = api.get("/openapi.yaml")
    assert response.status_code == 200
    assert response.get_data(as_text=True) == (ROOT / "openapi.yaml").read_text()
