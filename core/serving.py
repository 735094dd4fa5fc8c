"""What the HTTP servers in front of the app answer themselves: in the envelope, logged like the app's.

Some requests never reach the app. gunicorn (production, `gunicorn -c gunicorn.conf.py
app:app`) and Werkzeug's server (`python app.py`) answer them on their own: a request line
or headers over their limits (414, 431), bytes that are not HTTP (400), an expectation or
transfer coding they cannot meet (417, 501). Both would answer in HTML, and log the raw
request line, query string and all. `EnvelopeWorker` (gunicorn's gthread worker) and
`EnvelopeRequestHandler` (Werkzeug's) answer those in the envelope, with an X-Request-ID,
and write an access line (core.logs) naming the kind of failure but never the request.
"""
from __future__ import annotations

import logging
import ssl
import uuid
from http import HTTPStatus

from gunicorn import util
from gunicorn.http.errors import (
    ConfigurationProblem, ExpectationFailed, ForbiddenProxyRequest, InvalidResponseHeader,
    InvalidResponseHeaderName, LimitRequestHeaders, LimitRequestLine, ParseException, UnsupportedTransferCoding,
)
from gunicorn.workers.gthread import ThreadWorker
from werkzeug.serving import WSGIRequestHandler

from core import logs
from core.envelope import CODE_BUSINESS, envelope_fields
from core.json_codec import dumps

log = logging.getLogger(__name__)

ROUTE = "<not parsed>"  # the route label of a request the app never saw (its duration is 0)

MESSAGES = {
    400: "the request is not valid HTTP",
    403: "the request was refused before it was read",
    414: "the request line (method, path and query) is longer than the server accepts",
    417: "the server cannot meet the request's Expect header",
    431: "the request's headers are larger, or more, than the server accepts",
    500: "internal server error",
    501: "the request's transfer coding is not supported",
    505: "the request's HTTP version is not supported",
}

# gunicorn's parse errors, most specific first, and the status each answers; other
# ParseExceptions are 400, anything else 500.
GUNICORN_STATUSES: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int], ...] = (
    ((InvalidResponseHeader, InvalidResponseHeaderName, ConfigurationProblem), 500),  # the app's or ours
    (LimitRequestLine, 414),
    (LimitRequestHeaders, 431),
    (ExpectationFailed, 417),
    (UnsupportedTransferCoding, 501),
    ((ForbiddenProxyRequest, ssl.SSLError), 403),
    (ParseException, 400),
)


def error_answer(status: int, request_id: str, message: str | None = None,
                 headers: dict[str, str] | None = None) -> bytes:
    """Return the whole HTTP answer, head and envelope, of a request the server refused itself."""
    phrase = HTTPStatus(status).phrase
    message = message or MESSAGES.get(status, phrase.lower())
    body = dumps(envelope_fields(None, success=False, code=CODE_BUSINESS, message=message))
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (f"HTTP/1.1 {status} {phrase}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Request-ID: {request_id}\r\n{extra}\r\n")
    return head.encode("latin-1") + body


def gunicorn_status(error: BaseException) -> int:
    """Return the status gunicorn's `error` answers."""
    return next((status for kinds, status in GUNICORN_STATUSES if isinstance(error, kinds)), 500)


class EnvelopeWorker(ThreadWorker):
    """gunicorn's gthread worker, answering what it refuses itself in the envelope."""

    def handle_error(self, req, client, addr, exc) -> None:
        """Answer `exc` (raised reading or serving a request) in the envelope, and log it without the request."""
        if req is not None and isinstance(exc, ParseException):
            # The body behind a request the app has answered is broken (gunicorn found it out reading
            # past it to keep the connection): a second answer would follow the first. Just close.
            self.log.debug("closing a connection whose request body is broken")
            return
        status, request_id = gunicorn_status(exc), uuid.uuid4().hex
        if status == 500:  # not the client's doing; the traceback, never the request line
            self.log.error("error serving request %s", request_id, exc_info=exc)
        logs.access(request_id=request_id, method=getattr(req, "method", None), route=ROUTE, status=status,
                    seconds=0.0, remote=(addr or ("",))[0] or None, error=type(exc).__name__)
        try:
            util.write_nonblock(client, error_answer(status, request_id))
        except OSError:
            self.log.debug("could not send the error answer: the client is gone")


class EnvelopeRequestHandler(WSGIRequestHandler):
    """Werkzeug's request handler (python app.py), answering what it refuses itself in the envelope.

    It writes no request lines of its own: the app writes each request's access line.
    """

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Write nothing: the access line is the app's (or `send_error`'s)."""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer a request the server refused before the app saw it, in the envelope."""
        request_id = uuid.uuid4().hex
        self.close_connection = True
        logs.access(request_id=request_id, method=None, route=ROUTE, status=code, seconds=0.0,
                    remote=self.client_address[0], error=HTTPStatus(code).phrase)
        self.wfile.write(error_answer(code, request_id))
