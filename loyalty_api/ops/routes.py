"""Health, readiness and the OpenAPI document."""

from pathlib import Path

from flask import Response
from flask_smorest import Blueprint
from sqlalchemy import text

from ..errors import ServiceUnavailable
from ..extensions import db

blp = Blueprint("ops", __name__, description="Operations")
SPEC_FILE = Path(__file__).resolve().parents[2] / "openapi.yaml"


def _status_doc(value: str) -> dict:
    schema = {"type": "object", "additionalProperties": False, "required": ["status"],
              "properties": {"status": {"type": "string", "enum": [value]}}}
    return {"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}}


@blp.route("/healthz")
@blp.doc(security=[], responses=_status_doc("ok"))
def healthz():
    return {"status": "ok"}


@blp.route("/readyz")
@blp.doc(security=[], responses=_status_doc("ready"))
def readyz():
    try:
        db.session.execute(text("SELECT 1"))
    except Exception as err:  # any failure to reach the database means "not ready"
        raise ServiceUnavailable("The database is not reachable") from err
    finally:
        db.session.rollback()
    return {"status": "ready"}


@blp.route("/openapi.yaml")
@blp.doc(security=[], responses={"200": {"description": "This document",
                                         "content": {"application/yaml": {"schema": {"type": "object"}}}}})
def openapi_yaml():
    from ..openapi import render_spec

    return Response(render_spec(), mimetype="application/yaml")
