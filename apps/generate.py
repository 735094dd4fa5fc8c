"""POST /generate: run one app's generation pipeline and record what it did.

The route validates the body, runs the app's handler with the server's shared GPT client
and SD pool, and answers the response `data` in the envelope. Every generation that got
past validation leaves a record (apps.records), whether it succeeds, fails on a backend,
fails on a bug or outlives its client; rejected requests leave none, and so do requests
over the client's GENERATE_RATE_LIMIT (429 before the body is read). Each generation is
observed in the metrics (core.metrics) when it ends.
"""
from __future__ import annotations

from flask import Blueprint

from apps.record_backlog import get_backlog
from apps.records import GenerationCall, Recorder
from apps.registry import get_registry
from core import validation as v
from core.backends import get_gpt, get_pool
from core.db import get_db
from core.envelope import ok
from core.json_codec import json_object
from core.metrics import generation_observed
from core.rate_limit import limit_generate

bp = Blueprint("generate", __name__)


def read_call() -> GenerationCall:
    """Return the checked generation call of the request body, or raise BadInput."""
    body = json_object()
    appid, type_ = body.get("appid"), body.get("type")
    handler = get_registry().handler(appid, type_)
    username = None if body.get("username") is None else v.username(body["username"])
    request = handler.validate(type_, v.obj(body.get("prompts"), "prompts"))
    return GenerationCall(appid, type_, username, handler, request)


@bp.post("/generate")
def generate():
    """Run the requested pipeline and answer its data; backend failures answer code 2."""
    limit_generate()  # before any work: a client over its budget costs nothing and leaves no record
    call = read_call()
    with Recorder(get_db(), call, get_backlog()) as recorder, generation_observed(recorder):
        recorder.result = call.handler.run(call.type, call.request, get_gpt(), get_pool(), recorder.trace)
    return ok(recorder.result)
