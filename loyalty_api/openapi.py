"""Render the OpenAPI document that flask-smorest builds from the schemas."""

import yaml
from flask import current_app


def render_spec() -> str:
    spec = current_app.extensions["flask-smorest"]["apis"][""]["ext_obj"].spec
    return yaml.safe_dump(spec.to_dict(), sort_keys=True, allow_unicode=True)
