"""Render the OpenAPI document that flask-smorest builds from the schemas.

`python -m loyalty_api.openapi > openapi.yaml` regenerates the committed copy; a test
fails when that copy is stale.
"""

import sys

import yaml
from flask import Flask, current_app


def render_spec(app: Flask | None = None) -> str:
    app = app or current_app
    spec = app.extensions["flask-smorest"]["apis"][""]["ext_obj"].spec
    return yaml.safe_dump(spec.to_dict(), sort_keys=True, allow_unicode=True)


def main() -> None:
    from . import create_app

    # An in-memory database: rendering the spec touches no data.
    app = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://", "SECRET_KEY": "spec"})
    sys.stdout.write(render_spec(app))


if __name__ == "__main__":
    main()
