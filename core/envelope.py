"""The JSON envelope `{success, data, code, message}` that every answer of the API uses.

Views return `ok(data)` or raise an `ApiError`; the handlers registered here turn every
failure (HTTP errors, backend errors, storage outages, bugs) into the same shape, the
`Envelope` model, whose parametrisations (`Envelope[Literal[True], Literal[0], Session]`)
are what the OpenAPI document says each route answers.
"""
from __future__ import annotations

import logging
import math
from typing import Generic, Literal, TypeVar, get_args

from flask import Flask, Response, jsonify, request
from gunicorn.http.errors import ParseException
from pydantic import BaseModel, ConfigDict, Field
from pymongo.errors import ConnectionFailure, DocumentTooLarge, OperationFailure, PyMongoError
from werkzeug.exceptions import HTTPException

from agent.errors import BackendError

log = logging.getLogger(__name__)

# The envelope's codes, described on Envelope.code; more may be added, these keep their meaning.
Code = Literal[0, 1, 2, 3]
CODE_OK, CODE_BUSINESS, CODE_BACKEND, CODE_STORAGE = get_args(Code)

Success = TypeVar("Success", bound=bool)
Codes = TypeVar("Codes", bound=Code)
Data = TypeVar("Data")


class Envelope(BaseModel, Generic[Success, Codes, Data]):
    """Every JSON answer, success or failure: parametrised, the answer of one route and outcome."""

    model_config = ConfigDict(extra="forbid")

    success: Success
    data: Data = Field(description="The route's payload on success; null on failure (except GET /readyz).")
    code: Codes = Field(description="0 success, 1 business failure (bad input, unknown participant, token, "
                                    "limits), 2 a generative backend (GPT or Stable Diffusion) failed, 3 the "
                                    "database is unreachable or refused a write.")
    message: str = Field(description="Empty on success (GET /readyz says how ready); on failure, why, in words "
                                     "a person can act on (a bad field is named first).")


class ApiError(Exception):
    """A failure the client can act on: an HTTP status, an envelope code and a message."""

    status = 400
    code = CODE_BUSINESS

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = {}
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


class BadInput(ApiError):
    """The request's body or parameters are wrong; the message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(ApiError):
    """The thing the request names does not exist."""

    status = 404


class StorageUnavailable(ApiError):
    """The database cannot be reached right now."""

    status = 503
    code = CODE_STORAGE


def envelope_fields(data=None, *, success: bool = True, code: int = CODE_OK, message: str = "") -> dict:
    """Return the four fields of the envelope around `data`, as an answer's JSON body holds them."""
    # Built, not validated: the model names the keys; `data` is written by the API's JSON.
    return dict(Envelope.model_construct(success=success, data=data, code=code, message=message))


def envelope(data=None, *, success: bool = True, code: int = CODE_OK, message: str = "", status: int = 200) -> Response:
    """Return a JSON response in the envelope."""
    response = jsonify(envelope_fields(data, success=success, code=code, message=message))
    response.status_code = status
    return response


def ok(data=None, status: int = 200) -> Response:
    """Return a success envelope around `data`."""
    return envelope(data, status=status)


def fail(message: str, *, status: int = 400, code: int = CODE_BUSINESS) -> Response:
    """Return a failure envelope."""
    return envelope(None, success=False, code=code, message=message, status=status)


_HTTP_MESSAGES = {
    404: lambda: f"no route for {request.method} {request.path}",
    405: lambda: f"method {request.method} is not allowed on {request.path}",
    413: lambda: "request body is larger than the server accepts",
}


def _http_error(error: HTTPException) -> Response:
    message = _HTTP_MESSAGES.get(error.code, lambda: error.description or error.name)()
    response = fail(message, status=error.code or 500)
    for name, value in error.get_headers():
        if name.lower() in {"allow", "retry-after", "www-authenticate"}:
            response.headers[name] = value
    return response


def failure_of(error: BaseException) -> tuple[int, int, str]:
    """Return the HTTP status, envelope code and message that answer `error`, the one place they are decided."""
    if isinstance(error, ApiError):
        return error.status, error.code, error.message
    if isinstance(error, BackendError):
        # The participant can act on what their own input or requests caused: code 1.
        return error.http_status, CODE_BUSINESS if error.caused_by_input else CODE_BACKEND, error.describe()
    if isinstance(error, DocumentTooLarge):
        return 413, CODE_BUSINESS, "the data is too large to store in one document"
    if isinstance(error, ConnectionFailure):
        return 503, CODE_STORAGE, "the database is unavailable; try again shortly"
    if isinstance(error, PyMongoError) and _disk_full(error):
        return 503, CODE_STORAGE, "the database's disk is full; nothing was written, try again later"
    return 500, CODE_BUSINESS, "internal server error"


def _failed(error: BaseException) -> Response:
    status, code, message = failure_of(error)
    return fail(message, status=status, code=code)


def _api_error(error: ApiError) -> Response:
    response = _failed(error)
    response.headers.update(error.headers)
    return response


def _broken_body(error: ParseException) -> Response:
    # gunicorn parses a chunked body while the app reads it, so its errors surface in the view.
    return fail("body: is not valid HTTP (its chunked transfer encoding is broken)", status=400)


def _backend_error(error: BackendError) -> Response:
    log.warning("backend failure: %s", error.describe())
    response = _failed(error)
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return response


# How stores say they ran out of space: MongoDB's OutOfDiskSpace code, SQLite's SQLITE_FULL
# text (the embedded store's), and the operating system's ENOSPC text.
_OUT_OF_DISK_CODE = 14031
_DISK_FULL_TEXTS = ("database or disk is full", "no space left on device")


def _disk_full(error: PyMongoError) -> bool:
    """Return whether `error` says the database's disk has no room for the write."""
    if isinstance(error, OperationFailure) and error.code == _OUT_OF_DISK_CODE:
        return True
    text = str(error).lower()
    return any(words in text for words in _DISK_FULL_TEXTS)


def _storage_error(error: PyMongoError) -> Response:
    if isinstance(error, ConnectionFailure):
        log.warning("database unavailable: %s", type(error).__name__)
    elif _disk_full(error):
        log.error("database cannot write: its disk is full (%s)", error)
    elif not isinstance(error, DocumentTooLarge):
        return _unexpected(error)
    return _failed(error)


def _unexpected(error: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _failed(error)


def register_error_handlers(app: Flask) -> None:
    """Answer every failure of `app` in the envelope, never with a traceback."""
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(BackendError, _backend_error)
    app.register_error_handler(PyMongoError, _storage_error)
    app.register_error_handler(ParseException, _broken_body)
    app.register_error_handler(Exception, _unexpected)
