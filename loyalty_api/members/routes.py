from flask import jsonify
from flask_smorest import Blueprint

from ..auth.decorators import require
from ..timeutil import utcnow
from ..transactions import run_read, run_statement, run_write
from . import services
from .schemas import (
    MemberCreateSchema,
    MemberListQuerySchema,
    MemberPageSchema,
    MemberSchema,
    MemberUpdateSchema,
    dump_member,
)

blp = Blueprint("members", __name__, url_prefix="/v1/members", description="Members")


@blp.route("", methods=["POST"])
@require("members:write")
@blp.arguments(MemberCreateSchema())
@blp.response(201, MemberSchema)
def create_member(data):
    now = utcnow()
    return run_write(lambda session: services.create_member(session, data, now))


@blp.route("", methods=["GET"])
@require("members:read")
@blp.arguments(MemberListQuerySchema(), location="query")
@blp.response(200, MemberPageSchema)
def list_members(query):
    page = run_read(lambda session: services.list_members(session, query, query["limit"], query["cursor"]))
    return page


@blp.route("/<member_id>", methods=["GET"])
@require("members:read")
@blp.response(200, MemberSchema)
def get_member(member_id):
    view = run_statement(lambda connection: services.get_member(connection, member_id))
    # The most frequent request: dumped by hand, as MemberSchema would (a Response passes the
    # decorator untouched; the schema still documents it).
    return jsonify(dump_member(view))


@blp.route("/<member_id>", methods=["PATCH"])
@require("members:write")
@blp.arguments(MemberUpdateSchema())
@blp.response(200, MemberSchema)
def update_member(changes, member_id):
    now = utcnow()
    return run_write(lambda session: services.update_member(session, member_id, changes, now))


@blp.route("/<member_id>", methods=["DELETE"])
@require("members:write")
@blp.response(204)
def erase_member(member_id):
    now = utcnow()
    run_write(lambda session: services.erase_member(session, member_id, now))
