"""The JSON envelope `{success, data, code, message}` that every answer of the API uses.

Views return `ok(data)` or raise an `ApiError`; the handlers registered here turn every
failure (HTTP errors, backend errors, storage outages, bugs) into the same shape.
"""
from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from pymongo.errors import ConnectionFailure, DocumentTooLarge, PyMongoError
from werkzeug.exceptions import HTTPException

from agent.errors import BackendError

log = logging.getLogger(__name__)

CODE_OK = 0
CODE_BUSINESS = 1  # bad input, unknown participant, auth, limits
CODE_BACKEND = 2  # a generative backend (GPT or Stable Diffusion) failed
CODE_STORAGE = 3  # the database is unreachable


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


def document(data=None, *, success: bool = True, code: int = CODE_OK, message: str = "") -> dict:
    """Return the envelope as a plain value, for answers written outside a Flask request too."""
    return {"success": success, "data": data, "code": code, "message": message}


def envelope(data=None, *, success: bool = True, code: int = CODE_OK, message: str = "", status: int = 200) -> Response:
    """Return a JSON response in the envelope."""
    response = jsonify(document(data, success=success, code=code, message=message))
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


def _api_error(error: ApiError) -> Response:
    response = fail(error.message, status=error.status, code=error.code)
    response.headers.update(error.headers)
    return response


def _backend_error(error: BackendError) -> Response:
    log.warning("backend failure: %s", error.describe())
    return fail(error.describe(), status=error.http_status, code=CODE_BACKEND)


def _storage_error(error: PyMongoError) -> Response:
    if isinstance(error, DocumentTooLarge):
        return fail("the data is too large to store in one document", status=413)
    if isinstance(error, ConnectionFailure):
        log.warning("database unavailable: %s", type(error).__name__)
        return fail("the database is unavailable; try again shortly", status=503, code=CODE_STORAGE)
    return _unexpected(error)


def _unexpected(error: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return fail("internal server error", status=500)


def register_error_handlers(app: Flask) -> None:
    """Answer every failure of `app` in the envelope, never with a traceback."""
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(BackendError, _backend_error)
    app.register_error_handler(PyMongoError, _storage_error)
    app.register_error_handler(Exception, _unexpected)
