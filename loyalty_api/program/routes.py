from flask_smorest import Blueprint

from ..auth.decorators import require
from ..timeutil import utcnow
from ..transactions import run_read, run_write
from . import services
from .schemas import ProgramSchema

blp = Blueprint("program", __name__, url_prefix="/v1/program", description="Program settings")


@blp.route("", methods=["GET"])
@require("program")
@blp.response(200, ProgramSchema)
def get_program():
    return run_read(lambda session: services.get_program(session).as_dict())


@blp.route("", methods=["PATCH"])
@require("program")
@blp.arguments(ProgramSchema())
@blp.response(200, ProgramSchema)
def patch_program(changes):
    now = utcnow()
    return run_write(lambda session: services.update_program(session, changes, now).as_dict())
