"""Asking for generations: POST /generate runs one and answers its data, POST /jobs submits one.

Both take the same body and submit the generation as a job (apps.jobs); /generate, the
web client's route, waits for it and answers as the contract says, while /jobs answers 202
at once with where to follow it.

The body names an app (`appid`, one entry of `APPS`) and one of its types; the app's
table gives the model its `prompts` are checked against, then the pipeline runs with the
server's shared GPT client and SD pool and its answer is sent as `data`. Every generation
that got past validation leaves a record (apps.records), whether it succeeds, fails on a
backend, fails on a bug or outlives its client; rejected requests leave none, and so do
requests over the client's GENERATE_RATE_LIMIT (429 before the body is read). The record
says whose generation it was (apps.attribution): the body's username when it sends one,
else what the prompts and the client show, weighed against the participants' sessions.
Its images take their turns in the SD pool's line as that participant's, found when the
request arrives (else the body's username, else the client's address).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Annotated, Any, Literal, Protocol, Union

from flask import Blueprint, Flask, current_app
from pydantic import BaseModel, Field, create_model
import pymongo
from pymongo.database import Database
from pymongo.errors import PyMongoError
from typing_extensions import TypeAliasType

import config
from agent.pool import ImageControl
from apps.paint import register
from apps.paint.pipelines import PaintApp, Pipeline
from apps import attribution
from apps.attribution import Clues
from apps.jobs import Job, Submitted, get_jobs, urls_of
from apps.records import ASIDE_TIMEOUT, GenerationCall, get_journal
from core import validation as v
from core.backends import get_gpt, get_pool
from core.db import get_db
from core.envelope import BadInput, ok
from core.security import client_key, limit_generate, participant, researcher

log = logging.getLogger(__name__)

bp = Blueprint("generate", __name__)


class GenerationApp(Protocol):
    """What the /generate route needs of an app: its table of types, and a way to run one."""

    pipelines: Mapping[int, Pipeline]

    def read(self, type: int, prompts: Any) -> BaseModel:
        """Return the checked prompts of `type`, or raise BadInput naming the field."""

    def clues(self, prompts: BaseModel) -> Clues:
        """Return what checked `prompts` show of the participant who sent them."""

    def size(self, type: int, prompts: BaseModel) -> tuple[int, int]:
        """Return how many steps a request of `type` takes (its images among them), and how many images."""

    def run(self, type: int, prompts: Any, gpt: Any, pool: Any, trace: Any, *,
            control: ImageControl | None = None) -> BaseModel:
        """Run the pipeline of `type`, its images held by `control`, and return the answer's `data`."""


# appid -> its handler's class, built once at startup (so a broken template stops the server).
APPS: Mapping[int, type[GenerationApp]] = {
    config.APP_PAINT: PaintApp,
}


class GenerateBody(v.Body):
    """The envelope of every /generate request; `prompts` is checked by the app's own model."""

    appid: int
    type: int
    prompts: Any = None
    username: v.Username | None = Field(None, description="Who asks, for the record; optional.")


def exchanges() -> tuple[Any, Any]:
    """Return the types of every /generate body and of its answer's data, a variant per app and type.

    A body variant is GenerateBody with that app and type, and that type's prompts model:
    what `read_call` checks in two steps, in one model for the OpenAPI document.
    """
    bodies, answers = [], []
    for appid, app in APPS.items():
        for type_, pipeline in app.pipelines.items():
            name = "Generate" + pipeline.prompts.__name__.removesuffix("Prompts")
            bodies.append(create_model(name, __base__=GenerateBody, __doc__=pipeline.prompts.__doc__,
                                       appid=Literal[appid], type=Literal[type_], prompts=pipeline.prompts))
            answers.append(pipeline.answer)
    request = Annotated[Union[tuple(bodies)], Field(
        description="Unknown appid or type, or prompts of the wrong shape, answer 400.")]
    data = Annotated[Union[tuple(answers)], Field(description="The data of the type asked for.")]
    return TypeAliasType("GenerateRequest", request), TypeAliasType("GenerateData", data)


def init_app(app: Flask) -> None:
    """Build every app's handler and register the route."""
    app.extensions["generation_apps"] = {appid: build() for appid, build in APPS.items()}
    app.register_blueprint(bp)


def _listed(ids: Any) -> str:
    return ", ".join(str(i) for i in sorted(ids))


def read_call() -> GenerationCall:
    """Return the checked generation call of the request body, or raise BadInput."""
    body = v.body(GenerateBody)
    handlers: dict[int, GenerationApp] = current_app.extensions["generation_apps"]
    if body.appid not in handlers:
        raise BadInput("appid", f"unknown app {body.appid}; known apps are {_listed(handlers)}")
    handler = handlers[body.appid]
    if body.type not in handler.pipelines:
        raise BadInput("type", f"app {body.appid} has no type {body.type}; its types are {_listed(handler.pipelines)}")
    prompts = handler.read(body.type, body.prompts)
    return GenerationCall(body.appid, body.type, body.username, handler, prompts)


def image_owner(db: Database, call: GenerationCall) -> str:
    """Return whose turn the call's images take in the pool's line: its participant, else its client."""
    try:
        username = attribution.attribute(db, call.clues).username if call.clues is not None else None
    except PyMongoError as error:  # the generation runs without the database; its record is attributed later
        log.warning("could not attribute a generation before it ran: %s", type(error).__name__)
        username = None
    return username or call.username or client_key()


def submit() -> Job:
    """Submit the generation the request asks for as a job, or raise BadInput (and submit nothing)."""
    limit_generate()  # before any work: a client over its budget costs nothing and leaves no record
    call = read_call()
    register.admit(call.username)
    db, journal = get_db(), get_journal()  # outside the budget below: the first call sets up the indexes
    shown = call.handler.clues(call.prompts)
    if journal.backlog:  # records wait for the database: it would not answer these either
        call = replace(call, clues=attribution.clues(None, call.username, shown))
        return get_jobs().submit(call, db, journal, call.username or client_key(), get_gpt(), get_pool())
    # One budget for all the database does that the generation can do without: its evidence, whose
    # turn its images take, its queued record. A database that hangs delays it by ASIDE_TIMEOUT, once.
    with pymongo.timeout(ASIDE_TIMEOUT):
        call = replace(call, clues=attribution.clues(db, call.username, shown))
        return get_jobs().submit(call, db, journal, image_owner(db, call), get_gpt(), get_pool())


@bp.post("/generate")
@participant
def generate():
    """Run the requested pipeline and answer its data; backend failures answer code 2."""
    job = submit()
    job.wait()  # a client that leaves cancels nothing: the job ends and is recorded
    if job.failure is not None:
        raise job.failure
    return ok(job.result)


@bp.post("/jobs")
@researcher
def submit_job():
    """Submit a generation (a /generate body) as a job; answer 202 with where to follow it."""
    job = submit()
    urls = urls_of(job.id)
    response = ok(Submitted(id=job.id, status=job.status, urls=urls).model_dump(by_alias=True), status=202)
    response.headers["Location"] = urls.self
    return response
