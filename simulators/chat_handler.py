"""The HTTP side of the chat-completions simulator (a test double; see `simulators.openai_chat`)."""
from __future__ import annotations

import json
import logging
import math
import re
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from simulators.chat_answers import answer_text
from simulators.chat_messages import BadRequest, ChatRecord, completion, summarize

log = logging.getLogger(__name__)

AZURE_PATH = re.compile(r"^/openai/deployments/([^/]+)/chat/completions/?$")
OPENAI_PATH = "/v1/chat/completions"

# Error bodies per injected status: (type, code, message).
_FAULTS = {
    429: ("rate_limit_error", "rate_limit_exceeded", "Rate limit reached (simulated); retry later."),
    500: ("server_error", "internal_error", "The server had an error (simulated)."),
    503: ("server_error", "service_unavailable", "The service is overloaded (simulated)."),
}


class ChatHandler(BaseHTTPRequestHandler):
    """Answer chat completions on the Azure and OpenAI routes of the simulator."""

    protocol_version = "HTTP/1.1"  # keep-alive, like the real service
    # Headers and body go out in separate writes; with Nagle on, a reused connection
    # waits ~40 ms for the client's delayed ACK before the body, on every call.
    disable_nagle_algorithm = True
    server_version = "ChatSimulator/1"
    _ended = True  # no POST bookkeeping pending (a GET, or a POST already answered)

    def setup(self) -> None:
        super().setup()
        self.server.sim._enter(self.connection)  # type: ignore[attr-defined]

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sim._leave(self.connection)  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        """Send the access log to debug logging instead of stderr."""
        log.debug("chat simulator: " + format, *args)

    def do_GET(self) -> None:
        """Answer 404: the service has no GET routes here."""
        self._error(404, "invalid_request_error", "not_found", "Resource not found.")

    def do_POST(self) -> None:
        """Answer one chat completion, counting it in flight until the answer is on its way."""
        sim = self.server.sim  # type: ignore[attr-defined]
        sim._begin()
        self._info: dict[str, Any] = {"route": "", "deployment": "", "api_version": None,
                                      "text": "", "prompt": "", "images": 0}
        self._ended = False
        try:
            self._serve(sim, self._info)
        finally:
            self._end(500)  # only counts when no answer was sent

    def _end(self, status: int) -> None:
        """Record the call and leave the in-flight count, once, before the client sees the answer."""
        if not self._ended:
            self._ended = True
            info = self._info
            self.server.sim._end(ChatRecord(status=status, **info) if info["route"] else None)  # type: ignore[attr-defined]

    def _serve(self, sim: Any, info: dict[str, Any]) -> int:
        """Validate, apply the fault switches and answer; return the status sent."""
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        refused = self._check_route_and_key(sim, info)
        if refused is not None:
            return refused
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            info["deployment"] = info["deployment"] or body.get("model") or ""
            if not info["deployment"]:
                raise BadRequest("model is required")
            info["text"], info["prompt"], info["images"] = summarize(body.get("messages"))
        except ValueError as e:  # json.JSONDecodeError and BadRequest
            return self._error(400, "invalid_request_error", "bad_request", f"Invalid request: {e}")
        fault = sim._take_fault()
        if fault is not None:
            status, retry_after = fault
            kind, code, message = _FAULTS.get(status, ("server_error", str(status), "Simulated failure."))
            return self._error(status, kind, code, message, retry_after)
        sim._hold_if_asked()
        sim._wait_latency()
        short, messy = sim._take_answer_style()
        content = answer_text(info["prompt"], short=short, messy_style=messy)
        return self._send(200, completion(info["deployment"], content, info["text"]))

    def _check_route_and_key(self, sim: Any, info: dict[str, Any]) -> int | None:
        """Answer 404, 401 or 400 (no api-version on Azure) and return it; None when all is well."""
        url = urlsplit(self.path)
        azure = AZURE_PATH.match(url.path)
        if azure:
            info.update(route="azure", deployment=unquote(azure[1]),
                        api_version=(parse_qs(url.query).get("api-version") or [None])[0])
            authorised = self.headers.get("api-key") == sim.api_key
        elif url.path.rstrip("/") == OPENAI_PATH:
            info["route"] = "openai"
            authorised = self.headers.get("Authorization") == f"Bearer {sim.api_key}"
        else:
            return self._error(404, "invalid_request_error", "not_found", "Resource not found.")
        if not authorised:
            return self._error(401, "invalid_request_error", "invalid_api_key", self._refusal(bool(azure)))
        if azure and not info["api_version"]:
            return self._error(400, "invalid_request_error", "missing_api_version",
                               "The api-version query parameter is required.")
        return None

    def _refusal(self, azure: bool) -> str:
        """Word a 401 like the real services: OpenAI echoes the key's ends, masked."""
        if azure:
            return "Access denied: invalid subscription key or wrong API endpoint."
        given = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        shown = f"{given[:3]}****{given[-4:]}" if len(given) > 8 else "****"
        return f"Incorrect API key provided: {shown}."

    def _error(self, status: int, kind: str, code: str, message: str,
               retry_after: float | None = None) -> int:
        """Send an OpenAI-style error body; return `status`."""
        headers = {}
        if retry_after is not None:
            headers = {"Retry-After": str(max(1, math.ceil(retry_after))),
                       "retry-after-ms": str(max(1, round(retry_after * 1000)))}
        return self._send(status, {"error": {"message": message, "type": kind, "code": code}}, headers)

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> int:
        """Send `body` as JSON; a client that already hung up is not an error here."""
        data = json.dumps(body, ensure_ascii=False).encode()
        self._end(status)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-request-id", uuid.uuid4().hex)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        return status
